"""Checkpoints: an orbax ``CheckpointManager`` holding everything a run needs to resume.

Items of one checkpoint step:

* ``state``: the train state (policy parameters, optimizer state, step counter);
* ``reference``: the frozen reference parameters of the RL phases (absent before RL);
* ``meta``: JSON — the phase and step within it, the data positions, the best training
  reward so far, and the run's config.

Saves are asynchronous: ``save`` returns once the arrays are copied off the devices and the
files are written in the background. Restoring goes into an abstract target whose leaves
carry shardings, so a run can resume on a different mesh than it was saved from.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from score_jax import config_lib, paths
from score_jax.model import init_params
from score_jax.train_steps import TrainState, make_optimizer


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)


def abstract_train_state(params: Any, tx) -> Any:
  """The restore target of ``TrainState.create(params, tx)``, without allocating it.

  Leaves carry the shardings the jitted ``create`` gives them, so the scalars (step, optimizer
  counts) come back replicated over the mesh of the parameters rather than on one device, as
  the jitted update steps (and every process of a multi-host run) need.
  """
  create = jax.jit(functools.partial(TrainState.create, tx=tx))
  shapes = jax.eval_shape(create, params)
  shardings = create.lower(params).compile().output_shardings
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                sharding=sharding),
                      shapes, shardings)


class Checkpointer:
  """Saves and restores (state, reference, meta) under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int = 2, async_save: bool = True):
    self.directory = paths.absolute(directory)  # A gs:// URL stays a URL.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, reference: Any | None = None) -> None:
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if reference is not None:
      items['reference'] = ocp.args.StandardSave(reference)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON item alone (cheap: no arrays are read)."""
    step = self._resolve(step)
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        'meta']

  def restore(self, abstract_state: Any, abstract_reference: Any | None = None,
              step: int | None = None):
    """Restores ``(state, reference or None, meta)`` into the given abstract targets."""
    step = self._resolve(step)
    meta = self.read_meta(step)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if meta.get('has_reference') and abstract_reference is not None:
      items['reference'] = ocp.args.StandardRestore(abstract_reference)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    reference = restored['reference'] if 'reference' in items else None
    return restored['state'], reference, meta

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def _resolve(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(
          f'No checkpoint{"" if step is None else f" at step {step}"} in {self.directory}; '
          f'saved steps: {self.all_steps() or "none"}.')
    return step


def checkpoint_dir(path: str) -> tuple[str, str]:
  """(workdir, checkpoints directory) for a workdir or a checkpoints directory path.

  Either may be a URL (``gs://bucket/run``).
  """
  path = paths.absolute(path)
  if epath.Path(os.path.join(path, 'checkpoints')).is_dir():
    return path, os.path.join(path, 'checkpoints')
  if epath.Path(path).is_dir():
    return os.path.dirname(path), path
  raise FileNotFoundError(f'No checkpoint directory at {path!r}.')


def restore_models(config, experiment, checkpointer: Checkpointer, meta: dict):
  """(policy params, reference params or None) of the step ``meta`` describes.

  Args:
    config: the run's config (it says which optimizer state the checkpoint holds).
    experiment: the ``Experiment`` the config builds (model and mesh).
    checkpointer: open on the run's checkpoints directory.
    meta: that step's metadata (``checkpointer.read_meta``).
  """
  phases = config_lib.parse_schedule(meta['schedule'])
  kind = phases[min(meta['phase_index'], len(phases) - 1)][0]
  section = config_lib.optimizer_section(config, kind)
  params, _ = init_params(experiment.model('train'), jax.random.key(0))
  target = abstract_train_state(params, make_optimizer(section.optimizer))
  reference_target = abstract_like(params) if meta['has_reference'] else None
  state, reference, _ = checkpointer.restore(target, reference_target, meta['global_step'])
  return state.params, reference
