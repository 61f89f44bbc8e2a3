"""Final answers of math solutions: extraction, and equivalence under a hard time limit.

Extraction rule (``extract_answer``): the answer is given by the *last* answer marker in the
text, where a marker is either

* the phrase "final answer is" (any case) followed by ``$…$`` (or, without dollars, the rest
  of the sentence) — the paper's format "Final Answer: The final answer is $answer$. I hope it
  is correct." (Kumar et al., 2024, arXiv:2409.12917); or
* a top-level ``\\boxed{…}`` or ``\\fbox{…}`` (MATH's convention), read with balanced braces
  (``\\{`` and ``\\}`` are literal braces and do not count).

Boxes inside the chosen answer are unwrapped (``\\boxed{\\boxed{5}}`` → ``5``). A box that is
never closed ends the search: everything after it is inside it. No marker: ``None``.
Extraction is linear in the text length.

Equivalence (``MathVerifier``): a conservative string normalisation first (equal after removing
spacing commands, ``\\left``/``\\right``, ``\\dfrac``→``\\frac`` … means equal); otherwise
math-verify's ``verify(parse(gold), parse(answer))`` in a persistent worker process with a
per-check deadline. A check that runs past it, crashes the worker or exhausts its memory
returns "not equivalent" with a reason, and the worker is restarted; no answer can hang or
crash the caller, whatever thread it calls from.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Sequence

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'math_worker.py')
_FINAL_RE = re.compile(r'final answer is', re.I)
_BOX_RE = re.compile(r'\\(?:boxed|fbox)\b')
_SPACING_RE = re.compile(r'\\[,;:! ]|\\left\b|\\right\b|\\displaystyle\b|\s+')


# ---- extraction -----------------------------------------------------------------------------

def _group_end(text: str, start: int) -> int:
  """Index just past the brace group opening at ``text[start] == '{'``; -1 if unclosed."""
  depth = 0
  i = start
  n = len(text)
  while i < n:
    char = text[i]
    if char == '\\':
      i += 2
      continue
    if char == '{':
      depth += 1
    elif char == '}':
      depth -= 1
      if depth == 0:
        return i + 1
    i += 1
  return -1


def _last_box(text: str) -> tuple[int, str] | None:
  """(start, content) of the last top-level box, or None."""
  found = None
  position = 0
  while True:
    match = _BOX_RE.search(text, position)
    if match is None:
      return found
    i = match.end()
    while i < len(text) and text[i] == ' ':
      i += 1
    if i < len(text) and text[i] == '{':
      end = _group_end(text, i)
      if end < 0:
        return found  # unclosed: every later box is inside this one
      found = (match.start(), text[i + 1:end - 1])
      position = end
    else:  # \boxed 5 (a one-token argument)
      token = re.match(r'[^\s$]+', text[i:i + 1000])
      if token:
        found = (match.start(), token.group(0))
      position = i


def _unwrap_boxes(answer: str) -> str:
  """Replaces every ``\\boxed{X}`` inside an answer by ``X``."""
  while True:
    match = _BOX_RE.search(answer)
    if match is None:
      return answer
    i = match.end()
    while i < len(answer) and answer[i] == ' ':
      i += 1
    if i >= len(answer) or answer[i] != '{':
      answer = answer[:match.start()] + answer[match.end():]
      continue
    end = _group_end(answer, i)
    if end < 0:
      return answer
    answer = answer[:match.start()] + answer[i + 1:end - 1] + answer[end:]


def _last_final_answer(text: str) -> tuple[int, str] | None:
  """(start, answer) after the last "final answer is", or None."""
  last = None
  for last in _FINAL_RE.finditer(text):
    pass
  if last is None:
    return None
  rest = text[last.end():].lstrip()
  if rest.startswith('$'):
    body = rest.lstrip('$')
    end = _closing_dollar(body)
    answer = body[:end] if end >= 0 else body.split('\n', 1)[0]
  else:
    answer = re.split(r'\. I hope|\n', rest, maxsplit=1)[0]
  answer = answer.strip().rstrip('.').strip()
  return (last.start(), answer) if answer else None


def _closing_dollar(text: str) -> int:
  i = 0
  while i < len(text):
    if text[i] == '\\':
      i += 2
      continue
    if text[i] == '$':
      return i
    i += 1
  return -1


def extract_answer(text: str) -> str | None:
  """The final answer of a solution (see the module docstring for the rule)."""
  candidates = [c for c in (_last_final_answer(text), _last_box(text)) if c is not None]
  if not candidates:
    return None
  answer = _unwrap_boxes(max(candidates, key=lambda c: c[0])[1]).strip()
  return answer or None


def normalize(answer: str) -> str:
  """A conservative canonical form: equal forms are certainly the same answer."""
  answer = answer.strip().strip('$').strip()
  answer = _SPACING_RE.sub('', answer)
  answer = answer.replace('\\dfrac', '\\frac').replace('\\tfrac', '\\frac')
  return answer.rstrip('.')


# ---- equivalence ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Verdict:
  equivalent: bool
  reason: str  # match, verified, different, no_answer, too_long, timeout, crashed, error:<Type>


class MathVerifier:
  """Answer equivalence with math-verify in killable worker processes.

  Args:
    timeout_s: hard limit per check (after the worker is up); past it the worker is killed.
    num_workers: worker processes for ``verify_batch`` (one check at a time each).
    max_answer_chars: longer answers are judged not equivalent without parsing.
    memory_bytes: the address-space limit of each worker.
  """

  def __init__(self, timeout_s: float = 5.0, num_workers: int = 1,
               max_answer_chars: int = 2000, memory_bytes: int = 4 << 30,
               startup_timeout_s: float = 60.0):
    if timeout_s <= 0 or num_workers < 1:
      raise ValueError(f'timeout_s must be positive and num_workers at least 1; got '
                       f'{timeout_s} and {num_workers}.')
    self.timeout_s, self.max_answer_chars = timeout_s, max_answer_chars
    self._workers: queue.Queue[_Worker] = queue.Queue()
    self._all = [_Worker(memory_bytes, max(1, int(timeout_s * 0.6)), startup_timeout_s)
                 for _ in range(num_workers)]
    for worker in self._all:
      self._workers.put(worker)
    atexit.register(_close_if_alive, weakref.ref(self))

  def verify(self, gold: str | None, answer: str | None) -> Verdict:
    """Whether ``answer`` is the same mathematical answer as ``gold`` (both extracted)."""
    if gold is None or answer is None:
      return Verdict(False, 'no_answer')
    if normalize(gold) == normalize(answer):
      return Verdict(True, 'match')
    if len(answer) > self.max_answer_chars or len(gold) > self.max_answer_chars:
      return Verdict(False, 'too_long')
    worker = self._workers.get()
    try:
      return worker.check(gold, answer, self.timeout_s)
    finally:
      self._workers.put(worker)

  def verify_batch(self, golds: Sequence[str | None], answers: Sequence[str | None]
                   ) -> list[Verdict]:
    if len(golds) != len(answers):
      raise ValueError(f'Need one answer per gold answer; got {len(golds)} and {len(answers)}.')
    if len(self._all) == 1 or len(golds) <= 1:
      return [self.verify(g, a) for g, a in zip(golds, answers)]
    with concurrent.futures.ThreadPoolExecutor(len(self._all)) as pool:
      return list(pool.map(self.verify, golds, answers))

  def close(self) -> None:
    for worker in self._all:
      worker.stop()


def _close_if_alive(ref) -> None:
  verifier = ref()
  if verifier is not None:
    verifier.close()


class _Worker:
  """One ``math_worker.py`` process; restarted after a timeout or a crash."""

  def __init__(self, memory_bytes: int, inner_timeout_s: int, startup_timeout_s: float):
    self._args = [sys.executable, _WORKER, str(memory_bytes), str(inner_timeout_s)]
    self._startup_timeout_s = startup_timeout_s
    self._proc: subprocess.Popen | None = None
    self._buffer = b''
    self._next_id = 0
    self._lock = threading.Lock()

  def _start(self) -> None:
    env = {k: v for k, v in os.environ.items() if k in ('PATH', 'LANG', 'LC_ALL', 'HOME')}
    # Whatever the parent can import (math-verify included), the worker can too.
    env['PYTHONPATH'] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    self._proc = subprocess.Popen(
        self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    self._buffer = b''
    line = self._read_line(time.monotonic() + self._startup_timeout_s)
    if line is None or not json.loads(line).get('ready'):
      self.stop()
      raise RuntimeError(f'The math-verify worker did not start ({_WORKER}); check that '
                         'math-verify is installed: pip install math-verify==0.9.0.')

  def _read_line(self, deadline: float) -> bytes | None:
    """The next reply line, or None on the deadline or when the worker died."""
    fd = self._proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b'\n' not in self._buffer:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not poller.poll(remaining * 1000):
        return None
      chunk = os.read(fd, 1 << 16)
      if not chunk:
        return None
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b'\n', 1)
    return line

  def check(self, gold: str, answer: str, timeout_s: float) -> Verdict:
    with self._lock:
      if self._proc is None or self._proc.poll() is not None:
        self._start()
      self._next_id += 1
      request = json.dumps({'id': self._next_id, 'gold': gold, 'answer': answer}) + '\n'
      deadline = time.monotonic() + timeout_s
      try:
        self._proc.stdin.write(request.encode())
        self._proc.stdin.flush()
      except BrokenPipeError:
        self.stop()
        return Verdict(False, 'crashed')
      while True:
        line = self._read_line(deadline)
        if line is None:
          timed_out = self._proc.poll() is None
          self.stop()
          return Verdict(False, 'timeout' if timed_out else 'crashed')
        reply = json.loads(line)
        if reply.get('id') == self._next_id:
          break
      if reply['error']:
        return Verdict(False, f'error:{reply["error"]}')
      return Verdict(True, 'verified') if reply['equivalent'] else Verdict(False, 'different')

  def stop(self) -> None:
    proc, self._proc = self._proc, None
    if proc is not None and proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
      proc.wait()
      for stream in (proc.stdin, proc.stdout):
        try:
          stream.close()
        except OSError:
          pass
