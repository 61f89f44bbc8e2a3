"""The trajectory: one row of fixed slots that the sampler fills and every loss reads.

A SCoRe trajectory is the conversation problem → attempt 1 → self-correction instruction →
attempt 2, laid out in four slots of static widths (``RolloutSpec``)::

    slot:   [ prompt (P) | attempt 1 (L1) | instruction (I) | attempt 2 (L2) ]
    valid:    . . p p p    a a a a s . .    . i i i i i       a a s . . . .

A segment id per slot (``PAD``, ``PROMPT``, ``ATTEMPT1``, ``INSTRUCTION``, ``ATTEMPT2``)
drives every mask downstream: the sampler writes it, the stage rules in ``score_jax.rl``
turn it into per-token advantages and KL weights, and the SFT steps into loss masks. This
module holds what all of them share: the segment ids, the slot layout, the ``Rollout`` batch,
packing token lists into the layout (prompts for the sampler, whole trajectories for teacher
forcing) and reading the attempts' tokens and texts back out.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax
import numpy as np

Array = jax.Array

# Segment ids: what each slot of a rollout row holds. They drive the trainer's masks.
PAD, PROMPT, ATTEMPT1, INSTRUCTION, ATTEMPT2 = 0, 1, 2, 3, 4
SEGMENT_NAMES = ('pad', 'prompt', 'attempt1', 'instruction', 'attempt2')


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """The static shape of a rollout: slot widths, the instruction and the stop tokens.

  ``attempt2_len = 0`` gives the single-turn mode (prompt and attempt 1 only), used for
  evaluation of first attempts and for single-turn baselines.
  """

  prompt_len: int
  attempt1_len: int
  stop_tokens: tuple[int, ...]
  instruction_tokens: tuple[int, ...] = ()
  attempt2_len: int = 0
  instruction_len: int = 0  # Slot width; 0 means exactly len(instruction_tokens).
  pad_id: int = 0
  top_k: int = 0  # Static: 0 keeps every token.
  # Only ids below this are ever sampled (a model's vocabulary is often padded beyond its
  # tokenizer's); 0 allows the model's whole vocabulary.
  vocab_size: int = 0
  # The rows are decoded in this many chunks, one after another, each with its own KV cache
  # of batch / row_chunks rows: for batches whose whole-batch cache does not fit in memory.
  row_chunks: int = 1
  # Each attempt is decoded in blocks of this many tokens, and the KV cache grows by one
  # block before each: attention reads every slot of the cache, so this spares it the
  # slots of blocks not yet reached, at the price of one more compiled copy of the decode
  # loop per block and a copy of the cache as it grows. 0 decodes each attempt as one block.
  decode_block_len: int = 0

  def __post_init__(self):
    if self.prompt_len <= 0 or self.attempt1_len <= 0:
      raise ValueError(f'Slot widths must be positive; got prompt_len={self.prompt_len}, '
                       f'attempt1_len={self.attempt1_len}.')
    if not self.stop_tokens:
      raise ValueError('At least one stop token is needed to end an attempt.')
    if self.attempt2_len < 0:
      raise ValueError(f'attempt2_len must be >= 0; got {self.attempt2_len}.')
    if self.two_turns and not self.instruction_tokens:
      raise ValueError('A two-turn rollout needs the instruction tokens.')
    if self.instruction_len and self.instruction_len < len(self.instruction_tokens):
      raise ValueError(f'The instruction has {len(self.instruction_tokens)} tokens but its slot '
                       f'(instruction_len) is {self.instruction_len}.')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0; got {self.top_k}.')
    if self.vocab_size < 0:
      raise ValueError(f'vocab_size must be >= 0; got {self.vocab_size}.')
    if self.row_chunks <= 0:
      raise ValueError(f'row_chunks must be positive; got {self.row_chunks}.')
    if self.decode_block_len < 0:
      raise ValueError(f'decode_block_len must be >= 0; got {self.decode_block_len}.')

  @property
  def two_turns(self) -> bool:
    return self.attempt2_len > 0

  @property
  def instruction_width(self) -> int:
    if not self.two_turns:
      return 0
    return self.instruction_len or len(self.instruction_tokens)

  @property
  def total_len(self) -> int:
    return self.prompt_len + self.attempt1_len + self.instruction_width + self.attempt2_len

  def decode_blocks(self, length: int) -> tuple[int, ...]:
    """The end of every decode block of an attempt of ``length`` slots (see
    ``decode_block_len``), relative to the attempt's first slot."""
    block = self.decode_block_len or length
    return tuple(range(block, length, block)) + (length,)

  @property
  def attempt1_start(self) -> int:
    return self.prompt_len

  @property
  def instruction_start(self) -> int:
    return self.prompt_len + self.attempt1_len

  @property
  def attempt2_start(self) -> int:
    return self.instruction_start + self.instruction_width

  def segment_of_slot(self) -> np.ndarray:
    """[T] the segment each slot belongs to (before padding is marked)."""
    widths = (self.prompt_len, self.attempt1_len, self.instruction_width, self.attempt2_len)
    return np.repeat(np.asarray([PROMPT, ATTEMPT1, INSTRUCTION, ATTEMPT2]), widths)


