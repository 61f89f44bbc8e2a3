"""The decoder: embeddings, a stack of layers (scanned or unrolled), final norm, logits.

The module is pure: the KV cache is an explicit argument and return value, so the same
function serves the trainer's full-sequence forward and the sampler's prefill and decode
steps, and every call can be jitted, sharded and donated.

Slots and positions. A row of tokens may contain invalid slots (padding inside the fixed
slot layout ``[prompt | attempt 1 | instruction | attempt 2]``). Invalid slots are never
attended to, and the caller gives each valid token its RoPE position as the running count
of valid tokens before it, so the model sees one contiguous conversation::

    slot      0   1   2   3   4   5   6
    token     a   b   .   .   c   d   .      (. = invalid)
    position  0   1   -   -   2   3   -

Causality is by slot: a query at slot i sees valid keys at slots <= i. With a cache, the
new tokens occupy slots ``[cache_index, cache_index + T)`` of a fixed-length cache.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from score_jax.kernels import amx
from score_jax.model.config import ModelConfig
from score_jax.model.layers import (REMAT_POLICIES, AttentionInputs, Block, RMSNorm, Rotary,
                                    mask_bias, matmul, softcap)
from score_jax.sharding import (MeshRules, constrain, is_axis_names, logical_axes_of,
                                sharded_init)

Array = jax.Array

LAYER_CACHE_AXES = ('batch', 'kv_heads', 'cache_length', 'head_dim')
CACHE_AXES = ('layers',) + LAYER_CACHE_AXES


@flax.struct.dataclass
class KVCache:
  """A fixed-length key/value cache for every layer, plus what each slot holds.

  Slots are the second-minor axis, so that a decode step's attention reads each head's keys
  and values as one contiguous [S, Dh] block.

  Attributes:
    k, v: keys (after RoPE) and values: a stack [L, B, K, S, Dh] for scanned layers, or a
      tuple of L per-layer [B, K, S, Dh] arrays for unrolled layers (each layer's cache is
      then its own buffer, written in place and read without slicing a stack).
    valid: [B, S] True where a slot holds a real token.
    positions: [B, S] int32 RoPE position of the token in each slot (for sliding windows).
  """

  k: Array
  v: Array
  valid: Array
  positions: Array

  @property
  def length(self) -> int:
    return self.valid.shape[1]

  def logical_axes(self) -> 'KVCache':
    """The logical axis names of every array (a pytree of tuples matching this cache's)."""
    kv_axes = CACHE_AXES if not isinstance(self.k, tuple) else (LAYER_CACHE_AXES,) * len(self.k)
    return KVCache(k=kv_axes, v=kv_axes, valid=('batch', 'cache_length'),
                   positions=('batch', 'cache_length'))


def empty_cache(config: ModelConfig, batch_size: int, length: int, dtype=None,
                mesh_rules: MeshRules | None = None) -> KVCache:
  """An empty cache (every slot invalid), for use inside a jitted function.

  With ``mesh_rules`` the arrays are constrained to their logical sharding, so a cache
  built inside a jitted rollout is born split over the batch and KV heads.
  """
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch_size, config.num_kv_heads, length, config.head_dim)
  if config.scan_layers:
    k = v = jnp.zeros((config.num_layers,) + shape, dtype)
  else:
    k = v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  cache = KVCache(k=k, v=v, valid=jnp.zeros((batch_size, length), bool),
                  positions=jnp.zeros((batch_size, length), jnp.int32))
  return jax.tree.map(lambda names, x: constrain(x, names, mesh_rules), cache.logical_axes(),
                      cache, is_leaf=is_axis_names)


def init_cache(config: ModelConfig, batch_size: int, length: int, dtype=None,
               mesh_rules: MeshRules | None = None) -> KVCache:
  """An empty cache as concrete arrays, placed by ``mesh_rules`` when given."""
  return jax.jit(lambda: empty_cache(config, batch_size, length, dtype, mesh_rules))()


