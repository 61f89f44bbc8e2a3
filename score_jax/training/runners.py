"""What one step of a phase does, for each kind of phase.

A runner turns a phase step's index into an update: it picks the step's data (by index
alone, so a resumed run sees the same data), runs the jitted step and returns the new state
with the step's metrics. The trainer's loop is the same for every kind:

* ``SFTRunner``: teacher-forced steps over encoded traces (the warm start, and the STaR and
  Pair-SFT phases once their traces are built);
* ``RLRunner``: sample a batch of rollouts with the current policy, score it, one RL update
  (with ``FirstAttemptReplay``, some prompts' first attempts are the base model's).

``collect_self_sft_traces`` is the sampling half of a STaR or Pair-SFT phase: the rollouts
its traces are built from, and the traces.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from score_jax import distributed
from score_jax.sampling import FirstAttempts, SamplingParams
from score_jax.training import self_sft
from score_jax.training.batches import EncodedTrace, fingerprint, pack_encoded, sft_batch
from score_jax.training.scoring import BatchRows, RolloutScorer, batch_metrics
from score_jax.trajectory import RolloutSpec

StepResult = tuple[Any, dict[str, float], dict[str, int]]  # (state, metrics, JSONL extras)


def _host_metrics(device_metrics: dict) -> dict[str, float]:
  return {f'train/{k}': float(v) for k, v in distributed.gather(device_metrics).items()}


class SFTRunner:
  """Teacher-forced steps over ``traces``, ``batch_size`` of them per step."""

  def __init__(self, step_fn, traces: Sequence[EncodedTrace], batch_size: int,
               num_updates: int, spec: RolloutSpec, rows: BatchRows):
    self.step_fn = step_fn
    self.traces = traces
    self.batch_size = batch_size
    self.num_updates = num_updates  # May be fewer than the phase's steps (self-SFT).
    self.spec = spec
    self.rows = rows

  def step(self, state, phase_step: int, key) -> StepResult:
    del key  # Teacher forcing draws no samples.
    batch = sft_batch(self.traces, phase_step, self.batch_size)
    local = [batch[i] for i in self.rows.local(len(batch))]
    state, metrics = self.step_fn(state, self.rows.to_devices(pack_encoded(self.spec, local),
                                                              len(batch)))
    return state, _host_metrics(metrics), dict(data=fingerprint(t.example_id for t in batch))


class FirstAttemptReplay:
  """SCoRe's state coverage: in a share of each batch's prompts, attempt 1 is a sample of the
  base (reference) model, and the policy writes only attempt 2 after it.

  Kumar et al. (2024, Section 5) add "offline" first attempts sampled from the base model to
  the on-policy rollouts, "especially in Stage II"; without them ("w/o online turn 1 samples",
  their Table 4) SCoRe nearly loses its Δ. As attempt 1 improves, the wrong first attempts
  attempt 2 learned to fix become rare; the base model keeps making them. The replayed rows
  are whole groups of ``num_samples`` rows (the first ``round(share · prompts)`` prompts of
  the batch, whose order is already random), so each RLOO baseline compares like with like.
  Each step samples attempt 1 for the whole batch with the reference (one single-turn
  rollout, of which only the replayed rows are used).
  """

  def __init__(self, scorer: RolloutScorer, reference, share: float, num_samples: int):
    """
    Args:
      scorer: a single-turn scorer (its attempt-1 slot is the two-turn rollout's).
      reference: the reference parameters in the sampler's layout.
      share: the fraction of prompts whose first attempts are replayed, in (0, 1).
      num_samples: rows per prompt.
    """
    self.scorer = scorer
    self.reference = reference
    self.share = share
    self.num_samples = num_samples

  def rows(self, batch_size: int) -> np.ndarray:
    """[batch_size] bool: the replayed rows."""
    prompts = batch_size // self.num_samples
    return np.arange(batch_size) < round(self.share * prompts) * self.num_samples

  def sample(self, examples: Sequence[Any], key, sampling: SamplingParams) -> FirstAttempts:
    batch_size = len(examples)
    tokens = self.scorer.first_attempt_slots(self.reference, examples, key, sampling)
    local = self.rows(batch_size)[self.scorer.rows.local(batch_size)]
    return FirstAttempts(tokens=tokens, rows=self.scorer.rows.to_devices(local, batch_size))


class RLRunner:
  """One batch of rollouts from the current policy, scored, then one RL update per step."""

  def __init__(self, step_fn, scorer: RolloutScorer, sampling: SamplingParams, reference,
               to_sampling_layout: Callable, examples_of: Callable[[int], list],
               num_updates: int, replay: FirstAttemptReplay | None = None):
    """
    Args:
      step_fn: the jitted RL update (``steps.make_rl_step``).
      scorer: samples and scores the rollouts (one or two turns, as the stage needs).
      sampling: the rollout temperature and top-p.
      reference: the frozen reference parameters of the KL penalty.
      to_sampling_layout: the policy parameters in the sampler's layout.
      examples_of: the prompts of a phase step (each repeated k times).
      num_updates: the phase's steps.
      replay: base-model first attempts for a share of the prompts (None: all on-policy).
        The ``train/`` metrics then describe the policy's own rollouts, and
        ``train_replayed/`` those whose attempt 1 was the base model's.
    """
    self.replay = replay
    self.step_fn = step_fn
    self.scorer = scorer
    self.sampling = sampling
    self.reference = reference
    self.to_sampling_layout = to_sampling_layout
    self.examples_of = examples_of
    self.num_updates = num_updates

  def step(self, state, phase_step: int, key) -> StepResult:
    examples = self.examples_of(phase_step)
    rollout_key, update_key = jax.random.split(key)
    first, replayed = None, ()
    if self.replay is not None:
      rollout_key, replay_key = jax.random.split(rollout_key)
      first = self.replay.sample(examples, replay_key, self.sampling)
      replayed = (first.rows,)
    batch = self.scorer.sample(self.to_sampling_layout(state.params), examples, rollout_key,
                               self.sampling, first_attempts=first)
    rewards = self.scorer.rows.to_devices((batch.r1, batch.r2), len(examples))
    state, update_metrics = self.step_fn(state, self.reference, batch.rollout, *rewards,
                                         update_key, *replayed)
    metrics = _host_metrics(update_metrics)
    per_row = self.scorer.row_statistics(batch)
    sampled, checksum = batch_metrics(per_row, 'train')
    if self.replay is None:
      metrics.update(sampled)
    else:
      rows = self.replay.rows(len(examples))
      for name, selected in (('train', ~rows), ('train_replayed', rows)):
        if selected.any():
          metrics.update(batch_metrics({k: v[selected] for k, v in per_row.items()}, name)[0])
    return state, metrics, dict(data=fingerprint(e.id for e in examples), samples=checksum)


def collect_self_sft_traces(phase, scorer: RolloutScorer, params, sampling: SamplingParams,
                            examples_of: Callable[[int], list], key_of: Callable[[int], Any],
                            settings, seed: int, log: Callable[[str], None],
                            log_every: int) -> tuple[list, dict[str, float]]:
  """The traces of a ``star`` or ``pair_sft`` phase, and the mean metrics of the rollouts
  they came from (prefix ``sample/``, with ``sample/traces``).

  Samples ``phase.steps`` scored two-attempt rollout batches of the current model (the same
  pairs on every process) and builds the phase's traces from them (``self_sft``).

  Args:
    phase: the star or pair_sft phase.
    scorer: samples and scores two-attempt rollouts.
    params: the policy in the sampler's layout.
    sampling: the rollout temperature and top-p.
    examples_of, key_of: the prompts and the PRNG key of the i-th batch.
    settings: ``config.self_sft``.
    seed: Pair-SFT's pairing seed.
    log, log_every: progress lines, every ``log_every`` batches.
  """
  num_batches, label = phase.steps, phase.kind
  pairs: list[self_sft.ScoredPair] = []
  totals: dict[str, float] = {}
  start = time.perf_counter()
  for i in range(num_batches):
    examples = examples_of(i)
    batch = scorer.sample(params, examples, key_of(i), sampling)
    per_row = scorer.row_statistics(batch)
    for name, value in batch_metrics(per_row, 'sample')[0].items():
      totals[name] = totals.get(name, 0.0) + value / num_batches
    pairs += [self_sft.ScoredPair(e, a, b, float(x), float(y)) for e, (a, b), x, y in
              zip(examples, scorer.all_texts(batch), per_row['r1'], per_row['r2'])]
    if (i + 1) % log_every == 0 or i + 1 == num_batches:
      log(f'   [{label} sampling {i + 1}/{num_batches}] {len(pairs)} rollouts '
          f'({time.perf_counter() - start:.0f}s)')
  traces = self_sft.build_traces(phase.kind, pairs, settings.keep_correct_to_correct, seed)
  totals['sample/traces'] = float(len(traces))
  log(f'   {phase.kind}: {len(traces)} traces from {len(pairs)} rollouts (attempt 1 right '
      f'{totals["sample/reward_t1"]:.3f}, attempt 2 right {totals["sample/reward_t2"]:.3f})')
  return traces, totals
