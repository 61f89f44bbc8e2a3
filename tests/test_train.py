"""The trainer end to end: the smoke config through main, resume after SIGTERM, bad input."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config_lib
from score_jax.checkpoints import Checkpointer, restore_models
from score_jax.model import init_params
from score_jax.training import persistence
from score_jax.training.experiment import Experiment
from score_jax.training.steps import abstract_params_of, abstract_reference_of
from score_jax.writers import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = 'configs/toy_arith.py:smoke'
SUMMARY_FIELDS = ('acc_t1', 'acc_t2', 'delta', 'delta_i2c', 'delta_c2i')


def train_command(workdir, *overrides):
  return [sys.executable, '-m', 'score_jax.train', f'--config={SMOKE}', f'--workdir={workdir}',
          *overrides]


def run_train(workdir, *overrides, timeout=600):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One CPU device, as a user's laptop run would have.
  return subprocess.run(train_command(workdir, *overrides), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def smoke_config(**changes):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import toy_arith  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = toy_arith.get_config('smoke')
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def final_params(workdir, config):
  """The policy parameters of the latest checkpoint in a workdir."""
  experiment = Experiment.from_config(config, workdir)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  meta = checkpointer.read_meta()
  params, reference = restore_models(experiment, checkpointer, meta['global_step'])
  checkpointer.close()
  return params, reference, meta


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('smoke'))
  result = run_train(workdir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir, result


@pytest.mark.slow
def test_smoke_config_runs_end_to_end_through_main(smoke_run):
  workdir, result = smoke_run
  config = smoke_config()
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  for row in ('base', 'final'):
    for field in SUMMARY_FIELDS:
      assert math.isfinite(summary[row][field]), (row, field)
    assert summary[row]['delta'] == pytest.approx(
        summary[row]['delta_i2c'] - summary[row]['delta_c2i'])
  assert summary['wall_s'] > 0
  # Every held-out evaluation, with the phase it ended: here the base model and the final one.
  assert [(e['phase'], e['phase_step'], e['step']) for e in summary['evaluations']] == [
      ('base', 0, 20), ('stage2', 3, 26)]
  assert summary['evaluations'][-1]['delta'] == summary['final']['delta']
  assert '| base |' in result.stdout and '| final (SCoRe) |' in result.stdout
  # Each phase's header names the rate it trains at: Stage II its own (rl.stage_learning_rate),
  # Stage I rl.optimizer's.
  assert 'stage1 for 3 steps (from step 0), adam at peak learning rate 0.0001 ==' in result.stdout
  assert 'stage2 for 3 steps (from step 0), adam at peak learning rate 3e-05 ==' in result.stdout

  # Every logged metric is finite; every phase logged its steps.
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  phases = [r['phase'] for r in records if 'train/loss' in r]
  assert phases == ['sft'] * 20 + ['stage1'] * 3 + ['stage2'] * 3
  for record in records:
    for key, value in record.items():
      if key not in ('step', 'phase', 'data'):
        assert value is not None and math.isfinite(value), (record['step'], key)
  # The Stage II diagnostics (docs/stage2.md) on every two-turn RL step: the four outcome
  # pairs partition the rollouts, and each attempt's term has its own gradient norm (all zero
  # here: the smoke model's rewards are; tests/test_steps.py checks their values).
  two_turn = [r for r in records if r.get('phase') in ('stage1', 'stage2')]
  for record in two_turn:
    pairs = (record['train/delta_i2c'] + record['train/delta_c2i'] + record['train/pairs_c2c']
             + record['train/pairs_i2i'])
    assert pairs == pytest.approx(1.0), record['step']
    assert 0 <= record['train/identical_rate'] <= 1
    assert record['train/grad_norm_attempt1'] >= 0 and record['train/grad_norm_attempt2'] >= 0
    assert record['train/advantage_abs_attempt2'] >= 0
    if record['phase'] == 'stage1':  # Stage I's attempt 1 has only its KL term.
      assert record['train/advantage_abs_attempt1'] == 0
  # No step after the first of its phase compiled anything.
  for phase in ('sft', 'stage1', 'stage2'):
    counts = [r['train/compilations'] for r in records if r.get('phase') == phase and
              'train/compilations' in r]
    assert counts[0] >= 1 and all(c == 0 for c in counts[1:]), (phase, counts)

  # Training changed the parameters: the policy differs from a fresh initialisation and
  # from the reference frozen at the start of RL.
  params, reference, meta = final_params(workdir, config)
  assert meta['global_step'] == 26 and meta['has_reference']
  experiment = Experiment.from_config(config, workdir)
  initial, _ = init_params(experiment.model('train'), jax.random.key(config.seed))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       params, initial)
  assert min(jax.tree.leaves(moved)) > 0
  assert os.path.exists(os.path.join(workdir, 'curves.png'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def _interrupt_and_resume(workdir, *overrides, stop_after=13):
  """Runs the smoke config (26 steps), stops it with SIGTERM once ``stop_after`` steps are
  logged, resumes it; returns the step it stopped at."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  process = subprocess.Popen(train_command(workdir, *overrides), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics_path) and len(read_jsonl(metrics_path)) >= stop_after:
      break
    assert process.poll() is None, process.stdout.read()
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=300)[0]
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert 'Preempted (SIGTERM): saved a checkpoint at step' in output
  stopped_at = Checkpointer(os.path.join(workdir, 'checkpoints')).latest_step()
  assert 0 < stopped_at < 26

  resumed = run_train(workdir, *overrides)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f'Resumed from step {stopped_at}' in resumed.stdout
  assert 'The config differs' not in resumed.stdout  # the same command, the same config
  return stopped_at


