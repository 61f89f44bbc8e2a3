"""The decoder's building blocks: RMSNorm, rotary embeddings, attention, MLP, one layer.

Shapes use these letters: B batch, T new tokens, S key slots (T without a cache, the cache
length with one), D model width, H query heads, K key/value heads, G = H // K query heads per
key/value head, Dh head width, F MLP width, L layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from score_jax.kernels import amx
from score_jax.model.config import ModelConfig
from score_jax.sharding import MeshRules, constrain

Array = jax.Array

# A finite "minus infinity" for masked logits (see ``mask_bias``); a logit plus it stays finite.
_MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def dense_init(in_axes: tuple[int, ...], out_axes: tuple[int, ...]):
  """Truncated-normal init with variance 1/fan_in over the given input axes."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                          in_axis=in_axes, out_axis=out_axes)


def param(module: nn.Module, name: str, init, shape, names, config: ModelConfig):
  """Declares a parameter with logical axis names in the configured parameter dtype."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape,
                      config.jnp_param_dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm in fp32; Gemma's variant scales by (1 + w) with w born at 0."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    init = nn.initializers.zeros if c.norm_scale_plus_one else nn.initializers.ones
    scale = param(self, 'scale', init, (x.shape[-1],), ('norm',), c).astype(jnp.float32)
    if c.norm_scale_plus_one:
      scale = 1.0 + scale
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + c.norm_eps)
    return (normed * scale).astype(c.jnp_dtype)


# ---- rotary position embeddings -------------------------------------------------------------


def rope_inverse_frequencies(config: ModelConfig) -> Array:
  """Per-pair rotation frequencies [Dh/2], with Llama 3's long-context scaling if set."""
  c = config
  exponents = jnp.arange(0, c.head_dim, 2, dtype=jnp.float32) / c.head_dim
  inv_freq = 1.0 / (c.rope_theta ** exponents)
  if c.rope_scaling == 'llama3':
    # Llama 3.1: leave high frequencies alone, divide low frequencies by `factor`, and
    # interpolate smoothly in between (by wavelength relative to the original context).
    wavelength = 2 * jnp.pi / inv_freq
    low_freq_wavelength = c.rope_original_max_position / c.rope_low_freq_factor
    high_freq_wavelength = c.rope_original_max_position / c.rope_high_freq_factor
    smooth = ((c.rope_original_max_position / wavelength - c.rope_low_freq_factor) /
              (c.rope_high_freq_factor - c.rope_low_freq_factor))
    interpolated = (1 - smooth) * inv_freq / c.rope_scaling_factor + smooth * inv_freq
    inv_freq = jnp.where(wavelength > low_freq_wavelength, inv_freq / c.rope_scaling_factor,
                         jnp.where(wavelength < high_freq_wavelength, inv_freq, interpolated))
  return inv_freq


