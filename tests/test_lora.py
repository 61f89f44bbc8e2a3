"""LoRA: the adapted decoder starts as its base, merges exactly, and trains only its adapters."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax.compilation import count_compilations
from score_jax.model import Decoder, ModelConfig, init_params
from score_jax.model import lora
from score_jax.rl import RLSettings
from score_jax.sharding import TRAIN_RULES, MeshRules, make_mesh
from score_jax.training.steps import (abstract_train_state, make_create_state, make_rl_step,
                                      make_sft_step, train_state_shardings)
from score_jax.trajectory import RolloutSpec, pack_trajectories

from helpers import tiny_config

SPEC = RolloutSpec(prompt_len=4, attempt1_len=6, stop_tokens=(2,), instruction_tokens=(5, 6),
                   attempt2_len=6)


def _logits(model, params, tokens):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return model.apply({'params': params}, tokens, positions, jnp.ones(tokens.shape, bool))[0]


def _perturbed(adapters, seed=3, size=0.05):
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + size * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


@pytest.mark.parametrize('scan_layers', [True, False])
def test_adapters_start_at_the_base_model_and_merge_into_its_kernels(scan_layers):
  config = dataclasses.replace(tiny_config(), scan_layers=scan_layers)
  plain = Decoder(config)
  adapted = Decoder(dataclasses.replace(config, lora_rank=4, lora_alpha=8.0))
  base, _ = init_params(plain, jax.random.key(0))
  adapters = lora.init_adapters(adapted, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 3, config.vocab_size)

  # Born with B = 0: exactly the base model's logits.
  np.testing.assert_array_equal(_logits(adapted, lora.combine(base, adapters), tokens),
                                _logits(plain, base, tokens))
  # Every kernel of both groups carries an adapter, and nothing else does.
  names = {jax.tree_util.keystr(path).split("'")[-2]
           for path, _ in jax.tree_util.tree_flatten_with_path(adapters)[0]}
  assert names == {f'{k}_lora_{ab}' for k in ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
                   for ab in 'ab'}
  # split is combine's inverse, and the base part is exactly a plain model's tree.
  split_base, split_adapters = lora.split(lora.combine(base, adapters))
  assert jax.tree.structure(split_base) == jax.tree.structure(base)
  assert jax.tree.structure(split_adapters) == jax.tree.structure(adapters)

  trained = _perturbed(adapters)
  adapted_logits = _logits(adapted, lora.combine(base, trained), tokens)
  merged = lora.merge_weights(base, trained, adapted.config.lora_scale)
  assert float(jnp.abs(adapted_logits - _logits(plain, base, tokens)).max()) > 0.1
  np.testing.assert_allclose(_logits(plain, merged, tokens), adapted_logits, atol=1e-5)


def test_targets_choose_the_kernels():
  config = dataclasses.replace(tiny_config(), lora_rank=2, lora_targets='attention,down')
  adapters = lora.abstract_adapters(Decoder(config))[0]
  assert sorted(adapters['layers']['attn']) == sorted(
      f'{k}_lora_{ab}' for k in 'qkvo' for ab in 'ab')
  assert sorted(adapters['layers']['mlp']) == ['down_lora_a', 'down_lora_b']


@pytest.mark.parametrize('override, message', [
    (dict(lora_rank=-1), 'model.lora_rank'),
    (dict(lora_rank=4, lora_targets='attention,ffn'), 'model.lora_targets'),
    (dict(lora_rank=4, lora_alpha=0.0), 'model.lora_alpha'),
    (dict(lora_rank=4, kernel_layout='output_major'), 'input-major'),
])
def test_bad_lora_settings_name_the_field(override, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**{**dataclasses.asdict(tiny_config()), **override})


@pytest.fixture(scope='module')
def setup():
  mesh = make_mesh(dict(data=2, fsdp=-1, tensor=1))
  rules = MeshRules(mesh, TRAIN_RULES)
  config = tiny_config()
  plain = Decoder(config, rules)
  adapted = Decoder(dataclasses.replace(config, lora_rank=4), rules)
  base, _ = init_params(plain, jax.random.key(0))
  rng = np.random.default_rng(0)
  draw = lambda n: rng.integers(7, 200, n).tolist()
  rows = 8
  batch = pack_trajectories(SPEC, [draw(3) for _ in range(rows)],
                            [draw(4) + [2] for _ in range(rows)],
                            [draw(5) + [2] for _ in range(rows)])
  batch = batch.replace(logprobs=np.where(batch.valid, -2.0, 0.0).astype(np.float32))
  row_sharding = lambda x: rules.sharding(('batch',) + (None,) * (x.ndim - 1), x.shape)
  batch = jax.tree.map(lambda x: jax.device_put(x, row_sharding(np.asarray(x))), batch)
  rewards = [jax.device_put(np.asarray(r, np.float32), rules.sharding(('batch',), (rows,)))
             for r in ([0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 0])]
  keys = [jax.device_put(jax.random.key(i), rules.replicated()) for i in range(3)]
  return plain, adapted, base, batch, rewards, keys


def test_an_rl_update_changes_only_the_adapters_and_never_recompiles(setup):
  plain, adapted, base, batch, (r1, r2), keys = setup
  tx = optax.adam(1e-2)
  settings = RLSettings('stage2', num_samples=2, attempt_grad_norms=True)
  adapters = lora.init_adapters(adapted, jax.random.key(1))
  state = make_create_state(adapted, tx)(jax.tree.map(jnp.copy, adapters))
  # The optimizer state covers the adapters alone.
  assert jax.tree.structure(state.params) == jax.tree.structure(adapters)
  assert (sum(x.size for x in jax.tree.leaves(state.opt_state)) <
          sum(x.size for x in jax.tree.leaves(base)))
  base_before = jax.tree.map(np.asarray, base)
  step = make_rl_step(adapted, tx, settings)
  counts = []
  for key in keys:
    with count_compilations() as compilations:
      state, metrics = step(state, base, batch, r1, r2, key)
    counts.append(compilations.count)
  assert counts[1:] == [0, 0], counts
  for leaf, sharding in zip(jax.tree.leaves(state),
                            jax.tree.leaves(train_state_shardings(adapted, tx))):
    assert leaf.sharding == sharding
  # The base (the reference model) is untouched; every adapter B moved off zero.
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, base), base_before)
  moved = jax.tree.map(lambda new, old: float(jnp.abs(new - old).max()), state.params, adapters)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved
  assert np.isfinite(float(metrics['loss']))
  assert float(metrics['grad_norm_attempt1']) > 0


def test_at_initialisation_the_lora_update_sees_the_base_models_loss(setup):
  """At B = 0 the adapted model is the base: the same loss as a full update of the base."""
  plain, adapted, base, batch, (r1, r2), keys = setup
  tx = optax.sgd(1.0)
  settings = RLSettings('stage2', num_samples=2)
  adapters = lora.init_adapters(adapted, jax.random.key(1))
  full = make_create_state(plain, tx)(jax.tree.map(jnp.copy, base))
  _, full_metrics = make_rl_step(plain, tx, settings)(full, base, batch, r1, r2, keys[0])
  state = make_create_state(adapted, tx)(jax.tree.map(jnp.copy, adapters))
  _, metrics = make_rl_step(adapted, tx, settings)(state, base, batch, r1, r2, keys[0])
  np.testing.assert_allclose(float(metrics['loss']), float(full_metrics['loss']), rtol=1e-6)


def test_an_sft_update_with_lora_takes_the_base_as_an_argument(setup):
  plain, adapted, base, batch, _, keys = setup
  tx = optax.adam(1e-2)
  adapters = lora.init_adapters(adapted, jax.random.key(1))
  state = make_create_state(adapted, tx)(jax.tree.map(jnp.copy, adapters))
  step = make_sft_step(adapted, tx)
  with count_compilations() as compilations:
    for _ in range(2):
      state, metrics = step(state, batch, base)
  assert compilations.count == 1
  assert np.isfinite(float(metrics['loss']))
  target = abstract_train_state(adapted, tx)
  assert jax.tree.structure(target) == jax.tree.structure(state)
