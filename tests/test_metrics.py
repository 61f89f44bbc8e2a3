"""Self-correction metrics against hand-computed values, and their invariants."""

import random

import numpy as np
import pytest

from score_jax import metrics


def _levenshtein_table(a, b) -> int:
  """The textbook O(len(a)·len(b)) dynamic program, as the reference."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[-1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def test_hand_computed_outcomes():
  # 8 problems: (t1, t2) = cc, cc, ci, ic, ic, ii, ii, ic.
  t1 = [1, 1, 1, 0, 0, 0, 0, 0]
  t2 = [1, 1, 0, 1, 1, 0, 0, 1]
  m = metrics.self_correction_metrics(t1, t2)
  assert m == pytest.approx(dict(acc_t1=3 / 8, acc_t2=5 / 8, delta=2 / 8, delta_i2c=3 / 8,
                                 delta_c2i=1 / 8))


def test_all_wrong_to_right_and_booleans_and_rewards():
  m = metrics.self_correction_metrics(np.array([False, False]), np.array([True, True]))
  assert m == dict(acc_t1=0.0, acc_t2=1.0, delta=1.0, delta_i2c=1.0, delta_c2i=0.0)
  # Float rewards in [0, 1] count as correct from 0.5.
  m = metrics.self_correction_metrics([1.0, 0.0, 1.0], [0.0, 0.0, 1.0])
  assert m['delta_c2i'] == pytest.approx(1 / 3) and m['acc_t2'] == pytest.approx(1 / 3)


def test_bad_outcomes_are_rejected():
  with pytest.raises(ValueError, match='one outcome per problem'):
    metrics.self_correction_metrics([1, 0], [1])
  with pytest.raises(ValueError, match='0/1 outcomes'):
    metrics.self_correction_metrics([2, 0], [1, 0])
  assert np.isnan(metrics.self_correction_metrics([], [])['acc_t1'])


def test_delta_is_i2c_minus_c2i_always():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 50))
    t1, t2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
    m = metrics.self_correction_metrics(t1, t2)
    assert m['delta'] == pytest.approx(m['delta_i2c'] - m['delta_c2i'])
    assert m['delta'] == pytest.approx(m['acc_t2'] - m['acc_t1'])


@pytest.mark.parametrize('a, b, expected', [
    ('', '', 0), ('abc', '', 3), ('', 'ab', 2), ('kitten', 'sitting', 3),
    ('flaw', 'lawn', 2), ('47+38=85', '47+38=75', 1), ([1, 2, 3], [1, 3], 1),
])
def test_levenshtein_hand_cases(a, b, expected):
  assert metrics.levenshtein(a, b) == expected
  assert metrics.levenshtein(b, a) == expected


def test_levenshtein_matches_the_table_on_random_strings():
  rng = random.Random(0)
  for _ in range(500):
    a = ''.join(rng.choice('abc') for _ in range(rng.randint(0, 80)))
    b = ''.join(rng.choice('abcd') for _ in range(rng.randint(0, 80)))
    assert metrics.levenshtein(a, b) == _levenshtein_table(a, b)


def test_edit_ratio_and_different_answers():
  ratios = metrics.edit_distance_ratios(['abc', 'abc', ''], ['abc', 'xyz', ''])
  np.testing.assert_allclose(ratios, [0.0, 3 / 6, 0.0])
  differ = metrics.answers_differ(['1', '2', None, None], ['1', '3', None, '4'])
  np.testing.assert_array_equal(differ, [False, True, False, True])