@flax.struct.dataclass
class Rotary:
  """Sines and cosines [B, T, Dh/2] of every token's RoPE angles, computed once per call."""

  sin: Array
  cos: Array

  @classmethod
  def for_positions(cls, positions: Array, config: ModelConfig) -> 'Rotary':
    angles = positions.astype(jnp.float32)[..., None] * rope_inverse_frequencies(config)
    return cls(sin=jnp.sin(angles), cos=jnp.cos(angles))

  def apply(self, x: Array) -> Array:
    """Rotates [B, T, heads, Dh] in the "half split" layout used by Hugging Face."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    sin, cos = self.sin[:, :, None, :], self.cos[:, :, None, :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


# ---- attention ---------------------------------------------------------------------------------


@flax.struct.dataclass
class AttentionInputs:
  """What every layer's attention shares: rotary angles, masks and where the cache is written.

  The masks are fp32 biases added to the attention logits: 0 where a query may attend to a
  key slot, a large negative number elsewhere. (On CPUs, XLA fuses a bias, but not a select,
  into the attention matmul and softmax: a batch-32 decode step is about 10% faster for it.)

  Attributes:
    rotary: RoPE angles of the new tokens.
    global_bias: [B, T, S], 0 where the key is valid and not in the query's future.
    local_bias: [B, T, S], global_bias restricted to the sliding window, or None when no
      layer is local.
    cache_index: int32 scalar, the first cache slot the new tokens are written to.
  """

  rotary: Rotary
  global_bias: Array
  local_bias: Array | None
  cache_index: Array


def mask_bias(mask: Array) -> Array:
  """A boolean mask as an fp32 logit bias: 0 where True, a large negative number where False.

  The bias is finite, so a query whose keys are all masked (an invalid padding slot) gets
  near-uniform weights instead of NaNs; its output is never used.
  """
  return jnp.where(mask, 0.0, _MASKED_LOGIT).astype(jnp.float32)


def kernel_param(module: nn.Module, name: str, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], names: tuple[str, ...], config: ModelConfig):
  """Declares a dense kernel from ``in_shape`` to ``out_shape`` in the configured layout:
  [*in_shape, *out_shape] with logical axis ``names`` ('input_major'), a 2-D
  [prod(out_shape), prod(in_shape)] matrix ('output_major'), or the AMX kernel's tiles of the
  [prod(in_shape), prod(out_shape)] matrix ('amx_tiles'; see ``ModelConfig.kernel_layout``).
  """
  n_in = len(in_shape)
  if config.kernel_layout == 'amx_tiles':
    k, n = math.prod(in_shape), math.prod(out_shape)
    return param(module, name, dense_init((1, 3), (0, 2)), amx.tile_shape(k, n), (None,) * 4,
                 config)
  if config.kernel_layout == 'output_major':
    return param(module, name, dense_init((1,), (0,)), (math.prod(out_shape), math.prod(in_shape)),
                 (None, None), config)
  return param(module, name, dense_init(tuple(range(n_in)), tuple(range(n_in, len(names)))),
               in_shape + out_shape, names, config)


def dense(spec: str, x: Array, kernel: Array, out_shape: tuple[int, ...],
          config: ModelConfig) -> Array:
  """x [B, T, *in] times a kernel of ``kernel_param``, in fp32: ``matmul(spec, ...)`` for an
  input-major kernel; for an output-major one, one 2-D product contracting both operands'
  minor axes; for AMX tiles, the AMX kernel's product; the last two reshaped to
  [B, T, *out_shape]."""
  b, t = x.shape[:2]
  if config.kernel_layout == 'amx_tiles':
    return amx.matmul(x.reshape(b * t, -1), kernel).reshape(b, t, *out_shape)
  if config.kernel_layout != 'output_major':
    return matmul(spec, x, kernel, config.jnp_dtype)
  out = matmul('ri,oi->ro', x.reshape(b * t, kernel.shape[1]), kernel, config.jnp_dtype)
  return out.reshape(b, t, *out_shape)


def matmul(spec: str, x: Array, kernel: Array, dtype) -> Array:
  """``einsum(spec, x, kernel)`` with both operands in ``dtype``, accumulated and returned in fp32.

  Asking for an fp32 result is what accelerators do natively for bf16 operands, and on
  x86 CPUs it is what selects XLA's fast bf16 matrix kernels (a bf16 result does not).
  Below fp32 the backward pass multiplies in ``dtype`` too (``_low_precision_einsum``).
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype),
                      preferred_element_type=jnp.float32)
  return _low_precision_einsum(spec, jnp.dtype(dtype), x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_einsum(spec: str, dtype, x: Array, kernel: Array) -> Array:
  """``einsum(spec, x, kernel)`` with operands in ``dtype`` and an fp32 result, whose two
  backward products also take ``dtype`` operands (the fp32 cotangent rounded to ``dtype``)
  and accumulate in fp32.

  Left to autodiff, the transposed products of an fp32-result einsum multiply the fp32
  cotangent by the operand promoted back to fp32: the backward pass then runs at the fp32
  rate, and a bf16 update was measured no faster than an fp32 one (BENCHMARKS.md). Rounding
  the cotangent is what bf16 training on accelerators does; the gradients come back in the
  operands' own dtypes (fp32 master weights get fp32 gradients).
  """
  return jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype),
                    preferred_element_type=jnp.float32)


