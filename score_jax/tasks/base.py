"""The Task interface: what the trainer needs from a dataset with a verifiable reward.

A task names its splits, loads ``Example``s with random access, turns an example into the
first-turn user text, holds the self-correction instruction appended before attempt 2, pulls
the final answer (or program) out of a completion, and scores completions with the binary
reward of the SCoRe paper (1 if the final answer matches, or all unit tests pass). Chat
templates are not a task's business: tasks give plain text, ``score_jax.sampling.templates``
wraps it into a model's turns.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import operator
import os
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

# The self-correction instruction p appended after attempt 1. The paper's wording is quoted from
# Kumar et al., "Training Language Models to Self-Correct via Reinforcement Learning",
# arXiv:2409.12917 (ICLR 2025), Appendix (prompts for MATH and for MBPP/HumanEval). The
# instruction never says whether attempt 1 was right (intrinsic self-correction).
INSTRUCTIONS = {
    'paper_math': (
        'There might be an error in the solution above because of lack of understanding of '
        'the question. Please correct the error, if any, and rewrite the solution. Only output '
        'the final solution! At the end of the Solution, when you give your final answer, write '
        'it in the form "Final Answer: The final answer is $answer$. I hope it is correct."'),
    'paper_code': (
        'There might be an error in the code above because of lack of understanding of the '
        'question. Please correct the error, if any, and rewrite the solution. Only output the '
        'final correct Python program!'),
    # Short enough for the toy model's ~8-token instruction slot; same intent as the paper's.
    'toy': 'Check each step and fix any error.',
}

# The paper's first-turn MATH prompt (zero-shot chain of thought), same source as above.
PAPER_MATH_FIRST_TURN = (
    'You are a math expert. When you respond, respond only with the Solution of the final '
    'Problem, thinking step by step. At the end of the Solution, when you give your final '
    'answer, write it in the form "Final Answer: The final answer is $answer$. I hope it is '
    'correct."')


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem. Tasks subclass this to add fields (unit tests, entry point, level …).

  ``answer`` is the gold final answer (math, toy) or a reference program (code).
  """
  id: str
  problem: str
  answer: str


class Trace(NamedTuple):
  """A two-attempt training trace for SFT warm-starting: ``(example, attempt1, attempt2)``."""
  example: Example
  attempt1: str
  attempt2: str

  @property
  def problem(self) -> str:
    return self.example.problem


class Task(abc.ABC):
  """Base class; subclasses set ``name``, ``splits`` and ``default_instruction``."""

  name: str = ''
  splits: tuple[str, ...] = ()
  default_instruction: str = ''

  @property
  def instruction(self) -> str:
    """The default self-correction instruction text of this task."""
    return self.instruction_text('')

  def instruction_text(self, preset: str = '') -> str:
    """The instruction text of a preset in ``INSTRUCTIONS`` ('' = this task's default)."""
    key = preset or self.default_instruction
    if key not in INSTRUCTIONS:
      raise ValueError(f'Unknown instruction preset {key!r}; known presets: '
                       f'{sorted(INSTRUCTIONS)} (add one to score_jax.tasks.INSTRUCTIONS).')
    return INSTRUCTIONS[key]

  def check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f'Task {self.name!r} has no split {split!r}; its splits are '
                       f'{list(self.splits)}.')

  @abc.abstractmethod
  def load_split(self, split: str, data_dir: str) -> Sequence[Example]:
    """The examples of a split, with random access (``len`` and ``[i]``).

    Tasks that build files (a TFDS dataset, a tokenizer) write them under ``data_dir`` once
    and read them back afterwards.
    """

  @abc.abstractmethod
  def first_turn_prompt(self, example: Example) -> str:
    """The plain-text first user turn for an example."""

  @abc.abstractmethod
  def extract_answer(self, completion: str) -> str | None:
    """The final answer (or program) in a completion; None when there is none."""

  def score(self, example: Example, completion: str) -> float:
    """1.0 if the completion is correct for the example, else 0.0."""
    return float(self.score_batch([example], [completion])[0])

  @abc.abstractmethod
  def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> np.ndarray:
    """[N] float32 rewards in {0, 1}, one per (example, completion) pair."""

  def attempt_kind(self, example: Example, completion: str) -> str | None:
    """What kind of attempt a completion is (a task's known error patterns), or None when
    the task names none. ``score_jax.evaluate`` splits its table by attempt 1's kind."""
    return None

  def make_traces(self, num_traces: int, seed: int = 0, **rates: Any) -> list[Trace]:
    """Two-attempt traces for SFT warm-starting; only tasks with a generator provide them."""
    raise NotImplementedError(f'Task {self.name!r} does not generate training traces.')

  def tokenizer(self, data_dir: str):
    """The task's own tokenizer, or None when the model's tokenizer is to be used."""
    return None

  def close(self) -> None:
    """Releases worker processes, if any (tasks also clean up at interpreter exit)."""