def _attention_biases(config: ModelConfig, positions: Array, valid: Array,
                      cache: KVCache | None, cache_index: Array):
  """[B, T, S] logit biases for global and (if any layer is local) sliding-window attention."""
  t = positions.shape[1]
  if cache is None:
    key_valid, key_positions, num_slots = valid, positions, t
  else:
    key_valid, key_positions, num_slots = cache.valid, cache.positions, cache.length
  query_slots = cache_index + jnp.arange(t)
  causal = jnp.arange(num_slots)[None, :] <= query_slots[:, None]  # [T, S]
  global_mask = causal[None] & key_valid[:, None, :]
  local_mask = None
  if config.has_local_layers:
    distance = positions[:, :, None] - key_positions[:, None, :]
    local_mask = global_mask & (distance < config.sliding_window)
  return mask_bias(global_mask), None if local_mask is None else mask_bias(local_mask)


class Decoder(nn.Module):
  """A decoder-only transformer covering Llama, Qwen2, Gemma and Gemma 2 shapes."""

  config: ModelConfig
  mesh_rules: MeshRules | None = None

  def setup(self):
    c = self.config
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ('vocab', 'embed')),
        (c.vocab_size, c.d_model), c.jnp_param_dtype)
    if c.kernel_layout == 'amx_tiles':
      # The output layer's own tiles even when tied: the embedding table stays for lookups.
      self.unembedding = self.param(
          'unembedding', nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                      (None,) * 4),
          amx.tile_shape(c.d_model, c.vocab_size), c.jnp_param_dtype)
    elif not c.tie_embeddings:
      output_major = c.kernel_layout == 'output_major'
      self.unembedding = self.param(
          'unembedding',
          nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                       (None, None) if output_major else ('embed', 'vocab')),
          (c.vocab_size, c.d_model) if output_major else (c.d_model, c.vocab_size),
          c.jnp_param_dtype)
    block = Block
    if c.remat_policy != 'none':
      block = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers)
    if c.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True},
          in_axes=(0, nn.broadcast), length=c.num_layers,
          unroll=min(c.scan_unroll, c.num_layers),
          metadata_params={nn.PARTITION_NAME: 'layers'})(c, self.mesh_rules)
    else:
      self.layers = [block(c, self.mesh_rules, name=f'layer_{i}') for i in range(c.num_layers)]
    self.final_norm = RMSNorm(c)

  def __call__(self, tokens: Array, positions: Array, valid: Array,
               cache: KVCache | None = None, cache_index: Array | int = 0,
               return_hidden: bool = False):
    """Runs the decoder over new tokens, optionally reading and writing a KV cache.

    Args:
      tokens: [B, T] int32 token ids.
      positions: [B, T] int32 RoPE positions (running count of valid tokens).
      valid: [B, T] bool; invalid slots are never attended to.
      cache: a KVCache to write the new tokens into and attend over, or None to attend
        over ``tokens`` alone.
      cache_index: the first cache slot of the new tokens (a traced scalar is fine).
      return_hidden: return the final-normed hidden states [B, T, D] instead of logits.

    Returns:
      ``(logits [B, T, V] in fp32 or hidden [B, T, D], new cache or None)``.
    """
    c = self.config
    cache_index = jnp.asarray(cache_index, jnp.int32)
    valid = valid.astype(bool)
    positions = positions.astype(jnp.int32)
    if cache is not None:
      cache = cache.replace(
          valid=jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache_index)),
          positions=jax.lax.dynamic_update_slice(cache.positions, positions, (0, cache_index)))
    global_bias, local_bias = _attention_biases(c, positions, valid, cache, cache_index)
    shared = AttentionInputs(rotary=Rotary.for_positions(positions, c), global_bias=global_bias,
                             local_bias=local_bias, cache_index=cache_index)

    x = self.embed(tokens)
    kv = None if cache is None else (cache.k, cache.v)
    kinds = c.layer_kinds
    if c.scan_layers:
      is_local = jnp.asarray([kind == 'local' for kind in kinds])
      (x, kv), _ = self.layers((x, kv), (jnp.arange(c.num_layers), is_local), shared)
    else:
      layer_kv = [None] * c.num_layers if kv is None else list(zip(*kv))
      for i, layer in enumerate(self.layers):
        (x, layer_kv[i]), _ = layer((x, layer_kv[i]), (None, kinds[i] == 'local'), shared)
      kv = None if kv is None else tuple(zip(*layer_kv))
    if cache is not None:
      cache = cache.replace(k=kv[0], v=kv[1])

    hidden = self.final_norm(x)
    if return_hidden:
      return hidden, cache
    return self.logits(hidden), cache

  def embed(self, tokens: Array) -> Array:
    """Token embeddings [B, T, D] in the compute dtype (Gemma scales them by sqrt(D))."""
    c = self.config
    # Gather the FSDP-split width first (as for every weight): looking tokens up in a table
    # split along 'embed' makes XLA replicate the looked-up activations.
    table = constrain(self.embedding, ('vocab', None), self.mesh_rules)
    x = jnp.take(table, tokens, axis=0).astype(c.jnp_dtype)
    if c.embed_scale:
      x = x * jnp.asarray(c.d_model ** 0.5, c.jnp_dtype)
    return constrain(x, ('batch', 'length', 'embed'), self.mesh_rules)

  def logits(self, hidden: Array) -> Array:
    """fp32 logits [..., V] from final hidden states, soft-capped when configured."""
    c = self.config
    dtype = c.jnp_dtype
    if c.kernel_layout == 'amx_tiles':
      lead = hidden.shape[:-1]
      out = amx.matmul(hidden.reshape(-1, c.d_model), self.unembedding).reshape(*lead, -1)
    elif c.tie_embeddings or c.kernel_layout == 'output_major':
      table = self.embedding if c.tie_embeddings else self.unembedding
      out = matmul('...d,vd->...v', hidden, table, dtype)
    else:
      out = matmul('...d,dv->...v', hidden, self.unembedding, dtype)
    out = softcap(out, c.final_logit_softcap)
    if out.ndim == 3:
      out = constrain(out, ('batch', 'length', 'vocab'), self.mesh_rules)
    return out


