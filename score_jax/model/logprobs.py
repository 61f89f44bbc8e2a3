"""Per-token log-probabilities without ever holding [B, T, V] logits.

RL losses need log p(token) for every sampled token, under the policy, the reference model
and (for PPO) the old policy. With a 256k vocabulary and sequences of thousands of tokens
the full logits tensor would dwarf everything else, so the output projection, log-softmax
and gather run over chunks of the sequence, and the backward pass recomputes each chunk's
logits instead of storing them.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_jax.model.decoder import Decoder

Array = jax.Array


def previous_valid_slot(valid: Array) -> Array:
  """[B, T] index of the last valid slot strictly before each slot, or -1 if there is none.

  The token in slot t is predicted by the hidden state of this slot: with invalid padding
  inside a row, that is not always slot t - 1.
  """
  t = valid.shape[-1]
  own_index = jnp.where(valid, jnp.arange(t), -1)
  last_valid_up_to = jax.lax.cummax(own_index, axis=valid.ndim - 1)
  return jnp.concatenate(
      [jnp.full(valid.shape[:-1] + (1,), -1, last_valid_up_to.dtype), last_valid_up_to[..., :-1]],
      axis=-1)


def chunked_target_logprobs(logits_fn: Callable[[Array], Array], hidden: Array, targets: Array,
                            chunk_size: int = 256, with_entropy: bool = False):
  """log_softmax(logits_fn(hidden))[targets] in fp32, computed ``chunk_size`` slots at a time.

  Args:
    logits_fn: maps hidden states [B, C, D] to logits [B, C, V].
    hidden: [B, T, D] hidden states; slot t predicts ``targets[:, t]``.
    targets: [B, T] token ids.
    chunk_size: slots per chunk; T is padded up to a multiple of it.
    with_entropy: also return the entropy of each predicted distribution.

  Returns:
    logp [B, T] (and entropy [B, T] when ``with_entropy``), both fp32.
  """
  b, t, d = hidden.shape
  chunk = max(1, min(chunk_size, t))
  num_chunks = -(-t // chunk)
  pad = num_chunks * chunk - t
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  hidden_chunks = hidden.reshape(b, num_chunks, chunk, d).swapaxes(0, 1)
  target_chunks = targets.reshape(b, num_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint  # The backward pass recomputes a chunk's logits rather than storing them.
  def one_chunk(args):
    h, y = args
    logits = logits_fn(h).astype(jnp.float32)
    # log p(y) = logit(y) - logsumexp(logits): no second [.., V] array of log-probs.
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = target_logit - log_normaliser
    if not with_entropy:
      return logp, jnp.zeros_like(logp)
    logp_all = logits - log_normaliser[..., None]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

  logp, entropy = jax.lax.map(one_chunk, (hidden_chunks, target_chunks))
  logp = logp.swapaxes(0, 1).reshape(b, -1)[:, :t]
  if not with_entropy:
    return logp
  return logp, entropy.swapaxes(0, 1).reshape(b, -1)[:, :t]


def token_logprobs(model: Decoder, params, tokens: Array, positions: Array, valid: Array,
                   chunk_size: int = 256, with_entropy: bool = False):
  """log p(tokens[b, t] | the valid tokens before slot t) for every slot, fp32 [B, T].

  Slots that are invalid, or have no valid slot before them, get 0 (and entropy 0).
  This is the function the trainer and the sampler must agree on.
  """
  hidden, _ = model.apply({'params': params}, tokens, positions, valid, return_hidden=True)
  prev = previous_valid_slot(valid)
  predicting_hidden = jnp.take_along_axis(hidden, jnp.maximum(prev, 0)[..., None], axis=1)
  logits_fn = lambda h: model.apply({'params': params}, h, method=Decoder.logits)
  out = chunked_target_logprobs(logits_fn, predicting_hidden, tokens, chunk_size, with_entropy)
  has_context = valid & (prev >= 0)
  if not with_entropy:
    return jnp.where(has_context, out, 0.0)
  logp, entropy = out
  return jnp.where(has_context, logp, 0.0), jnp.where(has_context, entropy, 0.0)
