"""A bf16 matmul and a decode-step attention for CPUs with AMX tiles, for the sampler.

A decode step multiplies a few rows (one per sequence) by every weight and attends over the
whole KV cache, so on a CPU it is bound by reading memory. XLA's CPU matmuls rearrange the
weight into their own blocked order on every call; ``matmul`` reads weights that were
arranged once, before the rollout (``pack``), in the order AMX's TDPBF16PS consumes them, and
``decode_attention`` reads the cache in place and writes the new token's key and value into
it. Both are XLA FFI custom calls written in C++ (``amx.cc``; BENCHMARKS.md has the figures),
built with the system's C++ compiler the first time they are needed and cached under
``$SCORE_JAX_CACHE`` (default ``~/.cache/score_jax``).

``available()`` says whether it can run here: Linux on x86-64 with the AMX (and AVX-512)
CPU flags, a C++ compiler, a successful build and JAX's CPU backend. Anywhere else
the sampler keeps XLA's matmuls (``model.for_decoding``); set ``SCORE_JAX_CPU_KERNELS=0`` to
keep them here too. The kernel computes forward values only (no gradient): the trainer
never uses it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MATMUL_TARGET = 'score_jax_amx_matmul'
ATTENTION_TARGET = 'score_jax_amx_decode_attention'
TILE_ROWS, TILE_K, TILE_N = 16, 32, 16  # see amx.cc
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'amx.cc')
_FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC', '-mamx-tile', '-mamx-bf16', '-mavx512f',
          '-mavx512bf16')


def fits(k: int, n: int) -> bool:
  """True when a [k, n] weight has a tile layout: k a multiple of 32, n of 16."""
  return k > 0 and n > 0 and k % TILE_K == 0 and n % TILE_N == 0


def tile_shape(k: int, n: int) -> tuple[int, int, int, int]:
  """The packed shape [N/16, K/32, 16, 32] of a [k, n] weight (see ``pack``)."""
  if not fits(k, n):
    raise ValueError(f'A [{k}, {n}] weight has no AMX tile layout (K must be a multiple of '
                     f'{TILE_K} and N of {TILE_N}).')
  return (n // TILE_N, k // TILE_K, TILE_ROWS, TILE_K)


def pack(weight: Array) -> Array:
  """[..., K, N] weights → the kernel's tile order [..., N/16, K/32, 16, 32].

  Element ``[..., j, i, r, 2c + p]`` is ``weight[..., 32i + 2r + p, 16j + c]``: each 16x32
  block is one contiguous 1 KiB tile whose rows interleave pairs of consecutive K rows.
  """
  *lead, k, n = weight.shape
  tile_shape(k, n)  # Checks that it has one.
  tiles = weight.reshape(*lead, k // TILE_K, TILE_ROWS, 2, n // TILE_N, TILE_N)
  tiles = jnp.moveaxis(tiles, -2, -5)                 # [..., N/16, K/32, 16, 2, 16]
  tiles = jnp.swapaxes(tiles, -1, -2)                 # [..., N/16, K/32, 16, 16, 2]
  return tiles.reshape(*lead, n // TILE_N, k // TILE_K, TILE_ROWS, TILE_K)


def unpack(tiles: Array) -> Array:
  """The inverse of ``pack``: [..., N/16, K/32, 16, 32] → [..., K, N]."""
  *lead, n_tiles, k_tiles, rows, cols = tiles.shape
  if (rows, cols) != (TILE_ROWS, TILE_K):
    raise ValueError(f'unpack: expected [..., N/16, K/32, 16, 32] tiles, got {tiles.shape}.')
  t = tiles.reshape(*lead, n_tiles, k_tiles, TILE_ROWS, TILE_N, 2)
  t = jnp.swapaxes(t, -1, -2)                         # [..., N/16, K/32, 16, 2, 16]
  t = jnp.moveaxis(t, -5, -2)                         # [..., K/32, 16, 2, N/16, 16]
  return t.reshape(*lead, k_tiles * TILE_K, n_tiles * TILE_N)


def matmul(x: Array, tiles: Array) -> Array:
  """x [M, K] (cast to bf16) times the packed weight ``tiles`` → fp32 [M, N].

  Needs ``available()``; the result equals ``x @ unpack(tiles)`` accumulated in fp32, up to
  the order of the additions.
  """
  n_tiles, k_tiles = tiles.shape[:2]
  if tiles.ndim != 4 or x.ndim != 2 or x.shape[1] != k_tiles * TILE_K:
    raise ValueError(f'amx.matmul: expected x [M, K] and tiles [N/16, K/32, 16, 32] with '
                     f'matching K; got {x.shape} and {tiles.shape}.')
  out = jax.ShapeDtypeStruct((x.shape[0], n_tiles * TILE_N), jnp.float32)
  return jax.ffi.ffi_call(MATMUL_TARGET, out)(x.astype(jnp.bfloat16), tiles.astype(jnp.bfloat16))


def attention_fits(groups: int, slots: int, head_dim: int) -> bool:
  """True when ``decode_attention`` takes these shapes: at most 16 query heads per KV head,
  a multiple of 16 cache slots, and a head width of 32, 64, 96 or 128."""
  return (0 < groups <= 16 and slots > 0 and slots % TILE_ROWS == 0 and
          head_dim % TILE_K == 0 and 0 < head_dim <= 4 * TILE_K)


def decode_attention(q: Array, keys: Array, values: Array, new_keys: Array, new_values: Array,
                     slot: Array, bias: Array, softcap: float = 0.0):
  """One decode step's grouped-query attention over a bf16 KV cache, in one kernel.

  Args:
    q: [B, K, G, Dh] the new token's queries (scaled), G query heads per KV head.
    keys, values: the cache, [B, K, S, Dh] bf16, updated in place (donate them).
    new_keys, new_values: [B, K, Dh] the new token's key (after RoPE) and value.
    slot: int32 scalar, the cache slot of the new token.
    bias: [B, S] fp32 logit biases (0 or a large negative number, ``layers.mask_bias``).
    softcap: Gemma 2's attention-logit soft cap; 0 disables it.

  Returns:
    ``(out, keys, values)``: fp32 [B, K, G, Dh], softmax(softcap(q·k) + bias) rounded to
    bf16 times the values, as ``layers.Attention`` computes it with XLA's products; and the
    caches with the new token written at ``slot``. Needs ``available()`` and
    ``attention_fits``.
  """
  b, k, g, dh = q.shape
  if (keys.shape != values.shape or keys.shape[:2] != (b, k) or keys.shape[3] != dh or
      new_keys.shape != (b, k, dh) or new_values.shape != (b, k, dh) or
      bias.shape != (b, keys.shape[2]) or not attention_fits(g, keys.shape[2], dh)):
    raise ValueError(f'amx.decode_attention: shapes q {q.shape}, keys {keys.shape}, values '
                     f'{values.shape}, new keys {new_keys.shape}, new values '
                     f'{new_values.shape}, bias {bias.shape} do not fit the kernel.')
  cache = jax.ShapeDtypeStruct(keys.shape, jnp.bfloat16)
  outputs = (jax.ShapeDtypeStruct(q.shape, jnp.float32), cache, cache)
  bf16 = lambda x: x.astype(jnp.bfloat16)
  return jax.ffi.ffi_call(ATTENTION_TARGET, outputs, input_output_aliases={1: 1, 2: 2})(
      bf16(q), bf16(keys), bf16(values), bf16(new_keys), bf16(new_values),
      bias.astype(jnp.float32), jnp.asarray(slot, jnp.int32), softcap=np.float32(softcap))


def cpu_has_amx() -> bool:
  """True on Linux x86-64 CPUs that report the amx_bf16, amx_tile, avx512f and avx512_bf16
  flags (every CPU with AMX has the AVX-512 ones)."""
  if sys.platform != 'linux' or platform.machine() not in ('x86_64', 'AMD64'):
    return False
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          flags = set(line.split(':', 1)[1].split())
          return {'amx_bf16', 'amx_tile', 'avx512f', 'avx512_bf16'} <= flags
  except OSError:
    return False
  return False


@functools.cache
def available() -> bool:
  """True when the kernels are built and registered with JAX's CPU backend (once per process).

  False where the CPU lacks AMX, no C++ compiler is found, or ``SCORE_JAX_CPU_KERNELS=0``;
  also False, with one line on stderr saying why, when the build or the loading fails.
  """
  if os.environ.get('SCORE_JAX_CPU_KERNELS', '1') == '0':
    return False
  if not cpu_has_amx():
    return False
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('clang++')
  if compiler is None:
    return False
  try:
    library = _build(compiler)
  except (OSError, subprocess.CalledProcessError) as e:
    detail = getattr(e, 'stderr', '') or str(e)
    print(f'score_jax: the AMX kernels did not build, so decoding uses XLA\'s products '
          f'({compiler}: {detail.strip().splitlines()[-1] if detail.strip() else e})',
          file=sys.stderr)
    return False
  try:
    handlers = ctypes.cdll.LoadLibrary(library)
    matmul, attention = handlers.ScoreJaxAmxMatmul, handlers.ScoreJaxAmxDecodeAttention
  except (OSError, AttributeError) as e:
    print(f'score_jax: the AMX kernels did not load, so decoding uses XLA\'s products ({e})',
          file=sys.stderr)
    return False
  jax.ffi.register_ffi_target(MATMUL_TARGET, jax.ffi.pycapsule(matmul), platform='cpu')
  jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(attention), platform='cpu')
  return True


def _build(compiler: str) -> str:
  """Compiles amx.cc into the cache (once per source, flags and jax version) and returns
  the shared library's path. The file appears whole or not at all."""
  with open(_SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(source + repr((compiler, _FLAGS, jax.__version__)).encode())
  cache = os.environ.get('SCORE_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'score_jax')
  library = os.path.join(cache, 'kernels', f'amx-{key.hexdigest()[:16]}.so')
  if os.path.exists(library):
    return library
  os.makedirs(os.path.dirname(library), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(library)) as tmp:
    partial = os.path.join(tmp, 'amx.so')
    subprocess.run([compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', _SOURCE, '-o', partial],
                   check=True, capture_output=True, text=True)
    os.replace(partial, library)
  return library
