"""Runs untrusted Python programs against unit tests, each in its own locked-down process.

The reward for code is 1 only when every unit test ran and passed. The programs are model
output: they may loop, fork, allocate, flood output, touch files or the network, exit early,
kill their parent, or try to fake a pass. This module keeps the trainer alive and the reward
honest through any of that (DESIGN.md decision 9). ``docs/sandbox.md`` lists exactly what is
enforced by the kernel, what by the Python-level harness, and what is not enforced.

    sandbox = Sandbox(SandboxConfig(wall_timeout_s=5))
    results = sandbox.run_batch([Job(program=code, tests=('assert f(1) == 2',), expose=('f',))])
    results[0].passed, results[0].status   # False, Status.FAILED

Every run is a fresh ``python -I -S sandbox_harness.py`` in a new session (its own process
group). The parent sends the job on stdin with a random nonce and an inherited descriptor for
the report; the harness isolates itself (see ``sandbox_harness.py``) and reports each step as a
nonce-prefixed line. The parent believes only those lines, and only counts a pass when the
``done`` line says every one of the tests it sent passed and the process exited with status 0.
On the wall-clock deadline the whole process group is killed; when the program ran under a uid
of its own, every process left with that uid is killed as well.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sandbox_harness.py')
_REPORT_LIMIT = 1 << 20
_STDERR_TAIL = 4096
_GRACE_S = 3.0


class Status(enum.StrEnum):
  """Why a program passed or did not."""
  PASSED = 'passed'
  FAILED = 'failed'  # a test raised (an assertion or any other exception)
  SYNTAX_ERROR = 'syntax_error'  # the program does not compile
  ERROR = 'error'  # the program raised while loading (before any test)
  TIMEOUT = 'timeout'  # the wall-clock deadline or the CPU-time limit
  MEMORY = 'memory'  # MemoryError: the address-space limit
  FORBIDDEN = 'forbidden'  # the program tried something the harness refuses (see docs)
  CRASHED = 'crashed'  # the process ended before every test was reported (exit, signal)
  SANDBOX_ERROR = 'sandbox_error'  # the harness could not isolate itself or start


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits for one program run. Sizes in bytes, times in seconds."""
  wall_timeout_s: float = 10.0
  cpu_time_s: int = 0  # 0: the wall timeout rounded up, plus one second
  memory_bytes: int = 1 << 30  # RLIMIT_AS
  max_processes: int = 16  # RLIMIT_NPROC, threads included
  max_open_files: int = 64  # RLIMIT_NOFILE
  max_file_bytes: int = 1 << 20  # RLIMIT_FSIZE: any single file written, stderr included
  tmpfs_bytes: int = 32 << 20  # size of the private /tmp (and working directory)
  isolate_network: bool = True
  drop_privileges: bool = True  # as root: run under a fresh uid/gid (else: keep the caller's)
  python: str = ''  # the interpreter for programs; '' picks one (see _pick_interpreter)
  hide_paths: tuple[str, ...] = ()  # directories to cover with an empty read-only tmpfs
  max_workers: int = 0  # parallel runs in run_batch; 0: the number of CPUs

  def __post_init__(self):
    if self.wall_timeout_s <= 0:
      raise ValueError(f'wall_timeout_s must be positive; got {self.wall_timeout_s}.')
    for name in ('memory_bytes', 'max_processes', 'max_open_files', 'max_file_bytes'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be positive; got {getattr(self, name)}.')
    for path in self.hide_paths:
      if not os.path.isabs(path):
        raise ValueError(f'hide_paths must be absolute paths; got {path!r}.')


@dataclasses.dataclass(frozen=True)
class Job:
  """One program and its tests.

  ``program`` runs first, in its own namespace. ``setup`` (trusted: it comes from the dataset)
  then runs in a separate test namespace whose builtins and ``modules`` are snapshots taken
  before the program ran; the names in ``expose`` are copied from the program's namespace into
  it; then each string in ``tests`` runs there. A test passes when it runs without raising.

  With ``check_results`` (the default), the tests receive each exposed callable through a
  wrapper: a call's result reaches them only as a copy built from exact builtin types (int,
  float, complex, bool, str, bytes, None, list, tuple, dict, set, frozenset) and an exception
  only as a fresh builtin exception with such arguments; any other result (an object with its
  own ``__eq__``, a ``list`` subclass, ``StopIteration``) fails the test. Names in
  ``unchecked`` are exposed as they are: for callables whose results the tests only pass on to
  other exposed functions (e.g. a class the tests instantiate as input). ``docs/sandbox.md``
  lists every check.
  """
  program: str
  tests: tuple[str, ...]
  setup: str = ''
  expose: tuple[str, ...] = ()
  modules: tuple[str, ...] = ()
  check_results: bool = True
  unchecked: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunResult:
  status: Status
  tests_passed: int
  tests_total: int
  detail: str  # e.g. 'test 2: AssertionError', 'killed by SIGXCPU'
  wall_s: float
  stderr_tail: str = ''
  isolation: dict | None = None  # what the harness managed to enforce (None if it never started)

  @property
  def passed(self) -> bool:
    return self.status == Status.PASSED


class Sandbox:
  """Runs ``Job``s one at a time (``run``) or many in parallel (``run_batch``)."""

  def __init__(self, config: SandboxConfig = SandboxConfig()):
    self.config = config
    self._is_root = os.geteuid() == 0
    self._python = config.python or None
    self._lock = threading.Lock()

  @property
  def python(self) -> str:
    """The interpreter programs run under (probed once, on first use)."""
    with self._lock:
      if self._python is None:
        self._python = _pick_interpreter(self)
      return self._python

  def run(self, job: Job) -> RunResult:
    return self._run(job, self.python)

  def run_batch(self, jobs: Sequence[Job]) -> list[RunResult]:
    """Runs the jobs in parallel threads (each one waits on its own subprocess)."""
    if not jobs:
      return []
    python = self.python
    workers = self.config.max_workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs))) as pool:
      return list(pool.map(lambda job: self._run(job, python), jobs))

  def _run(self, job: Job, python: str) -> RunResult:
    cfg = self.config
    uid = _fresh_uid() if (self._is_root and cfg.drop_privileges) else None
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix='score-sandbox-')
    report_file, report_fd = _report_file()
    stderr_file = tempfile.TemporaryFile()
    start = time.monotonic()
    # The harness enforces the wall-clock limit itself and then cleans up; this later deadline
    # only catches a harness that failed to (its group is then killed from here).
    deadline = start + cfg.wall_timeout_s + _GRACE_S
    payload = json.dumps(dict(
        nonce=nonce, report_fd=report_fd, program=job.program, setup=job.setup,
        tests=list(job.tests), expose=list(job.expose), modules=list(job.modules),
        check_results=job.check_results, unchecked=list(job.unchecked),
        uid=uid, workdir=workdir, wall_timeout_s=cfg.wall_timeout_s,
        isolate_network=cfg.isolate_network,
        hide_paths=list(cfg.hide_paths), tmpfs_bytes=cfg.tmpfs_bytes,
        cpu_time_s=cfg.cpu_time_s or int(cfg.wall_timeout_s) + 1,
        memory_bytes=cfg.memory_bytes, max_processes=cfg.max_processes,
        max_open_files=cfg.max_open_files, max_file_bytes=cfg.max_file_bytes)).encode()
    env = {'PATH': '/usr/local/bin:/usr/bin:/bin', 'LANG': 'C.UTF-8', 'LC_ALL': 'C.UTF-8'}
    proc = None
    timed_out = False
    try:
      try:
        proc = subprocess.Popen(
            [python, '-I', '-S', _HARNESS], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=stderr_file, pass_fds=(report_fd,),
            cwd='/', env=env, start_new_session=True, close_fds=True)
      except OSError as e:
        return RunResult(Status.SANDBOX_ERROR, 0, len(job.tests),
                         f'could not start {python!r}: {e}', time.monotonic() - start)
      finally:
        os.close(report_fd)
      timed_out = not _send_and_wait(proc, payload, deadline)
      _kill_group(proc.pid)
      proc.wait()
      wall_s = time.monotonic() - start
    finally:
      if proc is not None and proc.returncode is None:
        _kill_group(proc.pid)
        proc.wait()
      shutil.rmtree(workdir, ignore_errors=True)
    report = _read_head(report_file, _REPORT_LIMIT)
    stderr_tail = _read_tail(stderr_file, _STDERR_TAIL)
    report_file.close()
    stderr_file.close()
    return _classify(report, nonce, len(job.tests), proc.returncode, timed_out, wall_s,
                     stderr_tail)


