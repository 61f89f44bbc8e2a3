"""Arithmetic asked in plain English, for pretrained chat models: "What is 14 + 7?".

The toy task (``toy_arith``) is written for a model trained from scratch on its own notation
("47+38-12=?" → "47+38=85, 85-12=73. A: 73"). A pretrained instruct model knows neither the
notation nor the "A:" line, and answers in its own words ("14 + 7 = 21.", "The answer is
21."). This task asks the question the way a person would and reads the number out of the
reply by a fixed rule, so that the model's own habits, not a format it was never taught,
decide its reward.

Problems (``style``):

* ``question``: "What is 14 + 7?" (operators written ``+``, ``-``, ``*``);
* ``word``: a one-sentence story with one operation per step ("Mia has 14 stickers and gets 7
  more. How many stickers does Mia have now?"), for two operands only;
* ``mixed``: each problem draws one of the two.

Operands are whole numbers from ``min_operand`` to ``max_operand``; ``num_operands`` of them,
joined by operators drawn from ``operators``, evaluated left to right with ``*`` first, and a
problem is drawn again while any intermediate result is negative. Each split holds distinct
expressions, and no test expression appears in the training split (so the held-out problems
differ in their arithmetic, not only in their wording). The splits are written once to a TFDS
``array_record`` dataset and read back with random access (``nl_arith_data``).

**How the answer is read** (``extract_answer``), in this order:

1. after the last answer marker ("answer is", "answer:", "A:", "result is", "equals",
   "\\boxed{"; case-insensitive), the first number;
2. otherwise, after the last ``=`` sign, the first number;
3. otherwise, the last number in the reply.

A number is an optional minus sign joined to digits, with thousands commas ("1,234") and a
decimal part allowed; it counts as the answer only when it equals the gold integer exactly
("21", "21.0" and "$21$" do; "21.5", "twenty-one" and "2 1" do not). Markdown emphasis and
dollar signs are ignored. So "14 + 7 = 21.", "The answer is 21", "14 plus 7 gives 21" and
"**Final answer: 21**" are all read as 21, while "14 + 7 = 20 + 1 = 21" is 21 and "14 + 7 =
22" is 22. The rule reads one number per reply: writing several cannot raise the reward.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

import numpy as np

from score_jax.tasks import base

STYLES = ('question', 'word', 'mixed')
_OPERATORS = '+-*'

# Answer markers, case-insensitive; the first number after the last one is the answer.
_MARKER_RE = re.compile(r'answer\s*(?:is|:|=)|\bA\s*:|result\s*(?:is|:)|\bequals\b|\\boxed\{',
                        re.IGNORECASE)
_EQUALS_RE = re.compile('=')
_NUMBER_RE = re.compile(r'-?\d+(?:\.\d+)?')
_THOUSANDS_RE = re.compile(r'(?<=\d),(?=\d{3}(?!\d))')

# One-operation stories for two-operand word problems: (operator, template). The templates
# name a person and a thing; {a} and {b} are the operands in order.
_NAMES = ('Mia', 'Leo', 'Ava', 'Sam', 'Zoe', 'Ben', 'Ivy', 'Max', 'Nora', 'Omar')
_THINGS = ('stickers', 'apples', 'marbles', 'coins', 'books', 'shells', 'stamps', 'cards')
_STORIES = (
    ('+', '{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?'),
    ('+', 'There are {a} {thing} in a box and {b} {thing} on the table. How many {thing} are '
          'there in all?'),
    ('-', '{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?'),
    ('-', 'A shelf holds {a} {thing}. {name} takes {b} of them. How many {thing} are still on '
          'the shelf?'),
    ('*', '{name} fills {a} bags with {b} {thing} each. How many {thing} is that in all?'),
)


@dataclasses.dataclass(frozen=True)
class NlArithSettings:
  """Difficulty of the problems; see the module docstring."""
  min_operand: int = 1
  max_operand: int = 30
  num_operands: int = 2
  operators: str = '+-'
  style: str = 'question'

  def __post_init__(self):
    if not 0 <= self.min_operand < self.max_operand <= 10**6:
      raise ValueError(f'nl_arith needs 0 <= min_operand < max_operand <= 1000000; got '
                       f'min_operand={self.min_operand}, max_operand={self.max_operand}.')
    if not 2 <= self.num_operands <= 6:
      raise ValueError(f'num_operands must be in 2..6; got {self.num_operands}.')
    if not self.operators or set(self.operators) - set(_OPERATORS):
      raise ValueError(f'operators must be a non-empty string over {_OPERATORS!r}; got '
                       f'{self.operators!r}.')
    if self.style not in STYLES:
      raise ValueError(f'style must be one of {STYLES}; got {self.style!r}.')
    if self.style != 'question' and self.num_operands != 2:
      raise ValueError(f'style={self.style!r} tells stories of one operation: it needs '
                       f'num_operands=2; got {self.num_operands}.')

  @property
  def slug(self) -> str:
    names = ''.join({'+': 'p', '-': 'm', '*': 't'}[op] for op in self.operators)
    return (f'{self.style}_{self.min_operand}to{self.max_operand}_n{self.num_operands}_'
            f'{names}')


@dataclasses.dataclass(frozen=True)
class NlArithExample(base.Example):
  """``id`` is the expression ("14+7"), ``problem`` the question text, ``answer`` the integer."""


def evaluate(operands: Sequence[int], ops: Sequence[str]) -> tuple[int, int]:
  """``(result, smallest intermediate)``: ``*`` first, then left to right."""
  values, ops = list(operands), list(ops)
  smallest = min(values)
  while ops:
    i = ops.index('*') if '*' in ops else 0
    a, b = values[i], values[i + 1]
    result = a * b if ops[i] == '*' else a + b if ops[i] == '+' else a - b
    smallest = min(smallest, result)
    values[i:i + 2] = [result]
    del ops[i]
  return values[0], smallest


def expression(operands: Sequence[int], ops: Sequence[str], spaced: bool = False) -> str:
  joiner = ' {} ' if spaced else '{}'
  parts = [str(operands[0])]
  for op, value in zip(ops, operands[1:]):
    parts.append(joiner.format(op) + str(value))
  return ''.join(parts)


def _question(operands, ops, style: str, rng: random.Random) -> str:
  if style == 'mixed':
    style = rng.choice(('question', 'word'))
  if style == 'question':
    return f'What is {expression(operands, ops, spaced=True)}?'
  stories = [text for op, text in _STORIES if op == ops[0]]
  return rng.choice(stories).format(name=rng.choice(_NAMES), thing=rng.choice(_THINGS),
                                    a=operands[0], b=operands[1])


def generate_split(settings: NlArithSettings, seed: int, split: str, size: int,
                   exclude: frozenset[str] = frozenset()) -> list[NlArithExample]:
  """``size`` problems with distinct expressions, none in ``exclude``; deterministic."""
  rng = random.Random(f'nl_arith/{settings.slug}/{seed}/{split}')
  seen, examples, draws = set(exclude), [], 0
  while len(examples) < size:
    draws += 1
    if draws > 50 * size + 1000:
      raise ValueError(f'Could not draw {size} distinct {split} problems with {settings}: '
                       f'there are too few distinct expressions; lower the split size or '
                       f'raise max_operand or num_operands.')
    operands = [rng.randint(settings.min_operand, settings.max_operand)
                for _ in range(settings.num_operands)]
    ops = [rng.choice(settings.operators) for _ in range(settings.num_operands - 1)]
    result, smallest = evaluate(operands, ops)
    key = expression(operands, ops)
    if smallest < 0 or key in seen:
      continue
    seen.add(key)
    examples.append(NlArithExample(id=key, problem=_question(operands, ops, settings.style, rng),
                                   answer=str(result)))
  return examples


def _numbers(text: str) -> list[str]:
  return _NUMBER_RE.findall(_THOUSANDS_RE.sub('', text))


def extract_answer(completion: str) -> str | None:
  """The number a reply gives as its answer, by the rule of the module docstring; None when
  the reply has no number (where the rule looks)."""
  text = completion.replace('*', ' ').replace('$', ' ')
  for pattern in (_MARKER_RE, _EQUALS_RE):
    marks = list(pattern.finditer(text))
    if marks:
      numbers = _numbers(text[marks[-1].end():])
      if numbers:
        return numbers[0]
  numbers = _numbers(text)
  return numbers[-1] if numbers else None


def is_correct(answer: str | None, gold: str) -> bool:
  """Whether a read number equals the gold integer exactly ("21.0" does, "21.5" does not)."""
  if answer is None:
    return False
  whole, _, fraction = answer.partition('.')
  return int(whole) == int(gold) and not fraction.strip('0')


class NlArithTask(base.Task):
  """``get_task('nl_arith', max_operand=30, style='question', ...)``; see the module docstring.

  The task has no tokenizer of its own (a pretrained model brings one) and no trace
  generator: the second-attempt behaviour is the model's own.
  """

  name = 'nl_arith'
  splits = ('train', 'test')
  default_instruction = 'paper_math'

  def __init__(self, min_operand: int = 1, max_operand: int = 30, num_operands: int = 2,
               operators: str = '+-', style: str = 'question', seed: int = 0,
               train_size: int = 800, test_size: int = 500):
    self.settings = NlArithSettings(min_operand, max_operand, num_operands, operators, style)
    base.check_split_sizes(train_size, test_size)
    self.seed, self.train_size, self.test_size = seed, train_size, test_size

  def generate(self, split: str) -> list[NlArithExample]:
    """The split straight from the generator (what the TFDS dataset holds, in order)."""
    self.check_split(split)
    test = generate_split(self.settings, self.seed, 'test', self.test_size)
    if split == 'test':
      return test
    return generate_split(self.settings, self.seed, 'train', self.train_size,
                          exclude=frozenset(e.id for e in test))

  def load_split(self, split: str, data_dir: str) -> Sequence[NlArithExample]:
    from score_jax.tasks import nl_arith_data  # pylint: disable=g-import-not-at-top
    self.check_split(split)
    source = nl_arith_data.prepare(self, data_dir)[split]
    return base.LazySequence(source, nl_arith_data.record_to_example)

  def first_turn_prompt(self, example: base.Example) -> str:
    return example.problem

  def extract_answer(self, completion: str) -> str | None:
    return extract_answer(completion)

  def score_batch(self, examples: Sequence[base.Example], completions: Sequence[str]
                  ) -> np.ndarray:
    base.check_pairs(examples, completions)
    return np.array([float(is_correct(extract_answer(c), e.answer))
                     for e, c in zip(examples, completions)], np.float32)

  def attempt_kind(self, example: base.Example, completion: str) -> str:
    """``right``, ``wrong number`` or ``no number`` (nothing the rule can read)."""
    answer = extract_answer(completion)
    if answer is None:
      return 'no number'
    return 'right' if is_correct(answer, example.answer) else 'wrong number'
