"""Paths that may be URLs: a work directory is a local path or, on a TPU slice, ``gs://...``.

Files the trainer and the evaluator write go through ``etils.epath`` (installed with orbax),
which speaks local paths and, with the matching file-system package, ``gs://`` and other
object stores. Local paths behave exactly as with ``os`` and ``open``.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path) -> bool:
  """True for ``scheme://...`` paths (``gs://bucket/run``), False for local ones."""
  return '://' in str(path)


def absolute(path) -> str:
  """A local path made absolute; a URL unchanged (but for a trailing slash)."""
  path = str(path)
  return path.rstrip('/') if is_url(path) else os.path.abspath(path)


def write_text(path, text: str) -> None:
  """Writes a whole file (creating its folder): locally through a temporary file and a
  rename, so that a reader never sees half of it; an object store replaces the object whole
  anyway."""
  if is_url(path):
    epath.Path(path).write_text(text)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
