"""The AMX kernels (score_jax.kernels.amx): the matmul's tile layout and its products against
XLA's, the decode-step attention against the XLA formulation, the sampler's twin that uses
both, and how they decline where they cannot run.

Tests that run the kernel need an x86 CPU with AMX (and a C++ compiler); elsewhere they are
skipped, and the sampler keeps XLA's matmuls, which the other tests cover.
"""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_model
from score_jax.kernels import amx
from score_jax.model import Decoder, for_decoding, init_cache, init_params
from score_jax.model.layers import mask_bias
from score_jax.model.decoder import amx_tiles_apply

needs_amx = pytest.mark.skipif(not amx.available(),
                               reason='needs an x86 CPU with AMX and a C++ compiler')


def test_pack_puts_each_element_where_the_kernel_reads_it():
  k, n = 64, 48
  weight = jnp.arange(k * n, dtype=jnp.float32).reshape(k, n)
  tiles = amx.pack(weight)
  assert tiles.shape == amx.tile_shape(k, n) == (3, 2, 16, 32)
  for j, i, r, c, p in [(0, 0, 0, 0, 0), (2, 1, 15, 15, 1), (1, 0, 3, 7, 1), (0, 1, 9, 2, 0)]:
    assert tiles[j, i, r, 2 * c + p] == weight[32 * i + 2 * r + p, 16 * j + c]
  np.testing.assert_array_equal(amx.unpack(tiles), weight)
  stacked = jnp.stack([weight, -weight])  # A leading (layer) axis is kept.
  np.testing.assert_array_equal(amx.unpack(amx.pack(stacked)), stacked)


def test_shapes_without_a_tile_layout_are_refused():
  assert amx.fits(576, 1536) and not amx.fits(48, 32) and not amx.fits(64, 40)
  with pytest.raises(ValueError, match='multiple of 32'):
    amx.pack(jnp.zeros((48, 32)))
  with pytest.raises(ValueError, match=r'\[N/16, K/32, 16, 32\]'):
    amx.matmul(jnp.zeros((4, 64)), jnp.zeros((2, 3, 16, 32)))


@needs_amx
@pytest.mark.parametrize('m, k, n', [
    (1, 32, 16),       # one tile of each, one row
    (5, 64, 48),       # a row tail and an odd number of column tiles
    (16, 576, 1536),   # SmolLM2's MLP at batch 16
    (33, 1536, 576),   # two row tiles and a one-row tail
    (64, 576, 192),    # its key/value projections at batch 64
    (200, 96, 80),     # a prefill-sized M
])
def test_kernel_equals_xla_matmul(m, k, n):
  rng = np.random.default_rng(m + k + n)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  weight = jnp.asarray(rng.standard_normal((k, n)), jnp.bfloat16)
  got = jax.jit(amx.matmul)(x, amx.pack(weight))
  expected = jnp.dot(x, weight, preferred_element_type=jnp.float32)
  assert got.dtype == jnp.float32 and got.shape == (m, n)
  # Both sum exact bf16 products in fp32; only the order of the additions may differ.
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * float(jnp.abs(expected).max()))


def reference_decode_attention(q, keys, values, new_keys, new_values, slot, bias, cap):
  """What layers.Attention computes for one new token with XLA's products."""
  keys, values = keys.at[:, :, slot].set(new_keys), values.at[:, :, slot].set(new_values)
  logits = jnp.einsum('bkgd,bksd->bkgs', q, keys, preferred_element_type=jnp.float32)
  if cap:
    logits = cap * jnp.tanh(logits / cap)
  weights = jax.nn.softmax(logits + bias[:, None, None, :], -1).astype(jnp.bfloat16)
  out = jnp.einsum('bkgs,bksd->bkgd', weights, values, preferred_element_type=jnp.float32)
  return out, keys, values


