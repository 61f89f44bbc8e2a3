r"""Checks a task end to end: its data, its prompts and its reward on reference answers.

  python -m score_jax.tasks.check --task=humaneval --canonical
  python -m score_jax.tasks.check --task=toy_arith
  python -m score_jax.tasks.check --task=nl_arith --canonical
  python -m score_jax.tasks.check --task=math --path=/data/MATH --heldout_ids=/data/math500.jsonl \
      --canonical
  python -m score_jax.tasks.check --task=mbpp --path=/data/mbpp.jsonl --split=all --canonical

With ``--canonical`` every reference answer of the split (HumanEval's canonical solutions,
MBPP's reference code, MATH's own solutions) is scored by the task's reward, and the command
reports ``passed/total`` and the wall time; it exits with status 1 unless all pass. Without
it, it prints a few examples, their first-turn prompts and, for the toy task, two-attempt
traces with token counts and the dataset's split sizes.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging as absl_logging

from score_jax import tasks

_TASK = flags.DEFINE_string('task', 'toy_arith', f'Task name: one of {tasks.list_tasks()}.')
_SPLIT = flags.DEFINE_string('split', '', 'Split to check (default: the last split).')
_CANONICAL = flags.DEFINE_bool('canonical', False, 'Score every reference answer.')
_DATA_DIR = flags.DEFINE_string('data_dir', os.path.join(tempfile.gettempdir(),
                                                         'score_jax_data'),
                                'Where datasets and tokenizers are written.')
_PATH = flags.DEFINE_string('path', '', 'Data file or directory (MATH, MBPP).')
_HELDOUT = flags.DEFINE_string('heldout_ids', '', 'Held-out id list (MATH).')
_NUM = flags.DEFINE_integer('num', 3, 'Examples (and traces) to print.')
_TIMEOUT = flags.DEFINE_float('timeout_s', 10.0, 'Per-program (code) or per-check (math) '
                              'time limit.')


def _task_options(name: str) -> dict:
  options = dict(path=_PATH.value, heldout_ids=_HELDOUT.value)
  if name in ('humaneval', 'mbpp', 'mbpp_humaneval', 'math'):
    options['timeout_s'] = _TIMEOUT.value
  return options


def _canonical(task, examples) -> int:
  """Scores each example's reference answer; prints the tally, the time, the failures."""
  kind = task.name
  start = time.perf_counter()
  if hasattr(task, 'run_batch'):  # code: reference programs through the sandbox
    references = [e.answer[len(e.problem):] if e.source == 'humaneval' else e.answer
                  for e in examples]
    results = task.run_batch(examples, references)
    passed = [r.passed for r in results]
    reasons = [f'{r.status}: {r.detail}' for r in results]
  elif hasattr(task, 'verdicts'):  # math: each solution against its own gold answer
    verdicts = task.verdicts(examples, [e.solution for e in examples])
    passed = [v.equivalent for v in verdicts]
    reasons = [v.reason for v in verdicts]
  else:  # toy: the worked solution; nl_arith: the gold number as a reply
    replies = [getattr(e, 'solution', '') or e.answer for e in examples]
    passed = list(task.score_batch(examples, replies) == 1)
    reasons = ['wrong answer'] * len(examples)
  wall_s = time.perf_counter() - start
  total, good = len(examples), sum(passed)
  print(f'{kind}: {good}/{total} reference answers pass ({wall_s:.1f} s wall, '
        f'{os.cpu_count()} CPUs)')
  counts = collections.Counter(r.split(':')[0] for r, ok in zip(reasons, passed) if not ok)
  for example, ok, reason in zip(examples, passed, reasons):
    if not ok:
      print(f'  FAILED {example.id}: {reason}')
  if counts:
    print(f'  failures by reason: {dict(counts)}')
  return 0 if good == total else 1


def _show(task, examples) -> None:
  for example in examples[:_NUM.value]:
    print(f'--- {example.id}\n{task.first_turn_prompt(example)}')
  print(f'--- instruction ({task.default_instruction}): {task.instruction}')


def _toy_report(task) -> None:
  start = time.perf_counter()
  tokenizer = task.tokenizer(_DATA_DIR.value)
  sizes = {s: len(task.load_split(s, _DATA_DIR.value)) for s in task.splits}
  print(f'dataset {task.dataset_dir(_DATA_DIR.value)}: {sizes} '
        f'(ready in {time.perf_counter() - start:.1f} s); tokenizer vocabulary '
        f'{tokenizer.vocab_size}')
  traces = task.make_traces(max(_NUM.value, 2000), seed=0)
  for trace in traces[:_NUM.value]:
    print(f'--- trace {trace.problem!r}')
    for label, text in (('prompt', task.first_turn_prompt(trace.example)),
                        ('attempt 1', trace.attempt1), ('instruction', task.instruction),
                        ('attempt 2', trace.attempt2)):
      print(f'  {label:12s} {len(tokenizer.encode(text)):3d} tokens  {text}')
  r1 = task.score_batch([t.example for t in traces], [t.attempt1 for t in traces])
  r2 = task.score_batch([t.example for t in traces], [t.attempt2 for t in traces])
  longest = max(len(tokenizer.encode(task.first_turn_prompt(t.example)))
                + len(tokenizer.encode(t.attempt1)) for t in traces)
  print(f'{len(traces)} traces: attempt 1 correct {r1.mean():.2f}, attempt 2 correct '
        f'{r2.mean():.2f}, i→c {((r1 == 0) & (r2 == 1)).mean():.2f}, '
        f'c→i {((r1 == 1) & (r2 == 0)).mean():.2f}; longest prompt+attempt {longest} tokens')


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  task = tasks.get_task(_TASK.value, **_task_options(_TASK.value))
  split = _SPLIT.value or task.splits[-1]
  try:
    examples = task.load_split(split, _DATA_DIR.value)
    if _CANONICAL.value:
      sys.exit(_canonical(task, examples))
    _show(task, examples)
    if task.name == 'toy_arith':
      _toy_report(task)
  finally:
    task.close()


if __name__ == '__main__':
  app.run(main)
