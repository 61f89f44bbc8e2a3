"""The two-turn rollout against a cache-free reference, log-prob agreement, padding, compiles."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_model
from score_jax import sharding
from score_jax.compilation import count_compilations
from score_jax.model import Decoder, token_logprobs
from score_jax.sampling import (ATTEMPT1, ATTEMPT2, INSTRUCTION, PAD, PROMPT, FirstAttempts,
                                RolloutSpec, SamplingParams, make_rollout_fn, pack_prompts)

PROMPTS = [[11, 12, 13], [21, 22, 23, 24, 25, 26], [31], [41, 42, 43, 44]]
INSTRUCTION_TOKENS = (7, 8, 9)


def greedy_reference(model, params, prompt, instruction, len1, len2, stop_tokens):
  """Two greedy attempts by repeated full forwards over the compact (unpadded) sequence.

  The sequence is right-padded to a fixed width (causal attention never looks right) so
  that the forward compiles once.
  """
  width = 40

  @jax.jit
  def next_token_logits(padded, length):
    valid = jnp.arange(width)[None, :] < length
    logits = model.apply({'params': params}, padded, jnp.cumsum(valid, 1) - 1, valid)[0]
    return logits[0, length - 1]

  def attempt(sequence, length):
    out = []
    for _ in range(length):
      current = sequence + out
      padded = jnp.asarray([current + [0] * (width - len(current))])
      token = int(jnp.argmax(next_token_logits(padded, len(current))))
      out.append(token)
      if token in stop_tokens:
        break
    return out

  first = attempt(list(prompt), len1)
  second = attempt(list(prompt) + first + list(instruction), len2) if len2 else []
  return first, second


def attempt_tokens(rollout, row, segment):
  return np.asarray(rollout.tokens[row])[np.asarray(rollout.segments[row]) == segment].tolist()


def spec_stopping_early(model, params, len1=9, len2=8):
  """A spec whose stop token is row 0's third greedy token, so some rows stop early."""
  free_run, _ = greedy_reference(model, params, PROMPTS[0], (), len1, 0, ())
  return RolloutSpec(prompt_len=6, attempt1_len=len1, stop_tokens=(free_run[2],),
                     instruction_tokens=INSTRUCTION_TOKENS, instruction_len=5,
                     attempt2_len=len2)


@functools.lru_cache(maxsize=None)
def model_and_spec(preset):
  model, params, _ = make_model(preset)
  return model, params, spec_stopping_early(model, params)


@pytest.mark.parametrize('preset, scan_decode, block', [
    ('tiny', False, 0), ('tiny_gemma2', False, 0), ('tiny', True, 0),
    ('tiny', False, 4), ('tiny_gemma2', False, 4), ('tiny', True, 4)])
def test_greedy_rollout_equals_cache_free_reference(preset, scan_decode, block):
  """Both decoding layouts: unrolled layers with a cache per layer, or the scanned stack;
  each attempt in one decode loop, or in blocks of 4 tokens with a cache that grows."""
  model, params, spec = model_and_spec(preset)
  model = Decoder(dataclasses.replace(model.config, scan_decode=scan_decode))
  spec = dataclasses.replace(spec, decode_block_len=block)
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  out = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(0),
                                     SamplingParams.greedy())
  stopped_early = 0
  for row, prompt in enumerate(PROMPTS):
    first, second = greedy_reference(model, params, prompt, INSTRUCTION_TOKENS,
                                      spec.attempt1_len, spec.attempt2_len, spec.stop_tokens)
    assert attempt_tokens(out, row, ATTEMPT1) == first, row
    assert attempt_tokens(out, row, ATTEMPT2) == second, row
    stopped_early += len(first) < spec.attempt1_len
    assert bool(out.stopped[row, 0]) == (first[-1] in spec.stop_tokens)
  assert stopped_early >= 1  # The early-stop path was exercised.


def test_layout_padding_and_instruction_placement():
  model, params, spec = model_and_spec('tiny')
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  out = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(1),
                                     SamplingParams.greedy())
  assert out.tokens.shape == (4, spec.total_len) == (4, 6 + 9 + 5 + 8)
  for row, prompt in enumerate(PROMPTS):
    seg = np.asarray(out.segments[row])
    ok = np.asarray(out.valid[row])
    np.testing.assert_array_equal(ok, seg != PAD)
    assert attempt_tokens(out, row, PROMPT) == prompt
    assert attempt_tokens(out, row, INSTRUCTION) == list(INSTRUCTION_TOKENS)
    # Slots: attempt 1 grows from the left of its slot; the instruction is right-aligned.
    a1_slots = np.flatnonzero(seg == ATTEMPT1)
    np.testing.assert_array_equal(a1_slots, 6 + np.arange(len(a1_slots)))
    np.testing.assert_array_equal(np.flatnonzero(seg == INSTRUCTION), [17, 18, 19])
    # Padding after a stop is invalid and holds the pad id.
    pad_in_a1 = np.arange(6 + len(a1_slots), 15)
    assert not ok[pad_in_a1].any() and (np.asarray(out.tokens[row])[pad_in_a1] == 0).all()
    # Positions count valid tokens: the instruction follows the attempt with no gap.
    positions = np.asarray(out.positions[row])[ok]
    np.testing.assert_array_equal(positions, np.arange(ok.sum()))
    assert np.asarray(out.logprobs[row])[seg == PROMPT].sum() == 0
    assert np.asarray(out.logprobs[row])[~ok].sum() == 0