@needs_amx
@pytest.mark.parametrize('b, k, g, s, dh, cap', [
    (2, 3, 3, 32, 64, 0.0),    # SmolLM2's heads
    (4, 2, 4, 48, 128, 0.0),
    (1, 1, 1, 16, 32, 50.0),   # Gemma 2's soft cap
    (3, 2, 8, 64, 64, 0.0),
])
def test_decode_attention_equals_the_xla_formulation(b, k, g, s, dh, cap):
  """Outputs to fp32 rounding; the new key and value land in their slot, nothing else
  changes; masked slots (the large negative bias) get no weight."""
  rng = np.random.default_rng(s + dh)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
  q, keys, values = draw(b, k, g, dh) * 3, draw(b, k, s, dh), draw(b, k, s, dh)
  new_keys, new_values = draw(b, k, dh), draw(b, k, dh)
  valid = rng.random((b, s)) < 0.7
  valid[:, 0] = True
  bias = mask_bias(jnp.asarray(valid))
  slot = s // 2 + 1
  expected = reference_decode_attention(q, keys, values, new_keys, new_values, slot, bias, cap)
  got = jax.jit(amx.decode_attention, static_argnums=7)(
      q, keys, values, new_keys, new_values, jnp.int32(slot), bias, cap)
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[1], expected[1])
  np.testing.assert_array_equal(got[2], expected[2])
  # Poisoning a masked slot's value changes nothing.
  masked = int(np.flatnonzero(~valid[0])[0])
  poisoned = values.at[0, :, masked].set(1e4)
  again = amx.decode_attention(q, keys, poisoned, new_keys, new_values, jnp.int32(slot), bias,
                               cap)
  np.testing.assert_allclose(again[0], got[0], rtol=1e-6, atol=1e-6)


def test_decode_attention_refuses_shapes_it_cannot_take():
  assert amx.attention_fits(3, 192, 64) and not amx.attention_fits(3, 100, 64)
  assert not amx.attention_fits(17, 32, 64) and not amx.attention_fits(2, 32, 256)
  q = jnp.zeros((1, 1, 2, 64))
  with pytest.raises(ValueError, match='do not fit'):
    amx.decode_attention(q, jnp.zeros((1, 1, 40, 64)), jnp.zeros((1, 1, 40, 64)),
                         jnp.zeros((1, 1, 64)), jnp.zeros((1, 1, 64)), 0, jnp.zeros((1, 40)))


def bf16_tiny(preset='tiny', **overrides):
  """A tiny model computing in bf16, and its (fp32) parameters."""
  model, params, _ = make_model(preset, **overrides)
  return Decoder(dataclasses.replace(model.config, dtype='bfloat16')), params


@needs_amx
@pytest.mark.parametrize('overrides', [dict(), dict(tie_embeddings=False, qkv_bias=True),
                                       dict(scan_decode=True)])
def test_amx_twin_computes_the_same_function(overrides):
  """On a CPU with AMX a bf16 twin defaults to AMX tiles, declares parameters of the shapes
  it is given, and its logits match the XLA-matmul twin's to bf16 rounding."""
  model, params = bf16_tiny(**overrides)
  assert amx_tiles_apply(model)
  twin, twin_params = for_decoding(model, params)
  assert twin.config.kernel_layout == 'amx_tiles'
  declared = jax.eval_shape(lambda: init_params(twin, jax.random.key(0))[0])
  assert jax.tree.map(jnp.shape, declared) == jax.tree.map(jnp.shape, twin_params)
  xla_twin, xla_params = for_decoding(model, params, 'output_major')
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, model.config.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  valid = jnp.ones((2, 12), bool)
  logits = jax.jit(lambda p: twin.apply({'params': p}, tokens, positions, valid)[0])
  xla_logits = jax.jit(lambda p: xla_twin.apply({'params': p}, tokens, positions, valid)[0])
  got, expected = logits(twin_params), xla_logits(xla_params)
  np.testing.assert_allclose(got, expected, atol=0.05)
  assert float(jnp.abs(got - expected).mean()) < 0.005


