"""Policy-gradient losses and KL estimators: small pure functions over [B, T] arrays.

Everything is per token. ``mask`` arrays select the tokens a term applies to, and every
mean is a masked mean over the whole batch's tokens (a token-level average: long attempts
weigh more than short ones, as in most RL-for-LLM code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

KL_ESTIMATORS = ('k1', 'k2', 'k3')


def masked_mean(x: Array, mask: Array, denominator: Array | None = None) -> Array:
  """sum(x * mask) / max(denominator, 1); the denominator defaults to sum(mask)."""
  mask = mask.astype(jnp.float32)
  if denominator is None:
    denominator = jnp.sum(mask)
  return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(denominator, 1.0)


def kl_divergence(logp: Array, ref_logp: Array, estimator: str = 'k3') -> Array:
  """Per-token estimates of KL(π ‖ π_ref) from tokens sampled from π, in fp32.

  With log r = log π_ref(y) − log π(y):
    k1 = −log r (unbiased, high variance, can be negative),
    k2 = ½ (log r)² (biased, low variance),
    k3 = r − 1 − log r (unbiased and always >= 0; its gradient is the usual KL penalty
         gradient used by GRPO-style losses).
  (Schulman, "Approximating KL divergence", 2020.)
  """
  log_ratio = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
  if estimator == 'k1':
    return -log_ratio
  if estimator == 'k2':
    return 0.5 * jnp.square(log_ratio)
  if estimator == 'k3':
    # Clip before exp: a token the reference finds far likelier must not overflow.
    return jnp.exp(jnp.minimum(log_ratio, 20.0)) - 1.0 - log_ratio
  raise ValueError(f'Unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}.')


def reinforce_loss(logp: Array, advantages: Array, mask: Array,
                   denominator: Array | None = None) -> Array:
  """−mean(A · log π(y)) over masked tokens; A is treated as a constant."""
  return -masked_mean(jax.lax.stop_gradient(advantages) * logp, mask, denominator)


def ppo_clip_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array,
                  clip_epsilon: float, denominator: Array | None = None):
  """PPO's clipped surrogate, −mean(min(ρA, clip(ρ, 1 ± ε)A)) with ρ = π/π_old.

  Returns:
    ``(loss, clip_fraction)``: the fraction of masked tokens whose ratio was clipped.
  """
  advantages = jax.lax.stop_gradient(advantages)
  ratio = jnp.exp(logp - jax.lax.stop_gradient(old_logp))
  clipped_ratio = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
  surrogate = jnp.minimum(ratio * advantages, clipped_ratio * advantages)
  was_clipped = (ratio * advantages) > (clipped_ratio * advantages)
  return (-masked_mean(surrogate, mask, denominator),
          masked_mean(was_clipped.astype(jnp.float32), mask))
