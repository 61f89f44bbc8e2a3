"""Moving whole parameter trees between a checkpoint's tensors and sharded device arrays.

Import builds every parameter with ``jax.make_array_from_callback``: each device asks for
its own shard, and the callback reads just that slice of the (memory-mapped, reshaped)
checkpoint tensor, so no device — and, for safetensors, no host — ever holds the whole
model. Export walks the tree the other way, one tensor at a time.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import jax
import numpy as np

from score_jax.convert.layout import TensorSpec, leaf_path, tensor_specs
from score_jax.model import Decoder, ModelConfig, abstract_params
from score_jax.sharding import MeshRules

# Checkpoint tensors that carry nothing a score-jax model needs (buffers older exporters saved).
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


def _get(tree: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_params(read: Callable[[str], np.ndarray], names: list[str], config: ModelConfig,
                mesh_rules: MeshRules | None = None, *, source: str = 'the checkpoint'):
  """Builds the parameter tree of ``config``'s model from checkpoint tensors.

  Args:
    read: returns one tensor in the Hugging Face layout by name (lazily, ideally).
    names: every tensor name in the checkpoint (to report ones that would be dropped).
    config: the architecture (its ``param_dtype`` is the dtype of the result).
    mesh_rules: where to place the parameters (the training rules); None: one device.
    source: how error messages name the checkpoint.

  Returns:
    The parameter pytree, every leaf placed in its sharded layout.

  Raises:
    ValueError: a missing tensor, a tensor of the wrong shape, or a tensor the model has
      no place for (importing it would silently drop weights).
  """
  model = Decoder(config, mesh_rules)
  shapes, axes = abstract_params(model)
  dtype = config.jnp_param_dtype
  specs = tensor_specs(config)
  wanted = set()
  for spec in specs:
    for i in range(config.num_layers if spec.per_layer else 1):
      wanted.add(spec.name.format(i=i))
  missing = sorted(wanted - set(names), key=_natural_key)
  if missing:
    raise ValueError(f'{source} lacks {len(missing)} tensor(s) the model needs, e.g. '
                     f'{missing[:3]}; is it the architecture its config describes?')
  unused = sorted((n for n in set(names) - wanted if not n.endswith(_IGNORED_SUFFIXES)
                   and not (n == 'lm_head.weight' and config.tie_embeddings)), key=_natural_key)
  if unused:
    raise ValueError(f'{source} has {len(unused)} tensor(s) the model has no place for, e.g. '
                     f'{unused[:3]}; importing would drop them.')

  params: dict = {}
  for spec in specs:
    if spec.per_layer and not config.scan_layers:
      for i in range(config.num_layers):
        path = leaf_path(spec, config, i)
        _set(params, path, _place(spec, read, config, _get(shapes, path), _get(axes, path),
                                  mesh_rules, dtype, layers=None, layer=i))
    else:
      path = leaf_path(spec, config)
      _set(params, path, _place(spec, read, config, _get(shapes, path), _get(axes, path),
                                mesh_rules, dtype, layers=spec.per_layer, layer=None))
  return params


def _place(spec: TensorSpec, read, config: ModelConfig, shape: jax.ShapeDtypeStruct,
           names: tuple, mesh_rules: MeshRules | None, dtype, *, layers: bool | None,
           layer: int | None) -> jax.Array:
  """One leaf as a device array, each device's shard read on demand."""
  expected = shape.shape[1:] if layers else shape.shape

  def tensor(i: int) -> np.ndarray:
    name = spec.name.format(i=i)
    ours = spec.to_ours(read(name))
    if ours.shape != tuple(expected):
      raise ValueError(f'Tensor {name!r} has shape {tuple(read(name).shape)}, which does not '
                       f'fit {"/".join(spec.path)} of shape {tuple(expected)} in this '
                       f'architecture.')
    return ours

  tensor(0 if layer is None else layer)  # Check the shape once, before any device asks.

  def shard(index: tuple[slice, ...]) -> np.ndarray:
    if layers:
      rows = range(config.num_layers)[index[0]]
      return np.stack([np.asarray(tensor(i)[index[1:]], dtype) for i in rows])
    return np.asarray(tensor(0 if layer is None else layer)[index], dtype)

  if mesh_rules is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  else:
    sharding = mesh_rules.sharding(tuple(names), shape.shape)
  return jax.make_array_from_callback(shape.shape, sharding, shard)


def checkpoint_tensors(params: Any, config: ModelConfig,
                       dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``(Hugging Face name, array)`` for every parameter, one tensor at a time.

  Args:
    params: a parameter tree of ``config``'s model (device arrays, sharded or not).
    config: its architecture.
    dtype: the dtype of the written tensors (default: the parameters' own).
  """
  for spec in tensor_specs(config):
    if spec.per_layer and not config.scan_layers:
      for i in range(config.num_layers):
        host = _to_host(_get(params, leaf_path(spec, config, i)))
        yield spec.name.format(i=i), _as(spec.to_theirs(host), dtype)
    elif spec.per_layer:
      host = _to_host(_get(params, leaf_path(spec, config)))
      for i in range(config.num_layers):
        yield spec.name.format(i=i), _as(spec.to_theirs(host[i]), dtype)
    else:
      host = _to_host(_get(params, spec.path))
      yield spec.name, _as(spec.to_theirs(host), dtype)


def _to_host(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _as(x: np.ndarray, dtype: Any) -> np.ndarray:
  return np.ascontiguousarray(x if dtype is None else x.astype(dtype))


def _natural_key(name: str):
  """Sorts 'layers.10' after 'layers.9'."""
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]