def _low_precision_einsum_fwd(spec, dtype, x, kernel):
  low_x, low_kernel = x.astype(dtype), kernel.astype(dtype)
  out = jnp.einsum(spec, low_x, low_kernel, preferred_element_type=jnp.float32)
  # The operands' dtypes travel as empty arrays (residuals must be arrays).
  return out, (low_x, low_kernel, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _low_precision_einsum_bwd(spec, dtype, residuals, cotangent):
  low_x, low_kernel, x_dtype, kernel_dtype = residuals
  inputs, out = spec.split('->')
  lhs, rhs = inputs.split(',')
  g = cotangent.astype(dtype)
  dx = jnp.einsum(f'{out},{rhs}->{lhs}', g, low_kernel, preferred_element_type=jnp.float32)
  dkernel = jnp.einsum(f'{lhs},{out}->{rhs}', low_x, g, preferred_element_type=jnp.float32)
  return dx.astype(x_dtype.dtype), dkernel.astype(kernel_dtype.dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def lora_delta(module: nn.Module, name: str, spec: str, x: Array, in_shape: tuple[int, ...],
               out_shape: tuple[int, ...], in_names: tuple[str, ...],
               out_names: tuple[str, ...], config: ModelConfig) -> Array:
  """The LoRA term (alpha / rank) (x A) B of kernel ``name`` in fp32, or 0 when the kernel
  carries no adapter; declares A [*in_shape, rank] and B [rank, *out_shape] (``{name}_lora_a``,
  ``{name}_lora_b``; B born at zero, so an adapted model starts as its base).

  ``spec`` is the kernel's own product (``'btd,dhk->bthk'``); the adapter's two products
  contract the same input axes into the rank axis ``z`` and expand it into the same outputs.
  """
  if name not in config.lora_kernels:
    return jnp.zeros((), jnp.float32)
  rank = config.lora_rank
  n_in = len(in_shape)
  a = param(module, f'{name}_lora_a',
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal',
                                             in_axis=tuple(range(n_in)), out_axis=n_in),
            in_shape + (rank,), in_names + (None,), config)
  b = param(module, f'{name}_lora_b', nn.initializers.zeros, (rank,) + out_shape,
            (None,) + out_names, config)
  operands, result = spec.split('->')
  lhs, rhs = operands.split(',')
  contracted = ''.join(ch for ch in rhs if ch in lhs)
  produced = ''.join(ch for ch in rhs if ch not in lhs)
  kept = ''.join(ch for ch in lhs if ch not in rhs)
  low = matmul(f'{lhs},{contracted}z->{kept}z', x, a, config.jnp_dtype)
  return config.lora_scale * matmul(f'{kept}z,z{produced}->{result}', low, b, config.jnp_dtype)


def write_slots(cache: Array, new: Array, layer_index: Array | None, start: Array) -> Array:
  """Writes new keys or values [B, T, K, Dh] into cache slots [start, start + T).

  ``cache`` is one layer's [B, K, S, Dh] (``layer_index`` None) or a stack [L, B, K, S, Dh].
  The write happens in place. 16-bit floats are written as their bit patterns: XLA's CPU
  backend computes a bf16 dynamic-update-slice in fp32, which copies the whole cache.
  """
  new = new.swapaxes(1, 2).astype(cache.dtype)  # [B, K, T, Dh]
  start_index = (0, 0, start, 0)
  if layer_index is not None:
    new, start_index = new[None], (layer_index,) + start_index
  if jnp.issubdtype(cache.dtype, jnp.floating) and cache.dtype.itemsize == 2:
    bits = jax.lax.dynamic_update_slice(jax.lax.bitcast_convert_type(cache, jnp.uint16),
                                        jax.lax.bitcast_convert_type(new, jnp.uint16),
                                        start_index)
    return jax.lax.bitcast_convert_type(bits, cache.dtype)
  return jax.lax.dynamic_update_slice(cache, new, start_index)


def softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap): bounds logits smoothly (Gemma 2); identity when cap is 0."""
  return x if not cap else cap * jnp.tanh(x / cap)


class Attention(nn.Module):
  """Grouped-query self-attention over a fixed-length KV cache (or over the input itself)."""

  config: ModelConfig
  mesh_rules: MeshRules | None = None

  @nn.compact
  def __call__(self, x: Array, inputs: AttentionInputs, is_local: Array | bool,
               cache: tuple[Array, Array] | None, layer_index: Array | None):
    """Returns (output [B, T, D], the updated (k, v) caches as given, or None).

    Args:
      x: normalised hidden states [B, T, D].
      inputs: shared per-call inputs (RoPE, masks, cache index).
      is_local: whether this layer uses the sliding-window mask (traced under scan).
      cache: this layer's (k, v) caches, each [B, K, S, Dh]; or, under a scan, the whole
        model's (k, v) stacks [L, B, K, S, Dh]; or None.
      layer_index: this layer's row in the cache stacks (traced under scan), or None when
        ``cache`` holds this layer's caches.
    """
    c = self.config
    h, k, hd, d = c.num_heads, c.num_kv_heads, c.head_dim, c.d_model
    dtype = c.jnp_dtype
    q_kernel = kernel_param(self, 'q_kernel', (d,), (h, hd), ('embed', 'heads', 'head_dim'), c)
    k_kernel = kernel_param(self, 'k_kernel', (d,), (k, hd), ('embed', 'kv_heads', 'head_dim'), c)
    v_kernel = kernel_param(self, 'v_kernel', (d,), (k, hd), ('embed', 'kv_heads', 'head_dim'), c)
    o_kernel = kernel_param(self, 'o_kernel', (h, hd), (d,), ('heads', 'head_dim', 'embed'), c)
    q = dense('btd,dhk->bthk', x, q_kernel, (h, hd), c)
    key = dense('btd,dhk->bthk', x, k_kernel, (k, hd), c)
    value = dense('btd,dhk->bthk', x, v_kernel, (k, hd), c)
    if c.lora_kernels:
      in_names = ('embed',)
      q = q + lora_delta(self, 'q', 'btd,dhk->bthk', x, (d,), (h, hd), in_names,
                         ('heads', 'head_dim'), c)
      key = key + lora_delta(self, 'k', 'btd,dhk->bthk', x, (d,), (k, hd), in_names,
                             ('kv_heads', 'head_dim'), c)
      value = value + lora_delta(self, 'v', 'btd,dhk->bthk', x, (d,), (k, hd), in_names,
                                 ('kv_heads', 'head_dim'), c)
    value = value.astype(dtype)
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + param(self, 'q_bias', zeros, (h, hd), ('heads', 'head_dim'), c)
      key = key + param(self, 'k_bias', zeros, (k, hd), ('kv_heads', 'head_dim'), c)
      value = value + param(self, 'v_bias', zeros, (k, hd), ('kv_heads', 'head_dim'),
                            c).astype(dtype)
    q = constrain((inputs.rotary.apply(q) * c.query_scale).astype(dtype),
                  ('batch', 'length', 'heads', 'head_dim'), self.mesh_rules)
    key = constrain(inputs.rotary.apply(key).astype(dtype),
                    ('batch', 'length', 'kv_heads', 'head_dim'), self.mesh_rules)
    value = constrain(value, ('batch', 'length', 'kv_heads', 'head_dim'), self.mesh_rules)

    b, t = q.shape[:2]
    g = h // k
    bias = inputs.global_bias
    if inputs.local_bias is not None:
      bias = jnp.where(is_local, inputs.local_bias, bias)
    if (c.kernel_layout == 'amx_tiles' and cache is not None and t == 1 and
        layer_index is None and cache[0].dtype == jnp.bfloat16 and
        amx.attention_fits(g, cache[0].shape[2], hd)):
      # A decode step on a CPU with AMX: one kernel writes the new key and value into the
      # cache in place and attends over it (kernels.amx.decode_attention), computing what
      # the cache write and the products below compute.
      out, *cache = amx.decode_attention(q.reshape(b, k, g, hd), *cache, key[:, 0],
                                         value[:, 0], inputs.cache_index, bias[:, 0],
                                         c.attn_logit_softcap)
      out, cache = out.astype(dtype).reshape(b, 1, h, hd), tuple(cache)
    else:
      if cache is not None:
        # Write the new keys/values at slots [cache_index, cache_index + T), then attend
        # over every slot; the masks hide empty and future slots.
        cache = tuple(write_slots(stack, new, layer_index, inputs.cache_index)
                      for stack, new in zip(cache, (key, value)))
        key, value = (stack if layer_index is None else stack[layer_index] for stack in cache)
      else:
        key, value = key.swapaxes(1, 2), value.swapaxes(1, 2)

      # Each KV head's G = H // K query heads and T tokens form one [G*T, Dh] block of rows:
      # both attention products are then batched over (B, K) with a single free dimension,
      # the shape XLA's fast CPU kernels take (and a decode step reads each head's keys and
      # values as one contiguous [S, Dh] block).
      rows = q.reshape(b, t, k, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, hd)
      logits = matmul('bkrd,bksd->bkrs', rows, key, dtype).reshape(b, k, g, t, -1)
      logits = softcap(logits, c.attn_logit_softcap)
      logits = logits + bias[:, None, None, :, :]
      weights = jax.nn.softmax(logits, axis=-1).astype(dtype).reshape(b, k, g * t, -1)
      out = matmul('bkrs,bksd->bkrd', weights, value, dtype).astype(dtype)
      out = out.reshape(b, k, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
    out = constrain(out, ('batch', 'length', 'heads', 'head_dim'), self.mesh_rules)
    projected = dense('bthk,hkd->btd', out, o_kernel, (d,), c)
    if c.lora_kernels:
      projected += lora_delta(self, 'o', 'bthk,hkd->btd', out, (h, hd), (d,),
                              ('heads', 'head_dim'), ('embed',), c)
    out = projected.astype(dtype)
    return constrain(out, ('batch', 'length', 'embed'), self.mesh_rules), cache


class GatedMLP(nn.Module):
  """SwiGLU (Llama, Qwen2) or GeGLU with tanh-approximated GELU (Gemma)."""

  config: ModelConfig
  mesh_rules: MeshRules | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    dtype = c.jnp_dtype
    d, f = c.d_model, c.mlp_dim
    # Declared in this order because each parameter's initial values depend on it.
    down = kernel_param(self, 'down_kernel', (f,), (d,), ('mlp', 'embed'), c)
    gate = kernel_param(self, 'gate_kernel', (d,), (f,), ('embed', 'mlp'), c)
    up = kernel_param(self, 'up_kernel', (d,), (f,), ('embed', 'mlp'), c)
    gate_act = dense('btd,df->btf', x, gate, (f,), c)
    up_act = dense('btd,df->btf', x, up, (f,), c)
    if c.lora_kernels:
      gate_act += lora_delta(self, 'gate', 'btd,df->btf', x, (d,), (f,), ('embed',), ('mlp',), c)
      up_act += lora_delta(self, 'up', 'btd,df->btf', x, (d,), (f,), ('embed',), ('mlp',), c)
    if c.activation == 'silu':
      gate_act = jax.nn.silu(gate_act)
    else:
      gate_act = jax.nn.gelu(gate_act, approximate=True)
    hidden = (gate_act * up_act).astype(dtype)
    hidden = constrain(hidden, ('batch', 'length', 'mlp'), self.mesh_rules)
    out = dense('btf,fd->btd', hidden, down, (d,), c)
    if c.lora_kernels:
      out += lora_delta(self, 'down', 'btf,fd->btd', hidden, (f,), (d,), ('mlp',), ('embed',), c)
    out = out.astype(dtype)
    return constrain(out, ('batch', 'length', 'embed'), self.mesh_rules)


class Block(nn.Module):
  """One pre-norm decoder layer (with Gemma 2's extra post-norms when configured).

  The signature ``(carry, layer_inputs, shared) -> (carry, None)`` is what ``nn.scan``
  needs. The carry holds the hidden states and the KV cache: under a scan, the whole
  model's cache stacks (so a layer writes only its new tokens into them instead of copying
  its row); unrolled, this layer's own (k, v) caches, with ``layer_index`` None.
  """

  config: ModelConfig
  mesh_rules: MeshRules | None = None

  @nn.compact
  def __call__(self, carry: tuple[Array, Any], layer_inputs: tuple[Array, Array],
               shared: AttentionInputs):
    c = self.config
    x, cache = carry
    layer_index, is_local = layer_inputs
    attn_out, cache = Attention(c, self.mesh_rules, name='attn')(
        RMSNorm(c, name='pre_attn_norm')(x), shared, is_local, cache, layer_index)
    if c.post_norms:
      attn_out = RMSNorm(c, name='post_attn_norm')(attn_out)
    x = x + attn_out
    mlp_out = GatedMLP(c, self.mesh_rules, name='mlp')(RMSNorm(c, name='pre_mlp_norm')(x))
    if c.post_norms:
      mlp_out = RMSNorm(c, name='post_mlp_norm')(mlp_out)
    x = constrain(x + mlp_out, ('batch', 'length', 'embed'), self.mesh_rules)
    return (x, cache), None


REMAT_POLICIES = {
    'full': None,  # Save nothing: recompute the whole layer in the backward pass.
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
