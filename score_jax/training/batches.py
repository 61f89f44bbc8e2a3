"""Which data each step sees: RL prompts by step index, and SFT traces encoded for the slots.

A step's data depend only on the run's seed and the step's index, never on what happened
before it in this process, so a resumed run sees exactly the data of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from score_jax.tasks.base import Trace
from score_jax.trajectory import Rollout, RolloutSpec, pack_trajectories


def rl_examples(train_examples: Sequence[Any], seed: int, rl_step_index: int,
                prompts_per_step: int, num_samples: int) -> list[Any]:
  """The prompts of the n-th RL step of a run, each repeated ``num_samples`` times in a row.

  The order is a fresh seeded permutation of the training set every epoch.
  """
  rows = []
  for position in range(rl_step_index * prompts_per_step,
                        (rl_step_index + 1) * prompts_per_step):
    epoch, index = divmod(position, len(train_examples))
    order = np.random.default_rng([seed, epoch]).permutation(len(train_examples))
    rows.extend([train_examples[int(order[index])]] * num_samples)
  return rows


@dataclasses.dataclass(frozen=True)
class EncodedTrace:
  """A trace as token ids: the prompt, and each attempt followed by a stop token."""

  example_id: str
  prompt: list[int]
  attempt1: list[int]
  attempt2: list[int]


def encode_traces(experiment, traces: Sequence[Trace], drop_too_long: bool = False,
                  log: Callable[[str], None] = print) -> list[EncodedTrace]:
  """Token ids of every trace, checked once against the rollout slots, so that a trace too
  long stops the run before training rather than mid-phase.

  With ``drop_too_long`` (the model's own samples, which may have run to the end of a slot
  without a stop token) such traces are left out instead, and counted in the log.

  Raises:
    ValueError: a trace does not fit its slot (without ``drop_too_long``), naming the trace
      and the setting to raise.
  """
  exp, stop = experiment, experiment.spec.stop_tokens[0]
  encoded = [EncodedTrace(str(t.example.id), exp.prompt_ids(t.example),
                          exp.tokenizer.encode(t.attempt1) + [stop],
                          exp.tokenizer.encode(t.attempt2) + [stop]) for t in traces]
  widths = dict(prompt=exp.spec.prompt_len, attempt1=exp.spec.attempt1_len,
                attempt2=exp.spec.attempt2_len)
  fits = lambda e: all(len(getattr(e, slot)) <= width for slot, width in widths.items())
  if drop_too_long:
    kept = [e for e in encoded if fits(e)]
    if len(kept) < len(encoded):
      log(f'   left out {len(encoded) - len(kept)} of {len(encoded)} traces whose '
          f'attempts, with a stop token, do not fit their slots (truncated samples)')
    return kept
  for slot, width in widths.items():
    longest = max(range(len(encoded)), key=lambda i: len(getattr(encoded[i], slot)))
    needed = len(getattr(encoded[longest], slot))
    if needed > width:
      raise ValueError(
          f'SFT trace {traces[longest].example.id!r} needs {needed} tokens in the {slot} slot '
          f'but rollout.{slot}_len is {width}; raise --config.rollout.{slot}_len to at least '
          f'{needed}.')
  return encoded


def sft_batch(traces: Sequence[EncodedTrace], step: int, batch_size: int) -> list[EncodedTrace]:
  """The traces of an SFT step: the next ``batch_size`` of them, wrapping around."""
  return [traces[i % len(traces)] for i in range(step * batch_size, (step + 1) * batch_size)]


def pack_encoded(spec: RolloutSpec, traces: Sequence[EncodedTrace]) -> Rollout:
  return pack_trajectories(spec, [t.prompt for t in traces], [t.attempt1 for t in traces],
                           [t.attempt2 for t in traces])


def fingerprint(ids: Iterable[str]) -> int:
  """A short checksum of a batch's example ids: logged to show which data a step saw."""
  return zlib.crc32('\n'.join(ids).encode())
