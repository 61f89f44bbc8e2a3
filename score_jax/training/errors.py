"""Why a run stopped: typed errors the library raises and the entry points turn into exit codes.

The library never exits the process itself (``score_jax.reproduce`` runs several trainers in
one); ``score_jax.train`` and ``score_jax.evaluate`` print the message as one line on stderr
and exit with the error's code:

====  =================================================================================
code  meaning
====  =================================================================================
0     done
1     an unexpected error (a bug: the traceback is printed)
2     invalid input: a config value, a schedule that does not match the checkpoint's, a
      missing file; nothing was trained
3     training diverged (a non-finite loss or parameters); the last good checkpoint is kept
143   preempted (SIGTERM): a checkpoint was saved, and rerunning the command resumes
====  =================================================================================
"""

from __future__ import annotations

import signal

EXIT_INVALID = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 128 + signal.SIGTERM


class RunError(Exception):
  """A run that cannot go on; ``str(error)`` is one line for the user."""

  exit_code = 1


class InvalidRun(RunError):
  """The config, the data or the work directory do not allow the run."""

  exit_code = EXIT_INVALID


class Diverged(RunError):
  """A non-finite loss or parameters: the run stopped without saving them."""

  exit_code = EXIT_DIVERGED


class Preempted(RunError):
  """A SIGTERM arrived; the run saved a checkpoint and stopped."""

  exit_code = EXIT_PREEMPTED
