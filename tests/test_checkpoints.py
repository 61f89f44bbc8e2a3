"""Checkpoints: restore targets on a multi-device mesh, built without allocating anything."""

import jax
import numpy as np
import optax

from score_jax.checkpoints import Checkpointer
from score_jax.model import Decoder, init_params
from score_jax.sharding import TRAIN_RULES, MeshRules, make_mesh
from score_jax.training.steps import (abstract_train_state, make_create_state,
                                      train_state_shardings)

from helpers import tiny_config


def _model():
  mesh = make_mesh(dict(data=1, fsdp=-1, tensor=1))
  return Decoder(tiny_config(), MeshRules(mesh, TRAIN_RULES))


def test_the_abstract_train_state_is_the_layout_a_fresh_state_is_born_in():
  model = _model()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  params, _ = init_params(model, jax.random.key(0))
  state = make_create_state(model, tx)(params)
  abstract = abstract_train_state(model, tx)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
    assert (leaf.shape, leaf.dtype, leaf.sharding) == (want.shape, want.dtype, want.sharding)
  # Adam's moments are split like their parameters; the counters are on every device.
  mu = state.opt_state[1][0].mu
  assert jax.tree.leaves(mu)[0].sharding == jax.tree.leaves(params)[0].sharding
  assert state.step.sharding.is_fully_replicated
  assert len(state.step.sharding.device_set) == 8


def test_a_restored_train_state_feeds_a_jitted_step_on_a_multi_device_mesh(tmp_path):
  model = _model()
  tx = optax.adam(1e-3)
  params, _ = init_params(model, jax.random.key(0))
  state = make_create_state(model, tx)(params)
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, state, {'has_reference': False})
  checkpointer.close()

  restored, _, _ = Checkpointer(str(tmp_path), async_save=False).restore(
      abstract_train_state(model, tx))
  for leaf, sharding in zip(jax.tree.leaves(restored),
                            jax.tree.leaves(train_state_shardings(model, tx))):
    assert leaf.sharding == sharding
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  total = jax.jit(lambda s: s.step + s.opt_state[0].count)(restored)
  assert int(total) == 0
