"""The score-jax decoder: one Flax Linen module family for Llama, Qwen2, Gemma and Gemma 2."""

from score_jax.model.config import ModelConfig
from score_jax.model.decoder import (Decoder, KVCache, abstract_params, cast_floating,
                                     empty_cache, for_decoding, init_cache, init_params,
                                     positions_from_valid, unstack_layers)
from score_jax.model.logprobs import chunked_target_logprobs, previous_valid_slot, token_logprobs
from score_jax.model.presets import get_preset, preset_names

__all__ = [
    'Decoder', 'KVCache', 'ModelConfig', 'abstract_params', 'cast_floating',
    'chunked_target_logprobs',
    'empty_cache', 'for_decoding', 'get_preset', 'init_cache',
    'init_params', 'positions_from_valid', 'preset_names', 'previous_valid_slot',
    'token_logprobs', 'unstack_layers',
]