def check_pairs(examples: Sequence[Example], completions: Sequence[str]) -> None:
  if len(examples) != len(completions):
    raise ValueError(f'score_batch needs one completion per example; got {len(examples)} '
                     f'examples and {len(completions)} completions.')


class LazySequence(Sequence):
  """Random access to records converted on demand (e.g. from a TFDS data source)."""

  def __init__(self, source, convert):
    self._source = source
    self._convert = convert

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    return self._convert(self._source[self._check(index)])

  def __getitems__(self, indices) -> list:
    """Many records in one read (array_record reads a batch faster than one at a time)."""
    indices = [self._check(i) for i in indices]
    read_many = getattr(self._source, '__getitems__', None)
    records = read_many(indices) if read_many else [self._source[i] for i in indices]
    return [self._convert(r) for r in records]

  def _check(self, index) -> int:
    index = operator.index(index)  # numpy integers too
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'Index {index} out of range for {len(self)} examples.')
    return index


def text(value) -> str:
  """TFDS text features come back as bytes."""
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_jsonl_lines(path: str) -> Iterator[tuple[int, str, Any]]:
  """``(line number, "PATH, line N", value)`` for every non-blank line of a JSONL file.

  Raises:
    ValueError: a line that is not JSON, naming the file and the line.
  """
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}, line {number}'
      try:
        yield number, where, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not valid JSON ({e.msg}); fix or remove the line.') from None


def check_split_sizes(train_size: int, test_size: int) -> None:
  """Raises ValueError unless both sizes of a generated task's splits are positive."""
  if train_size < 1 or test_size < 1:
    raise ValueError(f'train_size and test_size must be positive; got {train_size} and '
                     f'{test_size}.')


class _QuietCustomConfig(logging.Filter):
  """Drops TFDS's warning that a (always custom) builder config is not in BUILDER_CONFIGS."""

  def __init__(self, config_class_name: str):
    super().__init__()
    self.message = f'Using custom data configuration: {config_class_name}'

  def filter(self, record: logging.LogRecord) -> bool:
    return self.message not in record.getMessage()


def quiet_custom_config_warning(config_class_name: str) -> None:
  """Silences TFDS's warning for a builder config class that is built per setting, as every
  dataset of score-jax's tasks is (the config is never one of ``BUILDER_CONFIGS``)."""
  logging.getLogger('absl').addFilter(_QuietCustomConfig(config_class_name))


def write_once(builder) -> None:
  """``builder.download_and_prepare()`` unless the dataset is there, safe against a twin.

  TFDS writes a dataset into a temporary directory and renames it into place. When two runs
  (seeds started side by side on one ``data_dir``) build the same dataset at once, the second
  rename fails with ``FileExistsError``; the directory it found is the first run's finished
  dataset (renamed only once complete), so that run's copy is used and nothing is lost.
  """
  info = os.path.join(builder.data_dir, 'dataset_info.json')
  if os.path.exists(info):
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  try:
    builder.download_and_prepare()
  except FileExistsError:
    if not os.path.exists(info):
      raise
