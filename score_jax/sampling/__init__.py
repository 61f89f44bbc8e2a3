"""Sampling: token selection, the jitted two-turn rollout, and chat templates."""

from score_jax.sampling.rollout import (ATTEMPT1, ATTEMPT2, INSTRUCTION, PAD, PROMPT,
                                        SEGMENT_NAMES, Rollout, RolloutSpec, make_rollout_fn,
                                        pack_prompts, pack_trajectories, rollout)
from score_jax.sampling.sample import (SamplingParams, filter_logits, select_tokens,
                                       top_k_filter, top_p_filter)

__all__ = [
    'ATTEMPT1', 'ATTEMPT2', 'INSTRUCTION', 'PAD', 'PROMPT', 'SEGMENT_NAMES', 'Rollout',
    'RolloutSpec', 'SamplingParams', 'filter_logits', 'make_rollout_fn', 'pack_prompts',
    'pack_trajectories',
    'rollout', 'select_tokens', 'top_k_filter', 'top_p_filter',
]
