"""LoRA adapters on the decoder's dense kernels: the parameter trees and the merged weights.

A model whose config has ``lora_rank > 0`` declares, beside each targeted kernel W
(``q_kernel``, ..., ``down_kernel``), adapters ``q_lora_a`` [*inputs, rank] and ``q_lora_b``
[rank, *outputs] (``layers.lora_delta``), and computes x W + (alpha / rank) (x A) B. Its
parameter tree is therefore the plain model's tree with the adapter leaves added, which is
what the functions here rely on:

* ``split`` and ``combine`` move between that tree and its two parts, the base (exactly a
  plain model's tree) and the adapters (the same nesting, adapter leaves only);
* ``merge_weights`` folds the adapters into the kernels, W + (alpha / rank) A B, giving a
  plain model's weights that compute the adapted function: what the sampler runs and what
  an export writes;
* ``base_model`` is the plain decoder of the same shape: with the base part it is the
  reference model of the KL penalty (the base weights themselves, not a copy).

Training differentiates only the adapters (``training.steps``): the frozen kernels' weight
gradients are never formed, and the optimizer state covers the adapters alone.

This is our own small wrapper rather than qwix's ``LoraProvider`` (the library Tunix uses):
qwix 0.1.8 with flax 0.12.8 fails on this decoder's scanned layers, setting an attribute
(``q_kernel_lora_einsum_str``) on a Linen module that ``nn.scan`` has already frozen
(``SetAttributeFrozenModuleError``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.model.decoder import Decoder, _init_fn, abstract_params

_SUFFIXES = ('_lora_a', '_lora_b')


def is_adapter(name: str) -> bool:
  return name.endswith(_SUFFIXES)


def split(params) -> tuple[dict, dict]:
  """``(base, adapters)`` of an adapted model's tree (nested dicts; either may be empty)."""
  base, adapters = {}, {}
  for name, value in params.items():
    if isinstance(value, dict):
      b, a = split(value)
      if b:
        base[name] = b
      if a:
        adapters[name] = a
    elif is_adapter(name):
      adapters[name] = value
    else:
      base[name] = value
  return base, adapters


def combine(base, adapters) -> dict:
  """The adapted model's tree from its two parts (the inverse of ``split``)."""
  out = dict(base)
  for name, value in adapters.items():
    out[name] = combine(base.get(name, {}), value) if isinstance(value, dict) else value
  return out


def merge_weights(base, adapters, scale: float, dtype=None) -> dict:
  """A plain model's weights computing what ``combine(base, adapters)`` computes: each
  adapted kernel W becomes W + scale · A B (contracted over the rank), in W's dtype (or
  ``dtype``). Works on scanned (stacked) and unrolled layers alike."""
  out = {}
  for name, value in base.items():
    if isinstance(value, dict):
      out[name] = merge_weights(value, adapters.get(name, {}), scale, dtype)
      continue
    prefix = name[:-len('_kernel')] if name.endswith('_kernel') else None
    if prefix is None or f'{prefix}_lora_a' not in adapters:
      out[name] = value if dtype is None else value.astype(dtype)
      continue
    a, b = adapters[f'{prefix}_lora_a'], adapters[f'{prefix}_lora_b']
    n_in = value.ndim - b.ndim + 1  # kernel = lead + in + out; b = lead + (rank,) + out.
    n_lead = a.ndim - 1 - n_in
    lead = value.shape[:n_lead]
    a2 = a.reshape(lead + (-1, a.shape[-1])).astype(jnp.float32)
    b2 = b.reshape(lead + (b.shape[n_lead], -1)).astype(jnp.float32)
    delta = jnp.matmul(a2, b2).reshape(value.shape)
    out[name] = (value.astype(jnp.float32) + scale * delta).astype(dtype or value.dtype)
  return out


def base_model(model: Decoder) -> Decoder:
  """The plain decoder of ``model``'s shape (no adapters), on the same mesh."""
  if not model.config.lora_rank:
    return model
  return Decoder(dataclasses.replace(model.config, lora_rank=0), model.mesh_rules)


def abstract_adapters(model: Decoder):
  """``(shapes, logical_axes)`` of the adapters alone, computing nothing."""
  shapes, axes = abstract_params(model)
  return split(shapes)[1], split(axes)[1]


def init_adapters(model: Decoder, rng):
  """Fresh adapters for ``model`` (B at zero), in the layout its mesh rules give them; the
  base kernels the initialisation would also draw are never materialised."""
  init = lambda key: split(nn.meta.unbox(_init_fn(model)(key)))[1]
  if model.mesh_rules is None:
    return jax.jit(init)(rng)
  shapes, axes = abstract_adapters(model)
  return jax.jit(init, out_shardings=model.mesh_rules.shardings(axes, shapes))(rng)
