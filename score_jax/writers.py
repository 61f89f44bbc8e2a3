"""Metric writers: a JSONL file (one record per step) and TensorBoard event files.

Only process 0 of a multi-host run writes; every other process gets a writer that does
nothing, so call sites need no ``if`` around them.

The work directory may be a URL (``gs://bucket/run``). An object store cannot append, so
there the JSONL file is rewritten whole from memory at most every ``upload_every_s`` seconds
and at ``flush``/``close``. TensorBoard events go to ``gs://`` through tensorboardX when
``google-cloud-storage`` is installed, and are skipped (with a note) otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from typing import Any, Mapping

from etils import epath

from score_jax import paths


class MetricWriter:
  """Writes scalar metrics to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None, upload_every_s: float = 60.0):
    """Opens the writers; ``resume_step`` drops records a resumed run will write again."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._remote_lines: list[str] | None = None  # The whole file, for a URL work directory.
    if not enabled:
      return
    keep_up_to = -1 if resume_step is None else resume_step
    self.jsonl_path = os.path.join(str(workdir), 'metrics.jsonl')
    if paths.is_url(workdir):
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      kept = ([r for r in read_jsonl(self.jsonl_path) if r.get('step', 0) <= keep_up_to]
              if epath.Path(self.jsonl_path).exists() else [])
      self._remote_lines = [json.dumps(r) + '\n' for r in kept]
      self._upload_every_s = upload_every_s
      self._upload()
    else:
      os.makedirs(workdir, exist_ok=True)
      if os.path.exists(self.jsonl_path):
        _keep_records_up_to(self.jsonl_path, keep_up_to)
      self._jsonl = open(self.jsonl_path, 'a', buffering=1)  # Line-buffered: safe on a crash.
    if tensorboard:
      self._tb = _tensorboard_writer(os.path.join(str(workdir), 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any], phase: str | None = None,
            extra: Mapping[str, Any] | None = None) -> None:
    """Writes scalars to both sinks; ``extra`` JSON fields go to the JSONL record only."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    record = {'step': int(step), **({'phase': phase} if phase else {}), **(extra or {}),
              **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    if self._remote_lines is not None:
      self._remote_lines.append(json.dumps(record) + '\n')
      if time.monotonic() - self._uploaded_at >= self._upload_every_s:
        self._upload()
    else:
      self._jsonl.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._remote_lines is not None:
      self._upload()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._remote_lines is not None:
      self._upload()
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()

  def _upload(self) -> None:
    epath.Path(self.jsonl_path).write_text(''.join(self._remote_lines))
    self._uploaded_at = time.monotonic()


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A missing parent package.
    return False


def _tensorboard_writer(logdir: str):
  """A tensorboardX writer, or None (with a note) where it cannot write."""
  if paths.is_url(logdir):
    if not logdir.startswith('gs://'):
      print(f'Note: no TensorBoard events under {logdir} (tensorboardX writes local paths and '
            f'gs:// only); metrics.jsonl has every value.', flush=True)
      return None
    if not _installed('google.cloud.storage'):
      print(f'Note: no TensorBoard events under {logdir}: tensorboardX needs '
            f'`pip install google-cloud-storage` for gs://; metrics.jsonl has every value.',
            flush=True)
      return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(logdir)


def _keep_records_up_to(path: str, step: int) -> None:
  """Rewrites a metrics file without the records after ``step`` (atomically)."""
  kept = [r for r in read_jsonl(path) if r.get('step', 0) <= step]
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics file (for plots and tests).

  A line cut short by a crash mid-write is skipped rather than failing the reader.
  """
  records = []
  with epath.Path(path).open() as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
