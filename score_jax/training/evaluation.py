"""Self-correction evaluation: two attempts per held-out problem, scored, in one table row.

Kumar et al. (2024) evaluate with greedy decoding and report, as fractions of all problems:
Acc@t1, Acc@t2, Δ(t1, t2), Δ^{i→c} and Δ^{c→i}. The same class serves held-out evaluation
during training and the ``score_jax.evaluate`` command.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from score_jax import metrics as sc_metrics
from score_jax.sampling import FirstAttempts, SamplingParams
from score_jax.training.scoring import RolloutScorer


class Evaluator:
  """Runs greedy (or sampled) two-turn rollouts on examples and computes the table row.

  The rollout compiles once per batch size; the last partial batch is padded with copies of
  its first example (the copies are neither scored nor counted), so every call reuses that
  compilation. In a multi-process run every process scores only its own rows of each batch;
  the per-problem outcomes are gathered, so every process returns the same metrics.
  """

  def __init__(self, experiment, batch_size: int):
    self.experiment = experiment
    self.batch_size = batch_size
    self.scorer = RolloutScorer(experiment, experiment.model('sample'), experiment.spec)

  def first_attempts(self, params, examples: Sequence[Any],
                     sampling: SamplingParams | None = None, seed: int = 0) -> list:
    """The attempt-1 slots of every batch that ``run`` on the same arguments would decode:
    what ``run(..., replay=...)`` gives another model as its attempt 1."""
    sampling = sampling or SamplingParams.greedy()
    return [self.scorer.first_attempt_slots(params, chunk, jax.random.key(seed + begin),
                                            sampling)
            for begin, chunk, _ in self._batches(examples)]

  def _batches(self, examples):
    """(first index, the batch padded with copies of its first example, real rows)."""
    size = self.batch_size
    for begin in range(0, len(examples), size):
      chunk = list(examples[begin:begin + size])
      real = len(chunk)
      yield begin, chunk + [chunk[0]] * (size - real), real

  def run(self, params, examples: Sequence[Any], sampling: SamplingParams | None = None,
          seed: int = 0, samples: list | None = None,
          after_batch: Callable[[int, int, float], None] | None = None,
          replay: Sequence[Any] | None = None) -> dict:
    """Returns the metrics dict (acc_t1, acc_t2, delta, delta_i2c, delta_c2i, …).

    Args:
      params: the model's parameters.
      examples: the problems.
      sampling: decoding settings (default: greedy).
      seed: the sampling seed (ignored when greedy).
      samples: when a list, one dict per problem (id, both attempts, both rewards and,
        when the task names kinds of attempt, ``Task.attempt_kind`` of each) is appended to
        it.
      after_batch: called after every batch with (problems done, problems, seconds): to
        report progress, or to stop (by raising) when the run is asked to.
      replay: ``first_attempts`` of another model on the same examples: every problem's
        attempt 1 is then that model's, and only attempt 2 is this model's (what attempt 2
        makes of a given attempt 1, apart from how attempt 1 has changed).
    """
    sampling = sampling or SamplingParams.greedy()
    per_row, texts = [], []
    start = time.perf_counter()
    if replay is not None:  # Every row of every batch replays its attempt 1.
      every_row = self.scorer.rows.to_devices(
          np.ones(len(self.scorer.rows.local(self.batch_size)), bool), self.batch_size)
    for index, (begin, chunk, real) in enumerate(self._batches(examples)):
      first = None
      if replay is not None:
        first = FirstAttempts(tokens=replay[index], rows=every_row)
      batch = self.scorer.sample(params, chunk, jax.random.key(seed + begin), sampling,
                                 num_scored=real, first_attempts=first)
      per_row.append({k: v[:real] for k, v in self.scorer.row_statistics(batch).items()})
      if samples is not None:  # Every problem's texts (decoding is cheap; scoring is not).
        texts += self.scorer.all_texts(batch)[:real]
      if after_batch is not None:
        after_batch(begin + real, len(examples), time.perf_counter() - start)
    values = {k: np.concatenate([v[k] for v in per_row]) for k in per_row[0]}
    r1, r2 = values['r1'], values['r2']
    if samples is not None:
      kind = self.experiment.task.attempt_kind
      for e, (a, b), x, y in zip(examples, texts, r1, r2):
        sample = dict(id=str(e.id), attempt1=a, attempt2=b, reward1=float(x), reward2=float(y))
        kinds = kind(e, a), kind(e, b)
        if kinds != (None, None):
          sample.update(kind1=kinds[0], kind2=kinds[1])
        samples.append(sample)
    result = sc_metrics.self_correction_metrics(r1, r2)
    result['edit_ratio'] = float(np.mean(values['edit_ratio']))
    result['identical_rate'] = float(values['identical'].mean())
    result['different_answer_rate'] = float(values['differ'].mean())
    result['num_problems'] = len(examples)
    result['eval_s'] = time.perf_counter() - start
    return result


def held_out_problems(test_examples: Sequence, requested: int | None, default: int,
                      flag: str = '--num_problems') -> Sequence:
  """The first ``requested`` held-out problems (None or 0: the config's ``default``, at most
  the split). A request beyond the split is an error, not a smaller table under its name;
  ``flag`` names the request in it."""
  if requested and requested < 0:
    raise ValueError(f'{flag} must be positive (0: the config\'s); got {requested}.')
  if requested and requested > len(test_examples):
    raise ValueError(f'{flag}={requested}, but the held-out split has '
                     f'{len(test_examples)} problems (config.task.test_size).')
  return test_examples[:requested or default]
