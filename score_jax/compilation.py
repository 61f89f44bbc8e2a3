"""Counting XLA compilations, to prove that steps after the first never recompile.

A recompile in an RL loop (a shape that changed, a Python scalar that became a new constant)
silently costs seconds to minutes per step. Tests and the trainer wrap steady-state work in
``count_compilations()`` and check the count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

import jax

# The event JAX records once per backend (XLA) compilation.
_BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


@dataclasses.dataclass
class CompileCount:
  count: int = 0
  seconds: float = 0.0


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileCount]:
  """Counts backend compilations (and their time) made inside the ``with`` block."""
  result = CompileCount()
  lock = threading.Lock()

  def listener(event: str, duration: float, **_) -> None:
    if event == _BACKEND_COMPILE_EVENT:
      with lock:
        result.count += 1
        result.seconds += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield result
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
