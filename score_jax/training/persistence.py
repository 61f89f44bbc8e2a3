"""A training run's checkpoints: resuming, saving, and what a storage fault leaves behind.

``RunCheckpoints`` is the part of ``score_jax.training.trainer.Trainer`` that reads and
writes its checkpoint steps:

* ``restore``: the run's progress (phase, step, base evaluation) from the newest readable
  step's metadata, then the train state in that phase's optimizer layout and the frozen
  reference. A newer step that cannot be read is reported and set aside
  (``Checkpointer.restore_newest``), never deleted.
* ``save``: the train state, the reference and the progress of a step, once its parameters
  are checked to be finite (``Diverged`` otherwise, with nothing saved).
* ``report_storage_faults``: runs the training loop so that a failed write of the work
  directory ends in one ``StorageFault`` naming the checkpoint a rerun resumes from, after
  closing the checkpointer and the metric writer (docs/faults.md).
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp

from score_jax.checkpoints import Checkpointer
from score_jax.training.errors import Diverged, InvalidRun, StorageFault, storage_reason
from score_jax.training.phases import Phase
from score_jax.training.progress import RunProgress
from score_jax.training.steps import abstract_reference_of, abstract_train_state, make_optimizer

T = TypeVar('T')


class RunCheckpoints:
  """Resumes and saves one run's steps in its ``Checkpointer``."""

  def __init__(self, checkpointer: Checkpointer, config, phases: list[Phase], train_model,
               log: Callable[[str], None], policy_model=None):
    """``train_model`` trains the warm start and runs the reference; ``policy_model`` (the
    adapted model with LoRA, else ``train_model``) is trained by the phases after it."""
    self.checkpointer = checkpointer
    self.config = config
    self.phases = phases
    self.train_model = train_model
    self.policy_model = policy_model if policy_model is not None else train_model
    self._log = log

  def model_of(self, phase: Phase):
    """The model a phase trains: with LoRA, the adapters of every phase after the warm start."""
    return self.train_model if phase.is_warm_start else self.policy_model

  def holds_adapters(self, progress: RunProgress) -> bool:
    """Whether the train state at ``progress`` holds LoRA adapters rather than every weight."""
    phase = self.phases[min(progress.phase_index, len(self.phases) - 1)]
    return self.model_of(phase).config.lora_rank > 0

  def restore(self) -> tuple[RunProgress, Any, Any]:
    """``(progress, train state, reference or None)`` of the newest readable checkpoint.

    A newer step that cannot be read is reported and set aside (``Checkpointer.
    restore_newest``): the run goes on from the older one and saves those steps again.
    """
    step, (progress, state, reference) = self.checkpointer.restore_newest(
        self.read, log=self._log)
    phase = self.phases[progress.phase_index]
    self._log(f'Resumed from step {step} (phase {phase.kind}, '
              f'{progress.phase_step}/{phase.steps} done).')
    saved_config = self.checkpointer.read_meta(step).get('config')
    changes = config_changes(saved_config, json.loads(self.config.to_json_best_effort())) if (
        saved_config is not None) else []
    if changes:
      # Allowed (e.g. a Stage II setting tried from a run's end of Stage I), but never silent.
      self._log(f'The config differs from the one step {step} was saved with: '
                + '; '.join(changes) + '.')
    return progress, state, reference

  def read(self, step: int):
    """(progress, train state, reference or None) of a checkpoint step.

    Raises:
      UnreadableCheckpoint: the step's files are damaged.
      InvalidRun: it was written by a run of another schedule.
    """
    meta = self.checkpointer.read_meta(step)
    if meta['schedule'] != self.config.schedule:
      raise InvalidRun(
          f'The checkpoint in {self.checkpointer.directory} was written with schedule '
          f'{meta["schedule"]!r} but the config says {self.config.schedule!r}; use a new '
          f'--workdir or the same schedule.')
    progress = RunProgress.from_meta(meta)
    phase = self.phases[progress.phase_index]
    tx = make_optimizer(phase.config_section(self.config).optimizer, phase.steps)
    target = abstract_train_state(self.model_of(phase), tx)
    reference = (abstract_reference_of(self.train_model, self.config) if meta['has_reference']
                 else None)
    state, reference, _ = self.checkpointer.restore(target, reference, step)
    return progress, state, reference

  def save(self, progress: RunProgress, state, reference) -> None:
    """Saves the step ``progress`` is at, unless it is saved already.

    Raises:
      Diverged: the parameters are not finite (nothing is saved).
      StorageFault: this save, or the one before it, could not be written.
    """
    step = progress.global_step
    if self.checkpointer.latest_step() == step:
      return  # Already saved at this step (e.g. a SIGTERM right after a scheduled save).
    if not _all_finite(state.params):
      self.diverged(f'non-finite parameters at step {step}')
    meta = dict(progress.to_meta(), has_reference=reference is not None,
                lora_adapters=self.holds_adapters(progress),
                config=json.loads(self.config.to_json_best_effort()))
    self.checkpointer.save(step, state, meta, reference=reference)

  def diverged(self, what: str) -> None:
    """Stops without saving: the newest checkpoint on disk stays the last good one.

    Raises:
      Diverged: always.
    """
    self.checkpointer.wait_until_finished()
    latest = self.checkpointer.latest_step()
    raise Diverged(
        f'Training diverged ({what}); stopping. The last good checkpoint is '
        f'{"step " + str(latest) if latest is not None else "none"} in '
        f'{self.checkpointer.directory}. Lower the learning rate or raise the KL weight.')

  def last_good_checkpoint(self) -> str:
    """Which checkpoint a rerun resumes from, as a sentence."""
    latest = max(self.checkpointer.saved_steps(), default=None)
    if latest is None:
      return 'No checkpoint was saved; rerun the same command once the disk is fixed.'
    return (f'The last good checkpoint is step {latest} in {self.checkpointer.directory}; '
            f'rerun the same command to resume from it once the disk is fixed.')

  def close(self, writer, quietly: bool = False) -> None:
    """Waits for the save in flight and closes the checkpointer and the metric writer.

    Args:
      writer: the run's ``MetricWriter``.
      quietly: an error is on its way up; one of closing (the same full disk) is dropped.
    """
    try:
      self.checkpointer.close(quietly=quietly)
    finally:
      try:
        writer.close()
      except StorageFault:
        if not quietly:
          raise

  def report_storage_faults(self, run: Callable[[], T], workdir: str,
                            close: Callable[[], None]) -> T:
    """``run()``; on any error, ``close()`` first, and a failed write as one ``StorageFault``.

    Args:
      run: the training loop.
      workdir: the run's work directory (named in the error).
      close: closes the checkpointer and the metric writer quietly.

    Raises:
      StorageFault: a checkpoint, the metrics or another output could not be written, or no
        checkpoint can be read; the message says which checkpoint a rerun resumes from.
    """
    try:
      return run()
    except StorageFault as e:
      close()  # The first fault is the one reported.
      if e.says_resume_step:
        raise
      raise StorageFault(f'{e} {self.last_good_checkpoint()}', says_resume_step=True) from e
    except OSError as e:  # The summary, the plot or the evaluation samples.
      close()
      reason = storage_reason(e)
      if reason is None:
        raise
      raise StorageFault(f'Could not write to {workdir}: {reason}. '
                         f'{self.last_good_checkpoint()}', says_resume_step=True) from e
    except BaseException:
      close()
      raise


@jax.jit
def _all_finite_device(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _all_finite(tree) -> bool:
  # One module-level jit: compiled once per parameter structure, not at every save.
  return bool(_all_finite_device(tree))


def config_changes(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """``'field: saved -> current'`` for every leaf that differs between two config dicts."""
  absent = object()
  show = lambda value: '(absent)' if value is absent else repr(value)
  changes = []
  for key in sorted(set(saved) | set(current)):
    name = f'{prefix}{key}'
    old, new = saved.get(key, absent), current.get(key, absent)
    if isinstance(old, dict) and isinstance(new, dict):
      changes += config_changes(old, new, f'{name}.')
    elif old is absent or new is absent or old != new:
      changes.append(f'{name}: {show(old)} -> {show(new)}')
  return changes
