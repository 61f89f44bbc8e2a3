"""The decoder: cached decoding, padding, scan/unrolled, remat, dtypes, RoPE scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_model, random_tokens, tiny_config
from score_jax import config_lib
from score_jax.model import (Decoder, for_decoding, init_cache, init_params,
                             positions_from_valid, preset_names, unstack_layers)
from score_jax.model.layers import rope_inverse_frequencies

PRESETS = ['tiny', 'tiny_gemma2']


def full_logits(model, params, tokens, valid):
  return jax.jit(model.apply)({'params': params}, tokens, positions_from_valid(valid), valid)[0]


@pytest.mark.parametrize('preset', PRESETS)
def test_cached_decoding_equals_full_forward(preset):
  """Prefill a left-padded prompt, then decode one token at a time: same logits as one pass."""
  model, params, _ = make_model(preset)
  config = model.config
  batch, prompt_len, total = 3, 10, 26
  assert config.sliding_window in (0, 8)  # The Gemma-2 model's window is shorter than the row.
  tokens = random_tokens(0, (batch, total), config.vocab_size)
  valid = np.ones((batch, total), bool)
  valid[1, :3] = False  # Left padding of different lengths in the prompt.
  valid[2, :6] = False
  valid = jnp.asarray(valid)
  positions = positions_from_valid(valid)
  expected = full_logits(model, params, tokens, valid)

  apply = jax.jit(model.apply)
  cache = init_cache(config, batch, total + 6)  # Longer than needed: empty slots stay hidden.
  logits, cache = apply({'params': params}, tokens[:, :prompt_len], positions[:, :prompt_len],
                        valid[:, :prompt_len], cache=cache, cache_index=0)
  pieces = [logits]
  for i in range(prompt_len, total):
    logits, cache = apply({'params': params}, tokens[:, i:i + 1], positions[:, i:i + 1],
                          valid[:, i:i + 1], cache=cache, cache_index=i)
    pieces.append(logits)
  cached = jnp.concatenate(pieces, axis=1)
  mask = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(cached)[mask], np.asarray(expected)[mask], atol=1e-4)
  assert np.abs(np.asarray(expected)[mask]).max() > 1.0  # Not a trivially small output.


def test_gemma2_features_are_active():
  """The Gemma-2 test model really exercises the sliding window and both soft-caps."""
  model, params, _ = make_model('tiny_gemma2')
  tokens = random_tokens(1, (2, 24), model.config.vocab_size)
  valid = jnp.ones((2, 24), bool)
  base = full_logits(model, params, tokens, valid)
  assert np.abs(np.asarray(base)).max() <= model.config.final_logit_softcap + 1e-4
  for change in (dict(sliding_window=1000), dict(attn_logit_softcap=0.0),
                 dict(final_logit_softcap=0.0)):
    other = Decoder(tiny_config('tiny_gemma2', **change))
    assert np.abs(np.asarray(full_logits(other, params, tokens, valid) - base)).max() > 1e-2, change


@pytest.mark.parametrize('preset', PRESETS)
def test_invalid_slots_inside_a_row_do_not_change_valid_logits(preset):
  model, params, _ = make_model(preset)
  vocab = model.config.vocab_size
  compact = random_tokens(2, (2, 14), vocab)
  compact_valid = jnp.ones((2, 14), bool)
  expected = full_logits(model, params, compact, compact_valid)

  # Spread the same tokens over 22 slots with invalid garbage tokens in between.
  rng = np.random.default_rng(3)
  padded = rng.integers(0, vocab, (2, 22))
  padded_valid = np.zeros((2, 22), bool)
  slots = [np.sort(rng.choice(22, 14, replace=False)) for _ in range(2)]
  for row, row_slots in enumerate(slots):
    padded[row, row_slots] = np.asarray(compact[row])
    padded_valid[row, row_slots] = True
  got = full_logits(model, params, jnp.asarray(padded, jnp.int32), jnp.asarray(padded_valid))
  for row, row_slots in enumerate(slots):
    np.testing.assert_allclose(np.asarray(got)[row, row_slots], np.asarray(expected)[row],
                               atol=1e-4)


@pytest.mark.parametrize('preset', PRESETS)
def test_scanned_and_unrolled_layers_agree(preset):
  model, params, _ = make_model(preset)
  unrolled_model = Decoder(tiny_config(preset, scan_layers=False))
  unrolled = unstack_layers(params, model.config.num_layers)
  tokens = random_tokens(4, (2, 12), model.config.vocab_size)
  valid = jnp.ones((2, 12), bool)
  np.testing.assert_allclose(full_logits(unrolled_model, unrolled, tokens, valid),
                             full_logits(model, params, tokens, valid), atol=1e-4)


def test_scan_unroll_compiles_the_same_model():
  """``scan_unroll`` changes how the scanned layers compile, not what they compute: the same
  stacked parameters give the same logits with 1, 2 or all layers per loop iteration."""
  model, params, _ = make_model('tiny')
  tokens = random_tokens(5, (2, 12), model.config.vocab_size)
  valid = jnp.ones((2, 12), bool)
  expected = full_logits(model, params, tokens, valid)
  for unroll in (2, model.config.num_layers, model.config.num_layers + 3):
    unrolled = Decoder(tiny_config('tiny', scan_unroll=unroll))
    np.testing.assert_allclose(full_logits(unrolled, params, tokens, valid), expected,
                               atol=1e-5)
  with pytest.raises(ValueError, match='model.scan_unroll must be a positive integer; got 0'):
    tiny_config('tiny', scan_unroll=0)


@pytest.mark.parametrize('kernel_layout', ['input_major', 'output_major'])
@pytest.mark.parametrize('preset, overrides', [
    ('tiny', dict(qkv_bias=True, tie_embeddings=False)),
    ('tiny', dict(scan_decode=True)),
    ('tiny_gemma2', {}),
])
def test_sampler_twin_computes_the_same_function(preset, overrides, kernel_layout):
  """``for_decoding``'s twin (unrolled unless scan_decode, in either kernel layout): the
  same logits, from parameters shaped as the twin itself declares them."""
  model, params, _ = make_model(preset, **overrides)  # Random weights, biases included.
  decoding_model, decoding_params = for_decoding(model, params, kernel_layout)
  assert decoding_model.config.scan_layers == bool(overrides.get('scan_decode'))
  assert decoding_model.config.kernel_layout == kernel_layout
  assert ('layers' in decoding_params) == bool(overrides.get('scan_decode'))
  declared = jax.eval_shape(lambda: init_params(decoding_model, jax.random.key(0))[0])
  assert jax.tree.map(jnp.shape, declared) == jax.tree.map(jnp.shape, decoding_params)
  tokens = random_tokens(7, (2, 12), model.config.vocab_size)
  valid = jnp.ones((2, 12), bool)
  np.testing.assert_allclose(full_logits(decoding_model, decoding_params, tokens, valid),
                             full_logits(model, params, tokens, valid), atol=1e-4)


def test_cpu_decoding_uses_output_major_kernels():
  """On CPUs the twin's dense kernels are [outputs, inputs] matrices (the layout whose
  decode-step matmuls XLA's CPU kernels run fastest); the trained model keeps its own."""
  model, params, _ = make_model('tiny', tie_embeddings=False)
  c = model.config
  decoding_model, decoding_params = for_decoding(model, params)
  assert decoding_model.config.kernel_layout == 'output_major'
  assert model.config.kernel_layout == 'input_major'
  layer = decoding_params['layer_0']
  assert layer['attn']['q_kernel'].shape == (c.num_heads * c.head_dim, c.d_model)
  assert layer['attn']['o_kernel'].shape == (c.d_model, c.num_heads * c.head_dim)
  assert layer['mlp']['down_kernel'].shape == (c.d_model, c.mlp_dim)
  assert decoding_params['unembedding'].shape == (c.vocab_size, c.d_model)
  np.testing.assert_array_equal(
      layer['attn']['q_kernel'],
      params['layers']['attn']['q_kernel'][0].reshape(c.d_model, -1).T.astype(c.jnp_dtype))


