"""The mesh, the rule tables, and sharded execution on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import make_model, random_tokens
from score_jax import sharding
from score_jax.model import Decoder, init_cache, positions_from_valid


def test_eight_fake_devices():
  assert jax.device_count() == 8


def test_mesh_shape_resolution_and_errors():
  assert sharding.resolve_mesh_shape({'data': 2, 'fsdp': -1, 'tensor': 2}, 8) == {
      'data': 2, 'fsdp': 2, 'tensor': 2}
  assert sharding.resolve_mesh_shape({'data': 1, 'fsdp': 8, 'tensor': 1}, 8)['fsdp'] == 8
  with pytest.raises(ValueError, match=r'has 6 devices but 8 are available'):
    sharding.resolve_mesh_shape({'data': 3, 'fsdp': 2, 'tensor': 1}, 8)
  with pytest.raises(ValueError, match=r'not divisible by the fixed axes\' product 3'):
    sharding.resolve_mesh_shape({'data': 3, 'fsdp': -1, 'tensor': 1}, 8)
  with pytest.raises(ValueError, match='Only one mesh axis may be -1'):
    sharding.resolve_mesh_shape({'data': -1, 'fsdp': -1, 'tensor': 1}, 8)
  with pytest.raises(ValueError, match=r"Unknown mesh axes \['model'\]"):
    sharding.resolve_mesh_shape({'model': 2}, 8)
  with pytest.raises(ValueError, match='mesh.tensor must be a positive size'):
    sharding.resolve_mesh_shape({'data': 1, 'fsdp': -1, 'tensor': 0}, 8)


def test_rules_map_names_and_skip_uneven_or_used_axes():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  train, sample = sharding.TRAIN_RULES, sharding.SAMPLE_RULES
  spec = sharding.logical_to_spec
  assert spec(('vocab', 'embed'), (256, 64), mesh, train) == P('tensor', 'fsdp')
  assert spec(('vocab', 'embed'), (256, 64), mesh, sample) == P('tensor', None)
  # Activations: the batch takes data and fsdp, so 'embed' cannot use fsdp again.
  assert spec(('batch', 'length', 'embed'), (8, 5, 64), mesh, train) == P(('data', 'fsdp'),
                                                                         None, None)
  # 3 KV heads do not split over a tensor axis of 2: that dimension is replicated.
  assert spec(('embed', 'kv_heads', 'head_dim'), (64, 3, 16), mesh, train) == P('fsdp', None,
                                                                               None)
  assert spec(('batch', 'length'), (1, 5), mesh, train) == P(None, None)


@pytest.fixture(scope='module')
def mesh_222():
  return sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})


@pytest.mark.parametrize('preset', ['tiny', 'tiny_gemma2'])
@pytest.mark.parametrize('rules', ['train', 'sample'])
def test_sharded_forward_equals_single_device(mesh_222, preset, rules):
  mesh_rules = sharding.MeshRules(mesh_222, sharding.RULE_SETS[rules])
  model, params, axes = make_model(preset)
  sharded_model = Decoder(model.config, mesh_rules)
  sharded_params = jax.device_put(params, mesh_rules.shardings(axes, params))

  # The parameters really are split: check the shards, not just the declared specs.
  embed_shard = sharded_params['embedding'].addressable_shards[0].data.shape
  gate_shard = sharded_params['layers']['mlp']['gate_kernel'].addressable_shards[0].data.shape
  layers = model.config.num_layers
  if rules == 'train':
    assert embed_shard == (128, 32) and gate_shard == (layers, 32, 64)
  else:
    assert embed_shard == (128, 64) and gate_shard == (layers, 64, 64)

  tokens = random_tokens(0, (8, 12), model.config.vocab_size)
  valid = np.ones((8, 12), bool)
  valid[::3, :4] = False
  valid = jnp.asarray(valid)
  positions = positions_from_valid(valid)
  expected = jax.jit(model.apply)({'params': params}, tokens, positions, valid)[0]
  batch_sharding = mesh_rules.sharding(('batch', 'length'), tokens.shape)
  args = jax.device_put((tokens, positions, valid), batch_sharding)
  got = jax.jit(sharded_model.apply)({'params': sharded_params}, *args)[0]
  assert got.sharding.spec[0] == ('data', 'fsdp')  # The output stays split over the batch.
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4)


def test_sharded_init_places_every_leaf(mesh_222):
  mesh_rules = sharding.MeshRules(mesh_222, sharding.TRAIN_RULES)
  model, params, axes = make_model('tiny', scale=0, mesh_rules=mesh_rules)
  assert params['embedding'].sharding.spec == P('tensor', 'fsdp')
  assert params['layers']['attn']['q_kernel'].sharding.spec == P(None, 'fsdp', 'tensor', None)
  assert axes['layers']['attn']['o_kernel'] == ('layers', 'heads', 'head_dim', 'embed')
  assert model.mesh_rules is mesh_rules


def test_sharded_cached_decode_equals_single_device(mesh_222):
  mesh_rules = sharding.MeshRules(mesh_222, sharding.SAMPLE_RULES)
  model, params, axes = make_model('tiny_gemma2')
  sharded_model = Decoder(model.config, mesh_rules)
  sharded_params = jax.device_put(params, mesh_rules.shardings(axes, params))
  tokens = random_tokens(1, (4, 14), model.config.vocab_size)
  valid = jnp.ones((4, 14), bool)
  positions = positions_from_valid(valid)

  def run(m, p, cache):
    apply = jax.jit(m.apply)
    logits, cache = apply({'params': p}, tokens[:, :9], positions[:, :9], valid[:, :9],
                          cache=cache, cache_index=0)
    out = [logits]
    for i in range(9, 14):
      logits, cache = apply({'params': p}, tokens[:, i:i + 1], positions[:, i:i + 1],
                            valid[:, i:i + 1], cache=cache, cache_index=i)
      out.append(logits)
    return jnp.concatenate(out, axis=1), cache

  expected, _ = run(model, params, init_cache(model.config, 4, 16))
  got, cache = run(sharded_model, sharded_params,
                   init_cache(model.config, 4, 16, mesh_rules=mesh_rules))
  # [L, B, K, S, Dh] = [4, 4, 2, 16, 16]: batch over data×fsdp (4), KV heads over tensor (2).
  assert cache.k.addressable_shards[0].data.shape == (4, 1, 1, 16, 16)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-4)


def test_map_row_chunks_runs_strided_chunks_and_restores_row_order():
  rows = (jnp.arange(12).reshape(6, 2), jnp.arange(6) * 10)
  seen = []

  def fn(chunk, offset):
    seen.append(chunk[1].shape)
    return chunk[0].sum(axis=1) + chunk[1] + offset, chunk[1]

  totals, ids = sharding.map_row_chunks(fn, 3, rows, jnp.asarray([100, 200, 300]))
  assert seen == [(2,)]  # One traced body for the three chunks of two rows.
  # Row r is in chunk r % 3 and gets that chunk's offset; results come back in row order.
  np.testing.assert_array_equal(ids, np.arange(6) * 10)
  expected = [4 * r + 1 + 10 * r + 100 * (r % 3 + 1) for r in range(6)]
  np.testing.assert_array_equal(totals, expected)
  whole = sharding.map_row_chunks(lambda chunk: chunk[1] + 1, 1, rows)
  np.testing.assert_array_equal(whole, np.arange(6) * 10 + 1)
  with pytest.raises(ValueError, match=r'4 chunks must divide the batch \(6 rows\)'):
    sharding.map_row_chunks(lambda chunk: chunk[1], 4, rows)
