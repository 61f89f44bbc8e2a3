"""Toy arithmetic: the built-in task a ~1M-parameter model trained from scratch on a CPU can learn.

A problem is a short expression; a solution is a worked line of single operations, then the
final answer:

    prompt    47+38-12=?
    solution  47+38=85, 85-12=73. A: 73

Checking a worked line is easier than producing the answer in one go: every step is one
operation on numbers written just before it, so a model that re-reads attempt 1 can re-derive
each step and find the one that is off — the room to self-correct that SCoRe needs
(Kumar et al., 2024, arXiv:2409.12917). ``*`` is done before ``+``/``-`` (one step per
operation, leftmost first), and intermediate results stay non-negative unless
``allow_negative``.

``make_traces`` writes two-attempt traces for warm-starting a base model by SFT: attempt 1 is
right or has a plausible slip (a dropped carry, a forgotten borrow, off by one or ten, swapped
digits, one multiple too many), carried through to the answer; attempt 2 copies it, fixes it,
or slips anew, at configurable rates. The problems are written once to a TensorFlow Datasets
dataset (``array_record``, read back with random access, no TensorFlow needed) and a
sentencepiece tokenizer trained on the task's text is cached beside it.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

import numpy as np

from score_jax.tasks import base
from score_jax.tasks import toy_data

_ANSWER_RE = re.compile(r'A:\s*(-?\d+)')
_OPERATORS = '+-*'


@dataclasses.dataclass(frozen=True)
class ArithSettings:
  """Difficulty: operand digits, operand count, operators; ``mul_digits`` for ``*`` operands."""
  digits: int = 2
  num_operands: int = 3
  operators: str = '+-'
  mul_digits: int = 1
  allow_negative: bool = False

  def __post_init__(self):
    if not 1 <= self.digits <= 6:
      raise ValueError(f'digits must be in 1..6; got {self.digits}.')
    if not 2 <= self.num_operands <= 8:
      raise ValueError(f'num_operands must be in 2..8; got {self.num_operands}.')
    if not self.operators or set(self.operators) - set(_OPERATORS):
      raise ValueError(f'operators must be a non-empty string over {_OPERATORS!r}; got '
                       f'{self.operators!r}.')
    if not 1 <= self.mul_digits <= self.digits:
      raise ValueError(f'mul_digits must be in 1..digits ({self.digits}); got '
                       f'{self.mul_digits}.')

  @property
  def slug(self) -> str:
    names = ''.join({'+': 'p', '-': 'm', '*': 't'}[op] for op in self.operators)
    return (f'd{self.digits}_n{self.num_operands}_{names}_md{self.mul_digits}'
            f'{"_neg" if self.allow_negative else ""}')


@dataclasses.dataclass(frozen=True)
class ArithExample(base.Example):
  """``answer`` is the integer result as text; ``solution`` the correct worked line."""
  solution: str = ''


@dataclasses.dataclass(frozen=True)
class Step:
  left: int
  op: str
  right: int
  result: int

  def __str__(self) -> str:
    return f'{self.left}{self.op}{self.right}={self.result}'


def _apply(op: str, a: int, b: int) -> int:
  return a + b if op == '+' else a - b if op == '-' else a * b


def _step_order(ops: Sequence[str]) -> list[int]:
  """Which operator position each step reduces: every ``*`` left to right, then the rest."""
  ops = list(ops)
  order = []
  while ops:
    i = ops.index('*') if '*' in ops else 0
    order.append(i)
    del ops[i]
  return order


def solve(operands: Sequence[int], ops: Sequence[str],
          override: tuple[int, int] | None = None) -> list[Step]:
  """The worked steps; ``override=(k, value)`` replaces step k's result (a slip) and carries
  the wrong value through the remaining steps."""
  values, ops = list(operands), list(ops)
  steps = []
  for k, i in enumerate(_step_order(ops)):
    result = _apply(ops[i], values[i], values[i + 1])
    if override is not None and override[0] == k:
      result = override[1]
    steps.append(Step(values[i], ops[i], values[i + 1], result))
    values[i:i + 2] = [result]
    del ops[i]
  return steps


def format_problem(operands: Sequence[int], ops: Sequence[str]) -> str:
  parts = [str(operands[0])]
  for op, value in zip(ops, operands[1:]):
    parts += [op, str(value)]
  return ''.join(parts)


def format_solution(steps: Sequence[Step]) -> str:
  return ', '.join(str(s) for s in steps) + f'. A: {steps[-1].result}'


def parse_problem(problem: str) -> tuple[list[int], list[str]]:
  tokens = re.findall(r'\d+|[-+*]', problem)
  if len(tokens) < 3 or len(tokens) % 2 == 0:
    raise ValueError(f'Not a toy arithmetic problem: {problem!r}.')
  return [int(t) for t in tokens[::2]], tokens[1::2]


def _operand(rng: random.Random, digits: int) -> int:
  return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits)


def make_problem(rng: random.Random, settings: ArithSettings) -> tuple[list[int], list[str]]:
  """Draws operands and operators (re-drawing until no intermediate result is negative)."""
  while True:
    ops = [rng.choice(settings.operators) for _ in range(settings.num_operands - 1)]
    operands = [_operand(rng, settings.digits)]
    for op in ops:
      if op == '*':  # one-digit factors from 2: ×0 and ×1 teach nothing
        operands.append(rng.randrange(2, 10) if settings.mul_digits == 1
                        else _operand(rng, settings.mul_digits))
      else:
        operands.append(_operand(rng, settings.digits))
    if settings.allow_negative or all(s.result >= 0 for s in solve(operands, ops)):
      return operands, ops


def _slip_values(step: Step) -> list[int]:
  """Plausible wrong results for one step (every one differs from the right result)."""
  a, b, right = step.left, step.right, step.result
  wrong = {right + 1, right - 1, right + 10, right - 10}
  if step.op == '+' and a >= 0 and b >= 0:
    no_carry = _digitwise(a, b, lambda x, y: (x + y) % 10)
    wrong.add(no_carry)
  if step.op == '-' and a >= 0 and b >= 0:
    no_borrow = _digitwise(a, b, lambda x, y: abs(x - y))
    wrong.add(no_borrow if a >= b else -no_borrow)
  if step.op == '*':
    wrong |= {a * (b + 1), a * (b - 1)} if b > 1 else {a + b}
  text = str(abs(right))
  if len(text) >= 2 and text[-1] != text[-2]:
    swapped = int(text[:-2] + text[-1] + text[-2])
    wrong.add(swapped if right >= 0 else -swapped)
  wrong.discard(right)
  return sorted(wrong)


def _digitwise(a: int, b: int, digit_op) -> int:
  """Combines a and b digit by digit with no carries or borrows."""
  out, place = 0, 1
  while a or b:
    out += digit_op(a % 10, b % 10) * place
    a, b, place = a // 10, b // 10, place * 10
  return out


def slipped_steps(operands, ops, rng: random.Random, settings: ArithSettings,
                  avoid: Sequence[int] = ()) -> list[Step]:
  """A worked line with one slip carried to a wrong final answer (not in ``avoid``)."""
  right = solve(operands, ops)
  answer = right[-1].result
  for _ in range(32):
    k = rng.randrange(len(right))
    steps = solve(operands, ops, override=(k, rng.choice(_slip_values(right[k]))))
    final = steps[-1].result
    if final == answer or final in avoid:
      continue
    if settings.allow_negative or all(s.result >= 0 for s in steps):
      return steps
  for delta in range(1, 100):  # rare fallback: a slip in the last step
    if answer + delta not in avoid:
      return solve(operands, ops, override=(len(right) - 1, answer + delta))
  raise AssertionError('unreachable')


_NO_CARRY = {'+': lambda x, y: (x + y) % 10, '-': lambda x, y: abs(x - y)}


def forgotten_carry(operands, ops, operators: str = '+-') -> list[Step] | None:
  """The worked line with the first carry (``7+8=5``) or borrow (``12-3=11``) forgotten and
  carried to the answer; None when no step needs one, or when forgetting it leaves the
  answer right or a step negative. ``operators='-'`` looks at borrows only."""
  right = solve(operands, ops)
  for k, step in enumerate(right):
    if step.op not in operators or step.left < 0 or step.right < 0:
      continue
    forgot = _digitwise(step.left, step.right, _NO_CARRY[step.op])
    if forgot != step.result:
      steps = solve(operands, ops, override=(k, forgot))
      if steps[-1].result == right[-1].result or any(s.result < 0 for s in steps):
        return None
      return steps
  return None


def make_example(operands, ops) -> ArithExample:
  problem = format_problem(operands, ops)
  steps = solve(operands, ops)
  return ArithExample(id=problem, problem=problem, answer=str(steps[-1].result),
                      solution=format_solution(steps))


def generate_split(settings: ArithSettings, seed: int, split: str, size: int,
                   exclude: frozenset[str] = frozenset()) -> list[ArithExample]:
  """``size`` distinct problems for a split, deterministic for (settings, seed, split)."""
  rng = random.Random(f'toy_arith/{settings.slug}/{seed}/{split}')
  seen, examples = set(exclude), []
  attempts = 0
  while len(examples) < size:
    attempts += 1
    if attempts > 50 * size + 1000:
      raise ValueError(f'Could not draw {size} distinct {split} problems with {settings}; '
                       'the setting has too few distinct problems: lower the size or raise '
                       'digits/num_operands.')
    example = make_example(*make_problem(rng, settings))
    if example.problem not in seen:
      seen.add(example.problem)
      examples.append(example)
  return examples


@dataclasses.dataclass(frozen=True)
class TraceRates:
  """How often attempt 1 is right, and what attempt 2 does in each case.

  After a right attempt 1, attempt 2 copies it with ``keep_correct`` (else it slips: c→i).
  After a wrong attempt 1, attempt 2 is the right solution with ``fix_wrong`` (i→c), a copy
  with ``copy_wrong``, else a different slip. The defaults give a base model with a modest
  first-attempt accuracy and about zero Δ, like the paper's base models that do not self-correct.

  ``carry_habit`` gives attempt 1 a systematic flaw: on a problem with a step that needs a
  carry or a borrow, attempt 1 forgets it (``7+8=5``, ``12-3=11``) with this probability,
  before the rates above apply. Above one half it is the most likely attempt 1 on those problems, so
  a greedy base model fails exactly them — a flaw visible in the written line, which attempt 2
  can learn to catch.

  ``second_guess`` gives attempt 2 the matching misconception: after a right attempt 1 whose
  line has a subtraction with a borrow (``12-3=9``), attempt 2 "corrects" the borrow away
  (``12-3=11``) with this probability, before ``keep_correct`` applies. Above one half, a
  greedy base model asked to revise breaks exactly those right answers, as the paper's base
  models do (Kumar et al., 2024: Δc→i 15.8 points on MATH).

  ``slip_fix`` and ``slip_copy``, when set, replace ``fix_wrong`` and ``copy_wrong`` after a
  random slip only, so that attempt 2 can treat the two kinds of error differently: a model
  re-reading its line catches a one-off slip more easily than the systematic error it would
  make again (the forgotten carry keeps ``fix_wrong`` and ``copy_wrong``). Unset (None), a
  slip gets the same rates as the habit.
  """
  first_correct: float = 0.6
  keep_correct: float = 0.8
  fix_wrong: float = 0.25
  copy_wrong: float = 0.6
  carry_habit: float = 0.0
  second_guess: float = 0.0
  slip_fix: float | None = None
  slip_copy: float | None = None

  def __post_init__(self):
    for name in ('first_correct', 'keep_correct', 'fix_wrong', 'copy_wrong', 'carry_habit',
                 'second_guess', 'slip_fix', 'slip_copy'):
      value = getattr(self, name)
      if value is None and name.startswith('slip_'):
        continue
      if not 0 <= value <= 1:
        raise ValueError(f'{name} must be a probability; got {value}.')
    if self.fix_wrong + self.copy_wrong > 1:
      raise ValueError(f'fix_wrong + copy_wrong must be at most 1; got {self.fix_wrong} + '
                       f'{self.copy_wrong}.')
    fix, copy = self.after_slip()
    if fix + copy > 1:
      raise ValueError(f'slip_fix + slip_copy must be at most 1; got {fix} + {copy} (an unset '
                       'one takes fix_wrong or copy_wrong).')

  def after_slip(self) -> tuple[float, float]:
    """(fix, copy): attempt 2's rates after a random slip in attempt 1."""
    return (self.fix_wrong if self.slip_fix is None else self.slip_fix,
            self.copy_wrong if self.slip_copy is None else self.slip_copy)


