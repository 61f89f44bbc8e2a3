r"""A short demonstration of the sharded decoder: init, greedy decoding with the KV cache.

Usage::

  python -m score_jax.demo --config=configs/demo.py
  python -m score_jax.demo --config=configs/demo.py:model=tiny_gemma2 \
      --config.model.num_layers=2 --config.mesh.tensor=2

It builds the mesh and the model from the config, initialises the parameters in their
sharded layout, greedily decodes a few tokens for a batch of random prompts with the KV
cache, and checks that the cached logits equal one full forward over the same tokens.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import config_lib, sharding
from score_jax.model import Decoder, init_cache, init_params, positions_from_valid

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])


def greedy_decode(model: Decoder, params, prompt, prompt_valid, new_tokens: int):
  """Prefills left-padded prompts and greedily decodes ``new_tokens`` tokens per row.

  Returns the generated tokens [B, new_tokens] and the fp32 logits that produced them.
  """
  batch, prompt_len = prompt.shape
  total = prompt_len + new_tokens
  cache = init_cache(model.config, batch, total, mesh_rules=model.mesh_rules)
  positions = positions_from_valid(prompt_valid)
  logits, cache = model.apply({'params': params}, prompt, positions, prompt_valid, cache=cache)
  next_position = positions[:, -1] + 1

  def step(i, state):
    cache, last_logits, tokens, all_logits = state
    token = jnp.argmax(last_logits, axis=-1).astype(jnp.int32)  # [B]
    tokens = tokens.at[:, i].set(token)
    all_logits = all_logits.at[:, i].set(last_logits)
    logits, cache = model.apply(
        {'params': params}, token[:, None], (next_position + i)[:, None],
        jnp.ones((batch, 1), bool), cache=cache, cache_index=prompt_len + i)
    return cache, logits[:, 0], tokens, all_logits

  state = (cache, logits[:, -1], jnp.zeros((batch, new_tokens), jnp.int32),
           jnp.zeros((batch, new_tokens, model.config.vocab_size), jnp.float32))
  _, _, tokens, all_logits = jax.lax.fori_loop(0, new_tokens, step, state)
  return tokens, all_logits


def main(argv):
  del argv
  config_lib.quiet_library_logs()
  config = _CONFIG.value
  try:
    model_config = config_lib.build_model_config(config.model)
    mesh = config_lib.build_mesh(config.mesh)
  except ValueError as e:
    raise SystemExit(f'Invalid config: {e}') from None
  mesh_rules = sharding.MeshRules(mesh, sharding.SAMPLE_RULES)
  model = Decoder(model_config, mesh_rules)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}; mesh {dict(mesh.shape)}')

  start = time.perf_counter()
  params, _ = init_params(model, jax.random.key(config.seed))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  embedding = params['embedding']
  print(f'model: {model_config.num_layers} layers, d_model {model_config.d_model}, '
        f'{num_params:,} parameters, initialised in {time.perf_counter() - start:.1f}s; '
        f'embedding {embedding.shape} stored as shards of '
        f'{embedding.addressable_shards[0].data.shape}')

  demo = config.demo
  rng = np.random.default_rng(config.seed)
  prompt = rng.integers(0, model_config.vocab_size, (demo.batch_size, demo.prompt_len))
  # Left-pad the prompts to different lengths: padding is invalid and never attended to.
  lengths = rng.integers(demo.prompt_len // 2, demo.prompt_len + 1, demo.batch_size)
  prompt_valid = np.arange(demo.prompt_len)[None, :] >= (demo.prompt_len - lengths)[:, None]
  batch_sharding = mesh_rules.sharding(('batch', 'length'), prompt.shape)
  prompt = jax.device_put(jnp.asarray(prompt, jnp.int32), batch_sharding)
  prompt_valid = jax.device_put(jnp.asarray(prompt_valid), batch_sharding)

  decode = jax.jit(greedy_decode, static_argnums=(0, 4))
  start = time.perf_counter()
  tokens, step_logits = jax.block_until_ready(
      decode(model, params, prompt, prompt_valid, demo.new_tokens))
  compile_and_run = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(decode(model, params, prompt, prompt_valid, demo.new_tokens))
  run = time.perf_counter() - start
  print(f'greedy decode of {demo.new_tokens} tokens x {demo.batch_size} rows: '
        f'{compile_and_run:.1f}s with compilation, then {run:.2f}s '
        f'({demo.new_tokens * demo.batch_size / run:.0f} tokens/s)')

  # The same sequence in one full forward must give the logits the cached steps gave.
  full_tokens = jnp.concatenate([prompt, tokens], axis=1)
  full_valid = jnp.concatenate([prompt_valid, jnp.ones_like(tokens, bool)], axis=1)
  full_logits, _ = jax.jit(model.apply)({'params': params}, full_tokens,
                                         positions_from_valid(full_valid), full_valid)
  predicted = full_logits[:, demo.prompt_len - 1:-1]
  max_diff = float(jnp.max(jnp.abs(predicted - step_logits)))
  print(f'cached vs full-sequence logits: max abs diff {max_diff:.2e}')
  print('first row, generated ids:', np.asarray(tokens[0]).tolist())
  if max_diff > 1e-3:
    raise SystemExit(f'cached decoding disagrees with the full forward ({max_diff:.2e})')


if __name__ == '__main__':
  app.run(main)
