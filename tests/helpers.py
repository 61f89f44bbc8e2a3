"""Shared helpers for the tests: tiny models with parameters that exercise every path."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import config_lib
from score_jax.model import Decoder, ModelConfig, init_params


def tiny_config(preset: str = 'tiny', **overrides) -> ModelConfig:
  return config_lib.build_model_config(config_lib.model_config(preset, **overrides))


@functools.partial(jax.jit, static_argnums=2)
def random_params(params, key, scale: float = 0.3):
  """Redraws every leaf (norm scales and biases too) from N(0, scale²).

  Freshly initialised norms are all ones (or zeros), biases zero and logits tiny; random
  values make a wrong norm, a dropped bias or a missing soft-cap visible in the logits.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  new = [scale * jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
         for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, new)


@functools.lru_cache(maxsize=None)  # Tests share models; they must not mutate the params.
def make_model(preset: str = 'tiny', seed: int = 0, scale: float = 0.3, mesh_rules=None,
               **overrides):
  config = tiny_config(preset, **overrides)
  model = Decoder(config, mesh_rules)
  params, axes = init_params(model, jax.random.key(seed))
  if scale:
    params = random_params(params, jax.random.key(seed + 1), scale)
  return model, params, axes


def random_tokens(seed: int, shape, vocab_size: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, shape), jnp.int32)
