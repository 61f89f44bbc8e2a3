"""Per-sequence advantages from scalar rewards of k samples per prompt.

Rows of a batch are grouped by prompt: ``[p0 s0, p0 s1, …, p0 s(k−1), p1 s0, …]`` (each
prompt repeated k times in a row). The baseline of a sample comes from its own group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

BASELINES = ('rloo', 'mean', 'none')


def group_advantages(rewards: Array, num_samples: int, baseline: str = 'rloo',
                     normalize_std: bool = False, condition: Array | None = None) -> Array:
  """Advantages [B] for rewards [B] grouped in blocks of ``num_samples``.

  Args:
    rewards: [B] scalar rewards, B a multiple of ``num_samples``.
    num_samples: k, samples per prompt.
    baseline: 'rloo' (leave-one-out: the mean reward of the other k − 1 samples; Ahmadian
      et al., 2024), 'mean' (the group mean, including the sample itself), or 'none'.
    normalize_std: divide by the group's reward standard deviation (GRPO style).
    condition: [B] values of something sampled before the reward's own action (e.g. attempt
      1's reward, for attempt 2's advantage). The baseline then comes from the group's samples
      with the same value (for 'rloo', the others with that value; a sample with none falls
      back to all the others). Any function of what came before an action is a valid
      baseline for it, so the gradient's expectation is unchanged; what the condition explains
      of the reward no longer adds to its variance.
  """
  if baseline not in BASELINES:
    raise ValueError(f'Unknown baseline {baseline!r}; choose from {BASELINES}.')
  if rewards.shape[0] % num_samples:
    raise ValueError(f'The batch of {rewards.shape[0]} rows is not a whole number of groups '
                     f'of {num_samples} samples.')
  r = rewards.astype(jnp.float32).reshape(-1, num_samples)
  if baseline == 'none':
    base = jnp.zeros_like(r)
  else:
    if baseline == 'rloo' and num_samples < 2:
      raise ValueError('The leave-one-out baseline needs at least 2 samples per prompt.')
    # peers[g, i, j]: sample j's reward goes into sample i's baseline.
    peers = jnp.ones((num_samples, num_samples), bool)
    if baseline == 'rloo':
      peers = peers & ~jnp.eye(num_samples, dtype=bool)
    peers = jnp.broadcast_to(peers, (r.shape[0], num_samples, num_samples))
    if condition is not None:
      c = condition.reshape(-1, num_samples)
      same = peers & (c[:, :, None] == c[:, None, :])
      peers = jnp.where(jnp.any(same, axis=2, keepdims=True), same, peers)
    base = jnp.sum(peers * r[:, None, :], axis=2) / jnp.sum(peers, axis=2)
  advantages = r - base
  if normalize_std:
    advantages = advantages / (jnp.std(r, axis=1, keepdims=True) + 1e-6)
  return advantages.reshape(-1)
