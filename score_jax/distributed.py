"""Multi-process (multi-host) runs: joining the job, process-local rows, agreement.

On a multi-host TPU slice every host runs the same program on its own devices. This module
holds what the trainer and the evaluator need for that, and does nothing costly in a
single-process run:

* ``maybe_initialize``: calls ``jax.distributed.initialize()`` when asked to (environment,
  below). It must run before anything else touches JAX.
* ``row_indices`` / ``put_rows`` / ``local_rows``: the batch axis is split over the mesh
  axes ``('data', 'fsdp')``, so every process holds some rows of a batch. A process packs
  only its own rows on the host and contributes them to a global array, and reads back
  only its own rows of a global result (for host-side work such as scoring).
* ``gather``: the full value of global arrays on every process.
* ``any_process``: one flag agreed by every process (e.g. "stop: SIGTERM arrived").
* ``main_process_first``: process 0 runs a block (e.g. builds the data) before the others.

Environment:

* ``SCORE_JAX_DISTRIBUTED=1``: join a multi-process job. With nothing else set, JAX finds
  the coordinator, the process count and this process's id itself (TPU VM metadata, Slurm,
  Open MPI, or ``JAX_COORDINATOR_ADDRESS``).
* ``SCORE_JAX_COORDINATOR`` (``host:port``), ``SCORE_JAX_NUM_PROCESSES``,
  ``SCORE_JAX_PROCESS_ID``: name them explicitly instead (e.g. several CPU processes on one
  machine); they are passed to ``jax.distributed.initialize``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

DISTRIBUTED_ENV = 'SCORE_JAX_DISTRIBUTED'
COORDINATOR_ENV = 'SCORE_JAX_COORDINATOR'
NUM_PROCESSES_ENV = 'SCORE_JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'SCORE_JAX_PROCESS_ID'


def initialize_arguments(environ: Mapping[str, str]) -> dict[str, Any] | None:
  """The ``jax.distributed.initialize`` keyword arguments the environment asks for.

  Returns:
    None when ``SCORE_JAX_DISTRIBUTED`` is not ``1`` (a single-process run); else the
    explicitly named coordinator, process count and id (an empty dict: JAX detects them).

  Raises:
    ValueError: a malformed count or id.
  """
  if environ.get(DISTRIBUTED_ENV) != '1':
    return None
  kwargs: dict[str, Any] = {}
  if environ.get(COORDINATOR_ENV):
    kwargs['coordinator_address'] = environ[COORDINATOR_ENV]
  for name, key in ((NUM_PROCESSES_ENV, 'num_processes'), (PROCESS_ID_ENV, 'process_id')):
    value = environ.get(name, '')
    if value:
      if not value.isdigit():
        raise ValueError(f'{name} must be a non-negative integer; got {value!r}.')
      kwargs[key] = int(value)
  return kwargs


def maybe_initialize(environ: Mapping[str, str] | None = None) -> bool:
  """Joins the multi-process job if the environment asks for it; returns whether it did.

  Call it first: ``jax.distributed.initialize`` fails once any JAX computation (or
  ``jax.devices()``) has run.
  """
  kwargs = initialize_arguments(os.environ if environ is None else environ)
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  return True


def is_main_process() -> bool:
  return jax.process_index() == 0


# ---- rows of a batch ---------------------------------------------------------------------


def row_indices(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> np.ndarray:
  """The global row indices this process holds of an array with that sharding, in order.

  The order is the one ``jax.make_array_from_process_local_data`` expects of the local
  rows: the process's blocks of rows by ascending start. All rows when the batch axis is
  not split across processes.
  """
  index_map = sharding.addressable_devices_indices_map(tuple(global_shape))
  rows = global_shape[0]
  starts = sorted({index[0].start or 0 for index in index_map.values()})
  stops = {(index[0].start or 0): (rows if index[0].stop is None else index[0].stop)
           for index in index_map.values()}
  return np.concatenate([np.arange(start, stops[start]) for start in starts])


def put_rows(local_tree: Any, global_rows: int, sharding_of) -> Any:
  """Global arrays of ``global_rows`` rows from this process's rows of every leaf.

  Args:
    local_tree: a pytree of host arrays whose leading axis holds this process's rows, in the
      order ``row_indices`` gives for the leaf's sharding.
    global_rows: the batch size of the global arrays.
    sharding_of: ``fn(global_shape) -> Sharding`` for a leaf of that global shape.

  Returns:
    The tree of global ``jax.Array``s (in a single-process run: the arrays placed with
    ``jax.device_put``).
  """
  def put(x):
    x = np.asarray(x)
    global_shape = (global_rows,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding_of(global_shape), x, global_shape)
  return jax.tree.map(put, local_tree)


def gather_rows(local_tree: Any, global_rows: int, sharding_of) -> Any:
  """Every process's rows of host arrays, on every process, in batch order.

  The inverse view of ``local_rows``: for per-row values computed on the host (rewards,
  lengths) that a batch metric needs whole. A single-process run gets its arrays back as
  they are (no device round trip, so float64 values stay float64).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, local_tree)
  return gather(put_rows(local_tree, global_rows, sharding_of))


def local_rows(tree: Any) -> Any:
  """This process's rows of every global array in a pytree, as host arrays.

  Rows come in the order ``row_indices`` gives for the array's sharding. A fully
  addressable array (a single-process run) comes back whole.
  """
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    rows = row_indices(x.sharding, x.shape)
    position = {row: i for i, row in enumerate(rows)}
    out = np.empty((len(rows),) + x.shape[1:], x.dtype)
    filled = np.zeros(out.shape, bool)
    for shard in x.addressable_shards:
      start = shard.index[0].start or 0
      count = shard.data.shape[0]
      target = (slice(position[start], position[start] + count),) + tuple(shard.index[1:])
      out[target] = np.asarray(shard.data)
      filled[target] = True
    if not filled.all():
      raise ValueError(f'The local shards of an array of shape {x.shape} do not cover whole '
                       f'rows (sharding {x.sharding}).')
    return out
  return jax.tree.map(fetch, tree)


def gather(tree: Any) -> Any:
  """The full value of every array in a pytree, on every process (host arrays)."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


# ---- agreement ---------------------------------------------------------------------------


def any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is true on any (a collective: call it everywhere)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32), tiled=True)
  return bool(np.asarray(flags).any())


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the block on process 0 first, then on the others (which wait for it).

  For work that writes shared files, such as building a dataset: the other processes then
  find the files there. Process 0 reaches the barrier even when its block fails, so the
  others go on and fail with the same error rather than wait.
  """
  if jax.process_count() == 1:
    yield
    return
  if not is_main_process():
    multihost_utils.sync_global_devices(f'{name}: process 0 done')
    yield
    return
  try:
    yield
  finally:
    multihost_utils.sync_global_devices(f'{name}: process 0 done')
