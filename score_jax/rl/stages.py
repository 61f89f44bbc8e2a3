"""SCoRe's stages as rules: which tokens get which advantage and which KL weight.

Kumar et al. (2024), Sections 5.1–5.2. Given the binary rewards of each row's two attempts
and the segment id of every slot, a stage rule produces three [B, T] arrays:

* ``advantages``: the advantage credited to each sampled token (γ = 0: attempt-1 tokens
  are credited with attempt 1's reward, attempt-2 tokens with attempt 2's);
* ``pg_mask``: the tokens that carry a policy-gradient term;
* ``kl_weights``: the weight β of the per-token KL penalty to the reference model.

Stage I: attempt-2 tokens get A(r2) and β1; attempt-1 tokens get no reward term and the
strong β2, which keeps the first attempt at the base model's distribution.
Stage II: attempt-1 tokens get A(r1); attempt-2 tokens get A(r2 + α(r2 − r1)), the shaping
bonus that rewards flipping a wrong first answer and penalises breaking a right one; β1 on
both attempts. ``stage2_attempt1_return`` credits attempt 1 with the rest of the episode as
well (γ = 1): ``'episode'`` with A(r1 + r2), ``'shaped_episode'`` with A(r1 + r2 + α(r2 − r1)).
With γ = 0 attempt 1 is trained as if no second attempt followed it: an error that attempt 2
fixes and one that it does not cost it the same (docs/stage2.md, Hypothesis 10).
Single-turn RL (a baseline): attempt-1 tokens get A(r1) and β1; attempt 2 is untouched.
The paper's ablations are settings of these rules: Stage II without Stage I is a schedule
without ``stage1``; "no reward shaping" is Stage II with α = 0.

State coverage (the paper's "offline first turns", Section 5): rows in ``replayed_first`` hold
an attempt 1 the policy did not sample (the base model's). Their attempt-1 tokens get no
policy gradient and no KL term; their attempt 2, sampled by the policy after that attempt,
trains as any other, with the shaping bonus taken against the replayed attempt's reward.

Stage II's attempt-2 baseline. Attempt-2 tokens are sampled after attempt 1, so the bonus's
−α·r1 part is a constant of their context: its expected policy gradient is zero, and in
expectation the shaped reward trains attempt 2 on (1 + α)·r2. With a baseline over all of a
prompt's samples (``shaping_baseline='all_samples'``) the −α·r1 part still enters every
attempt-2 advantage through the other samples' attempt-1 outcomes: a right→right revision
next to a wrong→right one gets −3.3 (α = 10, four samples), as if keeping a right answer
were a mistake — noise of size α that the policy follows. ``'same_first_outcome'`` takes the
baseline from the samples whose attempt 1 scored the same (all others when there are none),
a valid baseline with the same expected gradient, which leaves (1 + α)·(r2 − baseline):
flips weighed against their own alternative, keeping against breaking and fixing against
staying wrong. docs/stage2.md has the measurements.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from score_jax.rl.advantages import group_advantages
from score_jax.rl.settings import RLSettings
from score_jax.trajectory import ATTEMPT1, ATTEMPT2

Array = jax.Array


@flax.struct.dataclass
class TokenWeights:
  advantages: Array  # [B, T] fp32
  pg_mask: Array  # [B, T] bool
  kl_weights: Array  # [B, T] fp32


def shaped_second_reward(r1: Array, r2: Array, alpha: float) -> Array:
  """r2 + α(r2 − r1): for binary rewards, wrong→right 1+α, right→wrong −α, else r2."""
  return r2 + alpha * (r2 - r1)


def stage_token_weights(settings: RLSettings, r1: Array, r2: Array, segments: Array,
                        replayed_first: Array | None = None) -> TokenWeights:
  """Turns per-row rewards [B] and segment ids [B, T] into per-token weights.

  Args:
    settings: the stage and its coefficients (``stage``, ``alpha``, ``beta1``, ``beta2``)
      and the advantage estimator (``num_samples``, ``baseline``, ``normalize_std``).
    r1, r2: [B] rewards of attempt 1 and attempt 2 (r2 is ignored by 'single_turn').
    segments: [B, T] segment ids of the rollout.
    replayed_first: [B] bool, rows whose attempt 1 was replayed, not sampled by the policy
      (None: none).
  """
  stage, alpha = settings.stage, settings.alpha
  beta1, beta2 = settings.beta1, settings.beta2
  advantage = lambda r: group_advantages(r, settings.num_samples, settings.baseline,
                                         settings.normalize_std)[:, None]
  in_attempt1 = segments == ATTEMPT1
  in_attempt2 = segments == ATTEMPT2
  zeros = jnp.zeros(segments.shape, jnp.float32)

  if stage == 'stage1':
    advantages = jnp.where(in_attempt2, advantage(r2), zeros)
    pg_mask = in_attempt2
    kl_weights = jnp.where(in_attempt1, beta2, jnp.where(in_attempt2, beta1, 0.0))
  elif stage == 'stage2':
    shaped = shaped_second_reward(r1, r2, alpha)
    if settings.shaping_baseline == 'same_first_outcome':
      second = (1.0 + alpha) * group_advantages(
          r2, settings.num_samples, settings.baseline, settings.normalize_std,
          condition=r1)[:, None]
    else:
      second = advantage(shaped)
    second = second * settings.stage2_attempt2_scale
    first_return = {'own': r1, 'episode': r1 + r2,
                    'shaped_episode': r1 + shaped}[settings.stage2_attempt1_return]
    first = advantage(first_return) * settings.stage2_attempt1_scale
    advantages = jnp.where(in_attempt1, first,
                           jnp.where(in_attempt2, second, zeros))
    pg_mask = in_attempt1 | in_attempt2
    beta_attempt1 = settings.stage2_beta_attempt1 or beta1
    kl_weights = jnp.where(in_attempt1, beta_attempt1, jnp.where(in_attempt2, beta1, 0.0))
  else:  # single_turn
    advantages = jnp.where(in_attempt1, advantage(r1), zeros)
    pg_mask = in_attempt1
    kl_weights = jnp.where(in_attempt1, beta1, 0.0)
  if replayed_first is not None:
    not_sampled = in_attempt1 & replayed_first[:, None]
    advantages = jnp.where(not_sampled, 0.0, advantages)
    pg_mask = pg_mask & ~not_sampled
    kl_weights = jnp.where(not_sampled, 0.0, kl_weights)
  return TokenWeights(advantages=advantages.astype(jnp.float32), pg_mask=pg_mask,
                      kl_weights=kl_weights.astype(jnp.float32))
