"""How far a run has got, and the progress lines it prints on the way.

``RunProgress`` is saved with every checkpoint (its ``meta`` item) and restored first on
resume. ``ProgressLog`` prints one line every ``log_every_steps`` steps: the phase and step,
the rate, an ETA and the mean of the main metrics since the last line; and, through
``CollapseWatch``, one warning line when attempt 2 starts turning into a copy of attempt 1.
"""

from __future__ import annotations

import collections
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
    self._collapse = CollapseWatch(self.phases[0], 0)

  def start_run(self) -> None:
    """Starts the run's clock (the 'elapsed' of every line)."""
    self._run_start = time.perf_counter()

  def start_phase(self, progress: RunProgress) -> None:
    self._phase_start = time.perf_counter()
    self._steps_at_start = progress.phase_step
    self._window = []
    self._collapse = CollapseWatch(self.phases[progress.phase_index], progress.phase_step)

  def record(self, metrics: dict) -> None:
    """Adds a step's metrics to the next line's means (and warns of a collapse at once)."""
    self._window.append(metrics)
    warning = self._collapse.check(metrics)
    if warning:
      self._log(warning)

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


class CollapseWatch:
  """Detects behaviour collapse on the training rollouts while a two-turn RL phase runs.

  Kumar et al. (2024, Section 4) name the failure that SCoRe is built against: attempt 2
  learns to repeat attempt 1, and Δ(t1, t2) goes to zero. Its signature in the training
  metrics is a rising rate of second attempts that repeat the first while the training Δ
  falls. Two rates are watched: second attempts identical to the first, and second attempts
  with the same final answer (one minus ``different_answer_rate``, the paper's measure). The
  second catches a model that rewrites its line but keeps the answer, as the toy model does
  after Stage II (docs/stage2.md, Table 7) and as a real model's rewrites would. The watch
  averages over windows of ``window`` steps and compares the latest window with the phase's
  best one so far (highest Δ); when either rate has risen by ``rise`` and Δ fallen by
  ``fall`` since, it returns one warning line, once per phase.
  """

  def __init__(self, phase: Phase, first_step: int, window: int = 10, rise: float = 0.10,
               fall: float = 0.05):
    self.phase = phase
    self.window, self.rise, self.fall = window, rise, fall
    self._recent: collections.deque = collections.deque(maxlen=window)
    self._step = first_step
    # (Δ, identical rate, same-answer rate) of the best window, and its last step.
    self._best: tuple[np.ndarray, int] | None = None
    self._warned = False

  def check(self, metrics: dict) -> str | None:
    """Takes one step's metrics; returns the warning line when the collapse shows."""
    self._step += 1
    if self._warned or 'train/identical_rate' not in metrics or 'train/delta' not in metrics:
      return None
    identical = metrics['train/identical_rate']
    same_answer = 1.0 - metrics.get('train/different_answer_rate', 1.0 - identical)
    self._recent.append((metrics['train/delta'], identical, same_answer))
    if len(self._recent) < self.window:
      return None
    now = np.mean(self._recent, axis=0)
    if self._best is None or now[0] > self._best[0][0]:
      self._best = (now, self._step)
      return None
    best, best_step = self._best
    if best[0] - now[0] < self.fall or max(now[1] - best[1], now[2] - best[2]) < self.rise:
      return None
    self._warned = True
    first = self._step - self.window + 1
    return (f'warning: attempt 2 is turning into a copy of attempt 1 ({self.phase.kind} '
            f'steps {first}-{self._step} against {best_step - self.window + 1}-{best_step}): '
            f'identical second attempts {best[1]:.0%} -> {now[1]:.0%}, same final answer '
            f'{best[2]:.0%} -> {now[2]:.0%}, training Δ {best[0]:+.3f} -> {now[0]:+.3f} '
            f'(behaviour collapse, Kumar et al. 2024).')