@pytest.mark.parametrize('preset', ['tiny', 'tiny_gemma2'])
def test_sampled_logprobs_equal_a_full_forward(preset):
  """What the sampler records is what the trainer recomputes (f32, 1e-4)."""
  model, params, spec = model_and_spec(preset)
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  out = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(2),
                                     SamplingParams.create(temperature=1.0))
  recomputed = jax.jit(token_logprobs, static_argnums=0)(model, params, out.tokens,
                                                         out.positions, out.valid)
  attempts = np.isin(np.asarray(out.segments), [ATTEMPT1, ATTEMPT2])
  assert attempts.sum() > 20
  np.testing.assert_allclose(np.asarray(out.logprobs)[attempts],
                             np.asarray(recomputed)[attempts], atol=1e-4)
  assert np.asarray(out.logprobs)[attempts].min() < -2  # Real samples, not only arg-maxes.


@pytest.mark.parametrize('preset', ['tiny', 'tiny_gemma2'])
def test_bf16_sampling_logprobs_agree_with_the_trainer(preset):
  """A bf16 sampler records log-probs close to the trainer's bf16 and fp32 recomputations.

  Measured: mean |difference| 0.004-0.006 and max 0.03-0.13, so the PPO ratio of a fresh
  rollout stays well within its 0.2 clip. (A log-prob taken one slot off differs by about 5
  on average here: the tiny model's mean token log-prob.)
  """
  model32, params, spec = model_and_spec(preset)
  model16 = Decoder(dataclasses.replace(model32.config, dtype='bfloat16'))
  tokens, valid = pack_prompts(PROMPTS * 8, spec.prompt_len)
  out = make_rollout_fn(model16, spec)(params, tokens, valid, jax.random.key(2),
                                       SamplingParams.create(temperature=1.0))
  attempts = np.isin(np.asarray(out.segments), [ATTEMPT1, ATTEMPT2])
  assert attempts.sum() > 200
  sampled = np.asarray(out.logprobs)[attempts]
  for model in (model16, model32):
    recomputed = jax.jit(token_logprobs, static_argnums=0)(model, params, out.tokens,
                                                           out.positions, out.valid)
    difference = np.abs(sampled - np.asarray(recomputed)[attempts])
    assert difference.mean() < 0.01 and difference.max() < 0.2, (difference.mean(),
                                                                 difference.max())


def test_single_turn_mode_is_the_first_turn_of_the_two_turn_rollout():
  model, params, spec = model_and_spec('tiny')
  single = RolloutSpec(prompt_len=spec.prompt_len, attempt1_len=spec.attempt1_len,
                       stop_tokens=spec.stop_tokens)
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  one = make_rollout_fn(model, single)(params, tokens, valid, jax.random.key(3),
                                       SamplingParams.greedy())
  two = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(3),
                                     SamplingParams.greedy())
  width = spec.prompt_len + spec.attempt1_len
  assert one.tokens.shape == (4, width)
  np.testing.assert_array_equal(one.tokens, two.tokens[:, :width])
  assert not np.asarray(one.stopped[:, 1]).any()
  assert not np.isin(np.asarray(one.segments), [INSTRUCTION, ATTEMPT2]).any()


def test_rollout_compiles_once_for_new_prompts_and_settings():
  model, params, spec = model_and_spec('tiny')
  fn = make_rollout_fn(model, spec)
  rng = np.random.default_rng(0)

  def batch():
    prompts = [rng.integers(10, 200, rng.integers(1, 7)).tolist() for _ in range(4)]
    return pack_prompts(prompts, spec.prompt_len)

  with count_compilations() as first:
    jax.block_until_ready(fn(params, *batch(), jax.random.key(0), SamplingParams.create(1.0)))
  with count_compilations() as later:
    for i, (temperature, top_p) in enumerate([(0.7, 0.9), (0.0, 1.0), (1.2, 0.5)]):
      jax.block_until_ready(fn(params, *batch(), jax.random.key(i + 1),
                               SamplingParams.create(temperature, top_p)))
  assert first.count >= 1
  assert later.count == 0


