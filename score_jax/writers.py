"""Metric writers: a JSONL file (one record per step) and TensorBoard event files.

Only process 0 of a multi-host run writes; every other process gets a writer that does
nothing, so call sites need no ``if`` around them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping


class MetricWriter:
  """Writes scalar metrics to ``workdir/metrics.jsonl`` and ``workdir/tensorboard/``."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    """Opens the writers; ``resume_step`` drops records a resumed run will write again."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(self.jsonl_path):
      _keep_records_up_to(self.jsonl_path, -1 if resume_step is None else resume_step)
    self._jsonl = open(self.jsonl_path, 'a', buffering=1)  # Line-buffered: safe on a crash.
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any], phase: str | None = None,
            extra: Mapping[str, Any] | None = None) -> None:
    """Writes scalars to both sinks; ``extra`` JSON fields go to the JSONL record only."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    record = {'step': int(step), **({'phase': phase} if phase else {}), **(extra or {}),
              **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


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
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
