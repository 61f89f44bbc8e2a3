"""Sampling: token selection, the jitted two-turn rollout, and chat templates.

The slot layout and the ``Rollout`` batch the sampler fills live in ``score_jax.trajectory``
(every loss reads them too); they are re-exported here because a sampler's user needs them.
"""

from score_jax.sampling.rollout import FirstAttempts, make_rollout_fn, rollout
from score_jax.sampling.sample import (SamplingParams, filter_logits, select_tokens,
                                       top_k_filter, top_p_filter)
from score_jax.trajectory import (ATTEMPT1, ATTEMPT2, INSTRUCTION, PAD, PROMPT, SEGMENT_NAMES,
                                  Rollout, RolloutSpec, pack_prompts, pack_trajectories)

__all__ = [
    'ATTEMPT1', 'ATTEMPT2', 'FirstAttempts', 'INSTRUCTION', 'PAD', 'PROMPT', 'SEGMENT_NAMES',
    'Rollout',
    'RolloutSpec', 'SamplingParams', 'filter_logits', 'make_rollout_fn', 'pack_prompts',
    'pack_trajectories', 'rollout', 'select_tokens', 'top_k_filter', 'top_p_filter',
]