@needs_amx
@pytest.mark.parametrize('preset, overrides', [
    ('tiny', dict(head_dim=32)),
    ('tiny_gemma2', dict(head_dim=32)),  # soft caps and sliding-window layers
])
def test_amx_decode_steps_match_xla_decode_steps(preset, overrides):
  """A prefill then decode steps through the AMX twin (whose steps write the cache and
  attend in the attention kernel) against the XLA-matmul twin: logits to bf16 rounding,
  caches written in the same slots."""
  model, params = bf16_tiny(preset, **overrides)
  amx_twin, amx_params = for_decoding(model, params)
  xla_twin, xla_params = for_decoding(model, params, 'output_major')
  assert amx_twin.config.kernel_layout == 'amx_tiles'
  batch, prefill, slots = 3, 10, 32
  tokens = jax.random.randint(jax.random.key(5), (batch, prefill + 4), 0,
                              model.config.vocab_size)

  def run(twin, twin_params):
    @jax.jit
    def steps(twin_params, cache):
      apply = lambda toks, start, cache: twin.apply(
          {'params': twin_params}, toks, start + jnp.broadcast_to(jnp.arange(toks.shape[1]),
                                                                  toks.shape),
          jnp.ones(toks.shape, bool), cache=cache, cache_index=start)
      logits, cache = apply(tokens[:, :prefill], 0, cache)
      outputs = [logits[:, -1]]
      for i in range(prefill, prefill + 4):
        logits, cache = apply(tokens[:, i:i + 1], i, cache)
        outputs.append(logits[:, -1])
      return jnp.stack(outputs), cache
    return steps(twin_params, init_cache(twin.config, batch, slots))

  (got, got_cache), (expected, expected_cache) = run(amx_twin, amx_params), run(xla_twin,
                                                                               xla_params)
  np.testing.assert_allclose(got, expected, atol=0.05)
  assert float(jnp.abs(got - expected).mean()) < 0.005
  np.testing.assert_array_equal(got_cache.valid, expected_cache.valid)
  for got_k, expected_k in zip(got_cache.k, expected_cache.k):
    written = np.abs(np.asarray(expected_k, np.float32)).sum(axis=(0, 1, 3)) > 0
    np.testing.assert_array_equal(
        np.abs(np.asarray(got_k, np.float32)).sum(axis=(0, 1, 3)) > 0, written)
    assert written[:prefill + 4].all() and not written[prefill + 4:].any()
    np.testing.assert_allclose(np.asarray(got_k, np.float32),
                               np.asarray(expected_k, np.float32), atol=0.05)


def test_amx_tiles_need_bf16_compute():
  model, params, _ = make_model('tiny')  # fp32 compute
  assert not amx_tiles_apply(model)
  with pytest.raises(ValueError, match='bfloat16'):
    for_decoding(model, params, 'amx_tiles')


def test_a_failed_build_is_reported_and_declined(tmp_path):
  """A compiler that fails leaves XLA's matmuls in use, says why on stderr, and writes no
  half-built library into the cache."""
  script = (
      'import score_jax.kernels.amx as amx\n'
      'amx.cpu_has_amx = lambda: True\n'
      'print(amx.available())\n')
  env = dict(CXX='false', SCORE_JAX_CACHE=str(tmp_path), JAX_PLATFORMS='cpu',
             PATH='/usr/bin:/bin')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == 'False'
  assert 'AMX kernels did not build' in result.stderr
  assert not list(tmp_path.rglob('*.so'))


def test_the_kernels_can_be_switched_off():
  script = 'import score_jax.kernels.amx as amx; print(amx.available())'
  env = dict(SCORE_JAX_CPU_KERNELS='0', JAX_PLATFORMS='cpu', PATH='/usr/bin:/bin')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == 'False'
