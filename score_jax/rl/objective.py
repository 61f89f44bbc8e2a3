"""The training objectives: the RL loss of one batch of rollouts, and the SFT loss.

Both recompute per-token log-probs with ``token_logprobs`` (chunked over the sequence),
the same function that checks the sampler, so the policy gradient sees exactly the
quantities the sampler recorded.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from score_jax.model import Decoder, token_logprobs
from score_jax.rl.losses import (importance_ratio, kl_divergence, masked_mean, ppo_clip_loss,
                                 reinforce_loss)
from score_jax.rl.settings import RLSettings
from score_jax.trajectory import ATTEMPT1, ATTEMPT2

Array = jax.Array


@flax.struct.dataclass
class RLBatch:
  """Everything the RL loss needs about a batch of trajectories (all [B, T]).

  Attributes:
    tokens, valid, positions, segments: the rollout.
    old_logp: log-probs under the policy that sampled the batch (PPO's π_old).
    ref_logp: log-probs under the frozen reference (base) model.
    advantages, pg_mask, kl_weights: the stage rule's per-token weights.
  """

  tokens: Array
  valid: Array
  positions: Array
  segments: Array
  old_logp: Array
  ref_logp: Array
  advantages: Array
  pg_mask: Array
  kl_weights: Array


def rl_loss(params, model: Decoder, batch: RLBatch, settings: RLSettings):
  """Policy-gradient loss plus the weighted KL penalty, token-averaged over both attempts.

  Both terms divide by the number of sampled tokens in the batch, so a stage that trains
  only attempt 2 (Stage I) still weighs its attempt-1 KL on the same scale.

  Returns:
    ``(loss, metrics)`` with scalar fp32 metrics.
  """
  logp, entropy = policy_logprobs(params, model, batch, settings)
  return rl_token_loss(logp, entropy, batch, settings)


def policy_logprobs(params, model: Decoder, batch: RLBatch, settings: RLSettings):
  """(logp, entropy) [B, T] of the batch's tokens under ``params``."""
  return token_logprobs(model, params, batch.tokens, batch.positions, batch.valid,
                        chunk_size=settings.logprob_chunk, with_entropy=True)


def rl_token_loss(logp: Array, entropy: Array, batch: RLBatch, settings: RLSettings):
  """``rl_loss`` as a function of the per-token log-probs (the loss touches the parameters
  only through them, so its gradient is one backward pass from d loss / d logp)."""
  in_attempt1 = batch.segments == ATTEMPT1
  in_attempt2 = batch.segments == ATTEMPT2
  sampled = in_attempt1 | in_attempt2
  num_sampled = jnp.sum(sampled.astype(jnp.float32))

  if settings.algorithm == 'reinforce':
    pg_loss = reinforce_loss(logp, batch.advantages, batch.pg_mask, num_sampled)
    clip_fraction = jnp.float32(0.0)
  elif settings.algorithm == 'ppo':
    pg_loss, clip_fraction = ppo_clip_loss(logp, batch.old_logp, batch.advantages,
                                           batch.pg_mask, settings.clip_epsilon, num_sampled)
  else:
    raise ValueError(f'Unknown algorithm {settings.algorithm!r}.')
  kl = kl_divergence(logp, batch.ref_logp, settings.kl_estimator)
  # Only tokens with a KL weight enter the sum (e.g. not attempt 2 in single-turn RL).
  kl_loss = masked_mean(kl * batch.kl_weights, sampled & (batch.kl_weights != 0), num_sampled)
  loss = pg_loss + kl_loss

  # Diagnostics: k1 (the plain log-ratio) is what "KL per turn" reports, whatever the loss uses.
  k1 = jax.lax.stop_gradient(logp - batch.ref_logp)
  metrics = dict(
      loss=loss, pg_loss=pg_loss, kl_loss=kl_loss, clip_fraction=clip_fraction,
      kl_attempt1=masked_mean(k1, in_attempt1), kl_attempt2=masked_mean(k1, in_attempt2),
      entropy_attempt1=masked_mean(entropy, in_attempt1),
      entropy_attempt2=masked_mean(entropy, in_attempt2),
      ratio_deviation=masked_mean(jnp.abs(importance_ratio(logp, batch.old_logp) - 1.0),
                                  sampled))
  return loss, metrics


def sft_loss(params, model: Decoder, tokens: Array, positions: Array, valid: Array,
             loss_mask: Array, logprob_chunk: int = 256):
  """Teacher-forced cross-entropy on the tokens selected by ``loss_mask`` ([B, T])."""
  logp = token_logprobs(model, params, tokens, positions, valid, chunk_size=logprob_chunk)
  mask = loss_mask & valid
  loss = -masked_mean(logp, mask)
  return loss, dict(loss=loss, tokens=jnp.sum(mask.astype(jnp.float32)))
