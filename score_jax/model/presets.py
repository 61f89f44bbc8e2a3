"""Named architectures: public shapes of the models users bring, and tiny test models.

Numbers come from each model's published ``config.json`` (Hugging Face hub). A preset fixes
the architecture; dtypes, scanning and remat are run settings with defaults that a config
may override (``--config.model.dtype=bfloat16``).
"""

from __future__ import annotations

from typing import Any

_LLAMA = dict(activation='silu', norm_scale_plus_one=False, embed_scale=False)

# Gemma 2: GeGLU, (1 + w) norms, scaled embeddings, post-norms, soft-capping and
# alternating local (4096-token window) and global layers, layer 0 local.
_GEMMA2 = dict(activation='gelu_tanh', norm_scale_plus_one=True, embed_scale=True,
               post_norms=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
               attention_pattern='local,global', sliding_window=4096, rope_theta=10_000.0,
               norm_eps=1e-6, tie_embeddings=True, vocab_size=256_000)

_PRESETS: dict[str, dict[str, Any]] = {
    # Tiny models for tests and the CPU demo.
    'tiny': dict(**_LLAMA, vocab_size=256, num_layers=2, d_model=64, num_heads=4,
                 num_kv_heads=2, head_dim=16, mlp_dim=128, rope_theta=10_000.0,
                 norm_eps=1e-6, tie_embeddings=True),
    'tiny_gemma2': dict(_GEMMA2, vocab_size=256, num_layers=4, d_model=64, num_heads=4,
                        num_kv_heads=2, head_dim=16, mlp_dim=128, sliding_window=8,
                        query_pre_attn_scalar=16.0),
    # Llama family.
    'smollm2_135m': dict(**_LLAMA, vocab_size=49_152, num_layers=30, d_model=576, num_heads=9,
                         num_kv_heads=3, head_dim=64, mlp_dim=1536, rope_theta=100_000.0,
                         norm_eps=1e-5, tie_embeddings=True),
    'llama3_2_1b': dict(**_LLAMA, vocab_size=128_256, num_layers=16, d_model=2048,
                        num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
                        rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True,
                        rope_scaling='llama3', rope_scaling_factor=32.0,
                        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                        rope_original_max_position=8192),
    'llama3_1_8b': dict(**_LLAMA, vocab_size=128_256, num_layers=32, d_model=4096,
                        num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14_336,
                        rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
                        rope_scaling='llama3', rope_scaling_factor=8.0,
                        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                        rope_original_max_position=8192),
    'llama3_1_70b': dict(**_LLAMA, vocab_size=128_256, num_layers=80, d_model=8192,
                         num_heads=64, num_kv_heads=8, head_dim=128, mlp_dim=28_672,
                         rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
                         rope_scaling='llama3', rope_scaling_factor=8.0,
                         rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                         rope_original_max_position=8192),
    'llama3_1_405b': dict(**_LLAMA, vocab_size=128_256, num_layers=126, d_model=16_384,
                          num_heads=128, num_kv_heads=8, head_dim=128, mlp_dim=53_248,
                          rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
                          rope_scaling='llama3', rope_scaling_factor=8.0,
                          rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                          rope_original_max_position=8192),
    # Qwen2: Llama shapes plus biases on q, k and v.
    'qwen2_0_5b': dict(**_LLAMA, vocab_size=151_936, num_layers=24, d_model=896, num_heads=14,
                       num_kv_heads=2, head_dim=64, mlp_dim=4864, rope_theta=1_000_000.0,
                       norm_eps=1e-6, tie_embeddings=True, qkv_bias=True),
    # Gemma (1): GeGLU, (1 + w) norms and scaled embeddings, no soft-capping.
    'gemma_2b': dict(activation='gelu_tanh', norm_scale_plus_one=True, embed_scale=True,
                     vocab_size=256_000, num_layers=18, d_model=2048, num_heads=8,
                     num_kv_heads=1, head_dim=256, mlp_dim=16_384, rope_theta=10_000.0,
                     norm_eps=1e-6, tie_embeddings=True),
    'gemma2_2b': dict(_GEMMA2, num_layers=26, d_model=2304, num_heads=8, num_kv_heads=4,
                      head_dim=256, mlp_dim=9216, query_pre_attn_scalar=256.0),
    'gemma2_9b': dict(_GEMMA2, num_layers=42, d_model=3584, num_heads=16, num_kv_heads=8,
                      head_dim=256, mlp_dim=14_336, query_pre_attn_scalar=256.0),
    'gemma2_27b': dict(_GEMMA2, num_layers=46, d_model=4608, num_heads=32, num_kv_heads=16,
                       head_dim=128, mlp_dim=36_864, query_pre_attn_scalar=144.0),
}


def preset_names() -> tuple[str, ...]:
  return tuple(sorted(_PRESETS))


def get_preset(name: str) -> dict[str, Any]:
  """The architecture fields of a named preset (a fresh dict the caller may modify)."""
  if name not in _PRESETS:
    raise ValueError(f'Unknown model preset {name!r}; known presets: {", ".join(preset_names())}.')
  return dict(_PRESETS[name])
