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

Storage faults (docs/faults.md):

* A step that cannot be read (its array files gone or cut short, its metadata missing)
  raises ``UnreadableCheckpoint``, whose one line names the step, its path and what is
  missing (``check`` finds that from the files alone: ``score_jax.checkpoint_integrity``).
  ``restore_newest`` then falls back to the next older step; a step is never deleted.
* A save that fails (no space, no permission, a quota) raises ``StorageFault`` naming the
  step, the directory, the reason and the last good step; the steps saved before it are
  left as they were. An asynchronous save's failure is raised by the next ``save``,
  ``wait_until_finished`` or ``close``.
* orbax logs every failed background write with a traceback, and the reads and writes still
  in flight when one fails end in "Event loop is closed" errors; both are held back
  (``score_jax.orbax_failures``: the error itself is raised once, as above).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from etils import epath

from score_jax import distributed, orbax_failures, paths
from score_jax.checkpoint_integrity import first_line, step_problems
from score_jax.model import lora
from score_jax.training.errors import StorageFault, storage_reason
from score_jax.training.steps import abstract_params_of, abstract_reference_of

T = TypeVar('T')
UNREADABLE_SUFFIX = '.unreadable'  # Where an unreadable step is moved (never deleted).


class UnreadableCheckpoint(Exception):
  """A checkpoint step that exists but cannot be read; ``str`` is one line."""

  def __init__(self, step: int, path: str, what: str):
    self.step, self.path, self.what = step, path, what
    super().__init__(f'checkpoint step {step} at {path} cannot be read ({what})')


