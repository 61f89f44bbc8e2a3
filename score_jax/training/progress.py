"""How far a run has got, and the progress lines it prints on the way.

``RunProgress`` is saved with every checkpoint (its ``meta`` item) and restored first on
resume. ``ProgressLog`` prints one line every ``log_every_steps`` steps: the phase and step,
the rate, an ETA and the mean of the main metrics since the last line.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from score_jax.reporting import duration
from score_jax.training.phases import Phase


@dataclasses.dataclass
class RunProgress:
  """Where a run stands; saved with every checkpoint (its ``meta`` item) and restored first.

  Attributes:
    schedule: the schedule the run was started with (a resumed run must use the same).
    phase_index: the phase being run; phase_step: its steps done.
    global_step: steps done in the whole run (a phase cut short still counts all its steps).
    base_eval: the held-out result of the reference (base) model, once RL has begun.
    best: the step, phase and training reward of the best RL step so far (the paper picks
      checkpoints by training reward).
    wall_s: seconds spent in earlier sessions of the run (resumes add theirs).
  """

  schedule: str
  phase_index: int = 0
  phase_step: int = 0
  global_step: int = 0
  base_eval: dict | None = None
  best: dict | None = None
  wall_s: float = 0.0

  @classmethod
  def from_meta(cls, meta: dict) -> 'RunProgress':
    return cls(**{field.name: meta[field.name] for field in dataclasses.fields(cls)})

  def to_meta(self) -> dict:
    return dataclasses.asdict(self)

  def steps_before(self, phases: Sequence[Phase], which) -> int:
    """Steps of the phases before the current one for which ``which(phase)`` holds."""
    return sum(p.steps for p in phases[:self.phase_index] if which(p))

  def record_reward(self, phase: Phase, reward: float) -> None:
    if self.best is None or reward > self.best['reward']:
      self.best = dict(step=self.global_step, phase=phase.kind, reward=float(reward))


class ProgressLog:
  """Progress lines with an ETA that sums each remaining phase's steps at its own rate.

  Steps of different kinds take very different times (an RL step samples a batch of
  rollouts; a warm-start step does not), so each kind's rate is measured while it runs; a
  later phase of a kind not yet timed in this session is named in the ETA instead of being
  guessed at the current rate.
  """

  def __init__(self, phases: Sequence[Phase], log: Callable[[str], None]):
    self.phases = list(phases)
    self.total_steps = sum(p.steps for p in phases)
    self._log = log
    self._run_start = time.perf_counter()
    self._rates: dict[str, float] = {}
    self._window: list[dict] = []
    self._phase_start = self._run_start
    self._steps_at_start = 0

  def start_run(self) -> None:
    """Starts the run's clock (the 'elapsed' of every line)."""
    self._run_start = time.perf_counter()

  def start_phase(self, progress: RunProgress) -> None:
    self._phase_start = time.perf_counter()
    self._steps_at_start = progress.phase_step
    self._window = []

  def record(self, metrics: dict) -> None:
    self._window.append(metrics)

  def elapsed(self) -> float:
    return time.perf_counter() - self._run_start

  def eta(self, progress: RunProgress) -> str:
    """The time the rest of the run takes at the measured rates, e.g. '3m10s' or '3m10s +
    stage2:50 untimed'."""
    phase = self.phases[progress.phase_index]
    remaining = [(phase.kind, phase.steps - progress.phase_step)] + [
        (later.kind, later.steps) for later in self.phases[progress.phase_index + 1:]]
    seconds, untimed = 0.0, []
    for kind, steps in remaining:
      if kind in self._rates:
        seconds += steps / self._rates[kind]
      elif steps:
        untimed.append(f'{kind}:{steps}')
    return duration(seconds) + (f' + {",".join(untimed)} untimed' if untimed else '')

  def line(self, progress: RunProgress) -> None:
    """Prints the progress line for the step just done, and starts a new window."""
    phase = self.phases[progress.phase_index]
    done = progress.phase_step - self._steps_at_start
    rate = done / max(time.perf_counter() - self._phase_start, 1e-9)
    self._rates[phase.kind] = max(rate, 1e-9)
    window = self._window
    mean = lambda key: np.mean([m[key] for m in window if key in m]) if any(
        key in m for m in window) else float('nan')
    parts = [f'[{phase.kind} {progress.phase_step}/{phase.steps}]',
             f'step {progress.global_step}/{self.total_steps}',
             f'{rate:.2f} steps/s', f'ETA {self.eta(progress)}',
             f'loss {mean("train/loss"):.4f}']
    if phase.is_rl:
      parts += [f'r1 {mean("train/reward_t1"):.3f}', f'r2 {mean("train/reward_t2"):.3f}',
                f'kl1 {mean("train/kl_attempt1"):.4f}', f'kl2 {mean("train/kl_attempt2"):.4f}']
    parts.append(f'elapsed {duration(self.elapsed())}')
    self._log(' | '.join(parts))
    self._window = []
