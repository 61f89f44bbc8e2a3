"""Checkpoints: restore targets on a multi-device mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from score_jax.checkpoints import Checkpointer, abstract_train_state
from score_jax.train_steps import TrainState


def test_a_restored_train_state_feeds_a_jitted_step_on_a_multi_device_mesh(tmp_path):
  mesh = Mesh(np.array(jax.devices()), ('fsdp',))
  params = {'w': jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, PartitionSpec('fsdp')))}
  tx = optax.adam(1e-3)
  state = jax.jit(functools.partial(TrainState.create, tx=tx))(params)
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, state, {'has_reference': False})
  checkpointer.close()

  restored, _, _ = Checkpointer(str(tmp_path), async_save=False).restore(
      abstract_train_state(params, tx))
  # The step counter comes back on the parameters' devices, not on device 0 alone.
  assert restored.step.sharding.device_set == params['w'].sharding.device_set
  assert restored.params['w'].sharding == params['w'].sharding
  total = jax.jit(lambda s: s.step + s.params['w'].sum() + s.opt_state[0].count)(restored)
  assert float(total) == 64.0
