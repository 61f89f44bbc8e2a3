"""The two-turn rollout: problem → attempt 1 → self-correction instruction → attempt 2.

One jitted program with static shapes fills a row of fixed slots (the layout and the segment
ids are ``score_jax.trajectory``'s)::

    slot:   [ prompt (P) | attempt 1 (L1) | instruction (I) | attempt 2 (L2) ]
    valid:    . . p p p    a a a a s . .    . i i i i i       a a s . . . .
              left-padded  right-padded     left-padded       right-padded

    (p prompt token, a sampled token, s the sampled stop token, i instruction, . invalid)

Prompts and the instruction are right-aligned in their slots so that the last slot of each
holds a real token: its logits start the next attempt for every row at once. Attempts grow
from the left of their slot and stop at a stop token; the rest of the slot is padding.
RoPE positions count valid tokens only, so the model sees one contiguous conversation, and
the instruction sits "right after" each row's attempt however long it was.

The KV cache is reused across the turns: prefill the prompts, decode attempt 1 with
``lax.while_loop`` (until every row stopped or the slot is full), prefill the instruction,
decode attempt 2. Attention reads every slot of the cache, so the cache holds only the slots
reached so far and those of the current decode block (an attempt is one block unless
``RolloutSpec.decode_block_len`` is set): it grows before each block, and before the
instruction by the instruction's slots and attempt 2's first block.
With ``first_attempts``, chosen rows replay a given attempt 1 (e.g. the base model's, SCoRe's
state coverage) instead of sampling it: the loop feeds the given tokens, so the cache, the
recorded log-probs and attempt 2 are this model's, conditioned on that attempt.
The sampler runs the weights in the compute dtype, with unrolled layers (see
``model.for_decoding``). Each sampled token's fp32 log-probability under the model
(untempered, unfiltered: the quantity the trainer recomputes) is recorded.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.model import Decoder, KVCache, empty_cache, for_decoding, positions_from_valid
from score_jax.sampling.sample import SamplingParams, select_tokens
from score_jax.sharding import constrain, map_row_chunks
from score_jax.trajectory import PAD, Rollout, RolloutSpec

Array = jax.Array


@flax.struct.dataclass
class FirstAttempts:
  """Attempts 1 to replay in a rollout instead of sampling them."""

  tokens: Array  # [B, spec.attempt1_len] int32: an attempt-1 slot (e.g. of another rollout).
  rows: Array  # [B] bool: the rows that replay their ``tokens``; the others sample.


@flax.struct.dataclass
class _DecodeState:
  """The ``lax.while_loop`` state of one attempt's decode loop."""

  step: Array  # int32 scalar: slots of this attempt filled so far.
  cache: KVCache
  logits: Array  # [B, V] fp32 logits predicting the next token.
  next_position: Array  # [B] RoPE position of the next valid token.
  done: Array  # [B] the row has sampled a stop token.
  tokens: Array  # [B, L]
  valid: Array  # [B, L]
  positions: Array  # [B, L]
  logprobs: Array  # [B, L]


def _set_column(x: Array, column: Array, value: Array) -> Array:
  return jax.lax.dynamic_update_slice(x, value[:, None].astype(x.dtype), (0, column))


