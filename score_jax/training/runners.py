"""What one step of a phase does, for each kind of phase.

A runner turns a phase step's index into an update: it picks the step's data (by index
alone, so a resumed run sees the same data), runs the jitted step and returns the new state
with the step's metrics. The trainer's loop is the same for every kind:

* ``SFTRunner``: teacher-forced steps over encoded traces (the warm start, and the STaR and
  Pair-SFT phases once their traces are built);
* ``RLRunner``: sample a batch of rollouts with the current policy, score it, one RL update.

``collect_self_sft_traces`` is the sampling half of a STaR or Pair-SFT phase: the rollouts
its traces are built from, and the traces.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax

from score_jax import distributed
from score_jax.sampling import SamplingParams
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


class RLRunner:
  """One batch of rollouts from the current policy, scored, then one RL update per step."""

  def __init__(self, step_fn, scorer: RolloutScorer, sampling: SamplingParams, reference,
               to_sampling_layout: Callable, examples_of: Callable[[int], list],
               num_updates: int):
    """
    Args:
      step_fn: the jitted RL update (``steps.make_rl_step``).
      scorer: samples and scores the rollouts (one or two turns, as the stage needs).
      sampling: the rollout temperature and top-p.
      reference: the frozen reference parameters of the KL penalty.
      to_sampling_layout: the policy parameters in the sampler's layout.
      examples_of: the prompts of a phase step (each repeated k times).
      num_updates: the phase's steps.
    """
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
    batch = self.scorer.sample(self.to_sampling_layout(state.params), examples, rollout_key,
                               self.sampling)
    rewards = self.scorer.rows.to_devices((batch.r1, batch.r2), len(examples))
    state, update_metrics = self.step_fn(state, self.reference, batch.rollout, *rewards,
                                         update_key)
    metrics = _host_metrics(update_metrics)
    sampled, checksum = batch_metrics(self.scorer.row_statistics(batch), 'train')
    metrics.update(sampled)
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
