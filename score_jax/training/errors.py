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
4     a storage fault: a checkpoint or another file of the work directory could not be
      written (no space, no permission, a quota), or none of its checkpoints can be read;
      the checkpoints already on disk are left as they were
143   preempted (SIGTERM): a checkpoint was saved, and rerunning the command resumes
====  =================================================================================
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal

EXIT_INVALID = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4
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


class StorageFault(RunError):
  """The work directory cannot be written, or holds no checkpoint that can be read.

  Distinct from a training failure: the run itself was fine; rerunning the same command
  resumes from the last good checkpoint once the storage is fixed.
  """

  exit_code = EXIT_STORAGE

  def __init__(self, message: str, says_resume_step: bool = False):
    """``says_resume_step``: the message already says which checkpoint a rerun resumes
    from (the trainer adds it to the others)."""
    super().__init__(message)
    self.says_resume_step = says_resume_step


# OS errors that mean "the storage refused", not "the program asked for something wrong".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                            errno.EIO, errno.EFBIG})
# TensorStore (absl) status codes of a failed read or write. INVALID_ARGUMENT, UNIMPLEMENTED
# and INTERNAL are left out: they are the caller's or the library's bugs.
_STORAGE_STATUSES = ('RESOURCE_EXHAUSTED', 'PERMISSION_DENIED', 'NOT_FOUND', 'DATA_LOSS',
                     'FAILED_PRECONDITION', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'ABORTED')
# The same errors as libraries word them inside their own exceptions (tfds' RuntimeError).
_STRERRORS = tuple(os.strerror(code) for code in sorted(STORAGE_ERRNOS))
_STATUS = re.compile(r'\b(' + '|'.join(_STORAGE_STATUSES) + r'): ')
_OS_ERROR_CODE = re.compile(r"\s*\[os_error_code='?(\d+)'?\]")
_ARRAY_KEY = re.compile(r'Error (?:reading|writing) "([^"/]+)[/"]')


def _chain(error: BaseException):
  """``error`` and the errors it was raised from, in that order (each once)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def storage_reason(error: BaseException, any_os_error: bool = False) -> str | None:
  """A short reason when ``error`` (or one it was raised from) is a failed read or write of
  the storage, e.g. ``No space left on device (RESOURCE_EXHAUSTED)``; None otherwise.

  Recognised: an ``OSError``, a JSON file cut short, a TensorStore status of a failed read or
  write, and a library's own exception whose message quotes one of those OS errors.

  Args:
    error: what a library raised.
    any_os_error: count every ``OSError`` (as in a checkpoint save, where any of them is the
      storage's), not only the errnos of ``STORAGE_ERRNOS``.
  """
  for e in _chain(error):
    if isinstance(e, OSError) and (any_os_error or e.errno in STORAGE_ERRNOS):
      reason = e.strerror or str(e) or type(e).__name__
      return f'{reason} ({e.filename})' if e.filename else reason
    if isinstance(e, json.JSONDecodeError):
      return f'invalid JSON ({e.msg} at line {e.lineno}, column {e.colno}: cut short?)'
    message = str(e)
    match = _STATUS.search(message)
    if match:
      # "STATUS: Error writing "key" in OCDBT database at ...: Failed writing: "file": Failed
      # to write N bytes to file 20: No space left on device [os_error_code='28']": the last
      # clause says why, the first what.
      tail = _OS_ERROR_CODE.sub('', message.splitlines()[0]).rsplit(': ', 1)[-1]
      tail = tail.split(';')[0].strip()
      key = _ARRAY_KEY.search(message)
      where = f' in {key.group(1)}' if key else ''
      return f'{tail} ({match.group(1)}{where})'
  for e in _chain(error):
    for text in _STRERRORS:
      if text in str(e):
        return text
  return None