def test_pack_prompts_rejects_prompts_that_do_not_fit():
  with pytest.raises(ValueError, match=r'Prompt 1 has 4 tokens; the prompt slot holds 1 to 3'):
    pack_prompts([[1], [1, 2, 3, 4]], 3)
  with pytest.raises(ValueError, match='Prompt 0 has 0 tokens'):
    pack_prompts([[]], 3)


def test_spec_validation():
  with pytest.raises(ValueError, match='needs the instruction tokens'):
    RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(1,), attempt2_len=4)
  with pytest.raises(ValueError, match=r'instruction has 3 tokens but its slot .* is 2'):
    RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(1,), attempt2_len=4,
                instruction_tokens=(1, 2, 3), instruction_len=2)
  with pytest.raises(ValueError, match='At least one stop token'):
    RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=())
  with pytest.raises(ValueError, match='row_chunks must be positive'):
    RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(1,), row_chunks=0)
  with pytest.raises(ValueError, match='decode_block_len must be >= 0'):
    RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(1,), decode_block_len=-1)


def test_decode_blocks_cover_the_attempt():
  spec = RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(1,), decode_block_len=4)
  assert spec.decode_blocks(9) == (4, 8, 9)
  assert spec.decode_blocks(8) == (4, 8)
  assert spec.decode_blocks(3) == (3,)
  assert dataclasses.replace(spec, decode_block_len=0).decode_blocks(9) == (9,)


@pytest.mark.parametrize('preset', ['tiny', 'tiny_gemma2'])
def test_sampling_in_decode_blocks_draws_the_same_tokens(preset):
  """Blocks change only which empty cache slots attention reads (and masks): a sampled
  rollout draws the same tokens with the same key and records the same log-probs."""
  model, params, spec = model_and_spec(preset)
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  sampling = SamplingParams.create(1.0)
  whole = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(6), sampling)
  blocked = make_rollout_fn(model, dataclasses.replace(spec, decode_block_len=3))(
      params, tokens, valid, jax.random.key(6), sampling)
  for name in ('tokens', 'valid', 'positions', 'segments', 'stopped'):
    np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name), err_msg=name)
  np.testing.assert_allclose(blocked.logprobs, whole.logprobs, atol=1e-5)


def test_sharded_greedy_rollout_equals_single_device():
  model, params, spec = model_and_spec('tiny_gemma2')
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  mesh_rules = sharding.MeshRules(mesh, sharding.SAMPLE_RULES)
  _, _, axes = make_model('tiny_gemma2')
  sharded_model = Decoder(model.config, mesh_rules)
  sharded_params = jax.device_put(params, mesh_rules.shardings(axes, params))
  prompts = PROMPTS * 2  # 8 rows: one per device along the batch axes... times tensor.
  tokens, valid = pack_prompts(prompts, spec.prompt_len)
  expected = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(4),
                                          SamplingParams.greedy())
  got = make_rollout_fn(sharded_model, spec)(sharded_params, tokens, valid, jax.random.key(4),
                                             SamplingParams.greedy())
  assert got.tokens.sharding.spec[0] == ('data', 'fsdp')
  np.testing.assert_array_equal(got.tokens, expected.tokens)
  np.testing.assert_array_equal(got.valid, expected.valid)
  np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-4)


def test_rollout_in_row_chunks_equals_the_whole_batch():
  """Rows decoded two chunks at a time, each chunk with its own KV cache, give the greedy
  rollout of the whole batch at once, and every row stays on the devices it started on."""
  model, params, spec = model_and_spec('tiny_gemma2')
  mesh_rules = sharding.MeshRules(sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}),
                                  sharding.SAMPLE_RULES)
  _, _, axes = make_model('tiny_gemma2')
  sharded_params = jax.device_put(params, mesh_rules.shardings(axes, params))
  tokens, valid = pack_prompts(PROMPTS * 2, spec.prompt_len)
  expected = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(4),
                                          SamplingParams.greedy())
  chunked = dataclasses.replace(spec, row_chunks=2)
  got = make_rollout_fn(Decoder(model.config, mesh_rules), chunked)(
      sharded_params, tokens, valid, jax.random.key(4), SamplingParams.greedy())
  assert got.tokens.sharding.spec[0] == ('data', 'fsdp')
  for name in ('tokens', 'valid', 'positions', 'segments', 'stopped'):
    np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
  np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-4)
  with pytest.raises(ValueError, match=r'row_chunks \(3\) must divide the batch \(8 rows\)'):
    make_rollout_fn(model, dataclasses.replace(spec, row_chunks=3))(
        params, tokens, valid, jax.random.key(4), SamplingParams.greedy())


