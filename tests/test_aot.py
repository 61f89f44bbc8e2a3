"""The scale configs and the TPU ahead-of-time check (``score_jax.aot``).

Config tests run everywhere. The compile tests need libtpu (``pip install 'score-jax[tpu]'``)
and are skipped without it; they compile tiny models for a v5e:2x2 topology in about ten
seconds each.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from score_jax import aot, config_lib, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE_CONFIGS = ('gemma2_2b', 'gemma2_9b', 'gemma2_27b', 'llama3_70b', 'gemini_scale')
HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (pip install 'score-jax[tpu]'), so no TPU "
    'topology can be compiled for')


def load_config(name: str, arg: str | None = None):
  """Loads configs/NAME.py the way config_flags does (by path, not as a package)."""
  spec = importlib.util.spec_from_file_location(f'config_{name}',
                                                os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ---- the configs (no libtpu needed) ----------------------------------------------------------


@pytest.mark.parametrize('name', SCALE_CONFIGS)
@pytest.mark.parametrize('arg', [None, 'tiny'])
def test_scale_config_validates_and_its_mesh_covers_the_slice(name, arg):
  config = load_config(name, arg)
  phases = config_lib.validate_train_config(config)
  config_lib.build_model_config(config.model)
  assert any(phase.kind in ('stage1', 'stage2') for phase in phases)
  tpu = aot.Slice.from_config(config.tpu)
  mesh = sharding.resolve_mesh_shape(config.mesh.to_dict(), tpu.num_chips)
  assert mesh['data'] * mesh['fsdp'] * mesh['tensor'] == tpu.num_chips
  # Every chip gets whole rollout rows, in the rollout and in each update minibatch.
  rows = config.rl.batch_size // config.rl.minibatches
  assert rows % (mesh['data'] * mesh['fsdp']) == 0
  if arg is None:
    assert config.rl.batch_size == 512  # The paper's MATH batch (Table 8).
    assert (config.rollout.prompt_len, config.rollout.attempt1_len,
            config.rollout.attempt2_len) == (512, 1024, 1024)
    assert config.task.name == 'math' and config.task.instruction == 'paper_math'
    assert config.task.template == ('gemma' if 'gemma' in name else 'llama3')
    assert config.model.dtype == 'bfloat16' and config.model.scan_layers
    assert tpu.generation == 'v5p'


def test_slice_names_count_tensorcores_on_v5p():
  assert aot.Slice.from_config(aot.tpu_config('v5p', '8x8x8')).name == 'v5p-1024'
  assert aot.Slice.from_config(aot.tpu_config('v5p', '2x2x1')).name == 'v5p-8'
  assert aot.Slice.from_config(aot.tpu_config('v5e', '4x4')).name == 'v5e-16'


def test_bad_tpu_settings_name_the_field():
  with pytest.raises(ValueError, match=r"tpu.generation must be one of .* got 'v9'"):
    aot.tpu_config('v9', '2x2')
  tpu = aot.tpu_config('v5p', '2x2x1')
  tpu.topology = '2x2x'
  with pytest.raises(ValueError, match=r"tpu.topology must look like 2x2 or 4x4x8; got '2x2x'"):
    aot.Slice.from_config(tpu)
  with pytest.raises(ValueError, match='The config has no tpu section'):
    aot.Slice.from_config(None)


def test_missing_libtpu_names_the_install_command(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real_find_spec(name, *a))
  with pytest.raises(aot.LibtpuMissing, match=re.escape("pip install 'score-jax[tpu]'")) as error:
    aot.require_libtpu()
  assert "libtpu==0.0.42.*" in str(error.value)


def test_lora_configs_are_refused_before_any_compile():
  # The check compiles the full-weight programs; a LoRA run's state has other sizes.
  config = load_config('gemma2_2b', 'tiny')
  config.lora.rank = 8
  with pytest.raises(ValueError, match=r'lora.rank=8: .* --config.lora.rank=0'):
    aot.check(config)


def test_an_unknown_override_is_one_line_and_exit_code_2():
  result = subprocess.run(
      [sys.executable, '-m', 'score_jax.aot', '--config=configs/gemma2_2b.py:tiny',
       '--config.rl.alpah=1.0'], cwd=REPO, capture_output=True, text=True, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert result.stderr.startswith('Invalid config: ') and 'alpah' in result.stderr


def test_update_flops_by_hand():
  model = config_lib.build_model_config(config_lib.model_config('tiny'))
  config = load_config('gemma2_2b', 'tiny')
  config.rl.ppo_epochs = 1
  # tiny: 2 layers, d 64, 4 heads, 2 KV heads, head_dim 16, MLP 128, vocab 256.
  body = 2 * (2 * 64 * 4 * 16 + 2 * 64 * 2 * 16 + 3 * 64 * 128)  # 73,728 matmul weights
  head = 64 * 256
  tokens = 2 * 8  # 2 rows of 8 slots
  attention = 2 * 4 * 8 * 8 * 4 * 16 * 2  # 2 rows: q.k and weights.v over 8x8 slots
  flops = aot.update_flops(model, config, batch=2, length=8)
  # Reference forward 2N, policy forward and backward 6N; attention 1 + 3 times.
  assert flops['model'] == 8 * (body + head) * tokens + 4 * attention
  # No remat: only the checkpointed log-prob chunks recompute the vocabulary projection.
  assert flops['executed'] == flops['model'] + 2 * head * tokens


def test_trainer_accepts_a_scale_config(tmp_path):
  """config.tpu is ignored by the trainer: a scale config gets as far as the task's data."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  result = subprocess.run(
      [sys.executable, '-m', 'score_jax.train', '--config=configs/gemma2_2b.py:tiny',
       f'--workdir={tmp_path}'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode != 0
  assert 'Invalid config: The math task needs path=' in result.stderr + result.stdout


# ---- compiling for a TPU topology (needs libtpu) ---------------------------------------------


def run_aot(*flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD='1')
  result = subprocess.run([sys.executable, '-m', 'score_jax.aot', *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  lines = result.stdout.strip().splitlines()
  return result.returncode, lines, result.stderr


@pytest.mark.aot
@needs_libtpu
def test_tiny_config_fits_a_v5e_2x2():
  code, lines, stderr = run_aot('--config=configs/gemma2_2b.py:tiny')
  assert code == 0, stderr[-3000:]
  assert any(line.startswith('compiling the RL update (stage1)') for line in lines)
  assert any(line.startswith('compiling the rollout (two turns)') for line in lines)
  assert any('slice v5e-4' in line for line in lines)
  assert re.fullmatch(r'fits: \d+\.\d / 15\.75 GiB per chip', lines[-1]), lines[-1]


@pytest.mark.aot
@needs_libtpu
def test_too_little_hbm_does_not_fit():
  code, lines, _ = run_aot('--config=configs/gemini_scale.py:tiny', '--config.tpu.hbm_gib=0.001')
  assert code == 1
  assert re.match(r'does not fit: \d+\.\d / 0\.001 GiB per chip during the (update|rollout); ',
                  lines[-1]), lines[-1]


@pytest.mark.aot
@needs_libtpu
def test_compiler_out_of_memory_does_not_fit():
  # 256 rows of 4,120 slots per chip: the update's attention alone needs over 100 GiB.
  code, lines, _ = run_aot('--config=configs/gemma2_2b.py:tiny', '--config.rl.batch_size=1024',
                           '--config.rollout.attempt1_len=2048',
                           '--config.rollout.attempt2_len=2048')
  assert code == 1
  assert lines[-1].startswith('does not fit: the compiler ran out of memory for the RL update'), (
      lines[-1])
  assert 'exceeds available HBM (15.75G)' in lines[-1]
  assert 'rl.minibatches=8' in lines[-1]  # What to change: twice the tiny config's 4.


@pytest.mark.aot
@needs_libtpu
def test_unknown_topology_is_a_config_error():
  code, _, stderr = run_aot('--config=configs/gemma2_2b.py:tiny', '--config.tpu.topology=3x5')
  assert code == 2
  assert "Invalid config: tpu.topology '3x5' (v5e) is not a slice libtpu knows" in stderr
