"""Token selection: top-k and top-p on hand-made logits, and sampling in distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_model
from score_jax.sampling import (RolloutSpec, SamplingParams, filter_logits, make_rollout_fn,
                                pack_prompts, top_k_filter, top_p_filter)
from score_jax.sampling.sample import sample_categorical, select_tokens


def kept(filtered):
  return [sorted(np.flatnonzero(np.isfinite(row)).tolist()) for row in np.asarray(filtered)]


def test_top_k_keeps_exactly_the_k_largest():
  logits = jnp.asarray([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
  assert kept(top_k_filter(logits, 2)) == [[1, 3], [0, 1]]
  assert kept(top_k_filter(logits, 1)) == [[1], [0]]
  assert kept(top_k_filter(logits, 0)) == [[0, 1, 2, 3, 4]] * 2  # 0 disables.
  np.testing.assert_array_equal(top_k_filter(logits, 2)[0, 1], 3.0)  # Kept logits unchanged.


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = np.asarray([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.05, 0.15, 0.3, 0.5]])
  logits = jnp.log(jnp.asarray(probs))
  # Mass above each token (sorted): 0, .5, .8, .95 → p=0.8 keeps 0.5 and 0.3 (0.8 is reached).
  assert kept(top_p_filter(logits, jnp.asarray([0.8, 0.8, 0.8])))[0] == [0, 1]
  assert kept(top_p_filter(logits, jnp.asarray([0.81, 0.5, 0.81])))[0] == [0, 1, 2]
  assert kept(top_p_filter(logits, jnp.asarray([0.81, 0.5, 0.81])))[2] == [1, 2, 3]
  # The most probable token is always kept, even for a tiny p.
  assert kept(top_p_filter(logits, jnp.asarray([0.01, 0.01, 0.01])))[0] == [0]
  # Ties with the last kept token are kept: uniform rows keep everything.
  assert kept(top_p_filter(logits, jnp.asarray([0.5, 0.5, 0.5])))[1] == [0, 1, 2, 3]
  assert kept(top_p_filter(logits, jnp.asarray([1.0, 1.0, 1.0]))) == [[0, 1, 2, 3]] * 3


def test_filter_logits_applies_temperature_then_filters():
  logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0]])
  out = filter_logits(logits, SamplingParams.create(temperature=0.5, top_p=1.0), top_k=3)
  np.testing.assert_allclose(out[0, :3], [4.0, 2.0, 0.0])
  assert not np.isfinite(out[0, 3])


def test_sampling_params_reject_bad_values():
  with pytest.raises(ValueError, match='temperature must be >= 0'):
    SamplingParams.create(temperature=-1.0)
  with pytest.raises(ValueError, match=r'top_p must be in \(0, 1\]; got 1.5'):
    SamplingParams.create(top_p=1.5)


def total_variation(counts, probs):
  return 0.5 * np.abs(counts / counts.sum() - probs).sum()


def test_inverse_cdf_sampling_matches_the_softmax_and_skips_filtered_tokens():
  # 70 tokens in blocks of 8 (the last block padded): mass spread over several blocks, whole
  # blocks filtered, and filtered tokens at a block's start and end next to likely ones.
  vocab, draws = 70, 200_000
  logits = np.log(np.random.default_rng(0).uniform(0.2, 1.0, vocab))
  logits[[0, 7, 8, 9, 15, 23, 24, 40, 69]] = -np.inf
  logits[16:24] = -np.inf  # A block with no mass at all.
  logits[25] += 2.0  # One likely token right after a filtered one.
  probs = np.exp(logits - logits[np.isfinite(logits)].max())
  probs /= probs.sum()
  rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (draws, vocab))
  tokens = np.asarray(jax.jit(sample_categorical, static_argnums=2)(jax.random.key(0), rows, 8))
  counts = np.bincount(tokens, minlength=vocab)
  assert counts[probs == 0].sum() == 0 and tokens.max() < vocab
  # 200k draws over 60 tokens: sampling noise is about 0.01 in total variation.
  assert total_variation(counts, probs) < 0.02
  # Greedy-like logits: one token holds all the mass.
  peaked = jnp.full((4, vocab), -jnp.inf).at[:, 33].set(0.0)
  assert np.asarray(sample_categorical(jax.random.key(1), peaked, 8)).tolist() == [33] * 4


@pytest.mark.parametrize('temperature, top_p', [(0.7, 1.0), (1.3, 1.0), (1.0, 0.6)])
def test_first_sampled_token_follows_the_model_distribution(temperature, top_p):
  """Frequencies of the first sampled token over many draws match the filtered softmax."""
  model, params, _ = make_model('tiny', scale=0.6)
  prompt = [3, 17, 42, 99, 7]
  draws = 16384
  spec = RolloutSpec(prompt_len=5, attempt1_len=1, stop_tokens=(1,))
  tokens, valid = pack_prompts([prompt] * draws, 5)
  out = make_rollout_fn(model, spec)(params, tokens, valid, jax.random.key(0),
                                     SamplingParams.create(temperature, top_p))
  counts = np.bincount(np.asarray(out.tokens[:, 5]), minlength=model.config.vocab_size)

  def distribution(prefix, temp, p):
    x = jnp.asarray([prefix])
    v = jnp.ones_like(x, bool)
    logits = model.apply({'params': params}, x, jnp.cumsum(v, 1) - 1, v)[0][:, -1]
    return np.asarray(jax.nn.softmax(filter_logits(logits, SamplingParams.create(temp, p)))[0])

  expected = distribution(prompt, temperature, top_p)
  unfiltered = distribution(prompt, temperature, 1.0)
  assert unfiltered.max() < 0.7 and (unfiltered > 0.01).sum() >= 5  # A spread-out target.
  assert (expected > 0.05).sum() >= 2
  # Sampling noise for 16384 draws is at most ~0.03 in total variation here; a wrong temperature,
  # a missing top-p, or sampling from the logits one slot off each land far beyond 0.06.
  assert total_variation(counts, expected) < 0.06
  wrong = [distribution(prompt, temperature * 1.6, top_p),
           distribution(prompt, temperature / 1.6, top_p),
           distribution(prompt[:-1], temperature, top_p)]
  if top_p < 1:
    wrong.append(distribution(prompt, temperature, 1.0))
  for other in wrong:
    assert total_variation(counts, other) > 0.1


def test_greedy_rows_take_the_arg_max_and_the_others_sample():
  """Per-row temperatures: rows at 0 are greedy, the rest sample; all-sampled batches too."""
  logits = jax.random.normal(jax.random.key(3), (4, 50))  # Spread out: samples vary.
  argmax = np.asarray(jnp.argmax(logits, axis=-1))
  select = jax.jit(select_tokens)  # one compile per setting, not op by op 40 times
  mixed = SamplingParams(temperature=jnp.asarray([0.0, 1.0, 0.0, 1.0]), top_p=jnp.asarray(1.0))
  picks = np.stack([np.asarray(select(logits, jax.random.key(i), mixed))
                    for i in range(20)])
  np.testing.assert_array_equal(picks[:, [0, 2]], np.broadcast_to(argmax[[0, 2]], (20, 2)))
  assert len(set(picks[:, 1])) > 3 and len(set(picks[:, 3])) > 3
  all_sampled = SamplingParams.create(temperature=1.0)
  picks = np.stack([np.asarray(select(logits, jax.random.key(i), all_sampled))
                    for i in range(20)])
  assert all(len(set(picks[:, row])) > 3 for row in range(4))
  np.testing.assert_array_equal(select_tokens(logits, jax.random.key(0), SamplingParams.greedy()),
                                argmax)
