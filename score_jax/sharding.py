"""Device mesh and the one table that maps logical axis names to mesh axes.

Every parameter and every key activation carries logical axis names (``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``vocab``, ``batch``, ``length``, ``layers``, ...).
This module is the only place that says how those names map onto the mesh axes
``('data', 'fsdp', 'tensor')``:

* ``TRAIN_RULES``: the batch is split over ``data`` and ``fsdp``; weights are split over
  ``fsdp`` along ``embed`` (ZeRO-3 style: gathered per layer by XLA) and over ``tensor``
  along heads, MLP and vocabulary (Megatron style).
* ``SAMPLE_RULES``: as training, but weights are never split along ``embed``: gathering
  every weight at every decoded token would dominate the decode loop, so ``fsdp`` acts as
  extra data parallelism during sampling.

Rules are applied in order; a logical name takes the first rule whose mesh axes are not
already used by another dimension of the same array. A dimension whose size is not
divisible by the mesh axes it maps to is replicated instead (for example 3 KV heads on a
tensor axis of 2), so one table serves every model size.

Constraints are applied whenever a mesh is given, on CPU too: the tests run on 8 fake CPU
devices precisely to exercise them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical names with no sharding in either rule set (listed so that the tables are complete).
_REPLICATED = (
    ('length', None),
    ('cache_length', None),
    ('head_dim', None),
    ('layers', None),
    ('norm', None),
)

TRAIN_RULES: Rules = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', 'fsdp'),
) + _REPLICATED

SAMPLE_RULES: Rules = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', None),
) + _REPLICATED

RULE_SETS: dict[str, Rules] = {'train': TRAIN_RULES, 'sample': SAMPLE_RULES}


# ---- the mesh ---------------------------------------------------------------------------


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in at most one ``-1`` axis so that the axes multiply to ``num_devices``.

  Args:
    shape: sizes for ``data``, ``fsdp`` and ``tensor`` (a ``config.mesh`` ConfigDict).
    num_devices: the number of devices the mesh must cover.

  Returns:
    ``{'data': d, 'fsdp': f, 'tensor': t}`` with ``d * f * t == num_devices``.
  """
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'Unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}.')
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f'mesh.{axis} must be a positive size or -1 ("the rest"); got {size}.')
  free = [axis for axis, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'Only one mesh axis may be -1; got {sizes}.')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f'The mesh {sizes} does not fit {num_devices} devices: {num_devices} is not '
          f'divisible by the fixed axes\' product {fixed}.')
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(
        f'The mesh {sizes} has {fixed} devices but {num_devices} are available; set the sizes '
        f'so that data * fsdp * tensor = {num_devices}, or make one of them -1.')
  return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a ``('data', 'fsdp', 'tensor')`` mesh over ``devices`` (default: all).

  The mesh uses JAX's default (Auto) axis types, under which sharding constraints work.
  Devices are laid out with ``mesh_utils`` where possible, so that the fast interconnect
  dimension carries ``tensor``.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  dims = tuple(sizes[axis] for axis in MESH_AXES)
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    device_array = mesh_utils.create_device_mesh(dims, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(dims)
  return Mesh(device_array, MESH_AXES)


# ---- logical names → shardings ------------------------------------------------------------


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules: Rules) -> PartitionSpec:
  """Maps one array's logical axis names to a ``PartitionSpec`` over ``mesh``.

  Args:
    names: one logical name (or None) per array dimension.
    shape: the array's shape, used to replicate dimensions that do not divide evenly;
      None skips that check.
    mesh: the device mesh.
    rules: an ordered rule table such as ``TRAIN_RULES``.
  """
  if shape is not None and len(names) != len(shape):
    raise ValueError(f'Logical names {tuple(names)} do not match the shape {tuple(shape)}.')
  assigned: list[tuple[str, ...]] = [() for _ in names]
  used: set[str] = set()
  for dim, name in enumerate(names):
    if name is None:
      continue
    for rule_name, rule_axes in rules:
      if rule_name != name:
        continue
      axes = tuple(a for a in _as_tuple(rule_axes) if a in mesh.shape)
      if used.intersection(axes):
        continue
      if shape is not None and shape[dim] % math.prod(mesh.shape[a] for a in axes):
        continue  # Uneven split: keep this dimension replicated.
      assigned[dim] = axes
      used.update(axes)
      break
  spec = [None if not axes else axes[0] if len(axes) == 1 else axes for axes in assigned]
  return PartitionSpec(*spec)


