"""Storage faults end in a clear state (docs/faults.md): each fault injected into a tiny run.

* a damaged latest checkpoint: one warning line, the run resumes from the older step and
  ends equal to an uninterrupted run; none readable: one line saying what to do;
* a full disk at the first save (a tiny tmpfs when the tests run as root, a writer that
  fails like one otherwise) and a read-only checkpoint directory: one line, exit code 4,
  the checkpoints saved before untouched;
* a metrics file and a STaR traces file cut short by a kill: the resumed run reads them.

The in-process runs skip the evaluations and the STaR sampling (they test nothing here and
would compile the sampler): ``_run`` replaces them with stand-ins.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config_lib
from score_jax.checkpoints import Checkpointer, UnreadableCheckpoint
from score_jax.tasks.base import Trace
from score_jax.training import self_sft
from score_jax.training import trainer as trainer_lib
from score_jax.training.errors import EXIT_STORAGE, StorageFault
from score_jax.training.experiment import Experiment
from score_jax.training.steps import abstract_params_of
from score_jax.writers import read_jsonl

from test_train import REPO, SMOKE, run_train, smoke_config

# A failed save drops orbax coroutines unawaited; the library silences their warnings, but
# pytest restores the warning filters after each test.
pytestmark = pytest.mark.filterwarnings('ignore:coroutine .* was never awaited:RuntimeWarning')

# Warm start, then STaR (it freezes a reference and writes a traces file): checkpoints at
# steps 2, 4 and 6, of which the last two are kept.
SCHEDULE = 'sft:2,star:4'
NUM_TRACES = 80  # Five batches of 16: the star phase takes all its 4 steps.
FAKE_EVAL = dict(acc_t1=0.0, acc_t2=0.0, delta=0.0, delta_i2c=0.0, delta_c2i=0.0,
                 num_problems=0, eval_s=0.0)


def _config():
  return smoke_config(schedule=SCHEDULE, **{'checkpoint.every_steps': 2,
                                            'self_sft.batch_size': 16})


def _run(workdir: str, initial_params=None):
  """Runs (or resumes) the test schedule in this process; returns the finished Trainer.

  A resumed run restores its parameters: ``initial_params`` (any of the right layout) spares
  it the initialisation.
  """
  config = _config()
  phases = config_lib.validate_train_config(config)
  experiment = Experiment.from_config(config, workdir)

  def fake_traces(phase, *args, **kwargs):
    texts = experiment.task.make_traces(NUM_TRACES, seed=7)
    return ([Trace(e, t.attempt1, t.attempt2)
             for e, t in zip(experiment.train_examples, texts)],
            {'sample/traces': float(NUM_TRACES)})

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer_lib.Trainer, '_evaluate', lambda *_: dict(FAKE_EVAL))
    patch.setattr(trainer_lib, 'collect_self_sft_traces', fake_traces)
    trainer = trainer_lib.Trainer(config, workdir, phases, experiment, initial_params=(
        None if initial_params is None else jax.tree.map(jnp.copy, initial_params)))
    trainer.run()
  return trainer


def _host(tree):
  return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]


class Uninterrupted(NamedTuple):
  workdir: str
  params: list  # The final ones, as float32 host arrays.
  reference: list
  device_params: Any  # The same on the devices: a resumed run's initial_params.


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> Uninterrupted:
  """The test schedule run without a fault."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  trainer = _run(workdir)
  assert _steps(workdir) == [4, 6]
  return Uninterrupted(workdir, _host(trainer.params), _host(trainer.reference), trainer.params)


