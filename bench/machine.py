"""What the benchmarks share: the machine's description, its matmul rate, malloc settings."""

from __future__ import annotations

import os
import platform
import statistics
import sys
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


def matmul_rate(dtype: str = 'float32', size: int | None = None, repeats: int = 10) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] matmul of random operands in ``dtype``
  with fp32 results (as the model's matmuls); the median of ``repeats`` timed runs.
  ``size`` defaults to 2048 on a CPU and 8192 on an accelerator (enough to fill one)."""
  if size is None:
    size = 2048 if jax.default_backend() == 'cpu' else 8192
  a, b = (jax.random.normal(key, (size, size), dtype) for key in
          jax.random.split(jax.random.key(0)))
  fn = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  fn(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / statistics.median(times)


# glibc's malloc backs every large array with fresh mmap'd 4 KiB pages, so a step that
# allocates gigabytes of temporaries spends much of its time in page faults. Backing
# them with transparent huge pages and keeping freed memory in the process avoids most of
# that: one SmolLM2-shape update on two CPU cores goes from 4.7M page faults and ~29 s to
# 18k faults and ~25 s. (Any other process can be given the same setting.)
MALLOC_TUNABLES = ('glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:'
                   'glibc.malloc.trim_threshold=1000000000000')


def use_tuned_malloc(default_malloc: bool) -> str:
  """Re-executes this script with ``GLIBC_TUNABLES=MALLOC_TUNABLES`` unless the variable is
  already set (which then applies) or ``default_malloc``; returns a line saying which malloc
  settings apply."""
  if 'GLIBC_TUNABLES' in os.environ:
    source = 'set by the bench' if os.environ.get('BENCH_TUNED_MALLOC') else 'from the environment'
    return f"# malloc: GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']} ({source})"
  if default_malloc:
    return '# malloc: glibc defaults (--default_malloc)'
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return '# malloc: platform defaults'
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable] + sys.argv,
            dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES, BENCH_TUNED_MALLOC='1'))
  raise AssertionError('unreachable')
