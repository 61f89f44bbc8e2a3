"""Configs: presets, argument parsing, validation messages, command-line overrides."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

from helpers import tiny_config
from score_jax import config_lib
from score_jax.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('overrides, message', [
    (dict(num_kv_heads=3),
     r'model.num_heads \(4\) must be divisible by model.num_kv_heads \(3\)'),
    (dict(num_layers=0), r'model.num_layers must be a positive integer; got 0'),
    (dict(head_dim=15), r'model.head_dim must be even .*got 15'),
    (dict(activation='relu'), r"model.activation must be one of \('silu', 'gelu_tanh'\); got 'relu'"),
    (dict(attention_pattern='local,global'), r'model.sliding_window must be positive; got 0'),
    (dict(attention_pattern='local,full', sliding_window=4),
     r"model.attention_pattern must be comma-separated kinds .* got 'local,full'"),
    (dict(dtype='float8'), r"model.dtype must be one of .* got 'float8'"),
    (dict(remat_policy='some'), r"model.remat_policy must be one of .* got 'some'"),
    (dict(final_logit_softcap=-1.0), r'model.final_logit_softcap must be >= 0'),
])
def test_bad_model_values_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny_config('tiny', **overrides)


def test_unknown_preset_and_settings():
  with pytest.raises(ValueError, match=r"Unknown model preset 'llama9'; known presets: .*tiny"):
    config_lib.model_config('llama9')
  with pytest.raises(ValueError, match=r"Unknown model settings \['num_expert'\]"):
    config_lib.model_config('tiny', num_expert=4)
  with pytest.raises(ValueError, match=r"Unknown model settings \['preset'\]"):
    ModelConfig.from_mapping(dict(config_lib.model_config('tiny'), preset='tiny'))


def test_parse_arg():
  args = config_lib.parse_arg('model=smollm2_135m, steps=5,bf16=true', model='tiny', steps=1,
                              bf16=False)
  assert (args.model, args.steps, args.bf16) == ('smollm2_135m', 5, True)
  with pytest.raises(ValueError, match=r"Unknown config argument 'modle' .* valid keys are"):
    config_lib.parse_arg('modle=tiny', model='tiny')
  with pytest.raises(ValueError, match=r'Config argument steps must be an integer; got .five.'):
    config_lib.parse_arg('steps=five', steps=1)
  with pytest.raises(ValueError, match='must look like key=value'):
    config_lib.parse_arg('tiny', model='tiny')


def run_demo(*flags):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'score_jax.demo', *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_demo_runs_with_command_line_overrides():
  result = run_demo('--config=configs/demo.py:model=tiny_gemma2', '--config.model.num_layers=3',
                    '--config.mesh.data=2', '--config.mesh.tensor=2', '--config.demo.new_tokens=5')
  assert result.returncode == 0, result.stderr
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in result.stdout
  assert 'model: 3 layers' in result.stdout
  assert 'greedy decode of 5 tokens' in result.stdout
  assert 'cached vs full-sequence logits: max abs diff' in result.stdout


@pytest.mark.slow
def test_demo_stops_on_a_bad_override_with_a_clear_message():
  result = run_demo('--config=configs/demo.py', '--config.model.num_kv_heads=3')
  assert result.returncode != 0
  assert 'Invalid config: model.num_heads (4) must be divisible by model.num_kv_heads (3)' in (
      result.stderr)
  result = run_demo('--config=configs/demo.py', '--config.mesh.data=3')
  assert result.returncode != 0
  assert "Invalid config: The mesh {'data': 3, 'fsdp': -1, 'tensor': 1} does not fit 8 devices" in (
      result.stderr)


def test_an_rl_phase_can_have_its_own_learning_rate():
  from score_jax.training.phases import Phase  # pylint: disable=g-import-not-at-top
  config = config_lib.base_train_config()
  config.rl.optimizer.learning_rate = 1e-4
  config.rl.stage_learning_rate.stage2 = 3e-5
  config.lock()
  assert Phase('stage2', 10).config_section(config).optimizer.learning_rate == 3e-5
  assert Phase('stage1', 10).config_section(config).optimizer.learning_rate == 1e-4
  assert config.rl.optimizer.learning_rate == 1e-4  # the config itself is unchanged
  config.unlock()
  config.rl.stage_learning_rate.stage1 = -1.0
  with pytest.raises(ValueError, match=r'rl.stage_learning_rate.stage1 must be >= 0'):
    config_lib.validate_train_config(config)


def test_study_variants_parse_and_apply_to_declared_fields():
  name, overrides = config_lib.parse_variant(
      'slow:rl.stage_learning_rate.stage2=3e-5; schedule=sft:10,stage1:5,stage2:5')
  assert name == 'slow'
  assert overrides == {'rl.stage_learning_rate.stage2': 3e-5,
                       'schedule': 'sft:10,stage1:5,stage2:5'}
  config = config_lib.apply_overrides(config_lib.base_train_config(), overrides)
  assert config.rl.stage_learning_rate.stage2 == 3e-5
  assert config.schedule == 'sft:10,stage1:5,stage2:5'
  assert config_lib.apply_overrides(config, {'rl.alpha': 1}).rl.alpha == 1.0
  with pytest.raises(ValueError, match='rl.alpah is not a field'):
    config_lib.apply_overrides(config, {'rl.alpah': 1.0})
  with pytest.raises(ValueError, match='expected NAME:field=value'):
    config_lib.parse_variant(':rl.alpha=1')


def _modules_defining_flags() -> set[str]:
  """The score_jax modules that define absl flags when imported (the command-line entry points)."""
  root = pathlib.Path(__file__).resolve().parent.parent
  found = set()
  for path in (root / 'score_jax').rglob('*.py'):
    if re.search(r'^\w+ = (config_)?flags\.DEFINE_', path.read_text(), re.MULTILINE):
      parts = path.relative_to(root).with_suffix('').parts
      found.add('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
  return found


def test_no_test_imports_a_command_line_module_in_process():
  # Two entry points imported into one pytest worker define the same flag (--workdir, --config)
  # twice, which absl refuses: which tests share a worker changes between runs, so the failure
  # comes and goes. Tests run entry points as subprocesses and import library modules only.
  entry_points = _modules_defining_flags()
  assert {'score_jax.train', 'score_jax.transcripts', 'score_jax.paper.study'} <= entry_points
  offenders = []
  for path in pathlib.Path(__file__).resolve().parent.glob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
      else:
        continue
      offenders += [f'{path.name}:{node.lineno} {name}' for name in names if name in entry_points]
  assert not offenders, offenders
