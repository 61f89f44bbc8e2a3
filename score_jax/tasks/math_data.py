"""The MATH task's TFDS dataset: validated records written once as ``array_record``.

``<data_dir>/score_math/src-<fingerprint>/1.0.0/``: the fingerprint covers the source files and
the held-out id file, so editing either builds a new dataset instead of reading a stale one.
Records are read and validated in memory before the builder runs (so a bad record is reported
with its file and field, not as a TFDS failure), and keep their source order.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from score_jax.tasks import base


@dataclasses.dataclass(eq=False)
class MathConfig(tfds.core.BuilderConfig):
  records: dict | None = dataclasses.field(default=None, repr=False)


class ScoreMath(tfds.core.GeneratorBasedBuilder):
  """MATH problems with their solutions and gold final answers."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description='MATH problems read from a local copy.',
        features=tfds.features.FeaturesDict({
            name: tfds.features.Text()
            for name in ('id', 'problem', 'solution', 'answer', 'level', 'subject')}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    records = self.builder_config.records
    if records is None:
      raise RuntimeError('ScoreMath is built through score_jax.tasks.math (records missing).')
    return {split: self._generate_examples(rows) for split, rows in records.items() if rows}

  def _generate_examples(self, rows):
    for index, row in enumerate(rows):
      yield index, {k: row[k] for k in ('id', 'problem', 'solution', 'answer', 'level',
                                        'subject')}


base.quiet_custom_config_warning('MathConfig')


def prepare(task, data_dir: str) -> dict:
  """Validates and writes the dataset if needed; returns ``{split: random-access source}``."""
  from score_jax.tasks import math as math_task  # pylint: disable=g-import-not-at-top
  name = 'src-' + math_task.fingerprint(task.path, task.heldout_ids) if task.path else ''
  if not name:
    math_task.read_source(task.path, task.heldout_ids)  # raises the "needs a path" error
  config = MathConfig(name=name, description=f'{task.path} (held out: {task.heldout_ids})')
  builder = ScoreMath(config=config, data_dir=os.path.expanduser(data_dir),
                      file_format='array_record')
  if not os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    config.records = math_task.read_source(task.path, task.heldout_ids)
    base.write_once(builder)
    config.records = None
  sources = builder.as_data_source()
  missing = [s for s in task.splits if s not in sources]
  if missing:
    return {**sources, **{s: [] for s in missing}}
  return sources


def record_to_example(record):
  from score_jax.tasks.math import MathExample  # pylint: disable=g-import-not-at-top
  return MathExample(**{k: base.text(record[k]) for k in ('id', 'problem', 'solution',
                                                          'answer', 'level', 'subject')})