@dataclasses.dataclass(frozen=True)
class MeshRules:
  """A mesh together with one rule set: everything needed to place logical arrays.

  The model takes one of these (or None for single-device runs) and constrains its key
  activations through :meth:`constrain`; the trainer and sampler use :meth:`shardings`
  for their jit in/out shardings.
  """

  mesh: Mesh
  rules: Rules

  def spec(self, names: Sequence[str | None], shape: Sequence[int] | None = None):
    return logical_to_spec(names, shape, self.mesh, self.rules)

  def sharding(self, names: Sequence[str | None],
               shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(names, shape))

  def constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, self.sharding(names, x.shape))

  def shardings(self, logical_axes: Any, abstract: Any) -> Any:
    """Shardings for a pytree, given its logical axes and abstract (shape) tree."""
    return jax.tree.map(lambda names, leaf: self.sharding(tuple(names), leaf.shape),
                        logical_axes, abstract, is_leaf=is_axis_names)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())


def is_axis_names(x: Any) -> bool:
  """Whether ``x`` is one array's logical axis names (a leaf of a logical-axes pytree)."""
  return isinstance(x, PartitionSpec) or (
      isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def constrain(x: jax.Array, names: Sequence[str | None], mesh_rules: MeshRules | None):
  """Applies a logical sharding constraint, or nothing when there is no mesh."""
  return x if mesh_rules is None else mesh_rules.constrain(x, names)


# ---- sharded initialisation --------------------------------------------------------------


def logical_axes_of(boxed_tree: Any) -> Any:
  """The logical axis names of every leaf of a Flax variable tree, as tuples.

  Leaves that were not declared with logical names get all-None (replicated) names.
  """
  specs = nn.get_partition_spec(boxed_tree)
  leaves = nn.meta.unbox(boxed_tree)
  return jax.tree.map(
      lambda spec, leaf: tuple(spec) if len(tuple(spec)) == len(leaf.shape)
      else (None,) * len(leaf.shape),
      specs, leaves, is_leaf=lambda x: isinstance(x, PartitionSpec))


def sharded_init(init_fn: Callable[..., Any], mesh_rules: MeshRules | None, *args):
  """Runs ``init_fn(*args)`` so that every leaf is born in its sharded layout.

  The tree's shapes and logical names come from ``jax.eval_shape``; the real
  initialisation then runs under ``jax.jit(..., out_shardings=...)`` so that no device ever
  holds a full copy of a sharded parameter.

  Args:
    init_fn: returns a Flax variable tree whose leaves may be boxed with logical names.
    mesh_rules: where to place the result; None means the default device.
    *args: arguments to ``init_fn`` (e.g. a PRNG key).

  Returns:
    ``(tree, logical_axes)``: the unboxed tree and its logical axis names.
  """
  abstract_boxed = jax.eval_shape(init_fn, *args)
  axes = logical_axes_of(abstract_boxed)
  unboxed_fn = lambda *a: nn.meta.unbox(init_fn(*a))
  if mesh_rules is None:
    return jax.jit(unboxed_fn)(*args), axes
  out_shardings = mesh_rules.shardings(axes, nn.meta.unbox(abstract_boxed))
  return jax.jit(unboxed_fn, out_shardings=out_shardings)(*args), axes


def map_row_chunks(fn: Callable[..., Any], chunks: int, rows: Any, per_chunk: Any = None):
  """``fn(chunk_rows, chunk_extra)`` over ``chunks`` chunks of rows, one chunk after another
  (``lax.map``, so only one chunk's intermediates are alive), with the results put back in
  row order.

  Args:
    fn: takes a pytree like ``rows`` with B / chunks rows (and that chunk's entry of
      ``per_chunk``, when given); returns a pytree of arrays with a leading row axis.
    chunks: how many chunks; it must divide B.
    rows: a pytree of arrays with a leading row axis of size B. Chunk c holds rows c,
      c + chunks, c + 2 * chunks, ...: strided, so that each chunk is spread over the batch
      sharding as the whole batch is and no row moves between devices.
    per_chunk: optional pytree whose leaves have a leading axis of size ``chunks`` (one PRNG
      key per chunk, say).
  """
  if chunks == 1:
    return fn(rows) if per_chunk is None else fn(rows, jax.tree.map(lambda x: x[0], per_chunk))
  batch = jax.tree.leaves(rows)[0].shape[0]
  if batch % chunks:
    raise ValueError(f'{chunks} chunks must divide the batch ({batch} rows).')

  def split(x):
    return jnp.swapaxes(x.reshape(batch // chunks, chunks, *x.shape[1:]), 0, 1)

  def merge(x):
    return jnp.swapaxes(x, 0, 1).reshape(batch, *x.shape[2:])

  if per_chunk is None:
    out = jax.lax.map(fn, jax.tree.map(split, rows))
  else:
    out = jax.lax.map(lambda args: fn(*args), (jax.tree.map(split, rows), per_chunk))
  return jax.tree.map(merge, out)