def _send_and_wait(proc: subprocess.Popen, payload: bytes, deadline: float) -> bool:
  """Writes the job, then waits for the harness to exit. False on the deadline.

  The harness stays unreaped (a zombie) after it exits, so its process-group id cannot be
  reused before the caller kills the group.
  """
  fd = proc.stdin.fileno()
  os.set_blocking(fd, False)
  view = memoryview(payload)
  poller = select.poll()
  poller.register(fd, select.POLLOUT)
  try:
    while view:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return False
      if not poller.poll(remaining * 1000):
        continue
      try:
        view = view[os.write(fd, view):]
      except BlockingIOError:
        continue
      except (BrokenPipeError, ConnectionResetError):
        break  # the harness died before reading everything: its report says why
  finally:
    proc.stdin.close()
  try:
    pidfd = os.pidfd_open(proc.pid)
  except OSError:  # no pidfd (old kernel): fall back to a reaping wait
    try:
      proc.wait(max(0.0, deadline - time.monotonic()))
      return True
    except subprocess.TimeoutExpired:
      return False
  try:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return False
      if poller.poll(remaining * 1000):
        return True
  finally:
    os.close(pidfd)


def _report_file():
  """(the report's read side, a write-only descriptor for the harness), one unlinked file.

  The harness writes its first line, with the nonce, before the program runs; through a
  write-only descriptor (appending) the program cannot read that line back.
  """
  fd, path = tempfile.mkstemp(prefix='score-sandbox-report-')
  try:
    write_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
  except OSError:
    os.close(fd)
    raise
  finally:
    os.unlink(path)
  return os.fdopen(fd, 'rb'), write_fd


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _fresh_uid() -> int:
  """A random uid (and gid) no account uses, so limits and clean-up concern one run only."""
  low, high = _uid_range()
  return low + secrets.randbelow(high - low)