def _init_fn(model: Decoder):
  def init_fn(key):
    ones = jnp.ones((1, 1), jnp.int32)
    return model.init(key, ones, ones, ones.astype(bool))['params']
  return init_fn


def init_params(model: Decoder, rng: Array):
  """Initialises parameters in their sharded layout (see ``sharding.sharded_init``).

  Returns:
    ``(params, logical_axes)``: the plain parameter pytree and its logical axis names.
  """
  return sharded_init(_init_fn(model), model.mesh_rules, rng)


def abstract_params(model: Decoder):
  """``(shapes, logical_axes)``: the parameter tree as ``ShapeDtypeStruct``s, computing nothing."""
  boxed = jax.eval_shape(_init_fn(model), jax.random.key(0))
  return nn.meta.unbox(boxed), logical_axes_of(boxed)


def unstack_layers(params, num_layers: int):
  """Scanned (stacked) parameters → the unrolled layout, one ``layer_{i}`` subtree per layer."""
  unstacked = {name: value for name, value in params.items() if name != 'layers'}
  for i in range(num_layers):
    unstacked[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  return unstacked


def for_decoding(model: Decoder, params, kernel_layout: str | None = None):
  """The model and weights a sampler should run: ``(decoder, params)``, inside a jit.

  Weights are cast once to the compute dtype (so no decode step converts them again) and
  scanned layers are unrolled from a per-layer copy unless ``config.scan_decode``. On CPUs
  the dense kernels are also rearranged for the decode steps' matmuls (see
  ``ModelConfig.kernel_layout``): into AMX tiles for the AMX kernels where
  ``amx_tiles_apply`` (an x86 CPU with AMX, bf16 compute, one device; the twin's decode steps
  then also attend with the AMX attention kernel), else transposed to the 'output_major'
  layout, whose decode-step matmuls XLA runs about 1.6x faster.
  ``kernel_layout`` overrides that choice. The result computes the same function as
  ``model`` with ``params``. (Gate and up kernels are not fused: stacking them copies them
  inside the rollout, which took the Gemini-scale config's rollout temporaries from 31 to
  109 GiB per chip, for about 1.5% of CPU decode speed.)
  """
  c = model.config
  params = cast_floating(params, c.jnp_dtype)
  if kernel_layout is None:
    if _platform(model) != 'cpu':
      kernel_layout = c.kernel_layout
    else:
      kernel_layout = 'amx_tiles' if amx_tiles_apply(model) else 'output_major'
  changes = {}
  if kernel_layout != c.kernel_layout:
    if c.kernel_layout != 'input_major':
      raise ValueError(f'for_decoding converts input-major kernels only; the model has '
                       f'{c.kernel_layout!r} ones.')
    if kernel_layout == 'amx_tiles':
      if c.dtype != 'bfloat16':
        raise ValueError(f"The 'amx_tiles' layout multiplies in bfloat16; this model "
                         f'computes in {c.dtype}.')
      params = to_amx_tiles(params, c)
    else:
      params = to_output_major(params, c)
    changes['kernel_layout'] = kernel_layout
  if c.scan_layers and not c.scan_decode:
    params = unstack_layers(params, c.num_layers)
    changes.update(scan_layers=False, remat_policy='none')
  if changes:
    model = Decoder(dataclasses.replace(c, **changes), model.mesh_rules)
  return model, params


def amx_tiles_apply(model: Decoder) -> bool:
  """Whether the sampler's twin of ``model`` should use the AMX kernels: bf16
  compute, at most one device, every dense kernel with a tile layout, and the kernel
  available on this machine (``kernels.amx.available``)."""
  c = model.config
  if c.dtype != 'bfloat16' or c.kernel_layout != 'input_major':
    return False
  if model.mesh_rules is not None and model.mesh_rules.mesh.size > 1:
    return False  # The custom call has no partitioning rule.
  q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  shapes = [(c.d_model, q_width), (c.d_model, kv_width), (q_width, c.d_model),
            (c.d_model, c.mlp_dim), (c.mlp_dim, c.d_model), (c.d_model, c.vocab_size)]
  return all(amx.fits(k, n) for k, n in shapes) and amx.available()


def cast_floating(tree, dtype):
  """``tree`` with every floating-point leaf (array or ``ShapeDtypeStruct``) in ``dtype``."""
  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)
  return jax.tree.map(cast, tree)


