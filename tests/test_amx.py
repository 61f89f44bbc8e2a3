"""The AMX matmul kernel (score_jax.kernels.amx): its tile layout, its products against XLA's,
the sampler's twin that uses it, and how it declines where it cannot run.

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
from score_jax.model import Decoder, for_decoding, init_params
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


def bf16_tiny(**overrides):
  model, params, _ = make_model('tiny', **overrides)
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
  assert 'AMX matmul kernel did not build' in result.stderr
  assert not list(tmp_path.rglob('*.so'))


def test_the_kernels_can_be_switched_off():
  script = 'import score_jax.kernels.amx as amx; print(amx.available())'
  env = dict(SCORE_JAX_CPU_KERNELS='0', JAX_PLATFORMS='cpu', PATH='/usr/bin:/bin')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == 'False'
