"""Metric writers: a JSONL file (one record per step) and TensorBoard event files.

Only process 0 of a multi-host run writes; every other process gets a writer that does
nothing, so call sites need no ``if`` around them.

The work directory may be a URL (``gs://bucket/run``). An object store cannot append, so
there the JSONL file is rewritten whole from memory at most every ``upload_every_s`` seconds
and at ``flush``/``close``. TensorBoard events go to ``gs://`` through tensorboardX when
``google-cloud-storage`` is installed, and are skipped (with a note) otherwise.

A write that fails (a full disk, no permission) raises ``StorageFault`` naming the file,
from the call that made it: TensorBoard events are written in the caller's thread, not in
tensorboardX's background one, which would die with a traceback and leave its queue to
block the run. A metrics file whose last line a kill cut short is read without that line,
and rewritten whole on resume.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import time
from typing import Any, Mapping

from etils import epath

from score_jax import paths
from score_jax.training.errors import StorageFault, storage_reason


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
    with _storage_faults(self.jsonl_path):
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
      logdir = os.path.join(str(workdir), 'tensorboard')
      with _storage_faults(logdir):
        self._tb = _tensorboard_writer(logdir)

  def write(self, step: int, metrics: Mapping[str, Any], phase: str | None = None,
            extra: Mapping[str, Any] | None = None) -> None:
    """Writes scalars to both sinks; ``extra`` JSON fields go to the JSONL record only."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    record = {'step': int(step), **({'phase': phase} if phase else {}), **(extra or {}),
              **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    with _storage_faults(self.jsonl_path):
      if self._remote_lines is not None:
        self._remote_lines.append(json.dumps(record) + '\n')
        if time.monotonic() - self._uploaded_at >= self._upload_every_s:
          self._upload()
      else:
        self._jsonl.write(json.dumps(record) + '\n')
    if self._tb is not None:
      with _storage_faults(self._tb.path):
        for name, value in scalars.items():
          self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._remote_lines is not None:
      with _storage_faults(self.jsonl_path):
        self._upload()
    if self._tb is not None:
      with _storage_faults(self._tb.path):
        self._tb.flush()

  def close(self) -> None:
    """Closes both sinks (each even when the other fails).

    Raises:
      StorageFault: the last records could not be written.
    """
    jsonl, tb, self._jsonl, self._tb = self._jsonl, self._tb, None, None
    try:
      with _storage_faults(self.jsonl_path if self.enabled else ''):
        if self._remote_lines is not None:
          self._upload()
          self._remote_lines = None
        if jsonl is not None:
          jsonl.close()
    finally:
      if tb is not None:
        with _storage_faults(tb.path):
          tb.close()

  def _upload(self) -> None:
    epath.Path(self.jsonl_path).write_text(''.join(self._remote_lines))
    self._uploaded_at = time.monotonic()


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A missing parent package.
    return False


def _tensorboard_writer(logdir: str):
  """A TensorBoard event file, or None (with a note) where it cannot write."""
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
  return _EventFile(logdir)


class _EventFile:
  """Scalar summaries appended to one TensorBoard event file by the calling thread
  (tensorboardX's own ``SummaryWriter`` writes from a background thread)."""

  def __init__(self, logdir: str, flush_every_s: float = 120.0):
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer, record_writer, summary
    from tensorboardX.proto import event_pb2
    # pylint: enable=g-import-not-at-top
    self._summary, self._event = summary.scalar, event_pb2.Event
    record_writer.directory_check(logdir)
    self._writer = event_file_writer.EventsWriter(os.path.join(logdir, 'events'))
    self.path = self._writer._file_name  # pylint: disable=protected-access
    self._flush_every_s = flush_every_s
    self._flushed_at = time.monotonic()

  def add_scalar(self, name: str, value: float, step: int) -> None:
    self._writer.write_event(self._event(wall_time=time.time(), step=int(step),
                                         summary=self._summary(name, value)))
    if time.monotonic() - self._flushed_at >= self._flush_every_s:
      self.flush()

  def flush(self) -> None:
    self._writer.flush()
    self._flushed_at = time.monotonic()

  def close(self) -> None:
    self._writer.close()


@contextlib.contextmanager
def _storage_faults(path: str):
  """Turns a write the storage refused into ``StorageFault`` naming ``path``."""
  try:
    yield
  except OSError as e:
    reason = storage_reason(e)
    if reason is None:
      raise
    raise StorageFault(f'Could not write {path}: {reason}.') from e


def _keep_records_up_to(path: str, step: int) -> None:
  """Rewrites a metrics file without the records after ``step`` (atomically), and without
  a line cut short."""
  kept = [r for r in read_jsonl(path) if r.get('step', 0) <= step]
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics file (for plots and tests).

  A line cut short by a crash mid-write (or the bytes a crashed file system left) is skipped
  rather than failing the reader.
  """
  records = []
  for line in epath.Path(path).read_bytes().decode('utf-8', errors='replace').splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records
