r"""Trains a model to self-correct with SCoRe (Kumar et al., 2024).

  python -m score_jax.train --config=configs/toy_arith.py --workdir=/tmp/score-toy
  python -m score_jax.train --config=configs/toy_arith.py:smoke --workdir=/tmp/smoke \
      --config.schedule=sft:20,stage2:5

The config's ``schedule`` lists phases in order: ``sft`` (teacher-forced warm start on the
task's two-attempt traces), ``stage1`` and ``stage2`` (SCoRe's stages), ``single_turn`` (the
single-turn RL baseline). The reference model for the KL penalty is frozen at the start of
the first RL phase; the model at that point is the "base" row of the final table.

Each RL step: sample two attempts per prompt (k samples per prompt) with the jitted
rollout → score both attempts on the host → one jitted, donated update (reference
log-probs, stage rule, REINFORCE or PPO). Metrics go to ``WORKDIR/metrics.jsonl`` and
TensorBoard; checkpoints to ``WORKDIR/checkpoints`` (rerunning the command resumes from the
latest one, and SIGTERM saves one before exiting); at the end the base and final models are
evaluated on the held-out problems and ``WORKDIR/summary.json`` and ``WORKDIR/curves.png``
are written. ``WORKDIR`` may be a local path or a URL such as ``gs://bucket/run``.

Multi-host runs (a TPU slice: every host runs this same command): with
``SCORE_JAX_DISTRIBUTED=1`` in the environment, ``main`` first calls
``jax.distributed.initialize()``, which finds the other hosts itself on a TPU VM (and under
Slurm or Open MPI). To name the job explicitly, e.g. several CPU processes on one machine,
set ``SCORE_JAX_COORDINATOR=host:port``, ``SCORE_JAX_NUM_PROCESSES`` and
``SCORE_JAX_PROCESS_ID`` as well (``score_jax/distributed.py``). Every process then packs,
decodes and scores only its own rows of each batch (the batch axis is split over the mesh
axes ``data`` and ``fsdp``); metrics are gathered so that all processes agree; only
process 0 prints and writes metrics, the summary and the plot; every process takes part in
each checkpoint save and restore, and a SIGTERM on any process stops all of them after the
same step.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
import zlib
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import config_lib, distributed, paths, reporting
from score_jax import metrics as sc_metrics
from score_jax.checkpoints import Checkpointer, abstract_like, abstract_train_state
from score_jax.compilation import count_compilations
from score_jax.evaluation import Evaluator
from score_jax.experiment import Experiment
from score_jax.sampling import SamplingParams, make_rollout_fn, pack_trajectories
from score_jax.sampling.templates import attempt_texts
from score_jax.train_steps import (RLStepConfig, TrainState, make_optimizer, make_rl_step,
                                   make_sft_step)
from score_jax.writers import MetricWriter

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, summary.')
flags.mark_flags_as_required(['config', 'workdir'])

# Set by the launcher on multi-host TPU slices: the trainer then calls
# jax.distributed.initialize() before anything else touches JAX.
DISTRIBUTED_ENV = distributed.DISTRIBUTED_ENV


class _Preempted(Exception):
  pass


class Trainer:
  """One training run: set-up, the phase loop, evaluation and the final summary."""

  def __init__(self, config, workdir: str, phases: list[tuple[str, int]],
               experiment: Experiment):
    self.config = config
    self.workdir = workdir
    self.phases = phases
    self.total_steps = sum(steps for _, steps in phases)
    self.exp = experiment
    self.is_main_process = distributed.is_main_process()
    self._row_cache: dict[int, np.ndarray] = {}
    # Every SFT phase's traces, tokenised and checked against the slots before any training.
    self.sft_traces = {
        index: self._encode_traces(experiment.task.make_traces(
            steps * config.sft.batch_size, seed=config.seed + 1000 * index,
            **config.sft.trace_options.to_dict()))
        for index, (kind, steps) in enumerate(phases) if kind == 'sft'}
    self.train_model = experiment.model('train')
    self.sample_model = experiment.model('sample')
    c = config

    # ---- parameters, born sharded ------------------------------------------------------------
    params, axes = experiment.initial_params(c.seed)
    self.params = params
    sample_shardings = self.sample_model.mesh_rules.shardings(axes, params)
    # Sampling reads weights at every token: gather them once per rollout instead.
    self.to_sampling_layout = jax.jit(lambda p: p, out_shardings=sample_shardings)

    self.rollout_fns = {
        True: make_rollout_fn(self.sample_model, experiment.rollout_spec(two_turns=True)),
        False: make_rollout_fn(self.sample_model, experiment.rollout_spec(two_turns=False)),
    }
    self.sampling = SamplingParams.create(c.rollout.temperature, c.rollout.top_p)
    self.evaluator = Evaluator(experiment, c.eval.batch_size)
    self.eval_sampling = SamplingParams.create(c.eval.temperature)
    self.checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     max_to_keep=c.checkpoint.max_to_keep,
                                     async_save=c.checkpoint.async_save)
    self.preempted = False

  # ---- bookkeeping ---------------------------------------------------------------------------

  def _fresh_progress(self) -> dict:
    return dict(phase_index=0, phase_step=0, global_step=0, base_eval=None, best=None,
                wall_s=0.0, schedule=self.config.schedule)

  def _meta(self, progress: dict) -> dict:
    return dict(progress, has_reference=self.reference is not None,
                config=json.loads(self.config.to_json_best_effort()))

  def _log(self, message: str) -> None:
    if self.is_main_process:
      print(message, flush=True)

  def _steps_before(self, phase_index: int, kinds: tuple[str, ...]) -> int:
    """Steps of earlier phases of the given kinds (to derive data positions)."""
    return sum(steps for kind, steps in self.phases[:phase_index] if kind in kinds)

  # ---- data ----------------------------------------------------------------------------------

  def _rl_examples(self, rl_step_index: int) -> list[Any]:
    """The prompts of the n-th RL step of the run, each repeated k times in a row.

    The order is a fresh seeded permutation of the training set every epoch, and a step's
    prompts depend only on its index, so a resumed run sees exactly the same data.
    """
    k = self.config.rl.num_samples
    per_step = self.config.rl.batch_size // k
    examples = self.exp.train_examples
    rows = []
    for position in range(rl_step_index * per_step, (rl_step_index + 1) * per_step):
      epoch, index = divmod(position, len(examples))
      order = _epoch_order(self.config.seed, epoch, len(examples))
      rows.extend([examples[int(order[index])]] * k)
    return rows

  def _sft_traces(self, traces: list, step: int) -> list:
    b = self.config.sft.batch_size
    return [traces[i % len(traces)] for i in range(step * b, (step + 1) * b)]

  def _encode_traces(self, traces: list) -> list[tuple[str, list[int], list[int], list[int]]]:
    """(example id, prompt ids, attempt 1 + stop, attempt 2 + stop) per trace, checked once
    against the rollout slots so that a trace too long stops the run now, not mid-phase."""
    exp, stop = self.exp, self.exp.spec.stop_tokens[0]
    encoded = [(t.example.id, exp.prompt_ids(t.example),
                exp.tokenizer.encode(t.attempt1) + [stop],
                exp.tokenizer.encode(t.attempt2) + [stop]) for t in traces]
    for index, (name, width) in enumerate((('prompt_len', exp.spec.prompt_len),
                                           ('attempt1_len', exp.spec.attempt1_len),
                                           ('attempt2_len', exp.spec.attempt2_len)), start=1):
      longest = max(range(len(encoded)), key=lambda i: len(encoded[i][index]))
      if len(encoded[longest][index]) > width:
        raise ValueError(
            f'SFT trace {traces[longest].example.id!r} needs {len(encoded[longest][index])} '
            f'tokens in the {name.removesuffix("_len")} slot but rollout.{name} is {width}; '
            f'raise --config.rollout.{name} to at least {len(encoded[longest][index])}.')
    return encoded

  def _pack_traces(self, chunk: list):
    _, prompts, attempts1, attempts2 = map(list, zip(*chunk))
    return pack_trajectories(self.exp.spec, prompts, attempts1, attempts2)

  def _batch_sharding(self, shape: tuple[int, ...]):
    """The sharding of a batch-major array: rows split over the mesh axes of 'batch'."""
    return self.train_model.mesh_rules.sharding(('batch',) + (None,) * (len(shape) - 1), shape)

  def _rows(self, batch_size: int) -> np.ndarray:
    """The rows of a batch that this process packs, decodes and scores (all of them in a
    single-process run)."""
    if batch_size not in self._row_cache:
      self._row_cache[batch_size] = distributed.row_indices(
          self._batch_sharding((batch_size,)), (batch_size,))
    return self._row_cache[batch_size]

  def _to_devices(self, tree, batch_size: int):
    """Global arrays of ``batch_size`` rows from host arrays of this process's rows."""
    return distributed.put_rows(tree, batch_size, self._batch_sharding)

  def _gather_rows(self, tree, batch_size: int):
    """Every process's rows of host arrays, on every process, in batch order."""
    return distributed.gather_rows(tree, batch_size, self._batch_sharding)

  # ---- the run -------------------------------------------------------------------------------

  def run(self) -> dict:
    start_wall = time.perf_counter()
    progress = self._fresh_progress()
    self.reference = None
    state = None
    latest = self.checkpointer.latest_step()
    if latest is not None:
      state, progress = self._restore(latest)
    self.writer = MetricWriter(self.workdir, enabled=self.is_main_process,
                               resume_step=progress['global_step'] if latest is not None
                               else None)
    previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    try:
      while progress['phase_index'] < len(self.phases):
        state = self._run_phase(state, progress, start_wall)
        progress['phase_index'] += 1
        progress['phase_step'] = 0
        state = None  # The next phase starts a fresh optimizer on the same parameters.
    except _Preempted:
      progress['wall_s'] += time.perf_counter() - start_wall
      self._save(self._last_state, progress)
      self.checkpointer.close()
      self.writer.close()
      self._log(f'Preempted (SIGTERM): saved a checkpoint at step {progress["global_step"]}; '
                f'rerun the same command to resume.')
      raise SystemExit(128 + signal.SIGTERM)
    finally:
      signal.signal(signal.SIGTERM, previous_handler)

    progress['wall_s'] += time.perf_counter() - start_wall
    summary = self._finish(progress)
    self.checkpointer.close()
    self.writer.close()
    return summary

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    self.preempted = True  # Acted on at the end of the current step.

  def _restore(self, step: int):
    meta = self.checkpointer.read_meta(step)
    if meta['schedule'] != self.config.schedule:
      raise SystemExit(
          f'The checkpoint in {self.checkpointer.directory} was written with schedule '
          f'{meta["schedule"]!r} but the config says {self.config.schedule!r}; use a new '
          f'--workdir or the same schedule.')
    progress = {k: meta[k] for k in self._fresh_progress()}
    kind, steps = self.phases[progress['phase_index']]
    tx = self._optimizer(kind, steps)
    target = abstract_train_state(self.params, tx)
    reference_target = abstract_like(self.params) if meta['has_reference'] else None
    state, self.reference, _ = self.checkpointer.restore(target, reference_target, step)
    self.params = state.params
    self._log(f'Resumed from step {step} (phase {kind}, {progress["phase_step"]}/{steps} done).')
    return state, progress

  def _optimizer(self, kind: str, num_steps: int):
    section = self.config.sft if kind == 'sft' else self.config.rl
    return make_optimizer(section.optimizer, num_steps)

  def _save(self, state: TrainState, progress: dict) -> None:
    if self.checkpointer.latest_step() == progress['global_step']:
      return  # Already saved at this step (e.g. a SIGTERM right after a scheduled save).
    if not _all_finite(state.params):
      self._stop_on_divergence(f'non-finite parameters at step {progress["global_step"]}')
    self.checkpointer.save(progress['global_step'], state, self._meta(progress),
                           reference=self.reference)

  def _stop_on_divergence(self, what: str) -> None:
    """Stops without saving: the newest checkpoint on disk stays the last good one."""
    self.checkpointer.wait_until_finished()
    latest = self.checkpointer.latest_step()
    self.checkpointer.close()
    self.writer.close()
    raise SystemExit(
        f'Training diverged ({what}); stopping. The last good checkpoint is '
        f'{"step " + str(latest) if latest is not None else "none"} in '
        f'{self.checkpointer.directory}. Lower the learning rate or raise the KL weight.')

  def _run_phase(self, state, progress: dict, start_wall: float):
    c = self.config
    phase_index = progress['phase_index']
    kind, num_steps = self.phases[phase_index]
    tx = self._optimizer(kind, num_steps)
    if state is None:
      state = jax.jit(functools.partial(TrainState.create, tx=tx))(self.params)
    if kind != 'sft' and self.reference is None:
      # The reference (base) model is frozen at the start of RL; the base row is measured now.
      self.reference = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(state.params)
      progress['base_eval'] = self._evaluate(self.reference, 'base', progress['global_step'])

    if kind == 'sft':
      traces = self.sft_traces[phase_index]
      step_fn = make_sft_step(self.train_model, tx, c.logprob_chunk)
    else:
      rl = c.rl
      step_fn = make_rl_step(self.train_model, tx, RLStepConfig(
          stage=kind, alpha=rl.alpha, beta1=rl.beta1, beta2=rl.beta2,
          num_samples=rl.num_samples, baseline=rl.baseline, normalize_std=rl.normalize_std,
          algorithm=rl.algorithm, clip_epsilon=rl.clip_epsilon, kl_estimator=rl.kl_estimator,
          ppo_epochs=rl.ppo_epochs, minibatches=rl.minibatches,
          logprob_chunk=c.logprob_chunk))
      rl_steps_before = self._steps_before(phase_index, ('stage1', 'stage2', 'single_turn'))

    self._log(f'== phase {phase_index + 1}/{len(self.phases)}: {kind} for {num_steps} steps '
              f'(from step {progress["phase_step"]}) ==')
    phase_start = time.perf_counter()
    steps_at_start = progress['phase_step']
    window: list[dict] = []
    while progress['phase_step'] < num_steps:
      step_key = jax.random.fold_in(jax.random.key(c.seed), progress['global_step'])
      with count_compilations() as compilations:
        if kind == 'sft':
          chunk = self._sft_traces(traces, progress['phase_step'])
          local = [chunk[i] for i in self._rows(len(chunk))]
          state, step_metrics = step_fn(state, self._to_devices(self._pack_traces(local),
                                                                len(chunk)))
          step_metrics = {f'train/{k}': float(v)
                          for k, v in distributed.gather(step_metrics).items()}
          data = _fingerprint(example_id for example_id, *_ in chunk)
        else:
          examples = self._rl_examples(rl_steps_before + progress['phase_step'])
          state, step_metrics, samples = self._rl_step(step_fn, kind, state, examples,
                                                       step_key)
          data = _fingerprint(e.id for e in examples)
      step_metrics['train/compilations'] = compilations.count
      self._last_state = state
      loss = float(step_metrics['train/loss'])
      if not math.isfinite(loss):
        self._stop_on_divergence(f'a loss of {loss} at step {progress["global_step"]} '
                                 f'(phase {kind})')
      progress['phase_step'] += 1
      progress['global_step'] += 1
      self.params = state.params
      self._track_best(progress, kind, step_metrics)
      window.append(step_metrics)
      extra = dict(data=data) if kind == 'sft' else dict(data=data, samples=samples)
      self.writer.write(progress['global_step'], step_metrics, phase=kind, extra=extra)

      if progress['global_step'] % c.log_every_steps == 0 or progress['phase_step'] == num_steps:
        self._progress_line(kind, progress, num_steps, steps_at_start, phase_start, start_wall,
                            window)
        window = []
      if (kind != 'sft' and c.eval.every_steps and
          progress['global_step'] % c.eval.every_steps == 0 and
          progress['global_step'] < self.total_steps):  # The final evaluation is in _finish.
        self._evaluate(state.params, 'eval', progress['global_step'])
      if (progress['global_step'] % c.checkpoint.every_steps == 0 or
          progress['phase_step'] == num_steps):
        self._save(state, progress)
      # Every process stops after the same step, so that all of them take part in the save.
      if distributed.any_process(self.preempted):
        raise _Preempted()
    return state

  def _rl_step(self, step_fn, kind: str, state: TrainState, examples: list, key):
    """One RL step; returns the new state, the step's metrics and a checksum of the sampled
    tokens (logged, so that runs can be compared sample for sample)."""
    exp = self.exp
    two_turns = kind != 'single_turn'
    batch_size = len(examples)
    rows = self._rows(batch_size)
    local_examples = [examples[i] for i in rows]
    rollout_key, update_key = jax.random.split(key)
    sample_params = self.to_sampling_layout(state.params)
    prompts = self._to_devices(exp.pack_prompts(local_examples), batch_size)
    rollout = self.rollout_fns[two_turns](sample_params, *prompts, rollout_key, self.sampling)
    if not np.array_equal(distributed.row_indices(rollout.tokens.sharding, rollout.tokens.shape),
                          rows):
      raise ValueError(f'The rollout\'s rows are laid out as {rollout.tokens.sharding}, not as '
                       f'the batch sharding the prompts were split by.')
    # Decoding and scoring (a code sandbox is costly) only for this process's rows.
    host_rollout = distributed.local_rows(rollout)
    pairs = attempt_texts(host_rollout, exp.tokenizer, exp.spec.stop_tokens)
    attempts1, attempts2 = [a for a, _ in pairs], [b for _, b in pairs]
    r1 = exp.task.score_batch(local_examples, attempts1).astype(np.float32)
    r2 = (exp.task.score_batch(local_examples, attempts2).astype(np.float32)
          if two_turns else np.zeros_like(r1))
    state, update_metrics = step_fn(state, self.reference, rollout,
                                    *self._to_devices((r1, r2), batch_size), update_key)
    out = {f'train/{k}': float(v) for k, v in distributed.gather(update_metrics).items()}
    # Per-row values of the whole batch (every process's rows) for the batch metrics.
    tokens = np.asarray(host_rollout.tokens)
    per_row = dict(r1=r1, r2=r2, length=np.asarray(host_rollout.valid).sum(axis=1),
                   checksum=np.array([zlib.crc32(row.tobytes()) for row in tokens], np.uint32))
    if two_turns:
      extract = exp.task.extract_answer
      per_row['edit_ratio'] = sc_metrics.edit_distance_ratios(attempts1, attempts2)
      per_row['differ'] = sc_metrics.answers_differ([extract(a) for a in attempts1],
                                                    [extract(b) for b in attempts2])
    per_row = self._gather_rows(per_row, batch_size)
    out['train/reward_t1'] = float(per_row['r1'].mean())
    out['train/reward_t2'] = float(per_row['r2'].mean())
    if two_turns:
      out.update({f'train/{k}': v for k, v in sc_metrics.self_correction_metrics(
          per_row['r1'], per_row['r2']).items()})
      out['train/edit_ratio'] = float(per_row['edit_ratio'].mean())
      out['train/different_answer_rate'] = float(per_row['differ'].mean())
    out['train/tokens_per_row'] = float(per_row['length'].mean())
    return state, out, zlib.crc32(per_row['checksum'].astype(np.uint32).tobytes())

  def _track_best(self, progress: dict, kind: str, step_metrics: dict) -> None:
    """The paper picks checkpoints by the highest training reward; record where it was."""
    if kind == 'sft':
      return
    reward = step_metrics['train/reward_t2' if kind != 'single_turn' else 'train/reward_t1']
    best = progress['best']
    if best is None or reward > best['reward']:
      progress['best'] = dict(step=progress['global_step'], phase=kind, reward=float(reward))

  def _evaluate(self, params, name: str, step: int) -> dict:
    c = self.config
    examples = self.exp.test_examples[:c.eval.num_problems]
    self._log(f'-- evaluating the {name} model on {len(examples)} held-out problems --')
    result = self.evaluator.run(params, examples, self.eval_sampling, seed=c.seed)
    self.writer.write(step, {f'eval/{k}': v for k, v in result.items()}, phase=name)
    self._log(f'   {name}: Acc@t1 {result["acc_t1"]:.3f}  Acc@t2 {result["acc_t2"]:.3f}  '
              f'Δ {result["delta"]:+.3f}  Δi→c {result["delta_i2c"]:.3f}  '
              f'Δc→i {result["delta_c2i"]:.3f}  ({result["eval_s"]:.0f}s)')
    return result

  def _progress_line(self, kind, progress, num_steps, steps_at_start, phase_start, start_wall,
                     window) -> None:
    done = progress['phase_step'] - steps_at_start
    rate = done / max(time.perf_counter() - phase_start, 1e-9)
    remaining_here = num_steps - progress['phase_step']
    remaining_later = sum(s for _, s in self.phases[progress['phase_index'] + 1:])
    eta = (remaining_here + remaining_later) / max(rate, 1e-9)
    mean = lambda key: np.mean([m[key] for m in window if key in m]) if any(
        key in m for m in window) else float('nan')
    parts = [f'[{kind} {progress["phase_step"]}/{num_steps}]',
             f'step {progress["global_step"]}/{self.total_steps}',
             f'{rate:.2f} steps/s', f'ETA {_duration(eta)}', f'loss {mean("train/loss"):.4f}']
    if kind != 'sft':
      parts += [f'r1 {mean("train/reward_t1"):.3f}', f'r2 {mean("train/reward_t2"):.3f}',
                f'kl1 {mean("train/kl_attempt1"):.4f}', f'kl2 {mean("train/kl_attempt2"):.4f}']
    parts.append(f'elapsed {_duration(time.perf_counter() - start_wall)}')
    self._log(' | '.join(parts))

  def _finish(self, progress: dict) -> dict:
    final_eval = self._evaluate(self.params, 'final', progress['global_step'])
    base_eval = progress['base_eval']
    summary = dict(base=base_eval, final=final_eval, wall_s=progress['wall_s'],
                   best_training_reward=progress['best'], schedule=self.config.schedule,
                   steps=progress['global_step'])
    if self.is_main_process:
      self.writer.flush()  # A URL workdir's metrics.jsonl is written whole: before the plot.
      rows = {'base': base_eval, 'final (SCoRe)': final_eval} if base_eval else {
          'final': final_eval}
      table = reporting.format_table(rows)
      print('\n' + table + '\n', flush=True)
      _write_json(os.path.join(self.workdir, 'summary.json'), summary)
      plot = reporting.plot_curves(os.path.join(self.workdir, 'metrics.jsonl'),
                                   os.path.join(self.workdir, 'curves.png'))
      print(f'wall time {_duration(progress["wall_s"])}; summary in '
            f'{os.path.join(self.workdir, "summary.json")}' +
            (f'; curves in {plot}' if plot else ''), flush=True)
    return summary


