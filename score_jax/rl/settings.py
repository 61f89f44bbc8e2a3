"""Every static setting of an RL update, in one hashable record.

The stage rule (which tokens get which advantage and KL weight), the loss (REINFORCE or
PPO, the KL estimator) and the update loop (PPO epochs and minibatches) all read this one
record, so a setting has a single name from the config (``config.rl``, built by
``score_jax.training.steps.rl_settings``) to the innermost function. It is a static argument
of the jitted update: changing a field compiles a new step, and no field is ever a traced
value.
"""

from __future__ import annotations

import dataclasses

from score_jax.rl.advantages import BASELINES
from score_jax.rl.losses import KL_ESTIMATORS

STAGES = ('stage1', 'stage2', 'single_turn')
ALGORITHMS = ('reinforce', 'ppo')
SHAPING_BASELINES = ('all_samples', 'same_first_outcome')
ATTEMPT1_RETURNS = ('own', 'episode', 'shaped_episode')


@dataclasses.dataclass(frozen=True)
class RLSettings:
  """How one RL phase turns a batch of rollouts into an update.

  Attributes:
    stage: 'stage1' or 'stage2' (SCoRe's stages) or 'single_turn' (the baseline).
    alpha: Stage II's shaping coefficient α.
    beta1: the default KL weight β1; beta2: Stage I's KL weight on attempt 1.
    stage2_beta_attempt1: Stage II's KL weight on attempt 1 (0: β1, as in the paper).
    stage2_attempt2_scale: a factor on Stage II's attempt-2 advantages (1: the paper's). The
      shaped reward's size grows with α, and so does attempt 2's step; 1 / (1 + α) keeps the
      shaping (how flips weigh against keeps) with a step the size of attempt 1's.
    stage2_attempt1_scale: a factor on Stage II's attempt-1 advantages (1: the paper's). Adam
      divides the step by the gradient's running size, which attempt 2's term sets at α = 10,
      so a factor below 1 slows attempt 1 while attempt 2 keeps the phase's pace (at α = 0
      attempt 2's term no longer dominates, and the factor holds attempt 1 back much less).
    num_samples: k, samples per prompt (rows come in groups of k, see ``group_advantages``).
    baseline: 'rloo', 'mean' or 'none'; normalize_std: divide advantages by the group std.
    shaping_baseline: where Stage II's attempt-2 baseline comes from: 'all_samples' (the
      shaped reward's baseline over the prompt's samples, as the paper writes it) or
      'same_first_outcome' (over the samples whose attempt 1 scored the same;
      ``stage_token_weights`` says why).
    stage2_attempt1_return: what Stage II credits attempt 1's tokens with: 'own' (r1 alone,
      γ = 0, the default), 'episode' (r1 + r2: the reward still to come in the episode, so
      that attempt 1 is credited with what attempt 2 then makes of it) or 'shaped_episode'
      (r1 + r2 + α(r2 − r1), the return of the paper's sum of shaped rewards).
    algorithm: 'reinforce' (on-policy) or 'ppo' (clipped, ``ppo_epochs`` passes over the
      batch in ``minibatches`` parts).
    clip_epsilon: PPO's ε.
    kl_estimator: 'k1', 'k2' or 'k3' (``kl_divergence``).
    logprob_chunk: sequence chunk of the log-prob computation (memory, not maths).
    attempt_grad_norms: also measure the gradient norm of each attempt's term (its policy
      gradient and KL), at the cost of one more backward pass; the update is the same.
  """

  stage: str
  alpha: float = 10.0
  beta1: float = 0.01
  beta2: float = 0.1
  stage2_beta_attempt1: float = 0.0
  stage2_attempt2_scale: float = 1.0
  stage2_attempt1_scale: float = 1.0
  num_samples: int = 4
  baseline: str = 'rloo'
  normalize_std: bool = False
  shaping_baseline: str = 'all_samples'
  stage2_attempt1_return: str = 'own'
  algorithm: str = 'reinforce'
  clip_epsilon: float = 0.2
  kl_estimator: str = 'k3'
  ppo_epochs: int = 1
  minibatches: int = 1
  logprob_chunk: int = 256
  attempt_grad_norms: bool = False

  def __post_init__(self):
    for name, choices in (('stage', STAGES), ('algorithm', ALGORITHMS),
                          ('kl_estimator', KL_ESTIMATORS), ('baseline', BASELINES),
                          ('shaping_baseline', SHAPING_BASELINES),
                          ('stage2_attempt1_return', ATTEMPT1_RETURNS)):
      if getattr(self, name) not in choices:
        raise ValueError(f'Unknown {name.replace("_", " ")} {getattr(self, name)!r}; choose '
                         f'from {choices}.')
    for name in ('num_samples', 'ppo_epochs', 'minibatches', 'logprob_chunk'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1; got {getattr(self, name)}.')