@flax.struct.dataclass
class Rollout:
  """A batch of finished trajectories in the fixed slot layout (all [B, T] but ``stopped``).

  Attributes:
    tokens: int32 token ids; ``pad_id`` where invalid.
    valid: bool, True for real tokens.
    positions: int32 RoPE positions (running count of valid tokens).
    segments: int32 segment ids (PAD for invalid slots; PROMPT, ATTEMPT1, INSTRUCTION,
      ATTEMPT2 otherwise).
    logprobs: fp32 log-probability of each sampled token under the sampling policy; 0 for
      prompt, instruction and invalid slots.
    stopped: [B, 2] bool, whether each attempt ended with a stop token (False when it ran
      out of room, and for attempt 2 in single-turn mode).
  """

  tokens: Array
  valid: Array
  positions: Array
  segments: Array
  logprobs: Array
  stopped: Array


def pack_prompts(prompts: Sequence[Sequence[int]], prompt_len: int,
                 pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into ``([B, P] int32 tokens, [B, P] bool valid)``.

  Raises:
    ValueError: a prompt is empty or longer than the prompt slot (naming the row).
  """
  tokens = np.full((len(prompts), prompt_len), pad_id, np.int32)
  valid = np.zeros((len(prompts), prompt_len), bool)
  for row, prompt in enumerate(prompts):
    if not 0 < len(prompt) <= prompt_len:
      raise ValueError(
          f'Prompt {row} has {len(prompt)} tokens; the prompt slot holds 1 to {prompt_len}. '
          f'Raise the prompt slot width (prompt_len) or shorten the prompt.')
    tokens[row, prompt_len - len(prompt):] = prompt
    valid[row, prompt_len - len(prompt):] = True
  return tokens, valid


def pack_trajectories(spec: RolloutSpec, prompts: Sequence[Sequence[int]],
                      attempts1: Sequence[Sequence[int]],
                      attempts2: Sequence[Sequence[int]] | None = None) -> Rollout:
  """Places given token lists in the rollout's slot layout (for teacher forcing).

  The teacher-forced twin of ``rollout``: SFT warm-starting, STaR and Pair-SFT train on
  trajectories laid out exactly as sampled ones. Attempts should end with a stop token if
  the model is to learn to stop. ``logprobs`` are zeros and ``stopped`` says whether each
  attempt ends with one of the spec's stop tokens.

  Raises:
    ValueError: a prompt or attempt does not fit its slot (naming the row).
  """
  batch = len(prompts)
  if len(attempts1) != batch or (attempts2 is not None and len(attempts2) != batch):
    raise ValueError('prompts, attempts1 and attempts2 must have one entry per row.')
  if spec.two_turns != (attempts2 is not None):
    raise ValueError('Give attempts2 exactly when the spec has a second turn.')
  tokens = np.full((batch, spec.total_len), spec.pad_id, np.int32)
  valid = np.zeros((batch, spec.total_len), bool)
  prompt_tokens, prompt_valid = pack_prompts(prompts, spec.prompt_len, spec.pad_id)
  tokens[:, :spec.prompt_len], valid[:, :spec.prompt_len] = prompt_tokens, prompt_valid

  def place(row: int, ids: Sequence[int], start: int, width: int, name: str, right: bool):
    if len(ids) > width:
      raise ValueError(f'Row {row}: the {name} has {len(ids)} tokens but its slot holds '
                       f'{width}; raise the slot width or shorten the text.')
    begin = start + width - len(ids) if right else start
    tokens[row, begin:begin + len(ids)] = ids
    valid[row, begin:begin + len(ids)] = True

  stopped = np.zeros((batch, 2), bool)
  for row in range(batch):
    place(row, attempts1[row], spec.attempt1_start, spec.attempt1_len, 'first attempt', False)
    stopped[row, 0] = bool(attempts1[row]) and attempts1[row][-1] in spec.stop_tokens
    if spec.two_turns:
      place(row, spec.instruction_tokens, spec.instruction_start, spec.instruction_width,
            'instruction', True)
      place(row, attempts2[row], spec.attempt2_start, spec.attempt2_len, 'second attempt',
            False)
      stopped[row, 1] = bool(attempts2[row]) and attempts2[row][-1] in spec.stop_tokens
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  segments = np.where(valid, spec.segment_of_slot()[None, :], PAD).astype(np.int32)
  return Rollout(tokens=tokens, valid=valid, positions=positions, segments=segments,
                 logprobs=np.zeros(tokens.shape, np.float32), stopped=stopped)


def attempt_token_lists(rollout: Rollout, stop_tokens: Sequence[int]):
  """Per row, the token ids of (attempt 1, attempt 2) without padding and stop tokens."""
  tokens = np.asarray(rollout.tokens)
  segments = np.asarray(rollout.segments)
  stops = np.asarray(list(stop_tokens))
  out = []
  for row_tokens, row_segments in zip(tokens, segments):
    out.append(tuple(
        row_tokens[(row_segments == segment) & ~np.isin(row_tokens, stops)].tolist()
        for segment in (ATTEMPT1, ATTEMPT2)))
  return out


def attempt_texts(rollout: Rollout, tokenizer, stop_tokens: Sequence[int]) -> list[tuple[str, str]]:
  """Per row, the decoded text of (attempt 1, attempt 2); '' for an absent attempt 2.

  ``tokenizer`` is anything with ``decode(ids) -> str`` (``score_jax.tokenizer``).
  """
  return [(tokenizer.decode(first), tokenizer.decode(second))
          for first, second in attempt_token_lists(rollout, stop_tokens)]
