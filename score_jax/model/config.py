"""The decoder's architecture settings: one frozen dataclass for every family.

A single config covers the shapes users bring (Llama, Qwen2, Gemma, Gemma 2): the
families differ only in a handful of switches (q/k/v bias, (1+w) RMSNorm, embedding
scaling, GeGLU, soft-capping, post-norms, sliding-window layers). The dataclass is
frozen and hashable so that it can be a Flax module attribute and a static argument.

Field names match the keys under ``config.model`` in the ml_collections configs, and
validation errors name them that way (``model.num_heads``) so that a user can fix the
command-line override that caused them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

ACTIVATIONS = ('silu', 'gelu_tanh')
ATTENTION_KINDS = ('global', 'local')
ROPE_SCALINGS = ('none', 'llama3')
REMAT_POLICIES = ('none', 'full', 'dots', 'dots_no_batch')
DTYPES = ('float32', 'bfloat16', 'float16')
KERNEL_LAYOUTS = ('input_major', 'output_major', 'amx_tiles')
# The dense kernels a LoRA adapter can attach to, by group (``lora_targets`` takes groups or
# single names, comma-separated).
LORA_KERNELS = {'attention': ('q', 'k', 'v', 'o'), 'mlp': ('gate', 'up', 'down')}
# Fields that say how a derived model is laid out, not how to run: the sampler sets them on
# its twin (``decoder.for_decoding``), and ``config.model`` does not offer them.
DERIVED_FIELDS = ('kernel_layout',)
# The adapter fields, which the training config sets from its own ``lora`` section
# (``config.lora.rank``, ...) on the model of the phases that train adapters.
LORA_FIELDS = ('lora_rank', 'lora_alpha', 'lora_targets')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer.

  Switches that are "off" use 0 (not None) so that every field can be overridden from
  the command line, e.g. ``--config.model.sliding_window=4096``.
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = 'silu'  # 'silu' (SwiGLU: Llama, Qwen2) or 'gelu_tanh' (GeGLU: Gemma).
  rope_theta: float = 10_000.0
  # Llama 3 frequency scaling; 'none' leaves the RoPE frequencies as they are.
  rope_scaling: str = 'none'
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  norm_eps: float = 1e-6
  norm_scale_plus_one: bool = False  # Gemma RMSNorm multiplies by (1 + w), w initialised at 0.
  embed_scale: bool = False  # Gemma multiplies the embeddings by sqrt(d_model).
  qkv_bias: bool = False  # Qwen2 has biases on the q, k and v projections.
  tie_embeddings: bool = True  # The output projection reuses the input embedding.
  post_norms: bool = False  # Gemma 2 normalises the attention and MLP outputs too.
  attn_logit_softcap: float = 0.0  # Gemma 2: 50.0; 0 disables.
  final_logit_softcap: float = 0.0  # Gemma 2: 30.0; 0 disables.
  query_pre_attn_scalar: float = 0.0  # Queries are scaled by this**-0.5; 0 means head_dim.
  sliding_window: int = 0  # Width of 'local' attention in tokens; 0 when no layer is local.
  # Comma-separated kinds, cycled over the layers: 'global' everywhere (Llama),
  # 'local,global' for Gemma 2 (layer 0 local, layer 1 global, ...).
  attention_pattern: str = 'global'
  param_dtype: str = 'float32'
  dtype: str = 'float32'  # Compute dtype of matmuls; norms, softmax and log-probs run in fp32.
  scan_layers: bool = True  # One scanned layer body (fast compiles, stacked parameters).
  # Layers per iteration of the scanned loop: num_layers compiles the scan as straight-line
  # code, as fast as unrolled layers on a CPU for a few small layers, with the scan's stacked
  # parameters (bit-identical SFT losses on the toy model; later, rounding may differ).
  scan_unroll: int = 1
  # Sampling runs the layers unrolled from a per-layer copy of the weights (in the compute
  # dtype) made once per rollout: each layer's KV cache is then its own buffer, written in
  # place and read without slicing a stack. True keeps the scanned body for decoding too
  # (no second copy of the weights, short compiles: for models that fill the chips' memory).
  scan_decode: bool = False
  remat_policy: str = 'none'  # Rematerialisation of each layer under differentiation.
  # How the dense kernels are stored. 'input_major' is the checkpoint layout ([D, H, Dh],
  # [D, F], ...). 'output_major' holds each as a 2-D [outputs, inputs] matrix: XLA's CPU
  # matmul kernels read that layout about 1.6x faster when a decode step multiplies a few
  # rows by each weight. 'amx_tiles' holds each as [N/16, K/32, 16, 32] tiles for the AMX
  # matmul kernel (``score_jax.kernels.amx``), on x86 CPUs that have AMX, in bf16; its decode
  # steps also attend with the AMX attention kernel. Only the
  # sampler's twin uses either (``decoder.for_decoding``).
  kernel_layout: str = 'input_major'
  # LoRA (Hu et al., 2021): with a rank above 0, each targeted kernel W gets adapters A
  # [inputs, rank] and B [rank, outputs], B born at zero, and computes x W + (alpha / rank)
  # (x A) B (``score_jax.model.lora``). 0 is the plain model.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = 'attention,mlp'

  def __post_init__(self):
    _validate(self)

  # ---- derived quantities -------------------------------------------------------------

  @property
  def layer_kinds(self) -> tuple[str, ...]:
    """The attention kind ('global' or 'local') of every layer, in order."""
    pattern = self.attention_kinds_cycle
    return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

  @property
  def attention_kinds_cycle(self) -> tuple[str, ...]:
    return tuple(kind.strip() for kind in self.attention_pattern.split(','))

  @property
  def has_local_layers(self) -> bool:
    return 'local' in self.layer_kinds

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  @property
  def lora_kernels(self) -> tuple[str, ...]:
    """The kernels that carry adapters ('q', 'gate', ...); empty without LoRA."""
    if not self.lora_rank:
      return ()
    names = []
    for item in (part.strip() for part in self.lora_targets.split(',')):
      for name in LORA_KERNELS.get(item, (item,)):
        if name not in names:
          names.append(name)
    return tuple(names)

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  def num_params(self) -> int:
    """Parameter count implied by the shapes (matches the initialised tree)."""
    d, h, k, hd, f, v = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim,
                         self.mlp_dim, self.vocab_size)
    attn = d * h * hd + 2 * d * k * hd + h * hd * d
    if self.qkv_bias:
      attn += h * hd + 2 * k * hd
    mlp = 3 * d * f
    norms = (4 if self.post_norms else 2) * d
    per_layer = attn + mlp + norms
    embed = v * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + embed + d

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> 'ModelConfig':
    """Builds a config from a ``config.model`` ConfigDict (or any mapping)."""
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown model settings {unknown}; valid keys are {sorted(known)}.')
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.name not in values]
    if required:
      raise ValueError(f'Missing model settings {required} (model.preset fills them in).')
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _validate(c: ModelConfig) -> None:
  """Raises ValueError naming the offending ``model.*`` field and value."""
  for name in ('vocab_size', 'num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'head_dim',
               'mlp_dim', 'scan_unroll'):
    value = getattr(c, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f'model.{name} must be a positive integer; got {value!r}.')
  if c.num_heads % c.num_kv_heads:
    raise ValueError(
        f'model.num_heads ({c.num_heads}) must be divisible by model.num_kv_heads '
        f'({c.num_kv_heads}) for grouped-query attention.')
  if c.head_dim % 2:
    raise ValueError(f'model.head_dim must be even for rotary embeddings; got {c.head_dim}.')
  _check_choice('activation', c.activation, ACTIVATIONS)
  _check_choice('rope_scaling', c.rope_scaling, ROPE_SCALINGS)
  _check_choice('remat_policy', c.remat_policy, REMAT_POLICIES)
  _check_choice('kernel_layout', c.kernel_layout, KERNEL_LAYOUTS)
  _check_choice('param_dtype', c.param_dtype, DTYPES)
  _check_choice('dtype', c.dtype, DTYPES)
  if not isinstance(c.lora_rank, int) or isinstance(c.lora_rank, bool) or c.lora_rank < 0:
    raise ValueError(f'model.lora_rank must be an integer >= 0 (0 disables LoRA); got '
                     f'{c.lora_rank!r}.')
  if c.lora_rank:
    known = sorted(set(LORA_KERNELS) | {k for group in LORA_KERNELS.values() for k in group})
    for item in (part.strip() for part in c.lora_targets.split(',')):
      if item not in known:
        raise ValueError(f'model.lora_targets must be comma-separated names from {known}; '
                         f'got {c.lora_targets!r}.')
    if c.lora_alpha <= 0:
      raise ValueError(f'model.lora_alpha must be positive; got {c.lora_alpha}.')
    if c.kernel_layout != 'input_major':
      raise ValueError('LoRA adapters attach to input-major kernels only; got '
                       f'model.kernel_layout={c.kernel_layout!r}.')
  for kind in c.attention_kinds_cycle:
    if kind not in ATTENTION_KINDS:
      raise ValueError(
          f"model.attention_pattern must be comma-separated kinds from {ATTENTION_KINDS}; "
          f"got {c.attention_pattern!r}.")
  if c.has_local_layers and c.sliding_window <= 0:
    raise ValueError(
        f"model.attention_pattern={c.attention_pattern!r} has local layers, so "
        f"model.sliding_window must be positive; got {c.sliding_window}.")
  if c.sliding_window < 0:
    raise ValueError(f'model.sliding_window must be >= 0; got {c.sliding_window}.')
  for name in ('rope_theta', 'norm_eps'):
    if getattr(c, name) <= 0:
      raise ValueError(f'model.{name} must be positive; got {getattr(c, name)}.')
  for name in ('attn_logit_softcap', 'final_logit_softcap', 'query_pre_attn_scalar'):
    if getattr(c, name) < 0:
      raise ValueError(f'model.{name} must be >= 0 (0 disables it); got {getattr(c, name)}.')
  if c.rope_scaling == 'llama3':
    if c.rope_scaling_factor < 1:
      raise ValueError(
          f'model.rope_scaling_factor must be >= 1; got {c.rope_scaling_factor}.')
    if c.rope_high_freq_factor <= c.rope_low_freq_factor:
      raise ValueError(
          f'model.rope_high_freq_factor ({c.rope_high_freq_factor}) must exceed '
          f'model.rope_low_freq_factor ({c.rope_low_freq_factor}).')


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f'model.{name} must be one of {choices}; got {value!r}.')