def _ckpts(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def _steps(workdir: str) -> list[int]:
  checkpointer = Checkpointer(_ckpts(workdir), async_save=False)
  checkpointer.close()
  return sorted(checkpointer.all_steps())


def _copy(source: str, tmp_path, name: str = 'run') -> str:
  workdir = str(tmp_path / name)
  shutil.copytree(source, workdir)
  return workdir


def _delete_array_files(workdir: str, step: int) -> None:
  """What a lost or half-synced copy leaves: the step's array data files are gone."""
  data = os.path.join(_ckpts(workdir), str(step), 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(data):
    os.remove(os.path.join(data, name))


def _cut_last_line(path: str) -> None:
  """A kill in the middle of writing the last line."""
  with open(path, 'rb') as f:
    text = f.read()
  last = text.rstrip(b'\n').rfind(b'\n') + 1
  with open(path, 'wb') as f:
    f.write(text[:last + (len(text) - last) // 2])


def _max_abs_diff(a, b) -> float:
  return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _digest(directory: str) -> dict:
  """Every file under a directory and a hash of its bytes."""
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digest


# ---- a damaged latest checkpoint ---------------------------------------------------------------


def test_a_damaged_latest_checkpoint_is_passed_over_and_the_rerun_ends_equal(
    uninterrupted, tmp_path, capsys):
  source = uninterrupted.workdir
  workdir = _copy(source, tmp_path)
  _delete_array_files(workdir, 6)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  _cut_last_line(metrics)  # Killed while writing step 6's record, too.
  capsys.readouterr()

  trainer = _run(workdir, uninterrupted.device_params)
  out, err = capsys.readouterr()
  warnings = [line for line in out.splitlines() if line.startswith('warning: checkpoint')]
  assert len(warnings) == 1, out
  step6 = os.path.join(_ckpts(workdir), '6')
  assert warnings[0].startswith(f'warning: checkpoint step 6 at {step6} cannot be read (state: ')
  assert 'data files missing or cut short (ocdbt.process_0/d/' in warnings[0]
  assert '), holding ' in warnings[0] and ' more arrays); ' in warnings[0]
  assert warnings[0].endswith(f'using step 4 instead, and moved step 6 to {step6}.unreadable '
                              f'(not deleted).')
  assert 'Resumed from step 4 (phase star, 2/4 done).' in out
  assert 'Traceback' not in err and 'Error' not in err, err

  diff = _max_abs_diff(_host(trainer.params), uninterrupted.params)
  print(f'max abs diff of the final parameters: {diff:.3g}')
  assert diff <= 1e-6
  assert _max_abs_diff(_host(trainer.reference), uninterrupted.reference) == 0.0
  # Step 6 was saved again, readable; the damaged one is kept beside it.
  checkpointer = Checkpointer(_ckpts(workdir), async_save=False)
  assert sorted(checkpointer.all_steps()) == [4, 6] and checkpointer.check(6) is None
  checkpointer.close()
  assert os.listdir(os.path.join(f'{step6}.unreadable', 'state', 'ocdbt.process_0', 'd')) == []
  # The record cut short is gone, and every step is logged once, as in the uninterrupted run.
  steps = lambda path: [r['step'] for r in read_jsonl(path) if 'train/loss' in r]
  assert steps(metrics) == steps(os.path.join(source, 'metrics.jsonl')) == [1, 2, 3, 4, 5, 6]
  with open(metrics) as f:
    assert all(json.loads(line) for line in f)


def test_no_readable_checkpoint_is_one_line_saying_what_to_do(uninterrupted, tmp_path, capsys):
  workdir = _copy(uninterrupted.workdir, tmp_path)
  for step in (4, 6):
    _delete_array_files(workdir, step)
  before = _digest(_ckpts(workdir))
  with pytest.raises(StorageFault) as raised:
    _run(workdir, uninterrupted.device_params)
  message = str(raised.value)
  assert raised.value.exit_code == EXIT_STORAGE == 4
  assert '\n' not in message
  assert message.startswith(f'No checkpoint in {_ckpts(workdir)} can be read (step 6: state: ')
  assert '; step 4: state: ' in message
  assert message.endswith(
      f'Start over with a new --workdir, or delete the unreadable steps '
      f'({_ckpts(workdir)}/6, {_ckpts(workdir)}/4) to start over in this one.')
  assert _digest(_ckpts(workdir)) == before  # Nothing deleted, nothing moved.
  assert 'Traceback' not in capsys.readouterr().err

  # The evaluator says the same, through its command line.
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, '-m', 'score_jax.evaluate', f'--checkpoint={workdir}'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 4, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [f'score_jax.evaluate: {message}']


def test_the_evaluator_passes_over_a_damaged_latest_step_but_not_a_named_one(
    uninterrupted, tmp_path):
  workdir = _copy(uninterrupted.workdir, tmp_path)
  _delete_array_files(workdir, 6)
  checkpointer = Checkpointer(_ckpts(workdir), async_save=False)
  lines = []
  step, meta = checkpointer.verified_meta(log=lines.append)
  assert (step, meta['global_step']) == (4, 4)
  assert len(lines) == 1 and lines[0].startswith('warning: checkpoint step 6 at ')
  assert lines[0].endswith('; using step 4 instead.')
  assert os.path.isdir(os.path.join(_ckpts(workdir), '6'))  # A reader moves nothing.
  with pytest.raises(StorageFault, match=r'^The checkpoint step 6 at .* cannot be read '
                     r'\(state: .*\); pick another with --step \(saved steps: \[4\]\)\.$'):
    checkpointer.verified_meta(6)
  target = abstract_params_of(Experiment.from_config(_config(), workdir).model('train'))
  with pytest.raises(UnreadableCheckpoint, match=r'^checkpoint step 6 at .* cannot be read'):
    checkpointer.restore_params(target, 6)
  checkpointer.close()


# ---- saves that fail ---------------------------------------------------------------------------


@contextlib.contextmanager
def _mounted(commands, target: str):
  """Runs mount commands on ``target`` (as root) and unmounts it after; yields whether they
  all worked."""
  mounted = False
  try:
    for command in commands:
      if os.geteuid() != 0 or subprocess.run(command, capture_output=True).returncode != 0:
        break
      mounted = True
    else:
      yield True
      return
    yield False
  finally:
    if mounted:
      subprocess.run(['umount', target], check=True)


# A stand-in for a full disk where tmpfs cannot be mounted: every array write fails as
# TensorStore's does on a full disk, inside orbax's background save.
_NO_SPACE_RUNNER = '''
from orbax.checkpoint._src.serialization import serialization
async def no_space(*args, **kwargs):
  raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.embedding/0.0" in OCDBT '
                   'database at local file "...": Failed writing: "...": Failed to write '
                   "30399 bytes to file 20: No space left on device [os_error_code='28']")
serialization.async_serialize_from_host = no_space
from absl import app
from score_jax import train
app.run(train.main, flags_parser=train._parse_flags)
'''


def test_a_full_disk_at_the_first_save_is_one_line_and_exit_code_4(tmp_path):
  disk = str(tmp_path / 'disk')
  os.makedirs(disk)
  workdir = os.path.join(disk, 'run')
  overrides = ['--config.schedule=sft:4', '--config.checkpoint.every_steps=2']
  # 1.2 MB: the data (about 0.5 MB) fits, the first checkpoint (about 0.9 MB) does not.
  with _mounted([['mount', '-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', disk]], disk) as tmpfs:
    if tmpfs:
      result = run_train(workdir, *overrides, timeout=300)
    else:
      env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
      env.pop('XLA_FLAGS', None)
      result = subprocess.run(
          [sys.executable, '-c', _NO_SPACE_RUNNER, f'--config={SMOKE}', f'--workdir={workdir}',
           *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    saved = os.listdir(os.path.join(workdir, 'checkpoints'))
  print(f'{"tmpfs" if tmpfs else "failing writer"}: exit {result.returncode}, stderr '
        f'{result.stderr!r}')
  assert result.returncode == EXIT_STORAGE, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  # The stand-in writer's message names the array being written; TensorStore's own on a full
  # tmpfs (as root in CI) need not ("(RESOURCE_EXHAUSTED)"). The reason and status must be there.
  assert re.match(re.escape(f'Could not save the checkpoint of step 2 in {workdir}/checkpoints: '
                            'No space left on device (RESOURCE_EXHAUSTED') + r'( in [^)]+)?\)',
                  lines[0]), lines[0]
  assert lines[0].endswith('; no checkpoint was saved before it; free space or fix the '
                           'directory, then rerun the same command (it starts over).')
  assert not [name for name in saved if name.isdigit()]


def test_a_read_only_checkpoint_directory_stops_the_run_and_keeps_its_checkpoints(
    uninterrupted, tmp_path, capsys):
  workdir = _copy(uninterrupted.workdir, tmp_path)
  directory = _ckpts(workdir)
  shutil.rmtree(os.path.join(directory, '6'))  # Killed before saving step 6.
  before = _digest(directory)
  read_only = [['mount', '--bind', directory, directory],
               ['mount', '-o', 'remount,bind,ro', directory]]
  with _mounted(read_only, directory) as mounted:
    if not mounted:
      if os.geteuid() == 0:
        pytest.skip('root ignores file modes, and mount is not allowed here')
      os.chmod(directory, 0o555)
    try:
      with pytest.raises(StorageFault) as raised:
        _run(workdir, uninterrupted.device_params)
    finally:
      if not mounted:
        os.chmod(directory, 0o755)
  message = str(raised.value)
  print(message)
  assert raised.value.exit_code == 4 and '\n' not in message
  assert message.startswith(f'Could not save the checkpoint of step 6 in {directory}: ')
  assert ('Read-only file system' in message) or ('Permission denied' in message)
  assert message.endswith(f'the last good checkpoint is step 4 ({directory}/4); free space or '
                          f'fix the directory, then rerun the same command to resume from it.')
  assert _digest(directory) == before
  checkpointer = Checkpointer(directory, async_save=False)
  assert checkpointer.check(4) is None
  checkpointer.close()
  assert 'Traceback' not in capsys.readouterr().err


# ---- half-written side files -------------------------------------------------------------------


def test_a_traces_file_cut_short_is_read_as_far_as_it_goes(uninterrupted, tmp_path, capsys):
  workdir = _copy(uninterrupted.workdir, tmp_path)
  shutil.rmtree(os.path.join(_ckpts(workdir), '6'))  # Resume mid-phase, from step 4.
  traces = os.path.join(workdir, 'traces', 'phase2_star.jsonl')
  _cut_last_line(traces)
  capsys.readouterr()
  trainer = _run(workdir, uninterrupted.device_params)
  out = capsys.readouterr().out
  assert trainer.progress.global_step == 6
  assert (f'warning: {traces}: 1 damaged line(s) skipped (line {NUM_TRACES}); the phase goes '
          f'on with the {NUM_TRACES - 1} whole traces.') in out.splitlines()
  assert f'read {NUM_TRACES - 1} star traces from {traces}' in out


def test_reading_traces_skips_lines_that_are_not_whole_traces(tmp_path):
  examples = smoke_config  # Any object stands for an example.
  by_id = {'a': examples, 'b': examples}
  path = str(tmp_path / 'traces.jsonl')
  self_sft.write_traces(path, [Trace(type('E', (), {'id': i})(), 'x', 'y') for i in 'ab'])
  with open(path, 'a') as f:
    f.write('{"id": "z", "attempt1": "x", "attempt2": "y"}\n\x00\x00\n{"id": "a", "att')
  traces, damaged = self_sft.read_traces(path, by_id)
  assert [(t.example, t.attempt1, t.attempt2) for t in traces] == [(examples, 'x', 'y')] * 2
  assert damaged == [3, 4, 5]
