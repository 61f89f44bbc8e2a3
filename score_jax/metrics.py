"""Self-correction metrics of the SCoRe paper (Kumar et al., 2024, arXiv:2409.12917, §3 and §6).

All rates are fractions of *all* problems, as in the paper's tables:

  Acc@t1, Acc@t2          accuracy of attempt 1 and attempt 2
  Δ(t1, t2)               Acc@t2 − Acc@t1
  Δ^{i→c}                 wrong at attempt 1, right at attempt 2
  Δ^{c→i}                 right at attempt 1, wrong at attempt 2
                          (so Δ = Δ^{i→c} − Δ^{c→i} exactly)

and two measures of how much attempt 2 changes attempt 1, which expose the "behaviour
collapse" the paper describes (attempt 2 copies attempt 1): the edit-distance ratio
(Levenshtein distance / total length of both attempts) and the rate at which the final answer
changes. Pure numpy/Python functions of per-problem values; a table over several batches is
the metric of their concatenated values (``training.evaluation``).

``OUTCOME_NAMES`` is the one list of the outcome metrics and the names tables give them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The outcome metrics in table order, with their column names (Kumar et al., 2024, Table 2).
OUTCOME_NAMES = {'acc_t1': 'Acc@t1', 'acc_t2': 'Acc@t2', 'delta': 'Δ(t1,t2)',
                 'delta_i2c': 'Δi→c', 'delta_c2i': 'Δc→i'}
OUTCOME_KEYS = tuple(OUTCOME_NAMES)


def _as_outcomes(values, name: str) -> np.ndarray:
  """0/1 outcomes as a bool array; rewards in [0, 1] count as correct when ≥ 0.5."""
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  if array.size and (np.isnan(array).any() or array.min() < 0 or array.max() > 1):
    raise ValueError(f'{name} must hold 0/1 outcomes (rewards in [0, 1]); got values in '
                     f'[{np.nanmin(array)}, {np.nanmax(array)}].')
  return array >= 0.5


def outcome_counts(correct_t1, correct_t2) -> dict[str, int]:
  """Integer counts behind every outcome metric: n, c1, c2, i2c, c2i."""
  c1 = _as_outcomes(correct_t1, 'correct_t1')
  c2 = _as_outcomes(correct_t2, 'correct_t2')
  if c1.shape != c2.shape:
    raise ValueError(f'correct_t1 and correct_t2 need one outcome per problem; got '
                     f'{c1.size} and {c2.size}.')
  return dict(n=int(c1.size), c1=int(c1.sum()), c2=int(c2.sum()),
              i2c=int((~c1 & c2).sum()), c2i=int((c1 & ~c2).sum()))


def metrics_from_counts(counts: dict[str, int]) -> dict[str, float]:
  n = counts['n']
  if n == 0:
    return {key: float('nan') for key in OUTCOME_KEYS}
  return dict(acc_t1=counts['c1'] / n, acc_t2=counts['c2'] / n,
              delta=(counts['c2'] - counts['c1']) / n, delta_i2c=counts['i2c'] / n,
              delta_c2i=counts['c2i'] / n)


def self_correction_metrics(correct_t1, correct_t2) -> dict[str, float]:
  """Acc@t1, Acc@t2, Δ, Δ^{i→c}, Δ^{c→i} for one batch of per-problem outcomes.

  Args:
    correct_t1, correct_t2: [N] 0/1 (or bool) outcomes of attempts 1 and 2.
  """
  return metrics_from_counts(outcome_counts(correct_t1, correct_t2))


def levenshtein(a: Sequence | str, b: Sequence | str) -> int:
  """Edit distance (insertions, deletions, substitutions) between two strings or token lists.

  Bit-parallel (Myers 1999, in Hyyrö's 2001 formulation for edit distance): one column of the
  dynamic-programming table is a pair of Python integers used as bit vectors, so the cost is
  O(len(a)) big-integer operations of len(b) bits instead of len(a)·len(b) Python steps —
  fast enough to run on every rollout batch. Elements only need to be hashable.
  """
  if len(a) < len(b):
    a, b = b, a
  m = len(b)
  if m == 0:
    return len(a)
  match_bits: dict = {}
  for i, symbol in enumerate(b):
    match_bits[symbol] = match_bits.get(symbol, 0) | (1 << i)
  full = (1 << m) - 1
  top = 1 << (m - 1)
  plus, minus, distance = full, 0, m  # vertical +1 / −1 deltas of the current column
  for symbol in a:
    eq = match_bits.get(symbol, 0)
    xv = eq | minus
    xh = ((((eq & plus) + plus) & full) ^ plus) | eq
    hplus = minus | (~(xh | plus) & full)
    hminus = plus & xh
    if hplus & top:
      distance += 1
    elif hminus & top:
      distance -= 1
    hplus = ((hplus << 1) | 1) & full
    hminus = (hminus << 1) & full
    plus = hminus | (~(xv | hplus) & full)
    minus = hplus & xv
  return distance


def edit_distance_ratios(attempts1: Sequence, attempts2: Sequence) -> np.ndarray:
  """[N] Levenshtein(a1, a2) / (len(a1) + len(a2)); 0 for two empty attempts.

  0 means attempt 2 copied attempt 1; 1 means they share nothing (the paper's Figure 3).
  """
  if len(attempts1) != len(attempts2):
    raise ValueError(f'Need one attempt 2 per attempt 1; got {len(attempts1)} and '
                     f'{len(attempts2)}.')
  ratios = np.zeros(len(attempts1), np.float64)
  for i, (a, b) in enumerate(zip(attempts1, attempts2)):
    total = len(a) + len(b)
    ratios[i] = levenshtein(a, b) / total if total else 0.0
  return ratios


def answers_differ(answers1: Sequence[str | None], answers2: Sequence[str | None]) -> np.ndarray:
  """[N] bool: attempt 2's final answer differs from attempt 1's (a missing answer is None;
  two missing answers count as the same)."""
  if len(answers1) != len(answers2):
    raise ValueError(f'Need one answer 2 per answer 1; got {len(answers1)} and '
                     f'{len(answers2)}.')
  return np.array([a != b for a, b in zip(answers1, answers2)], bool)
