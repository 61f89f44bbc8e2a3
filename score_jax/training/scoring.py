"""Sample and score: the path from problems to rewarded two-attempt rollouts.

Training and evaluation run the same pipeline, so it is written once here::

    examples ─► prompts (this process's rows) ─► global arrays ─► jitted rollout
        ─► this process's rows ─► attempt texts ─► task rewards ─► per-row statistics

In a multi-process run (a TPU slice) every process packs, decodes and scores only its own
rows of the batch (``score_jax.distributed``; a code sandbox is costly), and the per-row
statistics are then gathered so that every process computes the same metrics. In a
single-process run every row is local and nothing is gathered.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np

from score_jax import distributed
from score_jax import metrics as sc_metrics
from score_jax.model import Decoder
from score_jax.sampling import FirstAttempts, SamplingParams, make_rollout_fn
from score_jax.sharding import MeshRules
from score_jax.trajectory import Rollout, RolloutSpec, attempt_texts


class BatchRows:
  """How a batch's rows are split over processes: the rows this one handles, and moving
  batch-major arrays between its host and the global device arrays."""

  def __init__(self, mesh_rules: MeshRules):
    self._rules = mesh_rules
    self._row_cache: dict[int, np.ndarray] = {}

  def sharding(self, shape: tuple[int, ...]):
    """The sharding of a batch-major array: rows split over the mesh axes of 'batch'."""
    return self._rules.sharding(('batch',) + (None,) * (len(shape) - 1), shape)

  def local(self, batch_size: int) -> np.ndarray:
    """The rows of a batch this process packs, decodes and scores (all on one process)."""
    if batch_size not in self._row_cache:
      self._row_cache[batch_size] = distributed.row_indices(self.sharding((batch_size,)),
                                                            (batch_size,))
    return self._row_cache[batch_size]

  def to_devices(self, tree, batch_size: int):
    """Global arrays of ``batch_size`` rows from host arrays of this process's rows."""
    return distributed.put_rows(tree, batch_size, self.sharding)

  def gather(self, tree, batch_size: int):
    """Every process's rows of host arrays, on every process, in batch order."""
    return distributed.gather_rows(tree, batch_size, self.sharding)


@dataclasses.dataclass(frozen=True)
class ScoredBatch:
  """A sampled batch: the rollout (global arrays) and this process's rows of it, decoded and
  scored. Rows past ``num_scored`` (padding copies of a short last batch) get reward 0."""

  rollout: Rollout
  local_rollout: Rollout
  examples: list
  attempts1: list[str]
  attempts2: list[str]
  r1: np.ndarray  # [local rows] float32
  r2: np.ndarray  # [local rows] float32; zeros for single-turn rollouts

  @property
  def batch_size(self) -> int:
    return self.rollout.tokens.shape[0]


