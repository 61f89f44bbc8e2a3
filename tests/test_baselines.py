"""The STaR and Pair-SFT training sets, built from hand-made scored samples."""

import pytest

from score_jax.training.self_sft import ScoredPair, pair_sft_traces, star_traces
from score_jax.tasks.base import Example, Trace

P = Example(id='p', problem='1+1', answer='2')
Q = Example(id='q', problem='2+2', answer='4')
R = Example(id='r', problem='3+3', answer='6')

SAMPLES = [
    ScoredPair(P, 'A: 3', 'A: 2', 0.0, 1.0),  # wrong → right: a successful revision
    ScoredPair(P, 'A: 2', 'A: 2', 1.0, 1.0),  # right → right
    ScoredPair(P, 'A: 2', 'A: 5', 1.0, 0.0),  # right → wrong
    ScoredPair(Q, 'A: 5', 'A: 7', 0.0, 0.0),  # wrong → wrong
    ScoredPair(Q, 'A: 9', 'A: 4', 0.0, 1.0),  # wrong → right
    ScoredPair(R, 'A: 1', 'A: 1', 0.0, 0.0),  # never right: no Pair-SFT pair
]


def test_star_keeps_only_successful_revisions():
  assert star_traces(SAMPLES) == [Trace(P, 'A: 3', 'A: 2'), Trace(Q, 'A: 9', 'A: 4')]


def test_star_variant_also_keeps_right_to_right():
  assert star_traces(SAMPLES, keep_correct_to_correct=True) == [
      Trace(P, 'A: 3', 'A: 2'), Trace(P, 'A: 2', 'A: 2'), Trace(Q, 'A: 9', 'A: 4')]


def test_pair_sft_pairs_each_distinct_wrong_response_with_a_right_one():
  traces = pair_sft_traces(SAMPLES, seed=0)
  # P: wrong responses 'A: 3', 'A: 5'; its only right response is 'A: 2'.
  # Q: wrong 'A: 5', 'A: 7', 'A: 9'; right 'A: 4'. R: no right response, so nothing.
  assert traces == [Trace(P, 'A: 3', 'A: 2'), Trace(P, 'A: 5', 'A: 2'),
                    Trace(Q, 'A: 5', 'A: 4'), Trace(Q, 'A: 7', 'A: 4'),
                    Trace(Q, 'A: 9', 'A: 4')]


def test_pair_sft_draws_the_right_response_at_random_but_reproducibly():
  samples = [ScoredPair(P, f'A: {w}', 'A: 2', 0.0, 1.0) for w in range(3, 13)] + [
      ScoredPair(P, 'A: 2', 'A: 2.0', 1.0, 1.0)]  # Two distinct right responses.
  first = pair_sft_traces(samples, seed=1)
  assert first == pair_sft_traces(samples, seed=1)
  assert {t.attempt2 for t in first} == {'A: 2', 'A: 2.0'}  # Both get drawn.
  assert [t.attempt1 for t in first] == [f'A: {w}' for w in range(3, 13)]


def test_non_binary_rewards_are_refused():
  with pytest.raises(ValueError, match='binary reward'):
    ScoredPair(P, 'a', 'b', 0.5, 1.0)
