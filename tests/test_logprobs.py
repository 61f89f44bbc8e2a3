"""Chunked per-token log-probs against a plain log_softmax gather."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_model, random_tokens
from score_jax.model import (chunked_target_logprobs, positions_from_valid, previous_valid_slot,
                             token_logprobs)

jit_token_logprobs = jax.jit(token_logprobs, static_argnums=0,
                             static_argnames=('chunk_size', 'with_entropy'))


def plain_next_token_logprobs(model, params, tokens, valid):
  """Reference on a fully valid row: log_softmax of slot t-1's logits, gathered at token t."""
  logits = model.apply({'params': params}, tokens, positions_from_valid(valid), valid)[0]
  logp_all = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  zero = jnp.zeros((tokens.shape[0], 1))
  return jnp.concatenate([zero, logp], 1), jnp.concatenate([zero, entropy], 1)


def test_previous_valid_slot():
  valid = jnp.asarray([[True, True, False, False, True, False, True]])
  np.testing.assert_array_equal(previous_valid_slot(valid), [[-1, 0, 1, 1, 1, 4, 4]])


@pytest.mark.parametrize('chunk_size', [1, 5, 16, 64])
def test_chunked_equals_plain_gather(chunk_size):
  model, params, _ = make_model('tiny_gemma2')
  tokens = random_tokens(0, (3, 16), model.config.vocab_size)
  valid = jnp.ones((3, 16), bool)
  expected_logp, expected_entropy = jax.jit(plain_next_token_logprobs, static_argnums=0)(
      model, params, tokens, valid)
  logp, entropy = jit_token_logprobs(model, params, tokens, positions_from_valid(valid), valid,
                                 chunk_size=chunk_size, with_entropy=True)
  np.testing.assert_allclose(logp, expected_logp, atol=1e-5)
  np.testing.assert_allclose(entropy, expected_entropy, atol=1e-5)
  assert float(jnp.min(expected_logp[:, 1:])) < -1.0  # A non-trivial distribution.


def test_padding_inside_rows_predicts_from_the_previous_valid_token():
  model, params, _ = make_model('tiny')
  compact = random_tokens(1, (1, 10), model.config.vocab_size)
  expected, _ = jax.jit(plain_next_token_logprobs, static_argnums=0)(
      model, params, compact, jnp.ones((1, 10), bool))
  slots = np.asarray([1, 2, 5, 6, 7, 8, 12, 13, 14, 17])  # Invalid padding everywhere else.
  tokens = np.array(random_tokens(2, (1, 19), model.config.vocab_size))
  tokens[0, slots] = np.asarray(compact[0])
  valid = np.zeros((1, 19), bool)
  valid[0, slots] = True
  valid = jnp.asarray(valid)
  logp = jit_token_logprobs(model, params, jnp.asarray(tokens), positions_from_valid(valid), valid,
                        chunk_size=4)
  np.testing.assert_allclose(np.asarray(logp)[0, slots], np.asarray(expected)[0], atol=1e-5)
  assert np.all(np.asarray(logp)[0, ~np.asarray(valid)[0]] == 0)


def test_gradients_match_the_plain_computation():
  model, params, _ = make_model('tiny')
  tokens = random_tokens(3, (2, 12), model.config.vocab_size)
  valid = jnp.ones((2, 12), bool)
  positions = positions_from_valid(valid)
  g_chunked = jax.jit(jax.grad(lambda p: token_logprobs(model, p, tokens, positions, valid,
                                                        chunk_size=5).sum()))(params)
  g_plain = jax.jit(jax.grad(
      lambda p: plain_next_token_logprobs(model, p, tokens, valid)[0].sum()))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               g_chunked, g_plain)


def test_chunked_target_logprobs_on_hand_made_logits():
  """A linear 'model' with known logits: exact values, not just agreement."""
  hidden = jnp.asarray([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])  # [1, 3, 2]
  w = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # logits = hidden @ w, V = 3
  targets = jnp.asarray([[2, 0, 1]])
  logp = chunked_target_logprobs(lambda h: h @ w, hidden, targets, chunk_size=2)
  expected = [np.log(1 / 3), 1 - np.log(np.e + 2), 2 - np.log(np.e ** 2 + 2)]
  np.testing.assert_allclose(logp[0], expected, rtol=1e-6)