def test_rows_that_replay_another_models_first_attempt():
  """State coverage: rows given another model's attempt 1 hold exactly those tokens, their
  recorded log-probs and attempt 2 are this model's given that attempt (equal to a full
  forward, and to the cache-free greedy reference), and the other rows sample as before; in
  row chunks too."""
  model, params, spec = model_and_spec('tiny')
  other = make_model('tiny', seed=7)[1]
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  greedy = SamplingParams.greedy()
  rollout_fn = make_rollout_fn(model, spec)
  theirs = rollout_fn(other, tokens, valid, jax.random.key(5), greedy)
  ours = rollout_fn(params, tokens, valid, jax.random.key(5), greedy)
  slot = slice(spec.attempt1_start, spec.attempt1_start + spec.attempt1_len)
  rows = jnp.asarray([True, False, True, False])
  replay = FirstAttempts(tokens=theirs.tokens[:, slot], rows=rows)
  mixed = rollout_fn(params, tokens, valid, jax.random.key(5), greedy, replay)
  for row, prompt in enumerate(PROMPTS):
    if rows[row]:
      first = attempt_tokens(theirs, row, ATTEMPT1)
      assert first != attempt_tokens(ours, row, ATTEMPT1), row  # the replay is visible
      assert attempt_tokens(mixed, row, ATTEMPT1) == first, row
      ours_given = greedy_reference(model, params, list(prompt) + first + list(
          INSTRUCTION_TOKENS), (), spec.attempt2_len, 0, spec.stop_tokens)[0]
      assert attempt_tokens(mixed, row, ATTEMPT2) == ours_given, row
    else:
      for name in ('tokens', 'valid', 'positions', 'segments', 'stopped'):
        np.testing.assert_array_equal(getattr(mixed, name)[row], getattr(ours, name)[row])
  recomputed = jax.jit(token_logprobs, static_argnums=0)(model, params, mixed.tokens,
                                                         mixed.positions, mixed.valid)
  attempts = np.isin(np.asarray(mixed.segments), [ATTEMPT1, ATTEMPT2])
  np.testing.assert_allclose(np.asarray(mixed.logprobs)[attempts],
                             np.asarray(recomputed)[attempts], atol=1e-4)
  chunked = make_rollout_fn(model, dataclasses.replace(spec, row_chunks=2))(
      params, tokens, valid, jax.random.key(5), greedy, replay)
  for name in ('tokens', 'valid', 'positions', 'segments', 'stopped'):
    np.testing.assert_array_equal(getattr(chunked, name), getattr(mixed, name), err_msg=name)


def test_packed_trajectories_match_the_sampled_layout():
  """Teacher-forced packing of a rollout's own attempts reproduces the rollout's arrays."""
  from score_jax.sampling import pack_trajectories  # pylint: disable=g-import-not-at-top
  from score_jax.trajectory import attempt_token_lists  # pylint: disable=g-import-not-at-top
  model, params, spec = model_and_spec('tiny')
  tokens, valid = pack_prompts(PROMPTS, spec.prompt_len)
  out = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(5),
                                     SamplingParams.create(1.0))
  attempts = [(attempt_tokens(out, r, ATTEMPT1), attempt_tokens(out, r, ATTEMPT2))
              for r in range(len(PROMPTS))]
  packed = pack_trajectories(spec, PROMPTS, [a for a, _ in attempts], [b for _, b in attempts])
  for field in ('tokens', 'valid', 'segments', 'stopped'):
    np.testing.assert_array_equal(getattr(packed, field), getattr(out, field), err_msg=field)
  # Positions matter only where a token is valid (invalid slots are never attended to).
  ok = np.asarray(out.valid)
  np.testing.assert_array_equal(packed.positions[ok], np.asarray(out.positions)[ok])
  with pytest.raises(ValueError, match='Row 0: the second attempt has 9 tokens but its slot '
                     'holds 8'):
    pack_trajectories(spec, PROMPTS[:1], [[1]], [[2] * 9])
  stripped = attempt_token_lists(out, spec.stop_tokens)
  assert [list(a) for a in stripped[0]] == [
      [t for t in attempts[0][0] if t not in spec.stop_tokens],
      [t for t in attempts[0][1] if t not in spec.stop_tokens]]


def test_ids_beyond_the_tokenizer_vocabulary_are_never_sampled():
  model, params, spec = model_and_spec('tiny')
  limited = RolloutSpec(prompt_len=spec.prompt_len, attempt1_len=6, stop_tokens=(1,),
                        vocab_size=20)
  tokens, valid = pack_prompts(PROMPTS * 16, spec.prompt_len)
  for sampling in (SamplingParams.greedy(), SamplingParams.create(1.5)):
    out = make_rollout_fn(model, limited)(params, tokens, valid, jax.random.key(6), sampling)
    sampled = np.asarray(out.tokens)[np.asarray(out.segments) == ATTEMPT1]
    assert sampled.max() < 20
