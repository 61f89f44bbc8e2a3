"""The SCoRe trainer: runs a config's phases, evaluates, checkpoints and resumes.

``Trainer`` is what ``python -m score_jax.train`` (the command) and ``score_jax.reproduce``
(every method of the paper's tables) run. The config's ``schedule`` lists the phases
(``score_jax.training.phases`` says what each kind does). The reference model of the KL
penalty is frozen at the start of the first phase after the warm start; the model at that
point is the "base" row of the final table.

One step of every phase is the same loop (``_run_phase``): the phase's runner
(``score_jax.training.runners``) picks the step's data by its index and runs one jitted,
donated update; then the step is checked, logged, evaluated, saved and preemption is
checked, in that order (``_after_step``). An RL step samples two attempts per prompt (k
samples per prompt) with the jitted rollout, scores both on the host, and updates
(reference log-probs, stage rule, REINFORCE or PPO).

On resume: 1. the run's progress (phase, step, base evaluation) from the checkpoint's
metadata, 2. the train state into the phase's optimizer layout and the frozen reference,
3. the metrics file cut back to the restored step; data positions follow from the step
index, so the resumed run continues exactly where the saved one was. A step that cannot be
read is passed over for the next older one (with a warning) and set aside, never deleted; a
save that fails stops the run with ``StorageFault`` (docs/faults.md). Reading and writing
the checkpoints, and reporting a storage fault, are ``score_jax.training.persistence``'s.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import distributed, paths, reporting
from score_jax.checkpoints import Checkpointer
from score_jax.compilation import count_compilations
from score_jax.model import abstract_params, cast_floating, lora
from score_jax.sampling import SamplingParams
from score_jax.training import self_sft
from score_jax.training.batches import encode_traces, rl_examples
from score_jax.training.errors import Preempted
from score_jax.training.evaluation import Evaluator
from score_jax.training.experiment import Experiment
from score_jax.training.persistence import RunCheckpoints
from score_jax.training.phases import Phase
from score_jax.training.progress import ProgressLog, RunProgress
from score_jax.training.runners import (FirstAttemptReplay, RLRunner, SFTRunner,
                                       collect_self_sft_traces)
from score_jax.training.scoring import BatchRows, RolloutScorer
from score_jax.training.steps import (make_create_state, make_optimizer, make_rl_step,
                                      make_sft_step, reference_dtype, rl_settings)
from score_jax.writers import MetricWriter


class Trainer:
  """One training run: set-up, the phase loop, evaluation and the final summary."""

  def __init__(self, config, workdir: str, phases: list[Phase], experiment: Experiment,
               initial_params: Any = None, base_eval: dict | None = None):
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

    Raises:
      ValueError: a warm-start trace does not fit the rollout slots.
    """
    c = self.config = config
    self.workdir = workdir
    self.phases = phases
    self.total_steps = sum(phase.steps for phase in phases)
    self.exp = experiment
    self.is_main_process = distributed.is_main_process()
    self.train_model = experiment.model('train')
    # With LoRA the phases after the warm start train adapters on the frozen base, which is
    # then the reference model; self.params holds what the current phase trains.
    self.policy_model = experiment.model('train', adapted=True)
    self.merge_adapters = _merge_fn(self.train_model, self.policy_model)
    self.sample_model = experiment.model('sample')
    # Every warm-start phase's traces, tokenised and checked against the slots before any
    # training.
    self.sft_traces = {
        index: encode_traces(experiment, experiment.task.make_traces(
            phase.steps * c.sft.batch_size, seed=c.seed + 1000 * index,
            **c.sft.trace_options.to_dict()), log=self._log)
        for index, phase in enumerate(phases) if phase.is_warm_start}
    self.params = (initial_params if initial_params is not None
                   else experiment.initial_params(c.seed)[0])
    self.to_sampling_layout = _sampling_layout_fn(self.train_model, self.sample_model)
    self.scorers = {two_turns: RolloutScorer(experiment, self.sample_model,
                                             experiment.rollout_spec(two_turns))
                    for two_turns in (True, False)}
    self.rows = BatchRows(self.train_model.mesh_rules)
    self.sampling = SamplingParams.create(c.rollout.temperature, c.rollout.top_p)
    self.evaluator = Evaluator(experiment, c.eval.batch_size)
    self.eval_sampling = SamplingParams.create(c.eval.temperature)
    self.checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     max_to_keep=c.checkpoint.max_to_keep,
                                     async_save=c.checkpoint.async_save)
    self.checkpoints = RunCheckpoints(self.checkpointer, c, phases, self.train_model, self._log,
                                      self.policy_model)
    self.known_base_eval = base_eval
    self.progress = RunProgress(schedule=c.schedule)
    self.reference = None  # Frozen at the start of the first phase after the warm start.
    self.writer = MetricWriter(workdir, enabled=False)  # Opened by run().
    self.progress_log = ProgressLog(phases, self._log)
    self.preempted = False  # Set by SIGTERM; acted on after the current step or batch.
    self._state = None  # The newest train state (what a preemption saves).

  # ---- the run -------------------------------------------------------------------------------

  def run(self) -> dict:
    """Runs (or resumes) every phase, then the final evaluation; returns the summary.

    Raises:
      Preempted: a SIGTERM arrived; a checkpoint was saved.
      Diverged: a non-finite loss or parameters.
      InvalidRun: the work directory holds a run of another schedule.
      StorageFault: a checkpoint or the metrics could not be written, or no checkpoint of
        the work directory can be read.
    """
    previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    try:
      summary = self.checkpoints.report_storage_faults(
          self._run, self.workdir, close=lambda: self.checkpoints.close(self.writer, True))
    finally:
      signal.signal(signal.SIGTERM, previous_handler)
    self.checkpoints.close(self.writer)
    return summary

  def _run(self) -> dict:
    start = time.perf_counter()
    try:
      resumed = bool(self.checkpointer.all_steps())
      state = None
      if resumed:
        self.progress, state, self.reference = self.checkpoints.restore()
        self.params = state.params
      self.writer = MetricWriter(self.workdir, enabled=self.is_main_process,
                                 resume_step=self.progress.global_step if resumed else None)
      self.progress_log.start_run()
      while self.progress.phase_index < len(self.phases):
        self._run_phase(self.phases[self.progress.phase_index], state)
        self.progress.phase_index += 1
        self.progress.phase_step = 0
        state = None  # The next phase starts a fresh optimizer on the same parameters.
      self.progress.wall_s += time.perf_counter() - start
      return self._finish()
    except Preempted:
      self.progress.wall_s += time.perf_counter() - start
      if self._state is not None:
        self._save(self._state)
      self.checkpointer.wait_until_finished()
      step = self.checkpointer.latest_step()
      raise Preempted(f'Preempted (SIGTERM): saved a checkpoint at step {step}; rerun the '
                      f'same command to resume.') from None

  def _run_phase(self, phase: Phase, state) -> None:
    c, progress = self.config, self.progress
    optimizer = phase.config_section(c).optimizer
    tx = make_optimizer(optimizer, phase.steps)
    model = self.checkpoints.model_of(phase)
    if not phase.is_warm_start and self.reference is None:
      self._freeze_reference(self.params)
      if self.exp.uses_lora:
        self.params = lora.init_adapters(model, jax.random.key(c.seed))
    self._state = state = state if state is not None else make_create_state(
        model, tx)(self.params)
    runner = self._runner(phase, tx, model)
    # The rate is named because per-stage rates (rl.stage_learning_rate) override
    # rl.optimizer's: a user who sets only the latter sees here which one a phase uses.
    self._log(f'== phase {progress.phase_index + 1}/{len(self.phases)}: {phase.kind} for '
              f'{phase.steps} steps (from step {progress.phase_step}), {optimizer.name} at peak '
              f'learning rate {optimizer.learning_rate:g} ==')
    self.progress_log.start_phase(progress)
    while progress.phase_step < runner.num_updates:
      key = jax.random.fold_in(jax.random.key(c.seed), progress.global_step)
      with count_compilations() as compilations:
        state, metrics, extra = runner.step(state, progress.phase_step, key)
      metrics['train/compilations'] = compilations.count
      self._state = state
      self._after_step(phase, state, metrics, extra, last_step=runner.num_updates)
    if progress.phase_step < phase.steps:
      # A star or pair_sft phase that ran out of traces: its remaining steps make no updates,
      # so that later phases keep their step numbers.
      progress.global_step += phase.steps - progress.phase_step
      progress.phase_step = phase.steps
      self._save(state)

  def _after_step(self, phase: Phase, state, metrics: dict, extra: dict, last_step: int):
    """Checks, logs, evaluates and saves after a step; stops when preempted."""
    c, progress = self.config, self.progress
    loss = metrics['train/loss']
    if not math.isfinite(loss):
      self.checkpoints.diverged(
          f'a loss of {loss} at step {progress.global_step} (phase {phase.kind})')
    progress.phase_step += 1
    progress.global_step += 1
    self.params = state.params
    if phase.is_rl:  # The paper picks checkpoints by the highest training reward.
      progress.record_reward(phase, metrics['train/reward_t2' if phase.two_turns
                                             else 'train/reward_t1'])
    self.progress_log.record(metrics)
    self.writer.write(progress.global_step, metrics, phase=phase.kind, extra=extra)
    at_phase_end = progress.phase_step == last_step
    if progress.global_step % c.log_every_steps == 0 or at_phase_end:
      self.progress_log.line(progress)
    if (not phase.is_warm_start and c.eval.every_steps and
        progress.global_step % c.eval.every_steps == 0 and
        progress.global_step < self.total_steps):  # The final evaluation is _finish's.
      self._evaluate(self.policy_weights(state.params), 'eval')
    if progress.global_step % c.checkpoint.every_steps == 0 or at_phase_end:
      self._save(state)
    self._stop_if_preempted()

  def _freeze_reference(self, params) -> None:
    """Freezes the reference (base) model and measures its row of the table.

    The reference is kept only once its evaluation is done, so that a run preempted during
    the evaluation resumes by freezing and evaluating it again.
    """
    if self.known_base_eval is not None:
      self.progress.base_eval = self.known_base_eval
    else:
      self.progress.base_eval = self._evaluate(params, 'base')
    # With LoRA the base weights themselves (they are never updated again), else a copy; in
    # rl.reference_dtype either way.
    dtype = reference_dtype(self.train_model, self.config)
    if self.exp.uses_lora:
      self.reference = cast_floating(params, dtype)
    else:
      self.reference = jax.jit(lambda p: jax.tree.map(jnp.copy, cast_floating(p, dtype)))(
          params)

  def policy_weights(self, params):
    """The full weights of the policy whose trained parameters are ``params``: with LoRA,
    after the warm start, the base with the adapters merged in; else ``params``."""
    if self.exp.uses_lora and self.reference is not None:
      return self.merge_adapters(self.reference, params)
    return params

  def _runner(self, phase: Phase, tx, model) -> RLRunner | SFTRunner:
    """The step runner of a phase: its jitted step and the data each step draws."""
    c = self.config
    if phase.is_rl:
      first = self.progress.steps_before(self.phases, lambda p: p.samples_rollouts)
      replay = None
      if phase.kind == 'stage2' and c.rl.stage2_base_first_attempts > 0:
        replay = FirstAttemptReplay(self.scorers[False], self.to_sampling_layout(self.reference),
                                    c.rl.stage2_base_first_attempts, c.rl.num_samples)
      return RLRunner(make_rl_step(model, tx, rl_settings(c, phase.kind)),
                      self.scorers[phase.two_turns], self.sampling, self.reference,
                      lambda p: self.to_sampling_layout(self.policy_weights(p)),
                      lambda i: self._rl_examples(first + i), phase.steps, replay)
    if phase.is_warm_start:
      traces, batch_size = self.sft_traces[self.progress.phase_index], c.sft.batch_size
      num_updates = phase.steps
    else:
      traces, batch_size = self._self_sft_traces(phase), c.self_sft.batch_size
      num_updates = self_sft.self_sft_updates(phase.steps, len(traces), batch_size,
                                              c.self_sft.epochs)
      self._log(f'   {phase.kind}: {num_updates} SFT steps ({c.self_sft.epochs or "no"} epoch '
                f'limit, {len(traces)} traces, batch {batch_size}, at most {phase.steps} steps)')
    step_fn = make_sft_step(model, tx, c.logprob_chunk, train_attempt1=(
        phase.is_warm_start or c.self_sft.train_attempt1))
    if model.config.lora_rank:
      step_fn = functools.partial(step_fn, base_params=self.reference)
    return SFTRunner(step_fn, traces, batch_size, num_updates, self.exp.spec, self.rows)

  def _rl_examples(self, rl_step_index: int) -> list:
    rl = self.config.rl
    return rl_examples(self.exp.train_examples, self.config.seed, rl_step_index,
                       rl.batch_size // rl.num_samples, rl.num_samples)

  # ---- the self-SFT baselines' traces --------------------------------------------------------

  def _self_sft_traces(self, phase: Phase):
    """The encoded training traces of a ``star`` or ``pair_sft`` phase, in a seeded order.

    At the phase's start: samples ``phase.steps`` batches of two-attempt rollouts from the
    current model (on the prompts as many RL steps would see), builds the traces and writes
    them to ``WORKDIR/traces/``; a resumed run reads them back instead.
    """
    c, index = self.config, self.progress.phase_index
    path = os.path.join(self.workdir, 'traces', f'phase{index + 1}_{phase.kind}.jsonl')
    traces = None
    if self.progress.phase_step > 0 and epath.Path(path).exists():
      traces, damaged = self_sft.read_traces(
          path, {str(e.id): e for e in self.exp.train_examples})
      if damaged:  # A file cut short by a crash: its whole records are still the phase's.
        self._log(f'warning: {path}: {len(damaged)} damaged line(s) skipped (line '
                  f'{damaged[0]}{" …" if len(damaged) > 1 else ""}); '
                  + (f'the phase goes on with the {len(traces)} whole traces.' if traces else
                     'no whole trace is left, so the traces are sampled again from the '
                     'resumed model.'))
        traces = traces or None
      if traces is not None:
        self._log(f'   read {len(traces)} {phase.kind} traces from {path}')
    if traces is None:
      first = self.progress.steps_before(self.phases, lambda p: p.samples_rollouts)
      step = self.progress.global_step
      traces, totals = collect_self_sft_traces(
          phase, self.scorers[True], self.to_sampling_layout(self.policy_weights(self.params)),
          self.sampling, lambda i: self._rl_examples(first + i),
          lambda i: jax.random.fold_in(jax.random.key(c.seed), step + i), c.self_sft,
          seed=c.seed + index, log=self._log, log_every=c.log_every_steps)
      self.writer.write(step, totals, phase=f'{phase.kind}_sampling')
      if self.is_main_process:
        self_sft.write_traces(path, traces)
    order = np.random.default_rng([c.seed, index]).permutation(len(traces))
    return encode_traces(self.exp, [traces[i] for i in order], drop_too_long=True,
                         log=self._log)

  def _save(self, state) -> None:
    self.checkpoints.save(self.progress, state, self.reference)

  # ---- preemption, evaluation, output ----------------------------------------------------

  def _on_sigterm(self, *_) -> None:
    self.preempted = True

  def _stop_if_preempted(self) -> None:
    # A collective: every process stops after the same step (or evaluation batch), so that
    # all of them take part in the save.
    if distributed.any_process(self.preempted):
      raise Preempted('SIGTERM')

  def _log(self, message: str) -> None:
    if self.is_main_process:
      print(message, flush=True)

  def _evaluate(self, params, name: str) -> dict:
    c, step = self.config, self.progress.global_step
    examples = self.exp.test_examples[:c.eval.num_problems]
    self._log(f'-- evaluating the {name} model on {len(examples)} held-out problems --')
    samples = []
    result = self.evaluator.run(params, examples, self.eval_sampling, seed=c.seed,
                                samples=samples, after_batch=lambda *_: self._stop_if_preempted())
    self.writer.write(step, {f'eval/{k}': v for k, v in result.items()}, phase=name)
    if self.is_main_process:
      # Both attempts on every problem, e.g. for the edit-distance histograms of reproduce
      # and the transcripts of score_jax.transcripts; in-between evaluations by their step.
      label = name if name in ('base', 'final') else f'step{step}'
      paths.write_text(os.path.join(self.workdir, f'eval_{label}_samples.jsonl'),
                       ''.join(json.dumps(s) + '\n' for s in samples))
    self._log(f'   {name}: Acc@t1 {result["acc_t1"]:.3f}  Acc@t2 {result["acc_t2"]:.3f}  '
              f'Δ {result["delta"]:+.3f}  Δi→c {result["delta_i2c"]:.3f}  '
              f'Δc→i {result["delta_c2i"]:.3f}  ({result["eval_s"]:.0f}s)')
    return result

  def _finish(self) -> dict:
    progress = self.progress
    final_eval = self._evaluate(self.policy_weights(self.params), 'final')
    summary = dict(base=progress.base_eval, final=final_eval, wall_s=progress.wall_s,
                   best_training_reward=progress.best, schedule=self.config.schedule,
                   steps=progress.global_step)
    if self.is_main_process:
      self.writer.flush()  # A URL workdir's metrics.jsonl is written whole: before the plot.
      summary['evaluations'] = reporting.held_out_evaluations(
          os.path.join(self.workdir, 'metrics.jsonl'), self.phases, self.known_base_eval)
      reporting.write_run_summary(self.workdir, summary)
    return summary


def _merge_fn(train_model, policy_model):
  """``fn(base, adapters)``: the base with the adapters merged in, in the training layout."""
  if not policy_model.config.lora_rank:
    return None
  merge = functools.partial(lora.merge_weights, scale=policy_model.config.lora_scale,
                            dtype=train_model.config.jnp_param_dtype)
  if train_model.mesh_rules is None:
    return jax.jit(merge)
  shapes, axes = abstract_params(train_model)
  return jax.jit(merge, out_shardings=train_model.mesh_rules.shardings(axes, shapes))


def _sampling_layout_fn(train_model, sample_model):
  """``fn(params)``: the policy as the sampler reads it.

  Sampling reads the weights at every token: gather them once per rollout instead, in the
  compute dtype the sampler runs them in (for fp32 parameters, a copy half the size).
  """
  shapes, axes = abstract_params(train_model)
  compute = sample_model.config.jnp_dtype
  return jax.jit(lambda p: cast_floating(p, compute),
                 out_shardings=sample_model.mesh_rules.shardings(axes, shapes))

