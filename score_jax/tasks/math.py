"""MATH (Hendrycks et al., 2021) from local files, with a MATH500-style held-out split.

Sources (``path``):

* the public directory layout ``<root>/<split>/<subject>/<n>.json``, each file an object with
  ``problem``, ``level``, ``type`` and ``solution``; a problem's id is its path relative to the
  root (``test/algebra/1234.json``, the ids MATH500 uses); or
* a JSONL file, one such object per line (``unique_id`` or ``id`` names it; otherwise
  ``line<n>``), optionally with ``answer`` and ``split``.

The gold answer is the record's ``answer`` if present, else the last box of its solution
(``score_jax.rewards.math_answers.extract_answer``). Splits: with ``heldout_ids`` (a file of
ids, one per line, or a JSONL file with ``unique_id``s such as MATH500's ``test.jsonl``) the
listed problems form ``test`` and every other problem ``train`` — the paper trains on the
12,000 problems outside MATH500 and evaluates on MATH500 (Kumar et al., 2024,
arXiv:2409.12917, §6). Without it, the layout's own split directories (or a JSONL record's
``split`` field, default ``train``) decide. The records are validated first (a missing file or
field is an error naming it), then written once to a TFDS ``array_record`` dataset under
``data_dir`` keyed by a fingerprint of the source files, and read back with random access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from score_jax.tasks import base
from score_jax.tasks import math_data

_TEXT_FIELDS = ('problem', 'solution')


@dataclasses.dataclass(frozen=True)
class MathExample(base.Example):
  solution: str = ''
  level: str = ''
  subject: str = ''


def _fail(where: str, message: str):
  raise ValueError(f'{where}: {message}')


def parse_record(record, where: str, default_id: str) -> dict:
  """Validates one MATH record; returns the fields the dataset stores.

  Raises:
    ValueError: naming ``where`` (file and line or record) and the offending field.
  """
  from score_jax.rewards.math_answers import extract_answer  # pylint: disable=g-import-not-at-top
  if not isinstance(record, dict):
    _fail(where, f'expected a JSON object, got {type(record).__name__}.')
  for field in _TEXT_FIELDS:
    if field not in record:
      _fail(where, f'field {field!r} is missing.')
    if not isinstance(record[field], str) or not record[field].strip():
      _fail(where, f'field {field!r} must be a non-empty string; got {record[field]!r:.80}.')
  answer = record.get('answer')
  if answer is not None and not isinstance(answer, (str, int, float)):
    _fail(where, f'field \'answer\' must be a string; got {type(answer).__name__}.')
  answer = str(answer) if answer is not None else extract_answer(record['solution'])
  if not answer:
    _fail(where, 'field \'solution\' has no \\boxed{...} answer and there is no \'answer\' '
          'field; add one of them.')
  for field in ('level', 'type'):
    if field in record and not isinstance(record[field], (str, int)):
      _fail(where, f'field {field!r} must be a string; got {type(record[field]).__name__}.')
  return dict(id=str(record.get('unique_id') or record.get('id') or default_id),
              problem=record['problem'], solution=record['solution'], answer=answer,
              level=str(record.get('level', '')), subject=str(record.get('type', '')),
              split=str(record.get('split', '')))


def read_directory(root: str) -> list[dict]:
  """Every ``<split>/<subject>/<n>.json`` under ``root``, in sorted path order."""
  records = []
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      if not name.endswith('.json'):
        continue
      path = os.path.join(directory, name)
      relative = os.path.relpath(path, root).replace(os.sep, '/')
      try:
        with open(path, encoding='utf-8') as f:
          record = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or '
                         'remove the file.') from None
      fields = parse_record(record, path, relative)
      fields['id'] = relative
      fields['split'] = relative.split('/')[0] if '/' in relative else ''
      records.append(fields)
  if not records:
    raise ValueError(f'No MATH problems (*.json files) under {root!r}; expected the layout '
                     '<root>/<split>/<subject>/<n>.json.')
  return records


def read_jsonl(path: str) -> list[dict]:
  records = [parse_record(record, where, f'line{number}')
             for number, where, record in base.read_jsonl_lines(path)]
  if not records:
    raise ValueError(f'{path}: no records.')
  return records


def read_ids(path: str) -> list[str]:
  """Held-out ids: one per line, or JSONL objects with ``unique_id`` (or ``id``)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'No held-out id file at {path!r}.')
  ids = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      if line.startswith('{'):
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}, line {number}: not valid JSON ({e.msg}).') from None
        key = record.get('unique_id') or record.get('id')
        if not isinstance(key, str):
          raise ValueError(f'{path}, line {number}: no string \'unique_id\' or \'id\' field.')
        ids.append(key)
      else:
        ids.append(line)
  return ids


