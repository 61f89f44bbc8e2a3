"""Multi-process runs on one machine (jax.distributed on CPU, gloo collectives).

Two processes with two CPU devices each must train exactly as one process with four devices
on the same mesh: the same global batch, the same samples from the same keys, the same
parameters. Each process handles only its own rows, only process 0 writes, and a SIGTERM on
one process stops both after the same step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from score_jax import distributed
from score_jax.checkpoints import Checkpointer
from score_jax.training.experiment import Experiment
from score_jax.writers import read_jsonl
from test_train import REPO, SMOKE, final_params, smoke_config

# Two SFT steps (the reference model), then two Stage II steps. The toy model gets no reward
# yet, so the k1 KL estimator gives the RL steps a gradient that depends on every sampled
# token; without warm-up Adam moves each parameter by about the learning rate per step, so
# different samples would show as differences of ~1e-3.
SCHEDULE = 'sft:2,stage2:2'
OVERRIDES = (f'--config.schedule={SCHEDULE}', '--config.rl.kl_estimator=k1',
             '--config.rl.optimizer.learning_rate=1e-3', '--config.rl.optimizer.warmup_steps=0',
             '--config.rl.stage_learning_rate.stage2=0',  # 0: rl.optimizer's rate, above.
             '--config.eval.num_problems=12', '--config.eval.batch_size=8',
             '--config.mesh.data=1', '--config.mesh.fsdp=-1', '--config.mesh.tensor=1')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(devices: int, process_id: int | None = None, num_processes: int = 1,
                port: int = 0) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  for name in (distributed.DISTRIBUTED_ENV, distributed.COORDINATOR_ENV,
               distributed.NUM_PROCESSES_ENV, distributed.PROCESS_ID_ENV):
    env.pop(name, None)
  if process_id is not None:
    env.update({distributed.DISTRIBUTED_ENV: '1',
                distributed.COORDINATOR_ENV: f'127.0.0.1:{port}',
                distributed.NUM_PROCESSES_ENV: str(num_processes),
                distributed.PROCESS_ID_ENV: str(process_id)})
  return env


class Job:
  """Processes of one run, each logging to its own file."""

  def __init__(self, command, logs_dir, num_processes: int, devices: int):
    port = free_port()
    self.logs = [os.path.join(logs_dir, f'process{i}.log') for i in range(num_processes)]
    self.processes = []
    for i, log in enumerate(self.logs):
      env = process_env(devices, i if num_processes > 1 else None, num_processes, port)
      with open(log, 'w') as f:
        self.processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=f,
                                               stderr=subprocess.STDOUT))

  def wait(self, timeout: float = 300) -> list[tuple[int, str]]:
    deadline = time.time() + timeout
    try:
      codes = [p.wait(timeout=max(deadline - time.time(), 1)) for p in self.processes]
    finally:
      for p in self.processes:
        if p.poll() is None:
          p.kill()
    return [(code, open(log).read()) for code, log in zip(codes, self.logs)]


def train_job(workdir, num_processes: int, devices: int, *overrides) -> Job:
  """``score_jax.train`` on the smoke config; logs beside the workdir, in ``WORKDIR-logs``."""
  logs = f'{workdir}-logs'
  os.makedirs(logs, exist_ok=True)
  command = [sys.executable, '-m', 'score_jax.train', f'--config={SMOKE}',
             f'--workdir={workdir}', *overrides]
  return Job(command, logs, num_processes, devices)


def script_job(tmp_path, source: str, num_processes: int = 2, devices: int = 2) -> Job:
  path = tmp_path / 'script.py'
  path.write_text(textwrap.dedent(source))
  return Job([sys.executable, str(path)], str(tmp_path), num_processes, devices)


def assert_all_succeeded(results):
  for i, (code, output) in enumerate(results):
    assert code == 0, f'process {i} exited with {code}:\n{output[-4000:]}'


def test_distributed_initialisation_only_when_asked():
  assert distributed.initialize_arguments({}) is None
  assert distributed.initialize_arguments({'SCORE_JAX_DISTRIBUTED': '0'}) is None
  # On a TPU VM JAX finds the coordinator, process count and id itself.
  assert distributed.initialize_arguments({'SCORE_JAX_DISTRIBUTED': '1'}) == {}
  assert distributed.initialize_arguments({
      'SCORE_JAX_DISTRIBUTED': '1', 'SCORE_JAX_COORDINATOR': '127.0.0.1:1234',
      'SCORE_JAX_NUM_PROCESSES': '2', 'SCORE_JAX_PROCESS_ID': '1'}) == dict(
          coordinator_address='127.0.0.1:1234', num_processes=2, process_id=1)
  with pytest.raises(ValueError, match=r"SCORE_JAX_PROCESS_ID must be a non-negative integer; "
                     r"got 'one'"):
    distributed.initialize_arguments({'SCORE_JAX_DISTRIBUTED': '1',
                                      'SCORE_JAX_PROCESS_ID': 'one'})


def test_nothing_touches_jax_before_the_trainer_initialises_it():
  """Importing the trainer and parsing its flags (which loads the config file) must not start
  a JAX backend: jax.distributed.initialize() would then fail."""
  code = textwrap.dedent(f'''
      from jax._src import xla_bridge
      from absl import flags
      import score_jax.train as train
      flags.FLAGS(['train', '--config={SMOKE}', '--workdir=/tmp/unused'])
      train._CONFIG.value.to_dict()
      import score_jax.tasks.toy_arith
      print('INITIALISED', xla_bridge.backends_are_initialized())
      ''')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=process_env(1),
                          capture_output=True, text=True, timeout=120)
  assert 'INITIALISED False' in result.stdout, result.stdout + result.stderr[-3000:]


@pytest.mark.slow
def test_row_helpers_split_a_batch_between_two_processes(tmp_path):
  results = script_job(tmp_path, '''
      import json, os
      import numpy as np
      from score_jax import distributed
      assert distributed.maybe_initialize()
      import jax
      from jax.sharding import NamedSharding, PartitionSpec as P
      from score_jax import sharding
      mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
      of = lambda shape: NamedSharding(mesh, P(('data', 'fsdp'), *[None] * (len(shape) - 1)))
      batch = np.arange(8 * 3).reshape(8, 3)
      rows = distributed.row_indices(of((8,)), (8,))
      x = distributed.put_rows(batch[rows], 8, of)
      assert not x.is_fully_addressable
      mine = distributed.local_rows(x)
      full = distributed.gather(x)
      kept = distributed.gather_rows({'v': batch[rows] * 10}, 8, of)['v']
      stop = distributed.any_process(jax.process_index() == 1)
      calm = distributed.any_process(False)
      print('RESULT', json.dumps(dict(
          process=jax.process_index(), devices=jax.local_device_count(),
          total=jax.device_count(), rows=rows.tolist(), mine=mine.tolist(),
          full_ok=bool((full == batch).all()), kept_ok=bool((kept == batch * 10).all()),
          stop=stop, calm=calm)))
      ''').wait(timeout=120)
  assert_all_succeeded(results)
  reports = [json.loads(out.split('RESULT ', 1)[1].splitlines()[0]) for _, out in results]
  assert [r['process'] for r in reports] == [0, 1]
  assert all(r['devices'] == 2 and r['total'] == 4 for r in reports)
  rows = [r['rows'] for r in reports]
  assert sorted(rows[0] + rows[1]) == list(range(8)) and len(rows[0]) == 4
  batch = np.arange(8 * 3).reshape(8, 3)
  for r in reports:
    assert r['mine'] == batch[r['rows']].tolist()  # Its own rows, read back from its shards.
    assert r['full_ok'] and r['kept_ok']
    assert r['stop'] is True and r['calm'] is False  # One process's flag reaches both.


def train_records(workdir):
  return [r for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if 'train/loss' in r]


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
  """The same run on 2 processes x 2 devices and on 1 process x 4 devices: the same (1, 4, 1)
  mesh. Returns both workdirs and the outputs of the two processes."""
  root = tmp_path_factory.mktemp('multihost')
  multi, single = str(root / 'two_processes'), str(root / 'one_process')
  multi_job = train_job(multi, 2, 2, *OVERRIDES)
  single_job = train_job(single, 1, 4, *OVERRIDES)
  multi_results, single_results = multi_job.wait(), single_job.wait()
  assert_all_succeeded(multi_results + single_results)
  return multi, single, multi_results


@pytest.mark.slow
def test_two_processes_train_exactly_as_one_process(two_runs):
  multi, single, multi_results = two_runs

  # Process 0 alone prints and writes; process 1 trains silently.
  (_, out0), (_, out1) = multi_results
  assert '| final (stage2) |' in out0 and '[stage2 2/2]' in out0
  assert '| final' not in out1 and '[stage2' not in out1 and 'evaluating' not in out1
  assert os.path.exists(os.path.join(multi, 'summary.json'))
  assert os.path.exists(os.path.join(multi, 'curves.png'))

  # The same data and the same samples at every step: the checksums of the sampled tokens
  # agree, as do the metrics of the sampled texts and the greedy evaluations of the base and
  # final models.
  got, expected = train_records(multi), train_records(single)
  assert [r['step'] for r in got] == [1, 2, 3, 4]
  assert [r['data'] for r in got] == [r['data'] for r in expected]
  samples = [r.get('samples') for r in got]
  assert samples == [r.get('samples') for r in expected]
  assert samples[:2] == [None, None] and None not in samples[2:] and samples[2] != samples[3]
  for a, b in zip(got, expected):
    for key in ('train/tokens_per_row', 'train/edit_ratio', 'train/reward_t1',
                'train/reward_t2', 'train/loss', 'train/grad_norm'):
      if key in b:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a['step'], key)
  summaries = [json.load(open(os.path.join(w, 'summary.json'))) for w in (multi, single)]
  for row in ('base', 'final'):
    for key in ('acc_t1', 'acc_t2', 'edit_ratio', 'different_answer_rate'):
      assert summaries[0][row][key] == pytest.approx(summaries[1][row][key], rel=1e-6), (row, key)

  # The parameters (and the reference frozen after SFT) agree; the RL steps did move them.
  config = smoke_config(schedule=SCHEDULE)
  params, reference, meta = final_params(multi, config)
  expected_params, expected_reference, _ = final_params(single, config)
  assert meta['global_step'] == 4
  for a, b in zip(jax.tree.leaves((params, reference)),
                  jax.tree.leaves((expected_params, expected_reference))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)))
  assert moved > 1e-3


@pytest.mark.slow
def test_evaluate_on_two_processes_matches_the_run_and_writes_once(two_runs, tmp_path):
  multi, single, _ = two_runs
  output = str(tmp_path / 'eval.json')
  command = [sys.executable, '-m', 'score_jax.evaluate', f'--checkpoint={multi}',
             '--num_problems=12', f'--output={output}']
  (_, out0), (_, out1) = results = Job(command, str(tmp_path), 2, 2).wait()
  assert_all_succeeded(results)
  assert '| step 4 |' in out0 and 'evaluated 12/12 problems' in out0
  assert '| step' not in out1 and 'evaluated' not in out1
  # The greedy table rows equal those of the one-process training run.
  rows = json.load(open(output))['rows']
  summary = json.load(open(os.path.join(single, 'summary.json')))
  for name, row in (('base', 'base'), ('step 4', 'final')):
    for key in ('acc_t1', 'acc_t2', 'edit_ratio', 'different_answer_rate'):
      assert rows[name][key] == pytest.approx(summary[row][key], rel=1e-6), (name, key)
  # Every problem's two attempts, in order, from both processes' rows.
  samples = read_jsonl(str(tmp_path / 'eval_samples.jsonl'))
  assert [s['row'] for s in samples] == ['base'] * 12 + ['step 4'] * 12
  examples = Experiment.from_config(smoke_config(schedule=SCHEDULE), single).test_examples
  assert [s['id'] for s in samples] == [str(e.id) for e in examples[:12]] * 2
  for name in ('base', 'step 4'):
    mine = [s for s in samples if s['row'] == name]
    # The barely trained smoke model may stop at once on a problem or two; the texts are there.
    assert sum(bool(s['attempt1'] or s['attempt2']) for s in mine) >= len(mine) - 2
    assert np.mean([s['reward2'] for s in mine]) == pytest.approx(rows[name]['acc_t2'])


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_after_the_same_step(tmp_path):
  workdir = str(tmp_path / 'run')
  overrides = ('--config.schedule=sft:12', '--config.checkpoint.every_steps=100',
               '--config.eval.num_problems=8', '--config.eval.batch_size=8')
  job = train_job(workdir, 2, 2, *overrides)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while not (os.path.exists(metrics) and len(read_jsonl(metrics)) >= 2):
    assert time.time() < deadline and all(p.poll() is None for p in job.processes), (
        open(job.logs[0]).read()[-3000:])
    time.sleep(0.2)
  job.processes[1].send_signal(signal.SIGTERM)  # Only process 1 is told.
  results = job.wait(timeout=240)
  assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results[0][1][-3000:]
  assert 'Preempted (SIGTERM): saved a checkpoint at step' in results[0][1]
  stopped_at = Checkpointer(os.path.join(workdir, 'checkpoints')).latest_step()
  assert 2 <= stopped_at < 12

  # Both processes restore the checkpoint and finish the run.
  results = train_job(workdir, 2, 2, *overrides).wait()
  assert_all_succeeded(results)
  assert f'Resumed from step {stopped_at}' in results[0][1]
  steps = [r['step'] for r in train_records(workdir)]
  assert steps == list(range(1, 13))
