"""Worker process for math answer equivalence (``math_answers.MathVerifier`` starts it).

Reads one JSON request per line on stdin, ``{"id": n, "gold": "...", "answer": "..."}``, and
writes ``{"id": n, "equivalent": bool, "error": str | null}`` per line. It runs math-verify's
``verify(parse(gold), parse(answer))`` in its main thread (so math-verify's own ``signal.alarm``
timeouts work). The parent enforces a hard deadline on top by killing this process, which is
why it is a separate process: sympy can spend minutes inside a single C call that no alarm
interrupts (a tower of exponents), or overflow the C stack on deep nesting.
Runs as a script (no score_jax imports), so it starts without the parent's package path.
"""

import json
import os
import resource
import sys


def main():
  memory_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else 4 << 30
  inner_timeout_s = int(sys.argv[2]) if len(sys.argv) > 2 else 3
  resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  # Replies go to a private copy of stdout; anything the libraries print goes to stderr.
  replies = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  sys.setrecursionlimit(10_000)
  import logging  # pylint: disable=g-import-not-at-top
  logging.disable(logging.CRITICAL)
  from math_verify import parse, verify  # pylint: disable=g-import-not-at-top
  parse('$1$')  # warm the parser (ANTLR) before the first timed request
  replies.write('{"ready": true}\n')
  for line in sys.stdin:
    request = json.loads(line)
    error = None
    try:
      gold = parse(_as_latex(request['gold']), parsing_timeout=inner_timeout_s)
      answer = parse(_as_latex(request['answer']), parsing_timeout=inner_timeout_s)
      equivalent = bool(gold) and bool(answer) and bool(
          verify(gold, answer, timeout_seconds=inner_timeout_s))
    except (Exception, RecursionError, MemoryError) as e:  # pylint: disable=broad-except
      equivalent, error = False, type(e).__name__
    replies.write(json.dumps({'id': request['id'], 'equivalent': equivalent,
                              'error': error}) + '\n')


def _as_latex(answer: str) -> str:
  """Wraps an extracted answer in a box: math-verify then reads it as one LaTeX expression
  (a box also keeps a currency ``\\$`` inside from being read as a math delimiter)."""
  return '\\boxed{' + answer + '}'


if __name__ == '__main__':
  main()
