"""The SCoRe trainer: runs a config's phases, evaluates, checkpoints and resumes.

``Trainer`` is what ``python -m score_jax.train`` (the command) and ``score_jax.reproduce``
(every method of the paper's tables) run. The config's ``schedule`` lists phases in order:
``sft`` (teacher-forced warm start on the task's two-attempt traces), ``stage1`` and
``stage2`` (SCoRe's stages), ``single_turn`` (the single-turn RL baseline), and the paper's SFT
baselines on the model's own samples: ``star`` (one STaR round: keep the wrong → right
revisions) and ``pair_sft`` (incorrect attempts paired with correct answers to the same
problem). A ``star:N`` or ``pair_sft:N`` phase first samples N batches of ``rl.batch_size``
two-attempt rollouts from the current model, writes the traces it builds to
``WORKDIR/traces/``, then takes N SFT steps on them (``config.self_sft``): the sample and
update budget of N RL steps. The reference model for the KL penalty is frozen at the start
of the first phase after the warm start; the model at that point is the "base" row of the
final table.

Each RL step: sample two attempts per prompt (k samples per prompt) with the jitted
rollout → score both attempts on the host → one jitted, donated update (reference
log-probs, stage rule, REINFORCE or PPO).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
import zlib
from typing import Any, NamedTuple

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import baselines, config_lib, distributed, paths, reporting
from score_jax import metrics as sc_metrics
from score_jax.checkpoints import Checkpointer, abstract_like, abstract_train_state
from score_jax.compilation import count_compilations
from score_jax.evaluation import Evaluator
from score_jax.experiment import Experiment
from score_jax.model import abstract_params, cast_floating
from score_jax.sampling import SamplingParams, make_rollout_fn, pack_trajectories
from score_jax.sampling.templates import attempt_texts
from score_jax.tasks.base import Trace
from score_jax.train_steps import (RLStepConfig, TrainState, make_optimizer, make_rl_step,
                                   make_sft_step)
from score_jax.writers import MetricWriter


# Phases whose steps draw prompts from the training set (one RL batch per step).
_SAMPLING_KINDS = config_lib.RL_KINDS + config_lib.SELF_SFT_KINDS


class _Preempted(Exception):
  pass


class _Samples(NamedTuple):
  """A sampled, scored batch: the rollout (global arrays) and this process's rows of it."""
  rollout: Any
  host_rollout: Any
  examples: list
  attempts1: list[str]
  attempts2: list[str]
  r1: np.ndarray
  r2: np.ndarray


