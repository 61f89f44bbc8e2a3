"""What the TFDS datasets of the generated tasks (``toy_arith``, ``nl_arith``) share.

Such a task makes its problems from a seed, so its dataset downloads nothing: the ``train`` and
``test`` splits are the task's ``generate(split)``, written in the generator's order (record i
of a split is the i-th generated problem), every field as text. A subclass names its fields,
its description and how to build the task from its builder config.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from score_jax.tasks import base


class GeneratedTaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A dataset whose splits a task generates; subclasses set ``FIELDS``, ``DESCRIPTION``,
  ``VERSION``, ``RELEASE_NOTES`` and ``task()``."""

  BUILDER_CONFIGS = []
  FIELDS: tuple[str, ...] = ()
  DESCRIPTION = ''

  def task(self) -> base.Task:
    """The task the builder config describes (its ``generate(split)`` gives the records)."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in self.FIELDS}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the problems are generated.
    return {split: self._generate_examples(split) for split in ('train', 'test')}

  def _generate_examples(self, split):
    for index, example in enumerate(self.task().generate(split)):
      yield index, {f: getattr(example, f) for f in self.FIELDS}


# The sources already opened, by dataset directory: a task's splits are read from one.
_SOURCES: dict[str, dict] = {}


def prepare(builder: GeneratedTaskBuilder) -> dict:
  """Writes the builder's dataset if it is not there yet; returns ``{split: random-access
  source}``, opened once per dataset directory while its files are there."""
  info = os.path.join(builder.data_dir, 'dataset_info.json')
  if builder.data_dir in _SOURCES and os.path.exists(info):
    return _SOURCES[builder.data_dir]
  base.write_once(builder)
  _SOURCES[builder.data_dir] = builder.as_data_source()
  return _SOURCES[builder.data_dir]


def record_fields(record: Any, fields: Sequence[str]) -> dict[str, str]:
  """A stored record's fields as ``str``, for the task's example class."""
  return {f: base.text(record[f]) for f in fields}