def _decode_attempt(model: Decoder, params, spec: RolloutSpec, cache: KVCache, logits: Array,
                    next_position: Array, start_slot: int, length: int, rng: Array,
                    sampling: SamplingParams,
                    replay: FirstAttempts | None = None) -> _DecodeState:
  """Samples up to ``length`` tokens per row into cache slots [start_slot, start_slot + L).

  One ``lax.while_loop`` per decode block (``spec.decode_blocks``); before each, the cache
  grows to the block's last slot, so ``cache`` may end anywhere up to the first block's end.
  Rows of ``replay.rows`` take ``replay.tokens`` instead of sampling (they stop where those
  hold a stop token).
  """
  batch = logits.shape[0]
  stop_tokens = jnp.asarray(spec.stop_tokens, jnp.int32)
  apply = functools.partial(model.apply, {'params': params})

  def decode_one(state: _DecodeState) -> _DecodeState:
    active = ~state.done
    choosable = state.logits
    if spec.vocab_size:
      in_vocab = jnp.arange(choosable.shape[-1]) < spec.vocab_size
      choosable = jnp.where(in_vocab, choosable, -jnp.inf)
    token = select_tokens(choosable, jax.random.fold_in(rng, state.step), sampling, spec.top_k)
    if replay is not None:
      given = jax.lax.dynamic_index_in_dim(replay.tokens, state.step, axis=1, keepdims=False)
      token = jnp.where(replay.rows, given.astype(token.dtype), token)
    token = jnp.where(active, token, spec.pad_id)
    # log p(token) = logit(token) - logsumexp(logits), without a [B, V] log-softmax array.
    token_logit = jnp.take_along_axis(state.logits, token[:, None], axis=-1)[:, 0]
    logp = jnp.where(active, token_logit - jax.nn.logsumexp(state.logits, axis=-1), 0.0)
    # Feed the token: its keys/values enter the cache and its logits predict the next one.
    next_logits, cache = apply(token[:, None], state.next_position[:, None], active[:, None],
                               cache=state.cache, cache_index=start_slot + state.step)
    return _DecodeState(
        step=state.step + 1, cache=cache, logits=next_logits[:, -1],
        next_position=state.next_position + active.astype(jnp.int32),
        done=state.done | (active & jnp.isin(token, stop_tokens)),
        tokens=_set_column(state.tokens, state.step, token),
        valid=_set_column(state.valid, state.step, active),
        positions=_set_column(state.positions, state.step, state.next_position),
        logprobs=_set_column(state.logprobs, state.step, logp))

  state = _DecodeState(
      step=jnp.int32(0), cache=cache, logits=logits, next_position=next_position,
      done=jnp.zeros((batch,), bool), tokens=jnp.full((batch, length), spec.pad_id, jnp.int32),
      valid=jnp.zeros((batch, length), bool), positions=jnp.zeros((batch, length), jnp.int32),
      logprobs=jnp.zeros((batch, length), jnp.float32))
  for block_end in spec.decode_blocks(length):
    state = state.replace(
        cache=_grow_cache(state.cache, start_slot + block_end, model.mesh_rules))
    # Once every row has stopped, the remaining blocks' loops exit at once.
    state = jax.lax.while_loop(
        lambda state, end=block_end: (state.step < end) & ~jnp.all(state.done),
        decode_one, state)
  return state


def _grow_cache(cache: KVCache, length: int, rules) -> KVCache:
  """The same cache with empty (invalid) slots appended up to ``length`` slots."""
  if cache.length == length:
    return cache
  if cache.length > length:
    raise ValueError(f'A cache of {cache.length} slots cannot grow to {length}.')

  def grow(x, names):
    slot_axis = names.index('cache_length')
    padding = [(0, 0)] * x.ndim
    padding[slot_axis] = (0, length - x.shape[slot_axis])
    return constrain(jnp.pad(x, padding), names, rules)
  return jax.tree.map(grow, cache, cache.logical_axes())


def _prefill(model: Decoder, params, cache: KVCache, tokens: Array, positions: Array,
             valid: Array, start_slot: int):
  """Writes a right-aligned block into the cache; returns its last slot's logits [B, V]."""
  hidden, cache = model.apply({'params': params}, tokens, positions, valid, cache=cache,
                              cache_index=start_slot, return_hidden=True)
  logits = model.apply({'params': params}, hidden[:, -1], method=Decoder.logits)
  return logits, cache


def rollout(model: Decoder, spec: RolloutSpec, params, prompts: Array, prompt_valid: Array,
            rng: Array, sampling: SamplingParams,
            first_attempts: FirstAttempts | None = None) -> Rollout:
  """Samples attempt 1 (and, with two turns, the instruction and attempt 2) for a batch.

  Args:
    model: the decoder (its ``mesh_rules`` shard the batch and the cache).
    spec: static slot widths, instruction and stop tokens.
    params: policy parameters.
    prompts: [B, P] int32 prompt tokens, left-padded (see ``pack_prompts``).
    prompt_valid: [B, P] bool; the last slot of every row must be valid.
    rng: PRNG key; split per decoded step (and first per row chunk, so that a chunked
      rollout samples other tokens than an unchunked one; greedy decoding is the same).
    sampling: temperature and top-p (arrays: changing them does not recompile).
    first_attempts: rows that replay a given attempt 1 instead of sampling it (None: all
      sample; which rows replay is an array, so changing it does not recompile).

  Returns:
    A ``Rollout`` with [B, spec.total_len] arrays.

  Raises:
    ValueError: ``spec.row_chunks`` does not divide the batch.
  """
  model, params = for_decoding(model, params)
  batch, chunks = prompts.shape[0], spec.row_chunks
  if chunks == 1:  # The same program as before row chunks existed (and the same samples).
    return _rollout_rows(model, spec, params, prompts, prompt_valid, rng, sampling,
                         first_attempts)
  if batch % chunks:
    raise ValueError(f'row_chunks ({chunks}) must divide the batch ({batch} rows).')
  out = map_row_chunks(
      lambda rows, key: _rollout_rows(model, spec, params, rows[0], rows[1], key, sampling,
                                      rows[2]),
      chunks, (prompts, prompt_valid, first_attempts), jax.random.split(rng, chunks))
  return jax.tree.map(lambda x: constrain(x, ('batch', 'length'), model.mesh_rules), out)


