"""Files of the toy arithmetic task: its TFDS dataset and its cached sentencepiece tokenizer.

The dataset is written once per (difficulty, seed, sizes) under
``<data_dir>/score_toy_arith/<config>/<version>/`` in ``array_record`` format and read back with
``builder.as_data_source()`` (random access; TensorFlow is not needed, DESIGN.md decision 8).
Records keep the generator's order (``disable_shuffling``), so record i of a split is the i-th
generated problem. The tokenizer is ``tokenizer_v<vocab>.model`` in the same directory,
written atomically, loaded when present.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from score_jax.tasks import base, generated_data
from score_jax.tokenizer import SentencePieceTokenizer


@dataclasses.dataclass(eq=False)
class ToyArithConfig(tfds.core.BuilderConfig):
  digits: int = 2
  num_operands: int = 3
  operators: str = '+-'
  mul_digits: int = 1
  allow_negative: bool = False
  seed: int = 0
  train_size: int = 20_000
  test_size: int = 1_000


class ScoreToyArith(generated_data.GeneratedTaskBuilder):
  """Toy arithmetic problems with their gold answers and worked solutions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  DESCRIPTION = 'Generated arithmetic problems with a worked line and a final answer.'
  FIELDS = ('id', 'problem', 'answer', 'solution')

  def task(self):
    from score_jax.tasks.toy_arith import ToyArithTask  # pylint: disable=g-import-not-at-top
    c = self.builder_config
    return ToyArithTask(c.digits, c.num_operands, c.operators, c.mul_digits, c.allow_negative,
                        c.seed, c.train_size, c.test_size)


base.quiet_custom_config_warning('ToyArithConfig')


def builder(task, data_dir: str) -> ScoreToyArith:
  s = task.settings
  config = ToyArithConfig(
      name=f'{s.slug}_s{task.seed}_tr{task.train_size}_te{task.test_size}',
      description=f'{s}, seed {task.seed}', digits=s.digits, num_operands=s.num_operands,
      operators=s.operators, mul_digits=s.mul_digits, allow_negative=s.allow_negative,
      seed=task.seed, train_size=task.train_size, test_size=task.test_size)
  return ScoreToyArith(config=config, data_dir=os.path.expanduser(data_dir),
                       file_format='array_record')


def prepare(task, data_dir: str) -> dict:
  """Writes the dataset if it is not there yet; returns ``{split: random-access source}``."""
  return generated_data.prepare(builder(task, data_dir))


def record_to_example(record):
  from score_jax.tasks.toy_arith import ArithExample  # pylint: disable=g-import-not-at-top
  return ArithExample(**generated_data.record_fields(record, ScoreToyArith.FIELDS))


def load_or_train_tokenizer(task, data_dir: str) -> SentencePieceTokenizer:
  """Loads ``tokenizer_v<vocab>.model`` beside the dataset, training and saving it if absent.

  Trained on the train split's prompts, solutions and slipped solutions plus the instruction
  presets, with digits split into single pieces (so numbers of any size tokenize the same
  way). Saved atomically, so concurrent runs never read a partial file.
  """
  sources = prepare(task, data_dir)
  path = os.path.join(builder(task, data_dir).data_dir, f'tokenizer_v{task.vocab_size}.model')
  if os.path.exists(path):
    return SentencePieceTokenizer.load(path)
  train = sources['train']
  count = min(len(train), 20_000)
  records = train.__getitems__(list(range(count)))
  examples = [record_to_example(r) for r in records]
  tokenizer = SentencePieceTokenizer.train(task.tokenizer_texts(examples),
                                           vocab_size=task.vocab_size, split_digits=True)
  tokenizer.save(path)
  return tokenizer
