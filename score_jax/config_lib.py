"""Building blocks for the ml_collections configs in ``configs/``.

A config file's ``get_config(arg)`` takes a string of ``key=value`` pairs (the part after
the colon in ``--config=configs/demo.py:model=smollm2_135m``), assembles nested
ConfigDicts from the helpers here, and returns them. Individual fields are then overridden
on the command line (``--config.model.num_layers=2``). Validation happens once, at start-up,
in the entry point, through :func:`build_model_config` and :func:`build_mesh`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import ml_collections

from score_jax import sharding
from score_jax.model import presets
from score_jax.model.config import ModelConfig


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,k2=v2'`` into a ConfigDict, typed and restricted by ``defaults``.

  Raises:
    ValueError: an unknown key, a malformed pair or a value of the wrong type.
  """
  values = dict(defaults)
  for pair in filter(None, (arg or '').split(',')):
    if '=' not in pair:
      raise ValueError(f'Config argument {pair!r} must look like key=value; got {arg!r}.')
    key, value = (s.strip() for s in pair.split('=', 1))
    if key not in defaults:
      raise ValueError(
          f'Unknown config argument {key!r} in {arg!r}; valid keys are {sorted(defaults)}.')
    values[key] = _parse_like(defaults[key], value, key)
  return ml_collections.ConfigDict(values)


def _parse_like(default: Any, value: str, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'Config argument {key} must be true or false; got {value!r}.')
    return value.lower() in ('true', '1')
  if isinstance(default, (int, float)):
    try:
      return type(default)(value)
    except ValueError:
      kind = 'an integer' if isinstance(default, int) else 'a number'
      raise ValueError(f'Config argument {key} must be {kind}; got {value!r}.') from None
  return value


def model_config(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Every ``ModelConfig`` field, filled from a named preset, as a ConfigDict."""
  values = {f.name: f.default for f in dataclasses.fields(ModelConfig)
            if f.default is not dataclasses.MISSING}
  values.update(presets.get_preset(preset))
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
  if unknown:
    raise ValueError(f'Unknown model settings {unknown}.')
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def mesh_config(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axis sizes; one may be -1 ("the rest of the devices"). Default: pure FSDP."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def build_model_config(model: ml_collections.ConfigDict | dict) -> ModelConfig:
  """Validates ``config.model`` and turns it into the frozen ``ModelConfig``."""
  values = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
  return ModelConfig.from_mapping(values)


def build_mesh(mesh: ml_collections.ConfigDict | dict,
               devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """Validates ``config.mesh`` against the available devices and builds the mesh."""
  values = mesh.to_dict() if isinstance(mesh, ml_collections.ConfigDict) else dict(mesh)
  return sharding.make_mesh(values, devices)
