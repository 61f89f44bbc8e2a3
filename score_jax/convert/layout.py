"""Where every score-jax parameter lives in a Hugging Face checkpoint, and how it is laid out.

score-jax keeps attention weights split by head (``q_kernel`` is [D, H, Dh]) and stacks the
layers of a scanned model along a leading axis; Hugging Face keeps torch ``Linear`` weights
as [out, in] and names every layer separately. :func:`tensor_specs` lists, per parameter,
the checkpoint name and the two reshapes between the layouts. Each reshape is a numpy view
(a split axis and a transpose), so applied to a memory-mapped tensor it reads nothing until
a slice of it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from score_jax.model.config import ModelConfig

Reshape = Callable[[np.ndarray], np.ndarray]

FAMILIES = ('llama', 'qwen2', 'gemma', 'gemma2')


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One parameter: its path in the score-jax tree and its name in the checkpoint.

  Attributes:
    path: keys into the score-jax parameter tree; inside a layer, relative to the layer.
    name: the checkpoint name; ``{i}`` stands for the layer number in per-layer tensors.
    per_layer: whether there is one tensor per layer.
    to_ours: checkpoint layout → score-jax layout (one layer's tensor).
    to_theirs: score-jax layout → checkpoint layout.
  """

  path: tuple[str, ...]
  name: str
  per_layer: bool
  to_ours: Reshape
  to_theirs: Reshape


def family_of(config: ModelConfig) -> str:
  """The Hugging Face family a score-jax architecture corresponds to."""
  if config.post_norms:
    return 'gemma2'
  if config.norm_scale_plus_one:
    return 'gemma'
  if config.qkv_bias:
    return 'qwen2'
  return 'llama'


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  return x.T


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
  """Every parameter of ``config``'s model with its checkpoint name and reshapes."""
  c = config
  h, k, hd, d = c.num_heads, c.num_kv_heads, c.head_dim, c.d_model

  def projection_in(heads: int) -> tuple[Reshape, Reshape]:
    # torch [heads * Dh, D]  <->  ours [D, heads, Dh]
    return (lambda w: w.reshape(heads, hd, d).transpose(2, 0, 1),
            lambda w: w.transpose(1, 2, 0).reshape(heads * hd, d))

  def bias(heads: int) -> tuple[Reshape, Reshape]:
    return (lambda b: b.reshape(heads, hd), lambda b: b.reshape(heads * hd))

  # torch [D, H * Dh]  <->  ours [H, Dh, D]
  projection_out = (lambda w: w.reshape(d, h, hd).transpose(1, 2, 0),
                    lambda w: w.transpose(2, 0, 1).reshape(d, h * hd))

  attn = 'model.layers.{i}.self_attn.'
  mlp = 'model.layers.{i}.mlp.'
  specs = [
      TensorSpec(('embedding',), 'model.embed_tokens.weight', False, _identity, _identity),
      TensorSpec(('final_norm', 'scale'), 'model.norm.weight', False, _identity, _identity),
      TensorSpec(('attn', 'q_kernel'), attn + 'q_proj.weight', True, *projection_in(h)),
      TensorSpec(('attn', 'k_kernel'), attn + 'k_proj.weight', True, *projection_in(k)),
      TensorSpec(('attn', 'v_kernel'), attn + 'v_proj.weight', True, *projection_in(k)),
      TensorSpec(('attn', 'o_kernel'), attn + 'o_proj.weight', True, *projection_out),
      TensorSpec(('mlp', 'gate_kernel'), mlp + 'gate_proj.weight', True, _transpose, _transpose),
      TensorSpec(('mlp', 'up_kernel'), mlp + 'up_proj.weight', True, _transpose, _transpose),
      TensorSpec(('mlp', 'down_kernel'), mlp + 'down_proj.weight', True, _transpose,
                 _transpose),
  ]
  if not c.tie_embeddings:
    specs.append(TensorSpec(('unembedding',), 'lm_head.weight', False, _transpose, _transpose))
  if c.qkv_bias:
    specs += [
        TensorSpec(('attn', 'q_bias'), attn + 'q_proj.bias', True, *bias(h)),
        TensorSpec(('attn', 'k_bias'), attn + 'k_proj.bias', True, *bias(k)),
        TensorSpec(('attn', 'v_bias'), attn + 'v_proj.bias', True, *bias(k)),
    ]
  layer = 'model.layers.{i}.'
  if c.post_norms:  # Gemma 2 names its four norms differently from the others' two.
    norms = (('pre_attn_norm', 'input_layernorm'), ('post_attn_norm', 'post_attention_layernorm'),
             ('pre_mlp_norm', 'pre_feedforward_layernorm'),
             ('post_mlp_norm', 'post_feedforward_layernorm'))
  else:
    norms = (('pre_attn_norm', 'input_layernorm'), ('pre_mlp_norm', 'post_attention_layernorm'))
  for ours, theirs in norms:
    specs.append(TensorSpec((ours, 'scale'), f'{layer}{theirs}.weight', True, _identity,
                            _identity))
  return specs


def leaf_path(spec: TensorSpec, config: ModelConfig, layer: int | None = None) -> tuple[str, ...]:
  """The full path of a spec's leaf in the parameter tree (a layer's, when unscanned)."""
  if not spec.per_layer:
    return spec.path
  if config.scan_layers:
    return ('layers',) + spec.path
  return (f'layer_{layer}',) + spec.path