@jax.jit
def _all_finite_device(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _all_finite(tree) -> bool:
  # One module-level jit: compiled once per parameter structure, not at every save.
  return bool(_all_finite_device(tree))


def _fingerprint(ids) -> int:
  """A short checksum of a batch's example ids: logged to show which data a step saw."""
  return zlib.crc32('\n'.join(ids).encode())


def _epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(size)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def _write_json(path: str, value: Any) -> None:
  paths.write_text(path, json.dumps(value, indent=2))


def main(argv):
  del argv
  # Before any other JAX call (nothing imported above creates arrays): every host joins.
  try:
    distributed.maybe_initialize()
  except ValueError as e:
    raise SystemExit(f'Invalid environment: {e}') from None
  config_lib.quiet_library_logs()
  config = _CONFIG.value
  workdir = _WORKDIR.value
  try:
    phases = config_lib.validate_train_config(config)
    # Process 0 builds the data (and tokenizer) under the workdir first; the others read them.
    with distributed.main_process_first('data'):
      experiment = Experiment.from_config(config, workdir)
    trainer = Trainer(config, workdir, phases, experiment)
  except (ValueError, FileNotFoundError, NotImplementedError) as e:
    raise SystemExit(f'Invalid config: {e}') from None
  trainer.run()


if __name__ == '__main__':
  app.run(main)
