"""A run's schedule as data: its phases, and how far the run has got through them.

``config.schedule`` lists phases in order as ``kind:steps`` pairs. Kinds:

* ``sft``: teacher-forced warm start on the task's own two-attempt traces;
* ``stage1``, ``stage2``: SCoRe's stages (Kumar et al., 2024, Sections 5.1-5.2), and
  ``single_turn``, the single-turn RL baseline: one rollout batch and one update per step;
* ``star``, ``pair_sft``: the paper's SFT baselines on the model's own samples. A phase of
  N steps first samples N rollout batches, builds its traces from them, then takes at most N
  SFT steps on them: the sample and update budget of N RL steps.

Everything else asks a ``Phase`` what it is instead of comparing its kind to strings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from score_jax.rl import STAGES

WARM_START = 'sft'
RL_KINDS = STAGES
SELF_SFT_KINDS = ('star', 'pair_sft')
PHASE_KINDS = (WARM_START,) + RL_KINDS + SELF_SFT_KINDS


@dataclasses.dataclass(frozen=True)
class Phase:
  """One entry of a schedule: a kind and its number of steps."""

  kind: str
  steps: int

  def __post_init__(self):
    if self.kind not in PHASE_KINDS:
      raise ValueError(f'Unknown phase {self.kind!r}; phases are {PHASE_KINDS}.')
    if self.steps <= 0:
      raise ValueError(f'Phase {self.kind!r} needs a positive step count; got {self.steps}.')

  @property
  def is_warm_start(self) -> bool:
    return self.kind == WARM_START

  @property
  def is_rl(self) -> bool:
    return self.kind in RL_KINDS

  @property
  def is_self_sft(self) -> bool:
    return self.kind in SELF_SFT_KINDS

  @property
  def samples_rollouts(self) -> bool:
    """Whether its steps draw prompts from the training set (one RL batch per step)."""
    return self.is_rl or self.is_self_sft

  @property
  def two_turns(self) -> bool:
    """Whether its rollouts have a second attempt (all but single-turn RL)."""
    return self.kind != 'single_turn'

  def config_section(self, config) -> Any:
    """The config section (``sft``, ``rl`` or ``self_sft``) whose optimizer it uses; for an
    RL phase with its own ``rl.stage_learning_rate.<kind>`` (0: none), a copy of ``rl`` with
    that learning rate."""
    if self.is_warm_start:
      return config.sft
    if self.is_self_sft:
      return config.self_sft
    own_rate = config.rl.stage_learning_rate.get(self.kind, 0.0)
    if not own_rate:
      return config.rl
    section = config.rl.copy_and_resolve_references()
    with section.unlocked():
      section.optimizer.learning_rate = own_rate
    return section

  def __str__(self) -> str:
    return f'{self.kind}:{self.steps}'


def parse_schedule(schedule: str) -> list[Phase]:
  """'sft:600,stage1:100' → [Phase('sft', 600), Phase('stage1', 100)], with clear errors."""
  phases = []
  for item in filter(None, (s.strip() for s in schedule.split(','))):
    kind, _, steps = item.partition(':')
    if kind not in PHASE_KINDS:
      raise ValueError(f'schedule: unknown phase {kind!r} in {schedule!r}; phases are '
                       f'{PHASE_KINDS}.')
    if not steps.isdigit() or int(steps) <= 0:
      raise ValueError(f'schedule: phase {kind!r} needs a positive step count, as in '
                       f'{kind}:100; got {item!r}.')
    phases.append(Phase(kind, int(steps)))
  if not phases:
    raise ValueError('schedule is empty; give phases such as "sft:600,stage1:100,stage2:300".')
  return phases


def format_schedule(phases: Sequence[Phase]) -> str:
  return ','.join(map(str, phases))
