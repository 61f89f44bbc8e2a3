"""Training and evaluating from imported weights (``config.init_from``), and exporting a run.

A tiny Llama made offline with ``transformers`` stands in for a downloaded checkpoint: the
trainer starts Stage II from it, the checkpoint's reference model is exactly the imported
weights, and ``python -m score_jax.convert --checkpoint`` turns the run back into a checkpoint
that ``transformers`` loads with the same logits.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import REPO, final_params, run_train, smoke_config

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from score_jax.convert import model_config_for, open_pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.model import Decoder, positions_from_valid  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.writers import read_jsonl  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(module, *args, timeout=600):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny_llama(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('tiny_llama'))
  config = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(directory)
  return directory


@pytest.fixture(scope='module')
def stage2_run(tiny_llama, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('stage2_from_import'))
  result = run_train(workdir, f'--config.init_from={tiny_llama}', '--config.schedule=stage2:2')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_stage2_from_imported_weights_keeps_them_as_the_reference(tiny_llama, stage2_run):
  losses = [r['train/loss'] for r in read_jsonl(os.path.join(stage2_run, 'metrics.jsonl'))
            if 'train/loss' in r]
  assert losses and all(np.isfinite(losses))
  config = smoke_config(init_from=tiny_llama, schedule='stage2:2')
  policy, reference, meta = final_params(stage2_run, config)
  assert meta['global_step'] == 2
  pretrained = open_pretrained(tiny_llama)
  imported = pretrained.load_params(model_config_for(pretrained))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               reference, imported)
  # (A random model earns no reward on the task, so the policy itself may not move.)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(policy))


@pytest.mark.slow
def test_convert_exports_a_run_that_transformers_loads(tiny_llama, stage2_run, tmp_path):
  out = str(tmp_path / 'export')
  result = _run('score_jax.convert', f'--checkpoint={stage2_run}', f'--output={out}')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert 'model.safetensors' in result.stdout
  config = smoke_config(init_from=tiny_llama, schedule='stage2:2')
  policy, _, _ = final_params(stage2_run, config)
  model_config = model_config_for(open_pretrained(tiny_llama))
  ids = np.random.RandomState(0).randint(0, 128, (1, 12))
  valid = jnp.ones(ids.shape, bool)
  ours, _ = Decoder(model_config).apply({'params': policy}, jnp.asarray(ids),
                                        positions_from_valid(valid), valid)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = loaded(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_evaluate_without_a_checkpoint_uses_the_imported_weights(tiny_llama, tmp_path):
  result = _run('score_jax.evaluate', '--config=configs/toy_arith.py:smoke',
                f'--config.init_from={tiny_llama}', '--num_problems=8',
                f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '| base |' in result.stdout
  assert os.path.exists(tmp_path / 'eval_base.json')
  assert len(open(tmp_path / 'eval_base_samples.jsonl').readlines()) == 8


def test_evaluate_without_checkpoint_or_weights_is_one_clear_error(tmp_path):
  result = _run('score_jax.evaluate', '--config=configs/toy_arith.py:smoke',
                f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'Give --checkpoint' in result.stderr and 'Traceback' not in result.stderr


def test_missing_init_from_is_one_clear_error(tmp_path):
  result = run_train(str(tmp_path), f'--config.init_from={tmp_path}/nowhere')
  assert result.returncode != 0
  assert 'No checkpoint at' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_evaluate_a_checkpoint_prints_base_and_trained_rows(stage2_run, tmp_path):
  output = str(tmp_path / 'eval.json')
  result = _run('score_jax.evaluate', f'--checkpoint={stage2_run}', '--num_problems=8',
                f'--output={output}')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '| base |' in result.stdout and '| step 2 |' in result.stdout
  assert os.path.exists(tmp_path / 'eval_samples.jsonl')
  missing = _run('score_jax.evaluate', f'--checkpoint={stage2_run}', '--step=99')
  assert missing.returncode != 0 and 'Traceback' not in missing.stderr
  assert '99' in missing.stderr


@pytest.mark.slow
def test_evaluate_attempt2_on_another_models_attempt1(stage2_run, tmp_path):
  """--attempt1_from gives every row the named model's attempt 1s: each row's attempt 1 text
  is then that model's, and its attempt 2 its own; the toy task's table splits by kind."""
  plain, replayed = str(tmp_path / 'plain.json'), str(tmp_path / 'replayed.json')
  for output, extra in ((plain, ()), (replayed, ('--attempt1_from=base',))):
    result = _run('score_jax.evaluate', f'--checkpoint={stage2_run}', '--num_problems=8',
                  f'--output={output}', *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '| step 2, attempt 1 of base |' in result.stdout
  assert '| attempt 1 (problems / of them right at attempt 2) |' in result.stdout

  def samples(path):
    rows = {}
    for record in read_jsonl(path.replace('.json', '_samples.jsonl')):
      rows.setdefault(record['row'], []).append(record)
    return rows

  before, after = samples(plain), samples(replayed)
  base_first = [s['attempt1'] for s in before['base']]
  for row in ('base, attempt 1 of base', 'step 2, attempt 1 of base'):
    assert [s['attempt1'] for s in after[row]] == base_first
  # Replaying a model's own attempt 1 changes nothing.
  assert [s['attempt2'] for s in after['base, attempt 1 of base']] == [
      s['attempt2'] for s in before['base']]
  kinds = json.load(open(replayed))['attempt1_kinds']
  assert sum(k['problems'] for k in kinds['step 2, attempt 1 of base'].values()) == 8

  for value, message in (('last', 'must be "base" or a checkpoint step'), ('99', '99')):
    bad = _run('score_jax.evaluate', f'--checkpoint={stage2_run}', f'--attempt1_from={value}')
    assert bad.returncode != 0 and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
    assert message in bad.stderr
