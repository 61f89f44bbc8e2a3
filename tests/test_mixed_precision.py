"""Mixed precision: fp32 master weights under bf16 compute, and the bf16 storage options."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import config_lib
from score_jax.model import Decoder, init_params
from score_jax.training.steps import (TrainState, abstract_reference_of, make_optimizer,
                                      make_sft_step)
from score_jax.trajectory import RolloutSpec, pack_trajectories

from helpers import tiny_config

SPEC = RolloutSpec(prompt_len=4, attempt1_len=6, stop_tokens=(2,), instruction_tokens=(5, 6),
                   attempt2_len=6)


def _batch():
  return pack_trajectories(SPEC, [[7, 8, 9], [9, 7]], [[10, 11, 2], [11, 10, 14, 2]],
                           [[12, 13, 2], [13, 2]])


def _optimizer(learning_rate, **changes):
  section = config_lib.optimizer_config(learning_rate)
  section.grad_clip = 0.0
  section.update(changes)
  return make_optimizer(section)


def _changed_fraction(param_dtype):
  """The fraction of kernel entries one SFT update at the paper's learning rate changes."""
  config = dataclasses.replace(tiny_config(), dtype='bfloat16', param_dtype=param_dtype)
  model = Decoder(config)
  params, _ = init_params(model, jax.random.key(0))
  tx = _optimizer(5e-6)
  before = jax.tree.map(np.asarray, params)
  state, _ = make_sft_step(model, tx)(TrainState.create(params, tx), _batch())
  kernels = [(a, np.asarray(b)) for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(state.params))
             if jax.tree_util.keystr(path).endswith("_kernel']")]
  changed = sum(int((a != b).sum()) for a, b in kernels)
  return changed / sum(a.size for a, _ in kernels)


def test_fp32_master_weights_keep_updates_that_bf16_parameters_round_away():
  # Adam's first step moves every weight by about the learning rate; a bf16 weight of size
  # w only changes when that exceeds half its spacing, about w / 512.
  assert _changed_fraction('float32') > 0.99
  assert _changed_fraction('bfloat16') < 0.2


def test_bf16_moments_are_stored_in_bf16_and_update_like_fp32_ones():
  params = {'w': jax.random.normal(jax.random.key(0), (64, 32)), 'b': jnp.zeros((32,))}
  grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i + 1), p.shape),
                        params) for i in range(4)]
  updates = {}
  for moment_dtype in ('', 'bfloat16'):
    tx = _optimizer(1e-3, moment_dtype=moment_dtype)
    state = tx.init(params)
    for g in grads:
      update, state = jax.jit(tx.update)(g, state, params)
    updates[moment_dtype] = update
    dtypes = {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(moment_dtype or 'float32')}
  for a, b in zip(jax.tree.leaves(updates['']), jax.tree.leaves(updates['bfloat16'])):
    assert b.dtype == jnp.float32  # The update itself is computed in fp32.
    np.testing.assert_allclose(b, a, rtol=0.05, atol=1e-5)  # 1% of the learning rate.


def test_reference_target_follows_rl_reference_dtype():
  config = config_lib.base_train_config()
  model = Decoder(tiny_config())
  assert {x.dtype for x in jax.tree.leaves(abstract_reference_of(model, config))} == {
      jnp.dtype('float32')}
  config.rl.reference_dtype = 'bfloat16'
  assert {x.dtype for x in jax.tree.leaves(abstract_reference_of(model, config))} == {
      jnp.dtype('bfloat16')}


@pytest.mark.parametrize('field, value, message', [
    ('rl.reference_dtype', 'bf16', r"rl.reference_dtype must be one of \('', 'float32', "
                                   r"'bfloat16'\); got 'bf16'"),
    ('rl.optimizer.moment_dtype', 'float16', r'rl.optimizer.moment_dtype must be one of'),
])
def test_bad_storage_dtypes_stop_at_start_up(field, value, message):
  config = config_lib.base_train_config()
  config.schedule = 'stage1:2'
  section, name = field.rsplit('.', 1)
  node = config
  for part in section.split('.'):
    node = node[part]
  node[name] = value
  assert isinstance(node, ml_collections.ConfigDict)
  with pytest.raises(ValueError, match=message):
    config_lib.validate_train_config(config)


@pytest.mark.parametrize('spec, x_shape, k_shape', [
    ('btd,dhk->bthk', (2, 3, 8), (8, 2, 4)),       # a projection
    ('bkrd,bksd->bkrs', (2, 2, 3, 4), (2, 2, 5, 4)),  # attention, batched over (b, k)
    ('...d,vd->...v', (2, 3, 8), (16, 8)),          # tied output layer
])
def test_bf16_matmul_backward_multiplies_in_bf16(spec, x_shape, k_shape):
  """Below fp32 both backward products take bf16 operands (no fp32 dot in the gradient's
  HLO), the gradients come back in the operands' dtypes, and they match fp32 autodiff to
  bf16 rounding; fp32 compute is plain autodiff, exactly."""
  from score_jax.model.layers import matmul
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
  loss = lambda dtype: lambda a, b: jnp.sum(jnp.sin(matmul(spec, a, b, dtype)))
  exact = jax.grad(lambda a, b: jnp.sum(jnp.sin(jnp.einsum(spec, a, b))), (0, 1))(x, kernel)
  fp32 = jax.grad(loss(jnp.float32), (0, 1))(x, kernel)
  low = jax.grad(loss(jnp.bfloat16), (0, 1))(x, kernel)
  for want, got32, got16 in zip(exact, fp32, low):
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)
    assert got16.dtype == jnp.float32
    assert float(jnp.linalg.norm(got16 - want) / jnp.linalg.norm(want)) < 0.03
  hlo = jax.jit(jax.grad(loss(jnp.bfloat16), (0, 1))).lower(x, kernel).as_text()
  operand_types = [re.search(r': \((.*)\) ->', line).group(1)
                   for line in hlo.splitlines() if 'dot_general' in line]
  assert len(operand_types) == 3, operand_types  # forward, and one per operand's gradient
  assert all('f32' not in types for types in operand_types), operand_types
