"""Policy-gradient losses and KL estimators: small pure functions over [B, T] arrays.

Everything is per token. ``mask`` arrays select the tokens a term applies to, and every
mean is a masked mean over the whole batch's tokens (a token-level average: long attempts
weigh more than short ones, as in most RL-for-LLM code).

Two guards keep a value at a position no term selects out of the loss: masked means select
with ``where`` (multiplying by a 0/1 mask turns an infinite value into NaN, not 0), and a
log-ratio is clipped to ±``LOG_RATIO_LIMIT`` before ``exp``, so neither the value nor the
gradient of a ratio can overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

KL_ESTIMATORS = ('k1', 'k2', 'k3')

# |log ratio| above this is clipped before exp: e^20 ≈ 5e8 is far beyond any ratio PPO keeps
# (its clip is 1 ± ε), and far below float32's overflow at e^88.
LOG_RATIO_LIMIT = 20.0


def masked_mean(x: Array, mask: Array, denominator: Array | None = None) -> Array:
  """The sum of ``x`` where ``mask``, over max(denominator, 1); the denominator defaults to
  the number of masked positions. Positions outside the mask contribute exactly 0, even when
  ``x`` is infinite or NaN there."""
  mask = mask.astype(bool)
  if denominator is None:
    denominator = jnp.sum(mask.astype(jnp.float32))
  return jnp.sum(jnp.where(mask, x.astype(jnp.float32), 0.0)) / jnp.maximum(denominator, 1.0)


def importance_ratio(logp: Array, old_logp: Array) -> Array:
  """π/π_old = exp(log π − log π_old), with the log-ratio clipped to ±``LOG_RATIO_LIMIT``."""
  log_ratio = logp.astype(jnp.float32) - old_logp.astype(jnp.float32)
  return jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))


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
    return jnp.exp(jnp.minimum(log_ratio, LOG_RATIO_LIMIT)) - 1.0 - log_ratio
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
  ratio = importance_ratio(logp, jax.lax.stop_gradient(old_logp))
  clipped_ratio = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
  surrogate = jnp.minimum(ratio * advantages, clipped_ratio * advantages)
  was_clipped = (ratio * advantages) > (clipped_ratio * advantages)
  return (-masked_mean(surrogate, mask, denominator),
          masked_mean(was_clipped.astype(jnp.float32), mask))