class Checkpointer:
  """Saves and restores (state, reference, meta) under ``directory``."""

  def __init__(self, directory: str, max_to_keep: int = 2, async_save: bool = True):
    """
    Raises:
      StorageFault: the directory cannot be created.
    """
    self.directory = paths.absolute(directory)  # A gs:// URL stays a URL.
    orbax_failures.hold_back_failure_noise()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise StorageFault(f'Cannot open the checkpoint directory {self.directory}: '
                         f'{storage_reason(e, any_os_error=True)}.') from e
    self._async = async_save
    self._pending: int | None = None  # The step whose asynchronous save is in flight.
    self.failed = False  # A save failed: nothing more is written.

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # ---- saving ------------------------------------------------------------------------------

  def save(self, step: int, state: Any, meta: dict, reference: Any | None = None) -> None:
    """Saves a step (in the background unless ``async_save=False``).

    Raises:
      StorageFault: this save, or the asynchronous one before it, could not be written.
    """
    self.wait_until_finished()
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if reference is not None:
      items['reference'] = ocp.args.StandardSave(reference)
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_failure(step, e)
    self._pending = step
    if not self._async:
      self.wait_until_finished()

  def wait_until_finished(self) -> None:
    """Waits for the save in flight.

    Raises:
      StorageFault: it could not be written.
    """
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_failure(step, e)
    if step is not None and step not in self.saved_steps():
      self._raise_save_failure(step, None)  # orbax logged a failure without raising it.
    orbax_failures.forget_held()

  def close(self, quietly: bool = False) -> None:
    """Waits for the save in flight and closes the manager.

    Args:
      quietly: swallow a failure of that save (another error is already on its way up).

    Raises:
      StorageFault: the save in flight could not be written (unless ``quietly``).
    """
    try:
      if not self.failed:
        self.wait_until_finished()
    except StorageFault:
      if not quietly:
        raise
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not (self.failed or quietly):
          raise

  def _raise_save_failure(self, step: int | None, error: BaseException | None):
    """Raises the one-line ``StorageFault`` of a failed save; any other error as it is."""
    if error is None:
      reason = orbax_failures.held_error() or 'the save did not complete'
    else:
      reason = storage_reason(error, any_os_error=True)
      if reason is None:
        raise error  # Not the storage's doing: a bug, with its traceback.
    self.failed = True
    orbax_failures.after_failure()
    orbax_failures.release_waiters()
    try:
      saved = [s for s in self.saved_steps() if s != step]
    except Exception:  # pylint: disable=broad-except  # The directory itself is gone.
      saved = []
    what = f'step {step}' if step is not None else 'a step'
    if saved:
      last = max(saved)
      after = (f'the last good checkpoint is step {last} ({self.step_path(last)}); free space '
               f'or fix the directory, then rerun the same command to resume from it')
    else:
      after = ('no checkpoint was saved before it; free space or fix the directory, then '
               'rerun the same command (it starts over)')
    raise StorageFault(f'Could not save the checkpoint of {what} in {self.directory}: '
                       f'{reason}; {after}.', says_resume_step=True) from error

  def saved_steps(self) -> list[int]:
    """The finalized steps on disk (``all_steps`` also lists a save in flight or failed)."""
    return list(ocp.step.checkpoint_steps(self.directory))

  # ---- reading -----------------------------------------------------------------------------

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON item alone (cheap: no arrays are read).

    Raises:
      FileNotFoundError: no such step.
      UnreadableCheckpoint: the step's files are damaged.
    """
    step = self._resolve(step)
    try:
      return self._read_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from e

  def restore(self, abstract_state: Any, abstract_reference: Any | None = None,
              step: int | None = None):
    """Restores ``(state, reference or None, meta)`` into the given abstract targets.

    Raises:
      FileNotFoundError: no such step.
      UnreadableCheckpoint: the step's files are damaged.
    """
    step = self._resolve(step)
    meta = self.read_meta(step)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if meta.get('has_reference') and abstract_reference is not None:
      items['reference'] = ocp.args.StandardRestore(abstract_reference)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from e
    reference = restored['reference'] if 'reference' in items else None
    return restored['state'], reference, meta

  def restore_params(self, abstract_params: Any, step: int | None = None,
                     reference: bool = False):
    """The policy parameters of a step alone, or with ``reference`` the frozen reference's.

    The train state is read partially (orbax's ``partial_restore``): only its ``params``
    subtree, into ``abstract_params``; the optimizer state stays on disk.

    Raises:
      FileNotFoundError: no such step, or (``reference``) a step without a reference.
      UnreadableCheckpoint: the step's files are damaged.
    """
    step = self._resolve(step)
    if reference:
      if not self.read_meta(step).get('has_reference'):
        raise FileNotFoundError(f'The checkpoint at step {step} in {self.directory} has no '
                                f'reference model (it was saved before RL began).')
      args = ocp.args.Composite(reference=ocp.args.StandardRestore(abstract_params))
    else:
      target = {'params': abstract_params}
      args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from e
    return restored['reference'] if reference else restored['state']['params']

  def check(self, step: int) -> str | None:
    """What is missing or damaged in a step's files, or None when nothing is found.

    Reads the metadata and, for each array item, the OCDBT manifest and B-tree (no array
    data): every data file they point to must be there and long enough. A checkpoint that
    passes can still fail to read (a flipped bit); one that fails cannot be restored.
    """
    return step_problems(self.step_path(step), lambda: self._read_meta(step))

  def restore_newest(self, read: Callable[[int], T], log: Callable[[str], None] = print,
                     set_aside: bool = True) -> tuple[int, T]:
    """``(step, read(step))`` for the newest step that ``read`` can read.

    A step whose ``read`` raises ``UnreadableCheckpoint`` is passed over for the next older
    one, with one warning line each once a readable step is found. With ``set_aside``
    (a run that will save those steps again), each passed-over step is renamed to
    ``STEP.unreadable`` beside the others: kept, never deleted.

    Raises:
      FileNotFoundError: there is no checkpoint.
      StorageFault: none of the steps can be read (what to do is in the message).
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    unreadable: list[UnreadableCheckpoint] = []
    for step in steps:
      error = None
      try:
        result = read(step)
      except UnreadableCheckpoint as e:
        error = e
      # Every process resumes from the same step, even if only one of them failed.
      if not distributed.any_process(error is not None):
        break
      unreadable.append(error or UnreadableCheckpoint(
          step, self.step_path(step), 'another process could not read it'))
    else:
      listed = '; '.join(f'step {e.step}: {e.what}' for e in unreadable)
      steps_paths = ', '.join(self.step_path(e.step) for e in unreadable)
      raise StorageFault(
          f'No checkpoint in {self.directory} can be read ({listed}). Start over with a new '
          f'--workdir, or delete the unreadable steps ({steps_paths}) to start over in this '
          f'one.', says_resume_step=True)
    for e in unreadable:
      moved = self._set_aside(e.step) if set_aside else None
      log(f'warning: {e}; using step {step} instead'
          + (f', and moved step {e.step} to {moved} (not deleted).' if moved else '.'))
    if unreadable and set_aside:
      self._manager.reload()
    return step, result

  def verified_meta(self, step: int | None = None, log: Callable[[str], None] = print
                    ) -> tuple[int, dict]:
    """``(step, meta)`` of a step that passes ``check``: ``step``, or the newest one.

    For readers that load the arrays later (``score_jax.evaluate``): an unreadable latest
    step is passed over with a warning; a named one is an error.

    Raises:
      FileNotFoundError: no such step, or no checkpoint.
      StorageFault: the named step, or every step, cannot be read.
    """
    def read(s: int) -> dict:
      meta = self.read_meta(s)
      what = self.check(s)
      if what:
        raise UnreadableCheckpoint(s, self.step_path(s), what)
      return meta

    if step is None:
      return self.restore_newest(read, log, set_aside=False)
    self._resolve(step)
    try:
      return step, read(step)
    except UnreadableCheckpoint as e:
      others = [s for s in self.all_steps() if s != step]
      raise StorageFault(f'The {e}; pick another with --step (saved steps: '
                         f'{others or "none other"}).') from e

  def _read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        'meta']

  def _unreadable(self, step: int, error: BaseException) -> BaseException:
    """The ``UnreadableCheckpoint`` a failed read of ``step`` means, or ``error`` itself when
    the files are fine and the error is not the storage's (a target that does not match)."""
    what = self.check(step) or storage_reason(error, any_os_error=True)
    if what is None:
      return error
    orbax_failures.after_failure()
    return UnreadableCheckpoint(step, self.step_path(step), what)

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step out of orbax's sight; returns where it went."""
    source = epath.Path(self.step_path(step))
    target = source.parent / f'{step}{UNREADABLE_SUFFIX}'
    copy = 1
    while target.exists():
      copy += 1
      target = source.parent / f'{step}{UNREADABLE_SUFFIX}{copy}'
    with distributed.main_process_first('checkpoints: set an unreadable step aside'):
      if distributed.is_main_process():
        try:
          source.rename(target)
        except Exception as e:  # pylint: disable=broad-except
          raise StorageFault(
              f'Checkpoint step {step} at {source} cannot be read and could not be moved '
              f'aside ({storage_reason(e, any_os_error=True) or first_line(e)}); move or '
              f'delete it, then rerun the same command.') from e
    return str(target)

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
                   with_reference: bool = True, with_policy: bool = True):
  """(policy params or None, reference params or None) of a checkpoint step (default: the
  latest).

  A LoRA run's step holds adapters and their base (the reference): the policy returned is
  the base with the adapters merged in, the plain model's weights.

  Only the parameters are read, into targets that allocate nothing: the optimizer state and
  step counter stay on disk, and no throw-away initialisation is built.

  Args:
    experiment: the ``Experiment`` the run's config builds (model and mesh).
    checkpointer: open on the run's checkpoints directory.
    step: the checkpoint step.
    with_reference: also read the frozen reference model, when the checkpoint has one (in
      the dtype it was kept in, ``rl.reference_dtype``).
    with_policy: read the policy (False: the reference alone).
  """
  model = experiment.model('train')
  target = abstract_params_of(model)
  reference_target = abstract_reference_of(model, experiment.config)
  meta = checkpointer.read_meta(step)
  if not with_policy:
    return None, (checkpointer.restore_params(reference_target, step, reference=True)
                  if with_reference and meta.get('has_reference') else None)
  if meta.get('lora_adapters'):
    # The state holds LoRA adapters; the reference is the base they are merged into.
    adapted = experiment.model('train', adapted=True)
    adapters = checkpointer.restore_params(abstract_params_of(adapted, trainable=True), step)
    reference = checkpointer.restore_params(reference_target, step, reference=True)
    params = jax.jit(functools.partial(lora.merge_weights, scale=adapted.config.lora_scale,
                                       dtype=model.config.jnp_param_dtype))(reference, adapters)
    return params, reference if with_reference else None
  params = checkpointer.restore_params(target, step)
  reference = (checkpointer.restore_params(reference_target, step, reference=True)
               if with_reference and meta.get('has_reference') else None)
  return params, reference