# How many leading (input) axes each dense kernel has in the checkpoint layout.
_KERNEL_INPUT_AXES = {'q_kernel': 1, 'k_kernel': 1, 'v_kernel': 1, 'o_kernel': 2,
                      'gate_kernel': 1, 'up_kernel': 1, 'down_kernel': 1, 'unembedding': 1}


def _map_kernel_matrices(params, config: ModelConfig, fn):
  """``params`` with ``fn`` applied to every dense kernel [*in, *out] (with a leading layer
  axis when scanned) seen as a [..., prod(in), prod(out)] matrix."""
  def convert(path, x):
    name = path[-1].key
    if name not in _KERNEL_INPUT_AXES:
      return x
    stacked = int(config.scan_layers and path[0].key == 'layers')
    lead, n_in = x.shape[:stacked], _KERNEL_INPUT_AXES[name]
    return fn(x.reshape(*lead, math.prod(x.shape[stacked:stacked + n_in]), -1))
  return jax.tree_util.tree_map_with_path(convert, params)


def to_output_major(params, config: ModelConfig):
  """Input-major parameters → the 'output_major' layout: every dense kernel [*in, *out]
  (with a leading layer axis when scanned) becomes [..., prod(out), prod(in)]."""
  return _map_kernel_matrices(params, config, lambda matrix: jnp.swapaxes(matrix, -1, -2))


def to_amx_tiles(params, config: ModelConfig):
  """Input-major parameters → the 'amx_tiles' layout: every dense kernel [*in, *out] (with a
  leading layer axis when scanned) becomes the AMX kernel's tiles of the [prod(in),
  prod(out)] matrix, and a tied output layer gets tiles of its own (``embedding.T``)."""
  converted = _map_kernel_matrices(params, config, amx.pack)
  if config.tie_embeddings:
    converted = dict(converted, unembedding=amx.pack(params['embedding'].T))
  return converted


def _platform(model: Decoder) -> str:
  """The platform the model runs on: its mesh's devices', else JAX's default backend."""
  if model.mesh_rules is not None:
    return model.mesh_rules.mesh.devices.flat[0].platform
  return jax.default_backend()


def positions_from_valid(valid: Array) -> Array:
  """RoPE positions [B, T] int32: the number of valid tokens before each slot.

  An invalid slot gets the position of the valid token before it; it is never attended to,
  so the value only has to be in range.
  """
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)
