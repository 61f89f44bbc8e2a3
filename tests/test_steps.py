"""The jitted update steps: placed, donated, and free of implicit transfers and recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax.compilation import count_compilations
from score_jax.model import Decoder, init_params
from score_jax.rl import RLSettings
from score_jax.sharding import TRAIN_RULES, MeshRules, make_mesh
from score_jax.training.steps import (make_create_state, make_rl_step, make_sft_step,
                                      rl_settings, train_state_shardings)
from score_jax.trajectory import RolloutSpec, pack_trajectories

from helpers import tiny_config
from test_train import smoke_config

SPEC = RolloutSpec(prompt_len=4, attempt1_len=6, stop_tokens=(2,), instruction_tokens=(5, 6),
                   attempt2_len=6)


@pytest.fixture(scope='module')
def setup():
  mesh = make_mesh(dict(data=2, fsdp=-1, tensor=1))
  rules = MeshRules(mesh, TRAIN_RULES)
  model = Decoder(tiny_config(), rules)
  params, _ = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  draw = lambda n: rng.integers(7, 200, n).tolist()
  rows = 8
  batch = pack_trajectories(SPEC, [draw(3) for _ in range(rows)], [draw(4) + [2] for _ in range(rows)],
                            [draw(5) + [2] for _ in range(rows)])
  batch = batch.replace(logprobs=np.where(batch.valid, -2.0, 0.0).astype(np.float32))
  row_sharding = lambda x: rules.sharding(('batch',) + (None,) * (x.ndim - 1), x.shape)
  batch = jax.tree.map(lambda x: jax.device_put(x, row_sharding(np.asarray(x))), batch)
  rewards = [jax.device_put(np.asarray(r, np.float32), rules.sharding(('batch',), (rows,)))
             for r in ([0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0, 1, 0])]
  keys = [jax.device_put(jax.random.key(i), rules.replicated()) for i in range(3)]
  return model, params, batch, rewards, keys


def _run_steps(step, state, args_of, keys):
  """Three steps under a transfer guard; returns the final state and per-step compile counts."""
  counts = []
  with jax.transfer_guard('disallow'):
    for key in keys:
      with count_compilations() as compilations:
        previous = state
        state, metrics = step(state, *args_of(key))
      counts.append(compilations.count)
      # The state was donated: the step reused its buffers.
      assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous.params))
  return state, metrics, counts


@pytest.mark.parametrize('algorithm', ['reinforce', 'ppo'])
def test_rl_step_keeps_its_layout_without_transfers_or_recompiles(setup, algorithm):
  model, params, batch, (r1, r2), keys = setup
  tx = optax.adam(1e-3)
  settings = RLSettings('stage2', num_samples=2, algorithm=algorithm,
                        minibatches=2 if algorithm == 'ppo' else 1)
  reference = jax.tree.map(jnp.copy, params)
  state = make_create_state(model, tx)(jax.tree.map(jnp.copy, params))
  state, metrics, counts = _run_steps(make_rl_step(model, tx, settings), state,
                                      lambda key: (reference, batch, r1, r2, key), keys)
  assert counts[0] >= 1 and counts[1:] == [0, 0], counts
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(
      train_state_shardings(model, tx))):
    assert leaf.sharding == sharding
  assert int(state.step) == 3 * settings.minibatches
  assert np.isfinite(float(metrics['loss']))
  assert metrics['loss'].sharding.is_fully_replicated


def test_sft_step_keeps_its_layout_without_transfers_or_recompiles(setup):
  model, params, batch, _, keys = setup
  tx = optax.adam(1e-3)
  state = make_create_state(model, tx)(jax.tree.map(jnp.copy, params))
  state, metrics, counts = _run_steps(make_sft_step(model, tx), state, lambda key: (batch,),
                                      keys)
  assert counts[0] >= 1 and counts[1:] == [0, 0], counts
  assert int(state.step) == 3 and float(metrics['loss']) > 0


def test_rl_settings_come_from_the_config_once():
  config = smoke_config(**{'rl.alpha': 3.0, 'rl.algorithm': 'ppo', 'rl.minibatches': 2,
                           'logprob_chunk': 64})
  settings = rl_settings(config, 'stage1')
  assert settings == RLSettings(stage='stage1', alpha=3.0, beta1=config.rl.beta1,
                                beta2=config.rl.beta2, num_samples=config.rl.num_samples,
                                algorithm='ppo', minibatches=2, logprob_chunk=64,
                                attempt_grad_norms=config.rl.attempt_grad_norms,
                                shaping_baseline=config.rl.shaping_baseline,
                                stage2_attempt1_scale=config.rl.stage2_attempt1_scale)
  assert settings.stage2_attempt1_scale == pytest.approx(1 / 3)  # The toy config's, not 1.
  with pytest.raises(ValueError, match="Unknown stage 'stage3'"):
    rl_settings(config, 'stage3')


@pytest.mark.parametrize('stage', ['stage2', 'single_turn'])
def test_per_attempt_gradients_add_up_to_the_update(setup, stage):
  """With ``attempt_grad_norms`` the update is exactly the same (measuring never changes a
  run); the two attempts' norms bound the whole; single-turn RL puts no term on attempt 2."""
  model, params, batch, (r1, r2), keys = setup
  tx = optax.sgd(1.0)
  states = {}
  for measured in (False, True):
    settings = RLSettings(stage, num_samples=2, attempt_grad_norms=measured)
    state = make_create_state(model, tx)(jax.tree.map(jnp.copy, params))
    states[measured], metrics = make_rl_step(model, tx, settings)(
        state, params, batch, r1, r2, keys[0])
  for a, b in zip(jax.tree.leaves(states[False].params), jax.tree.leaves(states[True].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  g1, g2 = float(metrics['grad_norm_attempt1']), float(metrics['grad_norm_attempt2'])
  assert g1 > 0
  assert (g2 <= 1e-6 * g1) if stage == 'single_turn' else (g2 > 1e-3 * g1)
  assert float(metrics['grad_norm']) <= g1 + g2 + 1e-6
  if stage == 'single_turn':
    assert float(metrics['advantage_abs_attempt2']) == 0
  else:
    assert float(metrics['advantage_abs_attempt2']) > 0