class Trainer:
  """One training run: set-up, the phase loop, evaluation and the final summary."""

  def __init__(self, config, workdir: str, phases: list[tuple[str, int]],
               experiment: Experiment, initial_params: Any = None,
               base_eval: dict | None = None):
    """
    Args:
      config: a validated training config.
      workdir: where checkpoints, metrics and the summary go.
      phases: the parsed ``config.schedule``.
      experiment: the task, tokenizer, model config and mesh the config builds.
      initial_params: parameters (in the training layout) to start from instead of the
        config's initialisation, e.g. a warm start shared by several runs.
      base_eval: the base model's held-out result when already known; the run then does not
        evaluate the base model again.
    """
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
    if initial_params is None:
      params, axes = experiment.initial_params(c.seed)
    else:
      params, axes = initial_params, abstract_params(self.train_model)[1]
    self.params = params
    self.known_base_eval = base_eval
    sample_shardings = self.sample_model.mesh_rules.shardings(axes, params)
    # Sampling reads weights at every token: gather them once per rollout instead, in the
    # compute dtype the sampler runs them in (for fp32 parameters, a copy half the size).
    compute = self.sample_model.config.jnp_dtype
    self.to_sampling_layout = jax.jit(lambda p: cast_floating(p, compute),
                                      out_shardings=sample_shardings)

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

  def _sft_traces(self, traces: list, step: int, batch_size: int) -> list:
    return [traces[i % len(traces)] for i in range(step * batch_size, (step + 1) * batch_size)]

  def _encode_traces(self, traces: list, drop_too_long: bool = False
                     ) -> list[tuple[str, list[int], list[int], list[int]]]:
    """(example id, prompt ids, attempt 1 + stop, attempt 2 + stop) per trace, checked once
    against the rollout slots so that a trace too long stops the run now, not mid-phase.

    With ``drop_too_long`` (the model's own samples, which may have run to the end of a slot
    without a stop token) such traces are left out instead, and counted in the log.
    """
    exp, stop = self.exp, self.exp.spec.stop_tokens[0]
    encoded = [(t.example.id, exp.prompt_ids(t.example),
                exp.tokenizer.encode(t.attempt1) + [stop],
                exp.tokenizer.encode(t.attempt2) + [stop]) for t in traces]
    widths = (('prompt_len', exp.spec.prompt_len), ('attempt1_len', exp.spec.attempt1_len),
              ('attempt2_len', exp.spec.attempt2_len))
    if drop_too_long:
      fits = [e for e in encoded
              if all(len(e[i]) <= width for i, (_, width) in enumerate(widths, start=1))]
      if len(fits) < len(encoded):
        self._log(f'   left out {len(encoded) - len(fits)} of {len(encoded)} traces whose '
                  f'attempts, with a stop token, do not fit their slots (truncated samples)')
      return fits
    for index, (name, width) in enumerate(widths, start=1):
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

  def latest_params(self):
    """The policy parameters of the run's latest checkpoint."""
    latest = self.checkpointer.latest_step()
    if latest is None:
      raise FileNotFoundError(f'No checkpoint in {self.checkpointer.directory}.')
    state, _ = self._restore(latest)
    return state.params

  def _optimizer(self, kind: str, num_steps: int):
    return make_optimizer(config_lib.optimizer_section(self.config, kind).optimizer, num_steps)

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
      if self.known_base_eval is not None:
        progress['base_eval'] = self.known_base_eval
      else:
        progress['base_eval'] = self._evaluate(self.reference, 'base', progress['global_step'])

    sft_like = kind == 'sft' or kind in config_lib.SELF_SFT_KINDS
    last_step = num_steps  # Where this phase's updates end (sooner for star and pair_sft).
    if kind == 'sft':
      traces, batch_size = self.sft_traces[phase_index], c.sft.batch_size
    elif sft_like:
      traces, batch_size = self._self_sft_traces(progress), c.self_sft.batch_size
      last_step = _self_sft_updates(num_steps, len(traces), batch_size, c.self_sft.epochs)
      self._log(f'   {kind}: {last_step} SFT steps ({c.self_sft.epochs or "no"} epoch limit, '
                f'{len(traces)} traces, batch {batch_size}, at most {num_steps} steps)')
    if sft_like:
      step_fn = make_sft_step(self.train_model, tx, c.logprob_chunk, train_attempt1=(
          kind == 'sft' or c.self_sft.train_attempt1))
    else:
      rl = c.rl
      step_fn = make_rl_step(self.train_model, tx, RLStepConfig(
          stage=kind, alpha=rl.alpha, beta1=rl.beta1, beta2=rl.beta2,
          num_samples=rl.num_samples, baseline=rl.baseline, normalize_std=rl.normalize_std,
          algorithm=rl.algorithm, clip_epsilon=rl.clip_epsilon, kl_estimator=rl.kl_estimator,
          ppo_epochs=rl.ppo_epochs, minibatches=rl.minibatches,
          logprob_chunk=c.logprob_chunk))
      rl_steps_before = self._steps_before(phase_index, _SAMPLING_KINDS)

    self._log(f'== phase {phase_index + 1}/{len(self.phases)}: {kind} for {num_steps} steps '
              f'(from step {progress["phase_step"]}) ==')
    phase_start = time.perf_counter()
    steps_at_start = progress['phase_step']
    window: list[dict] = []
    while progress['phase_step'] < last_step:
      step_key = jax.random.fold_in(jax.random.key(c.seed), progress['global_step'])
      with count_compilations() as compilations:
        if sft_like:
          chunk = self._sft_traces(traces, progress['phase_step'], batch_size)
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
      extra = dict(data=data) if sft_like else dict(data=data, samples=samples)
      self.writer.write(progress['global_step'], step_metrics, phase=kind, extra=extra)

      if (progress['global_step'] % c.log_every_steps == 0 or
          progress['phase_step'] == last_step):
        self._progress_line(kind, progress, num_steps, steps_at_start, phase_start, start_wall,
                            window)
        window = []
      if (kind != 'sft' and c.eval.every_steps and
          progress['global_step'] % c.eval.every_steps == 0 and
          progress['global_step'] < self.total_steps):  # The final evaluation is in _finish.
        self._evaluate(state.params, 'eval', progress['global_step'])
      if (progress['global_step'] % c.checkpoint.every_steps == 0 or
          progress['phase_step'] == last_step):
        self._save(state, progress)
      # Every process stops after the same step, so that all of them take part in the save.
      if distributed.any_process(self.preempted):
        raise _Preempted()
    if progress['phase_step'] < num_steps:
      # A star or pair_sft phase that ran out of traces: its remaining steps make no updates,
      # so that later phases keep their step numbers.
      progress['global_step'] += num_steps - progress['phase_step']
      progress['phase_step'] = num_steps
      self._save(state, progress)
    return state

  def _sample(self, params, examples: list, key, two_turns: bool) -> '_Samples':
    """Samples and scores one batch of rollouts of ``examples`` (this process's rows)."""
    exp = self.exp
    batch_size = len(examples)
    rows = self._rows(batch_size)
    local_examples = [examples[i] for i in rows]
    sample_params = self.to_sampling_layout(params)
    prompts = self._to_devices(exp.pack_prompts(local_examples), batch_size)
    rollout = self.rollout_fns[two_turns](sample_params, *prompts, key, self.sampling)
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
    return _Samples(rollout, host_rollout, local_examples, attempts1, attempts2, r1, r2)

  def _batch_metrics(self, samples: '_Samples', batch_size: int, two_turns: bool,
                     prefix: str = 'train') -> tuple[dict, int]:
    """The rewards, self-correction and edit metrics of a sampled batch (over every process's
    rows), and a checksum of the sampled tokens (logged, so that runs can be compared sample
    for sample)."""
    tokens = np.asarray(samples.host_rollout.tokens)
    per_row = dict(r1=samples.r1, r2=samples.r2,
                   length=np.asarray(samples.host_rollout.valid).sum(axis=1),
                   checksum=np.array([zlib.crc32(row.tobytes()) for row in tokens], np.uint32))
    if two_turns:
      extract = self.exp.task.extract_answer
      per_row['edit_ratio'] = sc_metrics.edit_distance_ratios(samples.attempts1,
                                                              samples.attempts2)
      per_row['differ'] = sc_metrics.answers_differ([extract(a) for a in samples.attempts1],
                                                    [extract(b) for b in samples.attempts2])
    per_row = self._gather_rows(per_row, batch_size)
    out = {f'{prefix}/reward_t1': float(per_row['r1'].mean()),
           f'{prefix}/reward_t2': float(per_row['r2'].mean())}
    if two_turns:
      out.update({f'{prefix}/{k}': v for k, v in sc_metrics.self_correction_metrics(
          per_row['r1'], per_row['r2']).items()})
      out[f'{prefix}/edit_ratio'] = float(per_row['edit_ratio'].mean())
      out[f'{prefix}/different_answer_rate'] = float(per_row['differ'].mean())
    out[f'{prefix}/tokens_per_row'] = float(per_row['length'].mean())
    return out, zlib.crc32(per_row['checksum'].astype(np.uint32).tobytes())

  def _rl_step(self, step_fn, kind: str, state: TrainState, examples: list, key):
    """One RL step; returns the new state, the step's metrics and the samples' checksum."""
    two_turns = kind != 'single_turn'
    batch_size = len(examples)
    rollout_key, update_key = jax.random.split(key)
    samples = self._sample(state.params, examples, rollout_key, two_turns)
    state, update_metrics = step_fn(state, self.reference, samples.rollout,
                                    *self._to_devices((samples.r1, samples.r2), batch_size),
                                    update_key)
    out = {f'train/{k}': float(v) for k, v in distributed.gather(update_metrics).items()}
    batch_metrics, checksum = self._batch_metrics(samples, batch_size, two_turns)
    out.update(batch_metrics)
    return state, out, checksum

  def _self_sft_traces(self, progress: dict) -> list:
    """The encoded training traces of a ``star`` or ``pair_sft`` phase.

    At the phase's start: samples ``num_steps`` batches of two-attempt rollouts from the
    current model (on the prompts the same number of RL steps would see), builds the traces
    (``score_jax.baselines``) and writes them, with every sample, to
    ``WORKDIR/traces/``; a resumed run reads the traces back instead. The traces are used in
    a seeded random order.
    """
    c = self.config
    phase_index = progress['phase_index']
    kind, num_steps = self.phases[phase_index]
    path = os.path.join(self.workdir, 'traces', f'phase{phase_index + 1}_{kind}.jsonl')
    if progress['phase_step'] > 0 and epath.Path(path).exists():
      by_id = {str(e.id): e for e in self.exp.train_examples}
      records = [json.loads(line) for line in epath.Path(path).read_text().splitlines()]
      traces = [Trace(by_id[r['id']], r['attempt1'], r['attempt2']) for r in records]
      self._log(f'   read {len(traces)} {kind} traces from {path}')
    else:
      traces = self._sample_self_sft_traces(progress, kind, num_steps)
      if self.is_main_process:
        paths.write_text(path, ''.join(
            json.dumps(dict(id=str(t.example.id), attempt1=t.attempt1, attempt2=t.attempt2)) +
            '\n' for t in traces))
    order = np.random.default_rng([c.seed, phase_index]).permutation(len(traces))
    return self._encode_traces([traces[i] for i in order], drop_too_long=True)

  def _sample_self_sft_traces(self, progress: dict, kind: str, num_steps: int) -> list:
    c = self.config
    phase_index = progress['phase_index']
    first = self._steps_before(phase_index, _SAMPLING_KINDS)
    scored, start = [], time.perf_counter()
    totals: dict[str, float] = {}
    for i in range(num_steps):
      examples = self._rl_examples(first + i)
      key = jax.random.fold_in(jax.random.key(c.seed), progress['global_step'] + i)
      samples = self._sample(self.params, examples, key, two_turns=True)
      batch_metrics, _ = self._batch_metrics(samples, len(examples), two_turns=True,
                                             prefix='sample')
      for name, value in batch_metrics.items():
        totals[name] = totals.get(name, 0.0) + value / num_steps
      # Every process builds the same traces: the texts and rewards of all rows.
      texts = attempt_texts(distributed.gather(samples.rollout), self.exp.tokenizer,
                            self.exp.spec.stop_tokens) if jax.process_count() > 1 else (
                                list(zip(samples.attempts1, samples.attempts2)))
      rewards = self._gather_rows(dict(r1=samples.r1, r2=samples.r2), len(examples))
      scored += [baselines.ScoredPair(e, a, b, float(x), float(y)) for e, (a, b), x, y in
                 zip(examples, texts, rewards['r1'], rewards['r2'])]
      if (i + 1) % c.log_every_steps == 0 or i + 1 == num_steps:
        self._log(f'   [{kind} sampling {i + 1}/{num_steps}] {len(scored)} rollouts '
                  f'({time.perf_counter() - start:.0f}s)')
    if kind == 'star':
      traces = baselines.star_traces(scored, c.self_sft.keep_correct_to_correct)
    else:
      traces = baselines.pair_sft_traces(scored, seed=c.seed + phase_index)
    totals['sample/traces'] = float(len(traces))
    self.writer.write(progress['global_step'], totals, phase=f'{kind}_sampling')
    self._log(f'   {kind}: {len(traces)} traces from {len(scored)} rollouts (attempt 1 right '
              f'{totals["sample/reward_t1"]:.3f}, attempt 2 right '
              f'{totals["sample/reward_t2"]:.3f})')
    return traces

  def _track_best(self, progress: dict, kind: str, step_metrics: dict) -> None:
    """The paper picks checkpoints by the highest training reward; record where it was."""
    if kind not in config_lib.RL_KINDS:
      return
    reward = step_metrics['train/reward_t2' if kind != 'single_turn' else 'train/reward_t1']
    best = progress['best']
    if best is None or reward > best['reward']:
      progress['best'] = dict(step=progress['global_step'], phase=kind, reward=float(reward))

  def _evaluate(self, params, name: str, step: int) -> dict:
    c = self.config
    examples = self.exp.test_examples[:c.eval.num_problems]
    self._log(f'-- evaluating the {name} model on {len(examples)} held-out problems --')
    samples = []
    result = self.evaluator.run(params, examples, self.eval_sampling, seed=c.seed,
                                samples=samples)
    self.writer.write(step, {f'eval/{k}': v for k, v in result.items()}, phase=name)
    if self.is_main_process and name in ('base', 'final'):
      # Both attempts on every problem, e.g. for the edit-distance histograms of reproduce.
      paths.write_text(os.path.join(self.workdir, f'eval_{name}_samples.jsonl'),
                       ''.join(json.dumps(s) + '\n' for s in samples))
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
    if kind in config_lib.RL_KINDS:
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


def _self_sft_updates(num_steps: int, num_traces: int, batch_size: int, epochs: float) -> int:
  """SFT steps of a star or pair_sft phase: ``epochs`` passes over its traces (all
  ``num_steps`` when ``epochs`` is 0), never more than ``num_steps``."""
  if epochs <= 0:
    return num_steps if num_traces else 0
  return min(num_steps, math.ceil(epochs * num_traces / batch_size))


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
