"""Training data of the paper's SFT baselines, built from sampled two-attempt rollouts.

Kumar et al. (2024) compare SCoRe with two ways of fine-tuning on self-generated correction
traces (their Section 4 and Table 2), both of which this module builds from scored samples
of the current model; the SFT itself is the trainer's teacher-forced step on the returned
traces (phases ``star`` and ``pair_sft``, ``score_jax.training.phases``).

* **STaR** (Zelikman et al., 2022, adapted to self-correction): sample both attempts, keep
  the *successful revisions* — attempt 1 wrong and attempt 2 right (the paper's D+) — and,
  as a variant, also the pairs where both attempts are right; fine-tune on them and repeat
  (three rounds in the paper).
* **Pair-SFT** (Welleck et al., 2023): pair each incorrect response to a problem with a
  correct response to the same problem drawn at random, as (attempt 1, attempt 2); problems
  with no correct response give no pairs. One epoch of SFT.

Both return ``score_jax.tasks.Trace`` records, the type the trainer's SFT phase consumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any, Iterable, Mapping, Sequence

from etils import epath

from score_jax import paths
from score_jax.tasks.base import Trace


@dataclasses.dataclass(frozen=True)
class ScoredPair:
  """One sampled two-attempt rollout of a problem, with both binary rewards."""

  example: Any  # A score_jax.tasks Example (has .id).
  attempt1: str
  attempt2: str
  reward1: float
  reward2: float

  def __post_init__(self):
    for name in ('reward1', 'reward2'):
      if getattr(self, name) not in (0.0, 1.0):
        raise ValueError(f'{name} must be a binary reward (0 or 1); got {getattr(self, name)!r} '
                         f'for example {self.example.id!r}.')


def star_traces(pairs: Iterable[ScoredPair], keep_correct_to_correct: bool = False
                ) -> list[Trace]:
  """STaR's training set: successful revisions (wrong → right), in sample order.

  Args:
    pairs: scored two-attempt samples of the current model.
    keep_correct_to_correct: also keep pairs whose two attempts are both right (the
      paper's variant that adds them to D+).
  """
  kept = []
  for pair in pairs:
    revised = pair.reward1 == 0.0 and pair.reward2 == 1.0
    kept_right = keep_correct_to_correct and pair.reward1 == 1.0 and pair.reward2 == 1.0
    if revised or kept_right:
      kept.append(Trace(pair.example, pair.attempt1, pair.attempt2))
  return kept


def pair_sft_traces(pairs: Sequence[ScoredPair], seed: int = 0) -> list[Trace]:
  """Pair-SFT's training set: every distinct incorrect response to a problem, each paired
  with a correct response to the same problem chosen at random (seeded).

  Responses come from both attempts of every sample. Problems are visited in the order they
  first appear, incorrect responses in the order sampled; the same ``seed`` gives the same
  pairs.
  """
  correct: dict[str, list[str]] = {}
  incorrect: dict[str, list[str]] = {}
  examples: dict[str, Any] = {}
  for pair in pairs:
    key = str(pair.example.id)
    examples.setdefault(key, pair.example)
    for text, reward in ((pair.attempt1, pair.reward1), (pair.attempt2, pair.reward2)):
      pool = correct if reward == 1.0 else incorrect
      responses = pool.setdefault(key, [])
      if text not in responses:
        responses.append(text)
  rng = random.Random(seed)
  traces = []
  for key, example in examples.items():
    if not correct.get(key):
      continue  # Nothing to pair with: the problem contributes no trace.
    for wrong in incorrect.get(key, []):
      traces.append(Trace(example, wrong, rng.choice(correct[key])))
  return traces


def build_traces(kind: str, pairs: Sequence[ScoredPair], keep_correct_to_correct: bool,
                 seed: int) -> list[Trace]:
  """The training set of a ``star`` or ``pair_sft`` phase."""
  if kind == 'star':
    return star_traces(pairs, keep_correct_to_correct)
  if kind == 'pair_sft':
    return pair_sft_traces(pairs, seed=seed)
  raise ValueError(f'{kind!r} is not a self-SFT phase (star, pair_sft).')


def self_sft_updates(num_steps: int, num_traces: int, batch_size: int, epochs: float) -> int:
  """SFT steps of a star or pair_sft phase: ``epochs`` passes over its traces (all
  ``num_steps`` when ``epochs`` is 0), never more than ``num_steps``."""
  if epochs <= 0:
    return num_steps if num_traces else 0
  return min(num_steps, math.ceil(epochs * num_traces / batch_size))


def write_traces(path: str, traces: Sequence[Trace]) -> None:
  """Writes traces as JSON lines (example id and both attempts), whole or not at all."""
  paths.write_text(path, ''.join(
      json.dumps(dict(id=str(t.example.id), attempt1=t.attempt1, attempt2=t.attempt2)) + '\n'
      for t in traces))


def read_traces(path: str, examples_by_id: Mapping[str, Any]
                ) -> tuple[list[Trace], list[int]]:
  """The traces ``write_traces`` wrote, with their examples looked up by id, and the numbers
  (from 1) of the lines that are not whole traces.

  Such lines are skipped, not fatal: a file cut short (a crash of the machine before the
  file system had written it all) or overwritten with garbage still gives its whole records.
  """
  text = epath.Path(path).read_bytes().decode('utf-8', errors='replace')
  traces, damaged = [], []
  for number, line in enumerate(text.splitlines(), start=1):
    try:
      record = json.loads(line)
      example = examples_by_id[record['id']]
      attempts = record['attempt1'], record['attempt2']
    except (ValueError, KeyError, TypeError):  # Cut short, or not a record of this task.
      damaged.append(number)
      continue
    if not all(isinstance(a, str) for a in attempts):
      damaged.append(number)
      continue
    traces.append(Trace(example, *attempts))
  return traces, damaged