def test_kernel_layout_is_not_a_config_setting():
  with pytest.raises(ValueError, match='kernel_layout'):
    config_lib.model_config('tiny', kernel_layout='output_major')
  assert 'kernel_layout' not in config_lib.model_config('tiny')


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_keeps_gradients(policy):
  model, params, _ = make_model('tiny')
  remat_model = Decoder(tiny_config('tiny', remat_policy=policy))
  tokens = random_tokens(5, (2, 10), model.config.vocab_size)
  valid = jnp.ones((2, 10), bool)
  positions = positions_from_valid(valid)

  def loss(m, p):
    return jnp.mean(m.apply({'params': p}, tokens, positions, valid)[0] ** 2)

  g_plain = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
  g_remat = jax.jit(jax.grad(lambda p: loss(remat_model, p)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_plain, g_remat)


def test_qkv_bias_and_untied_output_are_used():
  model, params, _ = make_model('tiny', qkv_bias=True, tie_embeddings=False)
  assert 'q_bias' in params['layers']['attn'] and 'unembedding' in params
  tokens = random_tokens(6, (1, 8), model.config.vocab_size)
  valid = jnp.ones((1, 8), bool)
  base = full_logits(model, params, tokens, valid)
  for path in (('layers', 'attn', 'k_bias'), ('unembedding',)):
    changed = jax.tree.map(lambda x: x, params)
    node = changed
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = node[path[-1]] + 0.5
    assert np.abs(np.asarray(full_logits(model, changed, tokens, valid) - base)).max() > 1e-3


def test_bfloat16_compute_is_close_to_float32():
  model, params, _ = make_model('tiny', scale=0.1)
  bf16 = Decoder(tiny_config('tiny', dtype='bfloat16'))
  tokens = random_tokens(7, (2, 12), model.config.vocab_size)
  valid = jnp.ones((2, 12), bool)
  reference = full_logits(model, params, tokens, valid)
  got = full_logits(bf16, params, tokens, valid)
  assert got.dtype == jnp.float32  # Logits always come back in fp32.
  scale = float(jnp.abs(reference).max())
  assert float(jnp.abs(got - reference).max()) < 0.05 * scale


def test_llama3_rope_scaling_bands():
  """High frequencies are kept, low ones divided by the factor, the middle in between."""
  plain = rope_inverse_frequencies(tiny_config('tiny', head_dim=64, rope_theta=500_000.0))
  scaled = rope_inverse_frequencies(tiny_config(
      'tiny', head_dim=64, rope_theta=500_000.0, rope_scaling='llama3', rope_scaling_factor=8.0,
      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_position=8192))
  wavelength = 2 * np.pi / np.asarray(plain)
  high = wavelength < 8192 / 4
  low = wavelength > 8192 / 1
  np.testing.assert_allclose(np.asarray(scaled)[high], np.asarray(plain)[high], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(scaled)[low], np.asarray(plain)[low] / 8, rtol=1e-6)
  middle = ~high & ~low
  assert middle.any()
  ratio = np.asarray(scaled)[middle] / np.asarray(plain)[middle]
  assert np.all((ratio < 1) & (ratio > 1 / 8))


@pytest.mark.parametrize('preset', preset_names())
def test_presets_build_and_count_parameters(preset):
  """Every preset is a valid config whose parameter tree has the size the config predicts."""
  config = tiny_config(preset, qkv_bias=True) if preset.startswith('tiny') else tiny_config(preset)
  model = Decoder(config)
  ones = jnp.ones((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ones, ones, ones > 0))
  assert sum(x.size for x in jax.tree.leaves(abstract)) == config.num_params()
  if preset == 'smollm2_135m':
    assert config.num_params() == 134_515_008  # The published size of SmolLM2-135M.