_UID_RANGE: tuple[int, int] | None = None


def _uid_range() -> tuple[int, int]:
  """The widest stretch of uids mapped into this user namespace, above ordinary accounts."""
  global _UID_RANGE
  if _UID_RANGE is None:
    best = (100_000, 1_000_000)
    try:
      with open('/proc/self/uid_map') as f:
        spans = [tuple(int(v) for v in line.split()) for line in f if line.strip()]
      spans = [(max(inside, 100_000), min(inside + count, 2**31 - 1))
               for inside, _, count in spans]
      spans = [s for s in spans if s[1] - s[0] >= 1000]
      if spans:
        best = max(spans, key=lambda s: s[1] - s[0])
    except OSError:
      pass
    _UID_RANGE = best
  return _UID_RANGE


def _read_head(f, limit: int) -> bytes:
  f.seek(0)
  return f.read(limit)


def _read_tail(f, limit: int) -> str:
  size = f.seek(0, os.SEEK_END)
  f.seek(max(0, size - limit))
  return f.read(limit).decode('utf-8', 'replace')


def _classify(report: bytes, nonce: str, n_tests: int, harness_returncode: int,
              harness_timed_out: bool, wall_s: float, stderr_tail: str) -> RunResult:
  """Turns the nonce-prefixed report lines into a ``RunResult``.

  Lines ``ready``, ``load``, ``test`` and ``done`` come from the program's process before and
  while it runs untrusted code; ``exit`` comes from the supervising harness process after the
  program's process ended (its exit status, or ``timeout``).
  """
  prefix = nonce.encode() + b' '
  lines = [line[len(prefix):].decode('utf-8', 'replace').split(' ')
           for line in report.split(b'\n') if line.startswith(prefix)]
  isolation, load, done, failure, exit_words = None, None, None, None, None
  tests_passed = 0
  for words in lines:
    if words[0] == 'ready' and isolation is None:
      try:
        isolation = json.loads(' '.join(words[1:]))
      except ValueError:
        isolation = {}
    elif words[0] in ('load', 'setup') and load is None:
      load = words
    elif words[0] == 'test' and len(words) >= 3:
      if words[2] == 'ok':
        tests_passed += 1
      elif failure is None:
        failure = words
    elif words[0] == 'done' and len(words) == 3 and done is None:
      done = (words[1], words[2])
    elif words[0] == 'exit' and exit_words is None:
      exit_words = words[1:]

  def result(status, detail):
    return RunResult(status, tests_passed, n_tests, detail, wall_s, stderr_tail, isolation)

  timed_out = harness_timed_out or exit_words == ['timeout']
  exit_clean = exit_words == ['status', '0'] and harness_returncode == 0
  ending = _ending(exit_words, harness_returncode, harness_timed_out)
  if isolation is None:
    if timed_out:
      return result(Status.TIMEOUT, f'no report within {wall_s:.1f} s')
    return result(Status.SANDBOX_ERROR, f'the harness did not start ({ending}); '
                  f'stderr: {stderr_tail[-500:]!r}')
  if done == (str(n_tests), str(n_tests)) and tests_passed == n_tests and exit_clean:
    return result(Status.PASSED, f'{n_tests}/{n_tests} tests passed')
  if load is not None and load[1] != 'ok':
    kind = load[2] if len(load) > 2 else 'Unknown'
    if load[0] == 'setup':
      return result(Status.SANDBOX_ERROR, f'the trusted test setup raised {kind}')
    if load[1] == 'syntax_error':
      return result(Status.SYNTAX_ERROR, kind)
    return result(_status_for(kind), f'while loading: {" ".join(load[2:])}')
  if failure is not None:
    kind = failure[3] if len(failure) > 3 else 'Unknown'
    status = _status_for(kind)
    return result(Status.FAILED if status == Status.ERROR else status,
                  f'test {failure[1]}: {" ".join(failure[3:])}')
  if timed_out:
    return result(Status.TIMEOUT, f'wall-clock limit ({wall_s:.1f} s)')
  if exit_words == ['signal', str(int(signal.SIGXCPU))]:
    return result(Status.TIMEOUT, 'CPU-time limit (SIGXCPU)')
  if 'MemoryError' in stderr_tail:
    return result(Status.MEMORY, f'MemoryError outside a test ({ending})')
  if done is not None:  # every test reported ok, yet the exit was not clean
    return result(Status.CRASHED, f'tests passed but the program {ending}')
  return result(Status.CRASHED, f'the program {ending} after {tests_passed}/{n_tests} '
                'tests were reported')


