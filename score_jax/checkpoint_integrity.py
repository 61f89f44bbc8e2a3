"""Checkpoint integrity: what a saved step's files are missing, from the files alone.

A step needs its metadata (the ``meta`` item) and, for each array item (``state``, and
``reference`` when the metadata says it has one), the OCDBT database orbax writes: the
manifest, the B-tree nodes it points to, and every data file they put an array chunk in. The
checks read the manifest and the B-tree (never the array data) and report, on one line, each
file that is absent or shorter than they say, and which arrays it holds. A step that passes
can still fail to read (a flipped bit); one that fails cannot be restored.

``score_jax.checkpoints.Checkpointer.check`` is the entry point; docs/faults.md says what a
run does with an unreadable step.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Callable

from etils import epath

from score_jax import paths
from score_jax.training.errors import storage_reason


def step_problems(step_dir: str, read_meta: Callable[[], dict]) -> str | None:
  """What is missing or damaged in a step's files, or None when nothing is found.

  Args:
    step_dir: the step's directory (a path or a URL).
    read_meta: reads the step's metadata (raises when it cannot).
  """
  step_dir = epath.Path(step_dir)
  problems = []
  try:
    has_reference = bool(read_meta().get('has_reference'))
  except Exception as e:  # pylint: disable=broad-except
    problems.append(f'meta: {storage_reason(e, any_os_error=True) or first_line(e)}')
    has_reference = (step_dir / 'reference').exists()
  for item in ('state', 'reference') if has_reference else ('state',):
    problems += array_item_problems(step_dir / item, item, local=not paths.is_url(step_dir))
  return '; '.join(problems) or None


# ---- what an OCDBT item's files must hold --------------------------------------------------

# "btreenode:<base path>:<file>:<offset>:<length>" or "value:...": where the manifest and
# B-tree nodes of an OCDBT database put a node or an array chunk.
_LOCATION = re.compile(r'^(btreenode|value):([^:]*):([^:]+):(\d+):(\d+)$')
_NODES = ''  # The "array" of a B-tree node's location.


def array_item_problems(item_dir: epath.Path, item: str, local: bool) -> list[str]:
  """What is missing from one array item (``state``, ``reference``) of a step.

  Only a file that is absent or shorter than the manifest says counts; where the manifest
  cannot be parsed (another layout, a store TensorStore cannot reach) nothing is reported
  and the read itself decides.
  """
  if not item_dir.exists():
    return [f'{item}/ is missing']
  if not (item_dir / 'manifest.ocdbt').exists():
    if any(p.name.startswith('ocdbt.process_') for p in item_dir.iterdir()):
      return [f'{item}/manifest.ocdbt is missing']
    return []
  try:
    import tensorstore as ts  # pylint: disable=g-import-not-at-top  # orbax's own.
    url = str(item_dir).rstrip('/') + '/'
    store = ts.KvStore.open(url if '://' in url else f'file://{url}').result()
    manifest = ts.ocdbt.dump(store).result()
    pending = [(version['root']['location'], None) for version in manifest['versions'][-1:]
               if 'location' in version.get('root', {})]
  except Exception:  # pylint: disable=broad-except
    return [f'{item}/manifest.ocdbt cannot be read'] if local else []
  sizes: dict[str, int | None] = {}
  missing: dict[str, set[str]] = collections.defaultdict(set)
  unreadable_nodes = []
  while pending:
    location, key = pending.pop()
    match = _LOCATION.match(location)
    if not match:
      continue
    kind, base, name, offset, length = match.groups()
    relative = os.path.join(base, name)
    if relative not in sizes:
      path = item_dir / relative
      sizes[relative] = path.stat().length if path.exists() else None
    size = sizes[relative]
    array = key.decode(errors='replace').split('/')[0] if key else _NODES
    if size is None or size < int(offset) + int(length):
      missing[relative].add(array)
    elif kind == 'btreenode':
      try:
        pending += list(_locations(ts.ocdbt.dump(store, location).result()))
      except Exception:  # pylint: disable=broad-except
        if local:
          unreadable_nodes.append(relative)
  problems = []
  if missing:
    files = sorted(missing)
    arrays = sorted(set().union(*missing.values()) - {_NODES})
    held = [f'{_some(arrays, "array")}'] if arrays else []
    if any(_NODES in a for a in missing.values()):
      held.append('B-tree nodes')
    problems.append(f'{item}: {len(files)} of {len(sizes)} data files missing or cut short '
                    f'({_some(files, "file")}), holding {" and ".join(held)}')
  if unreadable_nodes:
    problems.append(f'{item}: B-tree nodes in {_some(unreadable_nodes, "file")} cannot be read')
  return problems


def _locations(node, key: bytes | None = None):
  """Every (location, key) a dumped manifest or B-tree node points to."""
  if isinstance(node, dict):
    key = node.get('key', key)
    for value in node.values():
      yield from _locations(value, key)
  elif isinstance(node, list):
    for value in node:
      yield from _locations(value, key)
  elif isinstance(node, str) and _LOCATION.match(node):
    yield node, key if isinstance(key, bytes) else None


def _some(names: list[str], noun: str, show: int = 2) -> str:
  """``a, b and 4 more <noun>s``: a list that stays short on one line."""
  more = len(names) - show
  return ', '.join(names[:show]) + (
      f' and {more} more {noun}{"s" if more > 1 else ""}' if more > 0 else '')


def first_line(error: BaseException) -> str:
  """The first line of an error's message (its type when it has none), at most 200 chars."""
  text = str(error).strip().splitlines()
  return (text[0][:200] if text else '') or type(error).__name__
