"""What the benchmarks share: a description of the machine and its measured matmul rate."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def describe_machine() -> str:
  """e.g. '2 CPU cores (Intel(R) Xeon(R) ...), 1 x cpu device' or the accelerator's name."""
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return (f'{os.cpu_count()} CPU cores ({cpu}), {jax.device_count()} x {device.device_kind} '
          f'({device.platform})')


def matmul_rate(dtype: str = 'float32', size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] matmul: operands in ``dtype``, fp32
  results (as the model's matmuls); the median of ``repeats`` timed runs."""
  a = jnp.ones((size, size), dtype)
  fn = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  fn(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / statistics.median(times)
