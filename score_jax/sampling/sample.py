"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling.

Temperature and top-p are arrays (one value per row, or a scalar) so that changing them
never recompiles; top-k changes the shape of ``lax.top_k`` and is static. The filters follow
the usual order: divide by the temperature, keep the top k logits, then keep the smallest
set of most probable tokens whose probability reaches top-p.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

_FILTERED = -jnp.inf


@flax.struct.dataclass
class SamplingParams:
  """Per-row sampling settings as arrays. A temperature of 0 means greedy.

  Attributes:
    temperature: [B] or scalar float32; 0 selects the arg-max.
    top_p: [B] or scalar float32 in (0, 1]; 1 keeps every token.
  """

  temperature: Array
  top_p: Array

  @classmethod
  def create(cls, temperature: float = 1.0, top_p: float = 1.0) -> 'SamplingParams':
    if temperature < 0:
      raise ValueError(f'temperature must be >= 0 (0 is greedy); got {temperature}.')
    if not 0 < top_p <= 1:
      raise ValueError(f'top_p must be in (0, 1]; got {top_p}.')
    return cls(temperature=jnp.asarray(temperature, jnp.float32),
               top_p=jnp.asarray(top_p, jnp.float32))

  @classmethod
  def greedy(cls) -> 'SamplingParams':
    return cls.create(temperature=0.0)


def _per_row(x: Array, batch: int) -> Array:
  return jnp.broadcast_to(jnp.asarray(x, jnp.float32), (batch,))


def top_k_filter(logits: Array, k: int) -> Array:
  """Keeps the k largest logits of each row ([B, V]); ties with the k-th are kept too."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth_largest, logits, _FILTERED)


def top_p_filter(logits: Array, top_p: Array) -> Array:
  """Keeps the smallest set of most probable tokens whose total probability >= top_p.

  A token is kept when the probability of the tokens ranked above it is below top_p, so the
  most probable token is always kept; tokens tied with the last kept one are kept too.

  Args:
    logits: [B, V] (already temperature-scaled).
    top_p: [B] thresholds in (0, 1].
  """
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = mass_above < top_p[:, None]
  # The smallest kept logit is the threshold for the row.
  threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, _FILTERED)


def filter_logits(logits: Array, params: SamplingParams, top_k: int = 0) -> Array:
  """Temperature-scaled, top-k and top-p filtered fp32 logits [B, V] (for sampling rows)."""
  batch = logits.shape[0]
  temperature = _per_row(params.temperature, batch)
  top_p = _per_row(params.top_p, batch)
  scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)[:, None]
  scaled = top_k_filter(scaled, top_k)
  # Sorting the vocabulary is the costly part: skip it when no row asks for top-p.
  return jax.lax.cond(jnp.all(top_p >= 1.0), lambda x: x, lambda x: top_p_filter(x, top_p),
                      scaled)


def sample_categorical(rng: Array, logits: Array, block: int = 256) -> Array:
  """One draw per row [B] int32 from softmax(logits [B, V]) by inverting the CDF in two levels.

  The same distribution as ``jax.random.categorical`` from one uniform number per row
  instead of V Gumbel variates, whose generation dominates a CPU decode step at large
  vocabularies. The vocabulary is cut into blocks of ``block`` tokens: a running sum over
  block masses picks the block, a running sum inside it picks the token. Filtered (-inf)
  logits have probability 0 and are never drawn.
  """
  batch, vocab = logits.shape
  num_blocks = -(-vocab // block)
  padded = jnp.pad(logits.astype(jnp.float32), ((0, 0), (0, num_blocks * block - vocab)),
                   constant_values=-jnp.inf)
  probs = jax.nn.softmax(padded, axis=-1).reshape(batch, num_blocks, block)
  block_mass = jnp.sum(probs, axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  total = block_cdf[:, -1]
  # u in [0, total): strictly below the total, so a block with mass is always found.
  u = jnp.minimum(jax.random.uniform(rng, (batch,)) * total, jnp.nextafter(total, 0.0))
  chosen = jnp.minimum(jnp.sum(block_cdf <= u[:, None], axis=-1), num_blocks - 1)
  mass_before = (jnp.take_along_axis(block_cdf, chosen[:, None], axis=-1)[:, 0] -
                 jnp.take_along_axis(block_mass, chosen[:, None], axis=-1)[:, 0])
  inner = jnp.take_along_axis(probs, chosen[:, None, None], axis=1)[:, 0]  # [B, block]
  within = jnp.sum(mass_before[:, None] + jnp.cumsum(inner, axis=-1) <= u[:, None], axis=-1)
  # Rounding may put u just outside the chosen block's running sums: keep the pick between
  # the block's first and last tokens with probability mass (it has some: it was chosen).
  has_mass = inner > 0
  first_with_mass = jnp.argmax(has_mass, axis=-1)
  last_with_mass = block - 1 - jnp.argmax(has_mass[:, ::-1], axis=-1)
  within = jnp.clip(within, first_with_mass, last_with_mass)
  return (chosen * block + within).astype(jnp.int32)


def select_tokens(logits: Array, rng: Array, params: SamplingParams, top_k: int = 0) -> Array:
  """Picks one token per row [B] int32: arg-max where temperature is 0, else a sample."""
  batch = logits.shape[0]
  greedy_rows = _per_row(params.temperature, batch) <= 0.0

  def greedy(_):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample(_):
    sampled = sample_categorical(rng, filter_logits(logits, params, top_k))
    # The arg-max is another pass over [B, V] logits: only when some row is greedy.
    return jax.lax.cond(jnp.any(greedy_rows), lambda s: jnp.where(greedy_rows, greedy(None), s),
                        lambda s: s, sampled)

  return jax.lax.cond(jnp.all(greedy_rows), greedy, sample, None)