def _ending(exit_words: list[str] | None, harness_returncode: int, harness_timed_out: bool
            ) -> str:
  """How the program's process ended, in words."""
  if exit_words and exit_words[0] == 'signal' and len(exit_words) == 2:
    try:
      return f'was killed by {signal.Signals(int(exit_words[1])).name}'
    except ValueError:
      return f'was killed by signal {exit_words[1]}'
  if exit_words and exit_words[0] == 'status' and len(exit_words) == 2:
    return f'exited with status {exit_words[1]}'
  if exit_words == ['timeout']:
    return 'ran out of time'
  if harness_timed_out:
    return 'did not finish (the harness was killed)'
  return f'ended unreported (harness status {harness_returncode})'


def _status_for(kind: str) -> Status:
  """The status for an exception type name (a refusal noted in the detail does not count:
  the standard library probes refused calls and falls back, e.g. namedtuple's frame lookup)."""
  if kind == 'MemoryError':
    return Status.MEMORY
  if kind == 'SandboxForbidden':
    return Status.FORBIDDEN
  return Status.ERROR


_PROBE = Job(program='import collections, itertools, functools, heapq, bisect, math, re, '
             'string, random, typing, fractions, decimal, statistics, hashlib, json, copy, '
             'operator, datetime, cmath, array\nok = 1', tests=('assert ok == 1',),
             expose=('ok',))


def _pick_interpreter(sandbox: Sandbox) -> str:
  """The first interpreter that can run a program importing common standard modules.

  Under a dropped uid, an interpreter installed in a private directory (e.g. under /root)
  cannot import its own standard library, so the caller's interpreter does not always work;
  the system one usually does.
  """
  candidates = []
  for path in (sys.executable, '/usr/bin/python3', shutil.which('python3')):
    if path and os.path.exists(path) and path not in candidates:
      candidates.append(path)
  failures = []
  for path in candidates:
    result = sandbox._run(_PROBE, path)
    if result.passed:
      return path
    failures.append(f'{path}: {result.status} ({result.detail})')
  raise RuntimeError('No Python interpreter can run programs in the sandbox: '
                     + '; '.join(failures) + '. Set SandboxConfig.python to one whose standard '
                     'library is readable by every user, or drop_privileges=False.')
