"""RL for self-correction: losses, advantages, SCoRe stage rules and the objectives."""

from score_jax.rl.advantages import BASELINES, group_advantages
from score_jax.rl.losses import (KL_ESTIMATORS, LOG_RATIO_LIMIT, importance_ratio, kl_divergence,
                                 masked_mean, ppo_clip_loss, reinforce_loss)
from score_jax.rl.objective import (RLBatch, policy_logprobs, rl_loss, rl_token_loss,
                                    sft_loss)
from score_jax.rl.settings import (ALGORITHMS, ATTEMPT1_RETURNS, SHAPING_BASELINES, STAGES,
                                   RLSettings)
from score_jax.rl.stages import TokenWeights, shaped_second_reward, stage_token_weights

__all__ = [
    'ALGORITHMS', 'ATTEMPT1_RETURNS', 'BASELINES', 'KL_ESTIMATORS', 'LOG_RATIO_LIMIT', 'RLBatch',
    'RLSettings', 'SHAPING_BASELINES', 'STAGES', 'TokenWeights', 'group_advantages',
    'importance_ratio', 'kl_divergence', 'masked_mean', 'policy_logprobs', 'ppo_clip_loss',
    'reinforce_loss', 'rl_loss', 'rl_token_loss', 'sft_loss', 'shaped_second_reward',
    'stage_token_weights',
]