def make_traces(settings: ArithSettings, num_traces: int, seed: int = 0,
                rates: TraceRates = TraceRates(),
                exclude: frozenset[str] = frozenset()) -> list[base.Trace]:
  """Two-attempt traces on fresh problems (none in ``exclude``, e.g. the held-out split)."""
  rng = random.Random(f'toy_arith/traces/{settings.slug}/{seed}')
  traces = []
  while len(traces) < num_traces:
    operands, ops = make_problem(rng, settings)
    example = make_example(operands, ops)
    if example.problem in exclude:
      continue
    right = example.solution
    habit = forgotten_carry(operands, ops)
    fix, copy = rates.fix_wrong, rates.copy_wrong
    if habit is not None and rng.random() < rates.carry_habit:
      wrong = habit
    elif rng.random() < rates.first_correct:
      doubt = forgotten_carry(operands, ops, '-') if rates.second_guess else None
      if doubt is not None and rng.random() < rates.second_guess:
        attempt2 = format_solution(doubt)
      elif rng.random() < rates.keep_correct:
        attempt2 = right
      else:
        attempt2 = format_solution(slipped_steps(operands, ops, rng, settings))
      traces.append(base.Trace(example, right, attempt2))
      continue
    else:
      wrong = slipped_steps(operands, ops, rng, settings)
      fix, copy = rates.after_slip()
    attempt1 = format_solution(wrong)
    u = rng.random()
    if u < fix:
      attempt2 = right
    elif u < fix + copy:
      attempt2 = attempt1
    else:
      attempt2 = format_solution(slipped_steps(operands, ops, rng, settings,
                                               avoid=(wrong[-1].result,)))
    traces.append(base.Trace(example, attempt1, attempt2))
  return traces