def _rollout_rows(model: Decoder, spec: RolloutSpec, params, prompts: Array,
                  prompt_valid: Array, rng: Array, sampling: SamplingParams,
                  first_attempts: FirstAttempts | None = None) -> Rollout:
  """``rollout`` of one chunk of rows, with the decoding twin and its weights."""
  batch = prompts.shape[0]
  rules = model.mesh_rules
  prompts = constrain(prompts.astype(jnp.int32), ('batch', 'length'), rules)
  prompt_valid = constrain(prompt_valid.astype(bool), ('batch', 'length'), rules)
  prompt_positions = positions_from_valid(prompt_valid)
  # Attention reads every slot of the cache, so the cache holds only the slots written so
  # far and those of the current decode block: here the prompt's and attempt 1's first
  # block's; it grows block by block (``_decode_attempt``), and by the instruction and
  # attempt 2's first block before the instruction.
  cache = empty_cache(model.config, batch, spec.attempt1_start +
                      spec.decode_blocks(spec.attempt1_len)[0], mesh_rules=rules)
  rng_attempt1, rng_attempt2 = jax.random.split(rng)

  logits, cache = _prefill(model, params, cache, prompts, prompt_positions, prompt_valid, 0)
  next_position = jnp.sum(prompt_valid, axis=1, dtype=jnp.int32)
  attempt1 = _decode_attempt(model, params, spec, cache, logits, next_position,
                             spec.attempt1_start, spec.attempt1_len, rng_attempt1, sampling,
                             first_attempts)
  parts = [(prompts, prompt_valid, prompt_positions, jnp.zeros(prompts.shape, jnp.float32)),
           (attempt1.tokens, attempt1.valid, attempt1.positions, attempt1.logprobs)]
  stopped = [attempt1.done, jnp.zeros((batch,), bool)]

  if spec.two_turns:
    width = spec.instruction_width
    instruction = np.full((width,), spec.pad_id, np.int32)
    instruction[width - len(spec.instruction_tokens):] = spec.instruction_tokens
    instruction_valid = np.arange(width) >= width - len(spec.instruction_tokens)
    instruction = jnp.broadcast_to(jnp.asarray(instruction), (batch, width))
    instruction_valid = jnp.broadcast_to(jnp.asarray(instruction_valid), (batch, width))
    instruction_positions = (attempt1.next_position[:, None] +
                             jnp.cumsum(instruction_valid, axis=1, dtype=jnp.int32) - 1)
    cache = _grow_cache(attempt1.cache,
                        spec.attempt2_start + spec.decode_blocks(spec.attempt2_len)[0], rules)
    logits, cache = _prefill(model, params, cache, instruction, instruction_positions,
                             instruction_valid, spec.instruction_start)
    attempt2 = _decode_attempt(model, params, spec, cache, logits,
                               attempt1.next_position + len(spec.instruction_tokens),
                               spec.attempt2_start, spec.attempt2_len, rng_attempt2, sampling)
    parts += [(instruction, instruction_valid, instruction_positions,
               jnp.zeros(instruction.shape, jnp.float32)),
              (attempt2.tokens, attempt2.valid, attempt2.positions, attempt2.logprobs)]
    stopped[1] = attempt2.done

  tokens, valid, positions, logprobs = (jnp.concatenate(arrays, axis=1) for arrays in zip(*parts))
  segments = jnp.where(valid, jnp.asarray(spec.segment_of_slot())[None, :], PAD)
  out = Rollout(tokens=tokens, valid=valid, positions=positions, segments=segments,
                logprobs=logprobs, stopped=jnp.stack(stopped, axis=1))
  return jax.tree.map(lambda x: constrain(x, ('batch', 'length'), rules), out)


def make_rollout_fn(model: Decoder, spec: RolloutSpec):
  """``rollout`` jitted for one model and spec: ``fn(params, prompts, valid, rng, sampling)``.

  Shapes are static, so the function compiles once per (model, spec, batch size).
  """
  return jax.jit(functools.partial(rollout, model, spec))
