"""orbax's echoes of a failed checkpoint read or write, held back so that the error is one line.

When a background write fails, orbax logs it (with a traceback) from the thread that hit it,
the reads and writes still in flight end in "Event loop is closed" errors nobody can catch,
their coroutines are dropped unawaited, and the save's other threads wait out a five-minute
coordination timeout. ``score_jax.checkpoints.Checkpointer`` raises the error itself once
(``StorageFault`` or ``UnreadableCheckpoint``); this module keeps the rest off stderr:

* ``hold_back_failure_noise``: installed once; orbax's ERROR log records are held back
  (``held_error`` reads the reason back from them, ``forget_held`` drops them), and its
  uncatchable echoes are dropped;
* ``after_failure``: the warnings of the coroutines a failed operation dropped are silenced;
* ``release_waiters``: the waiting threads of a failed save are ended at once.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import warnings

import orbax.checkpoint as ocp

from score_jax.training.errors import storage_reason

_ORBAX_DIR = os.path.dirname(ocp.__file__)
_held = collections.deque(maxlen=8)  # orbax ERROR lines held back, newest last.
_installed = False


class _HoldOrbaxErrors(logging.Filter):
  """Keeps orbax's ERROR records off stderr: each failed background write is logged (with a
  traceback) by the thread that hit it, and raised again where the save is waited for."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and record.pathname.startswith(_ORBAX_DIR):
      _held.append((record.getMessage().strip().splitlines() or [''])[0])
      return False
    return True


def held_error() -> str | None:
  """The storage's reason in the newest held-back orbax error that names one, or None."""
  for line in reversed(_held):
    reason = storage_reason(RuntimeError(line))
    if reason:
      return reason
  return None


def forget_held() -> None:
  """Drops the held-back ERROR lines (a save completed: they were not its)."""
  _held.clear()


def _is_orbax_echo(unraisable) -> bool:
  """An error nobody can catch that only echoes an orbax read or write that already failed:
  a callback into the closed event loop of the failed operation, or one of its coroutines
  dropped unfinished."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and 'Event loop is closed' in str(error):
    return True
  code = getattr(unraisable.object, 'cr_code', None)
  return code is not None and code.co_filename.startswith(_ORBAX_DIR)


def after_failure() -> None:
  """Once a read or write failed, the coroutines of its siblings are dropped unawaited; each
  would warn at exit (other coroutines than orbax's cannot be told apart there)."""
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)


def release_waiters() -> None:
  """Ends the background threads of a failed save that wait for a step which will not come.

  orbax runs a save as threads that each wait for the signal of the one before (the step
  directory created, the arrays written); when one fails, the others wait out the
  coordination timeout (5 minutes), and as they are not daemons the process cannot exit
  before. Each is cancelled and its signals set, so that it returns at once. (orbax
  internals: where they differ, nothing is done and the wait is only longer.)
  """
  # pylint: disable=protected-access
  try:
    from orbax.checkpoint._src.futures import future  # pylint: disable=g-import-not-at-top
    waiting = [t for t in threading.enumerate()
               if isinstance(t, future._SignalingThread) and t.is_alive()]
    for thread in waiting:
      thread.cancel()
      future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
  except Exception:  # pylint: disable=broad-except
    pass
  # pylint: enable=protected-access


def hold_back_failure_noise() -> None:
  global _installed
  if _installed:
    return
  _installed = True
  logging.getLogger('absl').addFilter(_HoldOrbaxErrors())
  # "Task exception was never retrieved": a read that failed after another had already
  # failed the restore.
  logging.getLogger('asyncio').addFilter(
      lambda record: not (record.levelno >= logging.ERROR and _ORBAX_DIR in record.getMessage()))
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_orbax_echo(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