class RolloutScorer:
  """Samples rollouts of examples with one compiled rollout and scores them with the task."""

  def __init__(self, experiment, model: Decoder, spec: RolloutSpec):
    """
    Args:
      experiment: the ``Experiment`` (task, tokenizer, prompts).
      model: the decoder under the sampling rules.
      spec: the slot layout (two turns or one).
    """
    self.experiment = experiment
    self.spec = spec
    self.rows = BatchRows(model.mesh_rules)
    self._rollout = make_rollout_fn(model, spec)

  def sample(self, params, examples: Sequence[Any], key, sampling: SamplingParams,
             num_scored: int | None = None,
             first_attempts: FirstAttempts | None = None) -> ScoredBatch:
    """Samples one batch of rollouts of ``examples`` and scores this process's rows.

    Args:
      params: the policy parameters (in any layout the rollout accepts).
      examples: one per row of the batch.
      key: the rollout's PRNG key.
      sampling: temperature and top-p.
      num_scored: score only rows below this (default: all).
      first_attempts: rows that replay a given attempt 1 (``first_attempt_slots``) instead
        of sampling it.
    """
    exp, batch_size = self.experiment, len(examples)
    rows = self.rows.local(batch_size)
    local_examples = [examples[i] for i in rows]
    prompts = self.rows.to_devices(exp.pack_prompts(local_examples), batch_size)
    if first_attempts is None:  # the program compiled without a replay, as before it existed
      rollout = self._rollout(params, *prompts, key, sampling)
    else:
      rollout = self._rollout(params, *prompts, key, sampling, first_attempts)
    if not np.array_equal(distributed.row_indices(rollout.tokens.sharding, rollout.tokens.shape),
                          rows):
      raise ValueError(f'The rollout\'s rows are laid out as {rollout.tokens.sharding}, not as '
                       f'the batch sharding the prompts were split by.')
    local_rollout = distributed.local_rows(rollout)
    pairs = attempt_texts(local_rollout, exp.tokenizer, self.spec.stop_tokens)
    attempts1, attempts2 = [a for a, _ in pairs], [b for _, b in pairs]
    scored = [i for i, row in enumerate(rows) if num_scored is None or row < num_scored]
    r1, r2 = np.zeros(len(rows), np.float32), np.zeros(len(rows), np.float32)
    if scored:
      scored_examples = [local_examples[i] for i in scored]
      r1[scored] = exp.task.score_batch(scored_examples, [attempts1[i] for i in scored])
      if self.spec.two_turns:
        r2[scored] = exp.task.score_batch(scored_examples, [attempts2[i] for i in scored])
    return ScoredBatch(rollout, local_rollout, local_examples, attempts1, attempts2, r1, r2)

  def first_attempt_slots(self, params, examples: Sequence[Any], key,
                          sampling: SamplingParams):
    """The attempt-1 slots [B, attempt1_len] (global, unscored) of a rollout of
    ``examples`` by ``params``: what ``sample``'s ``first_attempts`` replays."""
    batch_size = len(examples)
    local_examples = [examples[i] for i in self.rows.local(batch_size)]
    prompts = self.rows.to_devices(self.experiment.pack_prompts(local_examples), batch_size)
    start = self.spec.attempt1_start
    return self._rollout(params, *prompts, key, sampling).tokens[
        :, start:start + self.spec.attempt1_len]

  def row_statistics(self, batch: ScoredBatch) -> dict[str, np.ndarray]:
    """Per-row values of every process's rows, in batch order: both rewards, the tokens in
    the row, a checksum of its tokens and, with two turns, the edit-distance ratio between
    the attempts, whether attempt 2 is attempt 1 verbatim, and whether their final answers
    differ."""
    tokens = np.asarray(batch.local_rollout.tokens)
    per_row = dict(r1=batch.r1, r2=batch.r2,
                   length=np.asarray(batch.local_rollout.valid).sum(axis=1),
                   checksum=np.array([zlib.crc32(row.tobytes()) for row in tokens], np.uint32))
    if self.spec.two_turns:
      extract = self.experiment.task.extract_answer
      per_row['edit_ratio'] = sc_metrics.edit_distance_ratios(batch.attempts1, batch.attempts2)
      per_row['identical'] = np.array([a == b for a, b in zip(batch.attempts1, batch.attempts2)],
                                      bool)
      per_row['differ'] = sc_metrics.answers_differ([extract(a) for a in batch.attempts1],
                                                    [extract(b) for b in batch.attempts2])
    return self.rows.gather(per_row, batch.batch_size)

  def all_texts(self, batch: ScoredBatch) -> list[tuple[str, str]]:
    """(attempt 1, attempt 2) of every row of the batch, on every process."""
    if len(batch.examples) == batch.batch_size:
      return list(zip(batch.attempts1, batch.attempts2))
    return attempt_texts(distributed.gather(batch.rollout), self.experiment.tokenizer,
                         self.spec.stop_tokens)


def batch_metrics(per_row: dict[str, np.ndarray], prefix: str) -> tuple[dict[str, float], int]:
  """A sampled batch's logged metrics from its ``row_statistics``: mean rewards; with two
  turns the self-correction metrics, the fractions of the four outcome pairs (``delta_i2c``
  and ``delta_c2i`` are two of them; ``pairs_c2c``, ``pairs_i2i`` the others) and the edit
  statistics; tokens per row; and one checksum of every sampled token, so that runs can be
  compared sample for sample."""
  out = {f'{prefix}/reward_t1': float(per_row['r1'].mean()),
         f'{prefix}/reward_t2': float(per_row['r2'].mean())}
  if 'edit_ratio' in per_row:
    out.update({f'{prefix}/{k}': v for k, v in sc_metrics.self_correction_metrics(
        per_row['r1'], per_row['r2']).items()})
    right1, right2 = per_row['r1'] >= 0.5, per_row['r2'] >= 0.5
    out[f'{prefix}/pairs_c2c'] = float(np.mean(right1 & right2))
    out[f'{prefix}/pairs_i2i'] = float(np.mean(~right1 & ~right2))
    out[f'{prefix}/edit_ratio'] = float(per_row['edit_ratio'].mean())
    out[f'{prefix}/identical_rate'] = float(per_row['identical'].mean())
    out[f'{prefix}/different_answer_rate'] = float(per_row['differ'].mean())
  out[f'{prefix}/tokens_per_row'] = float(per_row['length'].mean())
  return out, zlib.crc32(per_row['checksum'].astype(np.uint32).tobytes())