ATTEMPT_KINDS = ('right', 'carry habit', 'second guess', 'other wrong', 'other right')


def attempt_kind(problem: str, completion: str) -> str:
  """Which of ``ATTEMPT_KINDS`` a completion of ``problem`` is (the trace generator's habits
  recognised in a model's line; ``ToyArithTask.attempt_kind``)."""
  operands, ops = parse_problem(problem)
  right = solve(operands, ops)
  line = completion.strip()
  if line == format_solution(right):
    return 'right'
  for name, operators in (('carry habit', '+-'), ('second guess', '-')):
    steps = forgotten_carry(operands, ops, operators)
    if steps is not None and line == format_solution(steps):
      return name
  return 'other right' if extract_answer(line) == str(right[-1].result) else 'other wrong'


def extract_answer(completion: str) -> str | None:
  """The integer after the last ``A:``; None if there is none."""
  matches = _ANSWER_RE.findall(completion)
  return str(int(matches[-1])) if matches else None


class ToyArithTask(base.Task):
  """The toy arithmetic task; ``get_task('toy_arith', digits=2, num_operands=3, ...)``."""

  name = 'toy_arith'
  splits = ('train', 'test')
  default_instruction = 'toy'

  def __init__(self, digits: int = 2, num_operands: int = 3, operators: str = '+-',
               mul_digits: int = 1, allow_negative: bool = False, seed: int = 0,
               train_size: int = 20_000, test_size: int = 1_000, vocab_size: int = 128):
    self.settings = ArithSettings(digits, num_operands, operators, mul_digits, allow_negative)
    base.check_split_sizes(train_size, test_size)
    self.seed, self.train_size, self.test_size = seed, train_size, test_size
    self.vocab_size = vocab_size
    self._test_problems: frozenset[str] | None = None

  def generate(self, split: str) -> list[ArithExample]:
    """The split straight from the generator (what the TFDS dataset holds, in order)."""
    self.check_split(split)
    test = generate_split(self.settings, self.seed, 'test', self.test_size)
    if split == 'test':
      return test
    return generate_split(self.settings, self.seed, 'train', self.train_size,
                          exclude=frozenset(e.problem for e in test))

  def load_split(self, split: str, data_dir: str) -> Sequence[ArithExample]:
    self.check_split(split)
    source = toy_data.prepare(self, data_dir)[split]
    return base.LazySequence(source, toy_data.record_to_example)

  def dataset_dir(self, data_dir: str) -> str:
    return toy_data.builder(self, data_dir).data_dir

  def tokenizer(self, data_dir: str):
    """The sentencepiece tokenizer for this task's text, trained once and cached."""
    return toy_data.load_or_train_tokenizer(self, data_dir)

  def tokenizer_texts(self, examples: Sequence[ArithExample]) -> list[str]:
    """Every kind of text the model reads or writes: prompts, solutions, slips, instructions."""
    rng = random.Random(f'toy_arith/tokenizer/{self.settings.slug}/{self.seed}')
    texts = ['0123456789 +-*=,.?:A'] + list(base.INSTRUCTIONS.values())
    # Weight the default instruction so that BPE merges it into a few pieces (the trainer's
    # instruction slot is about 8 tokens wide); the other presets still round-trip.
    texts += [self.instruction] * 500
    for example in examples:
      operands, ops = parse_problem(example.problem)
      texts += [self.first_turn_prompt(example), example.solution,
                format_solution(slipped_steps(operands, ops, rng, self.settings))]
    return texts

  def first_turn_prompt(self, example: base.Example) -> str:
    return f'{example.problem}=?'

  def extract_answer(self, completion: str) -> str | None:
    return extract_answer(completion)

  def score_batch(self, examples: Sequence[base.Example], completions: Sequence[str]
                  ) -> np.ndarray:
    base.check_pairs(examples, completions)
    return np.array([float(extract_answer(c) == e.answer)
                     for e, c in zip(examples, completions)], np.float32)

  def attempt_kind(self, example: base.Example, completion: str) -> str:
    """``right`` (the worked line), ``carry habit`` (the first carry or borrow forgotten),
    ``second guess`` (the first borrow undone: what ``second_guess`` teaches attempt 2),
    ``other wrong``, or ``other right`` (the right answer after another line)."""
    return attempt_kind(example.problem, completion)

  def make_traces(self, num_traces: int, seed: int = 0, **rates) -> list[base.Trace]:
    """Traces on fresh problems, never one from the test split; ``rates``: ``TraceRates``."""
    if self._test_problems is None:
      self._test_problems = frozenset(e.problem for e in generate_split(
          self.settings, self.seed, 'test', self.test_size))
    unknown = set(rates) - {f.name for f in dataclasses.fields(TraceRates)}
    if unknown:
      raise ValueError(f'Unknown trace option(s) {sorted(unknown)}; the toy task takes '
                       f'{[f.name for f in dataclasses.fields(TraceRates)]}.')
    return make_traces(self.settings, num_traces, seed, TraceRates(**rates),
                       exclude=self._test_problems)