def _assert_same_run(expected_dir, got_dir, config):
  expected, expected_ref, _ = final_params(expected_dir, config)
  got, got_ref, meta = final_params(got_dir, config)
  assert meta['global_step'] == 26
  for a, b in zip(jax.tree.leaves((expected, expected_ref)), jax.tree.leaves((got, got_ref))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  # The same data was seen at every step, and every step was logged exactly once.
  data = lambda path: [(r['step'], r['data']) for r in read_jsonl(path) if 'data' in r]
  assert (data(os.path.join(got_dir, 'metrics.jsonl')) ==
          data(os.path.join(expected_dir, 'metrics.jsonl')))


@pytest.mark.slow
def test_resuming_with_another_config_names_every_changed_field(smoke_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(smoke_run[0], workdir)
  result = run_train(workdir, '--config.rl.alpha=5.0', '--config.eval.num_problems=16')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert ("The config differs from the one step 26 was saved with: eval.num_problems: 32 -> 16; "
          "rl.alpha: 10.0 -> 5.0.") in result.stdout


def test_config_changes_walks_nested_fields():
  saved = dict(seed=0, rl=dict(alpha=10.0, lora=dict(rank=0)), task=dict(name='toy'))
  current = dict(seed=0, rl=dict(alpha=10.0, lora=dict(rank=8)), task=dict(name='toy', n=3))
  assert persistence.config_changes(saved, current) == [
      'rl.lora.rank: 0 -> 8', 'task.n: (absent) -> 3']
  assert persistence.config_changes(saved, saved) == []


@pytest.mark.slow
def test_resume_after_sigterm_equals_an_uninterrupted_run(smoke_run, tmp_path):
  uninterrupted, _ = smoke_run
  workdir = str(tmp_path / 'interrupted')
  _interrupt_and_resume(workdir)
  _assert_same_run(uninterrupted, workdir, smoke_config())


@pytest.mark.slow
def test_lora_trains_adapters_on_the_warm_start_and_resumes_exactly(tmp_path):
  """With LoRA the phases after the warm start train adapters only: the reference is the warm
  start itself (here in bf16), the checkpoints hold the adapters, and a preempted run resumes
  to the same merged weights as an uninterrupted one."""
  # An easier task and a faster warm start than the smoke config's, and Stage II only (it
  # rewards both attempts): the smoke base model is never right, so its RL gradients are zero
  # and the adapters would not move.
  # The frozen base kept in bf16 beside the fp32 adapters, the smallest-memory set-up.
  settings = {'lora.rank': 4, 'rl.reference_dtype': 'bfloat16', 'task.num_operands': 2,
              'task.train_size': 90,
              'task.test_size': 32, 'sft.optimizer.warmup_steps': 0,
              'sft.optimizer.learning_rate': 1e-2, 'schedule': 'sft:16,stage2:10'}
  overrides = [f'--config.{key}={value}' for key, value in settings.items()]
  uninterrupted = str(tmp_path / 'uninterrupted')
  result = run_train(uninterrupted, *overrides)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  config = smoke_config(**settings)
  checkpointer = Checkpointer(os.path.join(uninterrupted, 'checkpoints'), async_save=False)
  meta = checkpointer.read_meta()
  assert meta['lora_adapters'] and meta['has_reference']
  assert {x.dtype for x in jax.tree.leaves(checkpointer.restore_params(
      abstract_reference_of(Experiment.from_config(config, uninterrupted).model('train'),
                            config), reference=True))} == {jnp.dtype('bfloat16')}
  adapted = Experiment.from_config(config, uninterrupted).model('train', adapted=True)
  adapters = checkpointer.restore_params(abstract_params_of(adapted, trainable=True))
  checkpointer.close()
  assert jax.tree.leaves(adapters) and all('lora' in jax.tree_util.keystr(path) for path, _ in
                                           jax.tree_util.tree_flatten_with_path(adapters)[0])
  merged, reference, _ = final_params(uninterrupted, config)
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(reference))]
  assert max(moved) > 0  # The adapters moved the policy off its base.
  # Only the adapted kernels differ from the base: norms and embeddings are frozen.
  for path, a in jax.tree_util.tree_flatten_with_path(merged)[0]:
    if not jax.tree_util.keystr(path).endswith("_kernel']"):
      b = reference
      for key in path:
        b = b[key.key]
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The merge for the sampler, the rollout and the update compile once, in the first step.
  counts = [r['train/compilations'] for r in read_jsonl(os.path.join(uninterrupted,
                                                                     'metrics.jsonl'))
            if r.get('phase') == 'stage2' and 'train/compilations' in r]
  assert counts[0] >= 1 and all(c == 0 for c in counts[1:]), counts
  # score_jax.evaluate merges the adapters the same way: its row is the run's final one.
  output = str(tmp_path / 'eval.json')
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  evaluated = subprocess.run([sys.executable, '-m', 'score_jax.evaluate',
                              f'--checkpoint={uninterrupted}', f'--output={output}'],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  final = json.load(open(os.path.join(uninterrupted, 'summary.json')))['final']
  row = json.load(open(output))['rows']['step 26']
  for field in ('acc_t1', 'acc_t2', 'edit_ratio', 'different_answer_rate'):
    assert row[field] == pytest.approx(final[field]), field

  workdir = str(tmp_path / 'interrupted')
  stopped_at = _interrupt_and_resume(workdir, *overrides, stop_after=18)
  assert stopped_at > 16  # It stopped in Stage II: the resumed run restored adapters.
  _assert_same_run(uninterrupted, workdir, config)


@pytest.mark.slow
def test_nan_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
  workdir = str(tmp_path)
  result = run_train(workdir, '--config.sft.optimizer.learning_rate=1e30',
                     '--config.sft.optimizer.grad_clip=0', '--config.checkpoint.every_steps=1')
  assert result.returncode != 0
  assert 'stopping. The last good checkpoint is step' in result.stderr
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False)
  meta = checkpointer.read_meta()
  assert meta['global_step'] >= 1
  config = smoke_config()
  params, _, _ = final_params(workdir, config)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('changes, message', [
    ({'schedule': 'sft:10,stage3:5'}, r"schedule: unknown phase 'stage3'"),
    ({'schedule': 'sft:ten'}, r"phase 'sft' needs a positive step count"),
    ({'rl.num_samples': 5}, r'rl.num_samples \(5\) must divide rl.batch_size \(16\)'),
    ({'rl.algorithm': 'ppo2'}, r"rl.algorithm must be one of \('reinforce', 'ppo'\)"),
    ({'rl.ppo_epochs': 2}, r'rl.algorithm=reinforce is on-policy'),
    ({'model.num_kv_heads': 3}, r'model.num_heads \(4\) must be divisible'),
    ({'rollout.row_chunks': 0}, r'rollout.row_chunks must be positive; got 0'),
    ({'rollout.row_chunks': 3}, r'rollout.row_chunks \(3\) must divide rl.batch_size \(16\)'),
    ({'rollout.decode_block_len': -1}, r'rollout.decode_block_len must be >= 0'),
    ({'rl.alpha': -1.0}, r'rl.alpha must be >= 0; got -1.0'),
    ({'rl.beta2': -0.1}, r'rl.beta2 must be >= 0; got -0.1'),
    ({'rl.stage2_base_first_attempts': 1.0}, r"rl.stage2_base_first_attempts is the share .* "
                                             r"must be in \[0, 1\); got 1.0"),
    ({'rl.optimizer.learning_rate': -1e-4}, r'rl.optimizer.learning_rate must be positive'),
    ({'sft.optimizer.learning_rate': 0.0}, r'sft.optimizer.learning_rate must be positive'),
    ({'rollout.temperature': 0.0}, r'rollout.temperature is 0 \(greedy\), but phases '
                                   r'stage1:3, stage2:3 learn from sampled rollouts'),
    ({'rl.clip_epsilon': 0.0}, r'rl.clip_epsilon must be positive; got 0.0'),
    ({'eval.temperature': -1.0}, r'eval.temperature must be >= 0 \(0 is greedy\)'),
    ({'checkpoint.every_steps': 0}, r'checkpoint.every_steps must be positive; got 0'),
])
def test_bad_settings_stop_at_start_up(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate_train_config(smoke_config(**changes))


def test_bad_task_settings_stop_at_start_up(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown task 'toy_algebra'"):
    Experiment.from_config(smoke_config(**{'task.name': 'toy_algebra'}), str(tmp_path))
  with pytest.raises(ValueError, match=r'has \d+ tokens but rollout.prompt_len is 4; raise '
                     r'--config.rollout.prompt_len'):
    Experiment.from_config(smoke_config(**{'rollout.prompt_len': 4}), str(tmp_path))
  with pytest.raises(ValueError, match=r'model.vocab_size \(64\) is smaller than the '
                     r"tokenizer's vocabulary"):
    Experiment.from_config(smoke_config(**{'model.vocab_size': 64}), str(tmp_path))


@pytest.mark.slow
def test_sft_traces_too_long_for_their_slot_stop_before_training(tmp_path):
  result = run_train(str(tmp_path), '--config.rollout.attempt1_len=8')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('Invalid config: SFT trace ') and 'attempt1_len' in last, last
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints'))


@pytest.mark.slow
def test_command_line_errors_are_one_clear_line(tmp_path):
  result = run_train(str(tmp_path), '--config.rl.num_samples=3')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'Invalid config: rl.num_samples (3) must divide rl.batch_size (16): each prompt is '
      'sampled num_samples times.']


@pytest.mark.parametrize('override, message', [
    ('--config.rl.alpah=5', '--config.rl.alpah: configs/toy_arith.py:smoke declares no field '
                            'rl.alpah; did you mean rl.alpha?'),
    ('--config.evall.num_problems=5', '--config.evall.num_problems: configs/toy_arith.py:smoke '
                                      'declares no field evall; did you mean eval?'),
    ('--config.rl.alpha.x=5', '--config.rl.alpha.x: configs/toy_arith.py:smoke declares no '
                              'field rl.alpha.x; rl.alpha is a value, not a section.'),
])
def test_an_override_of_an_undeclared_field_is_one_line_naming_it(tmp_path, override, message):
  result = run_train(str(tmp_path), override, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [f'Invalid config: {message}']
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_sigterm_during_the_base_evaluation_saves_and_resumes(tmp_path):
  """A SIGTERM that arrives while the base model is evaluated stops the run after that
  evaluation batch (not after the next training step); the checkpoint holds no reference, so
  the rerun freezes and evaluates the base model again, and finishes."""
  from score_jax.training.errors import Preempted  # pylint: disable=g-import-not-at-top
  from score_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top
  config = smoke_config(schedule='sft:4,stage1:2', **{'eval.num_problems': 32,
                                                       'eval.batch_size': 8})
  phases = config_lib.validate_train_config(config)
  workdir = str(tmp_path)
  experiment = Experiment.from_config(config, workdir)
  trainer = Trainer(config, workdir, phases, experiment)
  sample = trainer.evaluator.scorer.sample
  batches = []

  def sample_then_sigterm(*args, **kwargs):
    batches.append(trainer.progress.global_step)
    os.kill(os.getpid(), signal.SIGTERM)  # Caught by the trainer's handler.
    return sample(*args, **kwargs)

  trainer.evaluator.scorer.sample = sample_then_sigterm
  with pytest.raises(Preempted, match='saved a checkpoint at step 4; rerun'):
    trainer.run()
  assert batches == [4]  # One of the four evaluation batches, then it stopped.
  meta = Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False).read_meta()
  assert meta['global_step'] == 4 and not meta['has_reference'] and meta['base_eval'] is None

  summary = Trainer(config, workdir, phases, experiment).run()
  assert summary['steps'] == 6 and summary['base'] is not None
  assert summary['base']['num_problems'] == 32


@pytest.mark.slow
def test_stage2_with_base_model_first_attempts(tmp_path):
  """State coverage: half of each Stage II batch's prompts replay a first attempt sampled by
  the reference (base) model; the rollouts hold exactly those tokens, the replayed rows get
  metrics of their own, and no step after the first compiles anything."""
  from score_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top
  config = smoke_config(schedule='sft:4,stage2:3', **{
      'eval.num_problems': 16, 'eval.batch_size': 8, 'rl.stage2_base_first_attempts': 0.5})
  phases = config_lib.validate_train_config(config)
  workdir = str(tmp_path)
  trainer = Trainer(config, workdir, phases, Experiment.from_config(config, workdir))
  scorer = trainer.scorers[True]
  sample, seen = scorer.sample, []

  def sample_and_keep(*args, **kwargs):
    batch = sample(*args, **kwargs)
    if kwargs.get('first_attempts') is not None:
      seen.append((kwargs['first_attempts'], batch))
    return batch

  scorer.sample = sample_and_keep
  trainer.run()
  assert len(seen) == 3
  spec = scorer.spec
  slot = slice(spec.attempt1_start, spec.attempt1_start + spec.attempt1_len)
  for first, batch in seen:
    rows = np.asarray(first.rows)
    assert rows.tolist() == [True] * 8 + [False] * 8  # the first 2 of 4 prompts, 4 samples each
    np.testing.assert_array_equal(np.asarray(batch.rollout.tokens)[rows, slot],
                                  np.asarray(first.tokens)[rows])
  records = [r for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
             if r.get('phase') == 'stage2' and 'train/loss' in r]
  assert len(records) == 3
  for record in records:
    assert 0 <= record['train_replayed/reward_t1'] <= 1 and 0 <= record['train/reward_t1'] <= 1
  counts = [r['train/compilations'] for r in records]
  assert counts[0] >= 1 and counts[1:] == [0, 0], counts


def test_the_eta_sums_each_remaining_phase_at_its_own_rate(monkeypatch):
  from score_jax.training import progress as progress_lib  # pylint: disable=g-import-not-at-top
  from score_jax.training.phases import parse_schedule  # pylint: disable=g-import-not-at-top
  clock = [0.0]
  monkeypatch.setattr(progress_lib.time, 'perf_counter', lambda: clock[0])
  lines = []
  log = progress_lib.ProgressLog(parse_schedule('sft:10,stage1:5,stage2:5,stage1:5'),
                                 lines.append)
  progress = progress_lib.RunProgress(schedule='')
  log.start_run()
  log.start_phase(progress)
  progress.phase_step = progress.global_step = 10
  clock[0] = 1.0  # 10 warm-start steps per second
  assert log.eta(progress) == '0m00s + stage1:5,stage2:5,stage1:5 untimed'
  log.line(progress)
  progress.phase_index, progress.phase_step = 1, 0
  log.start_phase(progress)
  progress.phase_step, progress.global_step = 2, 12
  clock[0] = 5.0  # 2 RL steps in 4 s: 0.5 steps per second
  log.line(progress)
  # Stage I: 3 steps left here and 5 in the last phase at 0.5/s; Stage II not timed yet.
  assert log.eta(progress) == '0m16s + stage2:5 untimed'
  assert 'ETA 0m16s + stage2:5 untimed' in lines[-1] and '0.50 steps/s' in lines[-1]


def test_the_collapse_watch_warns_once_when_attempt_2_turns_into_a_copy():
  from score_jax.training.phases import Phase  # pylint: disable=g-import-not-at-top
  from score_jax.training.progress import CollapseWatch  # pylint: disable=g-import-not-at-top
  watch = CollapseWatch(Phase('stage2', 100), first_step=0, window=5, rise=0.1, fall=0.05)
  step = lambda delta, identical: watch.check({'train/delta': delta,
                                               'train/identical_rate': identical})
  # Healthy for 10 steps: Δ 0.2 with 40% copies; then copies climb while Δ falls.
  assert all(step(0.2, 0.4) is None for _ in range(10))
  warnings = [step(0.2 - 0.02 * i, 0.4 + 0.05 * i) for i in range(1, 11)]
  fired = [w for w in warnings if w]
  assert len(fired) == 1 and fired[0].startswith('warning: attempt 2 is turning into a copy')
  assert 'stage2 steps' in fired[0] and '40% ->' in fired[0]
  # Copies rising while Δ rises too (attempt 1 improving) is not a collapse.
  healthy = CollapseWatch(Phase('stage2', 100), first_step=0, window=5)
  assert not any(healthy.check({'train/delta': 0.1 + 0.01 * i,
                                'train/identical_rate': 0.3 + 0.03 * i}) for i in range(30))
  # A model that rewrites its line but keeps the answer: the identical rate stays, the rate
  # of the same final answer (the paper's measure) climbs.
  rewrites = CollapseWatch(Phase('stage2', 100), first_step=0, window=5)
  same = lambda delta, repeated: rewrites.check({'train/delta': delta,
                                                 'train/identical_rate': 0.4,
                                                 'train/different_answer_rate': 1 - repeated})
  assert all(same(0.2, 0.5) is None for _ in range(10))
  fired = [w for w in (same(0.2 - 0.02 * i, 0.5 + 0.05 * i) for i in range(1, 11)) if w]
  assert len(fired) == 1 and 'identical second attempts 40% -> 40%' in fired[0], fired
  assert 'same final answer 50% ->' in fired[0]
  # Phases without two attempts report no identical rate: nothing to watch.
  assert CollapseWatch(Phase('single_turn', 10), 0).check({'train/reward_t1': 0.5}) is None