def read_source(path: str, heldout_ids: str = '') -> dict[str, list[dict]]:
  """All records of a MATH source, validated and assigned to ``train`` and ``test``."""
  if not path:
    raise ValueError('The math task needs path=<MATH directory or JSONL file> '
                     '(--config.task.path=...).')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No MATH data at {path!r}; pass the directory of the public '
                            'release (with train/ and test/) or a JSONL file.')
  records = read_directory(path) if os.path.isdir(path) else read_jsonl(path)
  seen = {}
  for record in records:
    if record['id'] in seen:
      raise ValueError(f'{path}: the id {record["id"]!r} appears twice; ids must be unique.')
    seen[record['id']] = record
  splits = {'train': [], 'test': []}
  if heldout_ids:
    heldout = read_ids(heldout_ids)
    missing = [i for i in heldout if i not in seen]
    if missing:
      raise ValueError(f'{heldout_ids}: {len(missing)} held-out id(s) are not in {path}, e.g. '
                       f'{missing[:3]}; ids look like {next(iter(seen))!r}.')
    heldout_set = set(heldout)
    splits['test'] = [seen[i] for i in heldout]
    splits['train'] = [r for r in records if r['id'] not in heldout_set]
  else:
    for record in records:
      split = record['split'] or 'train'
      if split not in splits:
        raise ValueError(f'{path}: record {record["id"]!r} is in split {split!r}; expected '
                         f'train or test (or pass heldout_ids).')
      splits[split].append(record)
  return splits


def fingerprint(path: str, heldout_ids: str = '') -> str:
  """Changes whenever a source file is added, removed or modified."""
  digest = hashlib.sha1()
  for source in filter(None, (path, heldout_ids)):
    source = os.path.abspath(source)
    digest.update(source.encode())
    entries = [source] if not os.path.isdir(source) else sorted(
        os.path.join(d, f) for d, _, files in os.walk(source) for f in files)
    for entry in entries:
      stat = os.stat(entry)
      digest.update(f'{entry}|{stat.st_size}|{stat.st_mtime_ns}'.encode())
  return digest.hexdigest()[:12]


class MathTask(base.Task):
  """``get_task('math', path=..., heldout_ids=...)``; reward via ``MathVerifier``."""

  name = 'math'
  splits = ('train', 'test')
  default_instruction = 'paper_math'

  def __init__(self, path: str = '', heldout_ids: str = '', timeout_s: float = 5.0,
               workers: int = 1, train_size: int = 0, test_size: int = 0):
    self.path, self.heldout_ids = path, heldout_ids
    self.timeout_s, self.workers = timeout_s, workers
    self.sizes = {'train': train_size, 'test': test_size}
    self._verifier = None

  @property
  def verifier(self):
    if self._verifier is None:
      from score_jax.rewards import math_answers  # pylint: disable=g-import-not-at-top
      self._verifier = math_answers.MathVerifier(timeout_s=self.timeout_s,
                                                 num_workers=self.workers)
    return self._verifier

  def load_split(self, split: str, data_dir: str) -> Sequence[MathExample]:
    self.check_split(split)
    source = math_data.prepare(self, data_dir)[split]
    examples = base.LazySequence(source, math_data.record_to_example)
    cap = self.sizes.get(split, 0)
    return examples[:cap] if cap and cap < len(examples) else examples

  def first_turn_prompt(self, example: base.Example) -> str:
    return f'{base.PAPER_MATH_FIRST_TURN}\n\nProblem:\n{example.problem}\n\nSolution:'

  def extract_answer(self, completion: str) -> str | None:
    from score_jax.rewards.math_answers import extract_answer  # pylint: disable=g-import-not-at-top
    return extract_answer(completion)

  def verdicts(self, examples: Sequence[base.Example], completions: Sequence[str]) -> list:
    """The ``Verdict`` (equivalent, reason) for each pair."""
    base.check_pairs(examples, completions)
    return self.verifier.verify_batch([e.answer for e in examples],
                                      [self.extract_answer(c) for c in completions])

  def score_batch(self, examples: Sequence[base.Example], completions: Sequence[str]
                  ) -> np.ndarray:
    return np.array([v.equivalent for v in self.verdicts(examples, completions)], np.float32)

  def close(self) -> None:
    if self._verifier is not None:
      self._verifier.close()
