"""Inference-time scaling: parallel sampling with majority voting vs self-correction.

Kumar et al. (2024, Figure 1 right) spend a budget of 2K samples per problem in two ways:
majority voting ("self-consistency") over 2K independent first attempts, or K independent
first attempts each followed by one self-correction round, voting over the K second attempts.
``sample_votes`` draws the samples once (n two-attempt rollouts per problem at temperature
1); ``scaling_curve`` scores both ways for each budget from the same samples.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from score_jax.sampling import SamplingParams


def majority_vote_correct(answers: Sequence[str | None], rewards: Sequence[float]) -> bool:
  """Whether the most frequent answer is a right one.

  ``answers`` are the extracted final answers of one problem's responses (None where a
  response has none: it casts no vote) and ``rewards`` their binary rewards. Ties go to the
  answer seen first. No votes at all count as wrong.
  """
  if len(answers) != len(rewards):
    raise ValueError(f'{len(answers)} answers but {len(rewards)} rewards.')
  votes = collections.Counter(a for a in answers if a is not None)
  if not votes:
    return False
  top = max(votes.values())
  winner = next(a for a in answers if a is not None and votes[a] == top)
  return any(r == 1.0 for a, r in zip(answers, rewards) if a == winner)


def scaling_curve(answers1: np.ndarray, rewards1: np.ndarray, answers2: np.ndarray,
                  rewards2: np.ndarray, budgets: Sequence[int]) -> list[dict[str, float]]:
  """Accuracy of both ways of spending each budget (an even number of samples).

  Args:
    answers1, rewards1: [P, n] attempt-1 answers (object array, None for none) and rewards
      of n two-attempt rollouts per problem.
    answers2, rewards2: [P, n] the same for attempt 2.
    budgets: samples per problem, each even and at most n (the parallel way uses that many
      first attempts; the sequential way budget / 2 rollouts of two attempts each).

  Returns:
    One dict per budget: ``budget``, ``parallel`` (majority over ``budget`` first attempts)
    and ``sequential`` (majority over the second attempts of ``budget // 2`` rollouts).
  """
  problems, n = answers1.shape
  rows = []
  for budget in budgets:
    if budget % 2 or not 2 <= budget <= n:
      raise ValueError(f'budget {budget} must be even and between 2 and the {n} samples drawn.')
    k = budget // 2
    parallel = np.mean([majority_vote_correct(answers1[p, :budget], rewards1[p, :budget])
                        for p in range(problems)])
    sequential = np.mean([majority_vote_correct(answers2[p, :k], rewards2[p, :k])
                          for p in range(problems)])
    rows.append(dict(budget=budget, parallel=float(parallel), sequential=float(sequential)))
  return rows


def sample_votes(evaluator, params, examples: Sequence[Any], num_samples: int,
                 temperature: float = 1.0, seed: int = 0, progress=None):
  """(answers1, rewards1, answers2, rewards2), each [P, num_samples], from ``num_samples``
  two-attempt rollouts per problem drawn at ``temperature`` with an ``Evaluator``."""
  task = evaluator.experiment.task
  shape = (len(examples), num_samples)
  answers1, answers2 = np.empty(shape, object), np.empty(shape, object)
  rewards1, rewards2 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
  sampling = SamplingParams.create(temperature)
  for j in range(num_samples):
    samples: list[dict] = []
    evaluator.run(params, examples, sampling, seed=seed + 7919 * (j + 1), samples=samples)
    for p, s in enumerate(samples):
      answers1[p, j] = task.extract_answer(s['attempt1'])
      answers2[p, j] = task.extract_answer(s['attempt2'])
      rewards1[p, j], rewards2[p, j] = s['reward1'], s['reward2']
    if progress is not None:
      progress(j + 1, num_samples)
  return answers1, rewards1, answers2, rewards2
