"""Checkpoints: an orbax ``CheckpointManager`` holding everything a run needs to resume.

Items of one checkpoint step:

* ``state``: the train state (policy parameters, optimizer state, step counter);
* ``reference``: the frozen reference parameters of the RL phases (absent before RL);
* ``meta``: JSON — the phase and step within it, the data positions, the best training
  reward so far, and the run's config.

Saves are asynchronous: ``save`` returns once the arrays are copied off the devices and the
files are written in the background. Restoring goes into an abstract target whose leaves
carry shardings (``training.steps.abstract_train_state``), so a run can resume on a different
mesh than it was saved from, and no array is allocated before it is read.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from score_jax import paths
from score_jax.training.steps import abstract_params_of


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

  def restore_params(self, abstract_params: Any, step: int | None = None,
                     reference: bool = False):
    """The policy parameters of a step alone, or with ``reference`` the frozen reference's.

    The train state is read partially (orbax's ``partial_restore``): only its ``params``
    subtree, into ``abstract_params``; the optimizer state stays on disk.

    Raises:
      FileNotFoundError: no such step, or (``reference``) a step without a reference.
    """
    step = self._resolve(step)
    if reference:
      if not self.read_meta(step).get('has_reference'):
        raise FileNotFoundError(f'The checkpoint at step {step} in {self.directory} has no '
                                f'reference model (it was saved before RL began).')
      return self._manager.restore(step, args=ocp.args.Composite(
          reference=ocp.args.StandardRestore(abstract_params)))['reference']
    target = {'params': abstract_params}
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
    return restored['state']['params']

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


def restore_models(experiment, checkpointer: Checkpointer, step: int | None = None,
                   with_reference: bool = True):
  """(policy params, reference params or None) of a checkpoint step (default: the latest).

  Only the parameters are read, into targets that allocate nothing: the optimizer state and
  step counter stay on disk, and no throw-away initialisation is built.

  Args:
    experiment: the ``Experiment`` the run's config builds (model and mesh).
    checkpointer: open on the run's checkpoints directory.
    step: the checkpoint step.
    with_reference: also read the frozen reference model, when the checkpoint has one.
  """
  target = abstract_params_of(experiment.model('train'))
  params = checkpointer.restore_params(target, step)
  has_reference = checkpointer.read_meta(step).get('has_reference')
  reference = (checkpointer.restore_params(target, step, reference=True)
               if with_reference and has_reference else None)
  return params, reference
