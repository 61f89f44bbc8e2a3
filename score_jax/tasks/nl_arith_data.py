"""The TFDS dataset of the natural-language arithmetic task (``nl_arith``).

Written once per (difficulty, seed, sizes) under ``<data_dir>/score_nl_arith/<config>/<version>/``
in ``array_record`` format and read back with ``builder.as_data_source()`` (random access, no
TensorFlow; DESIGN.md decision 8). Records keep the generator's order, so record i of a split
is the i-th generated problem.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from score_jax.tasks import base, generated_data


@dataclasses.dataclass(eq=False)
class NlArithConfig(tfds.core.BuilderConfig):
  min_operand: int = 1
  max_operand: int = 30
  num_operands: int = 2
  operators: str = '+-'
  style: str = 'question'
  seed: int = 0
  train_size: int = 800
  test_size: int = 500


class ScoreNlArith(generated_data.GeneratedTaskBuilder):
  """Arithmetic questions in English with their integer answers."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  DESCRIPTION = 'Generated arithmetic questions in English with integer answers.'
  FIELDS = ('id', 'problem', 'answer')

  def task(self):
    from score_jax.tasks.nl_arith import NlArithTask  # pylint: disable=g-import-not-at-top
    c = self.builder_config
    return NlArithTask(c.min_operand, c.max_operand, c.num_operands, c.operators, c.style,
                       c.seed, c.train_size, c.test_size)


base.quiet_custom_config_warning('NlArithConfig')


def builder(task, data_dir: str) -> ScoreNlArith:
  s = task.settings
  config = NlArithConfig(
      name=f'{s.slug}_s{task.seed}_tr{task.train_size}_te{task.test_size}',
      description=f'{s}, seed {task.seed}', min_operand=s.min_operand,
      max_operand=s.max_operand, num_operands=s.num_operands, operators=s.operators,
      style=s.style, seed=task.seed, train_size=task.train_size, test_size=task.test_size)
  return ScoreNlArith(config=config, data_dir=os.path.expanduser(data_dir),
                      file_format='array_record')


def prepare(task, data_dir: str) -> dict:
  """Writes the dataset if it is not there yet; returns ``{split: random-access source}``."""
  return generated_data.prepare(builder(task, data_dir))


def record_to_example(record):
  from score_jax.tasks.nl_arith import NlArithExample  # pylint: disable=g-import-not-at-top
  return NlArithExample(**generated_data.record_fields(record, ScoreNlArith.FIELDS))
