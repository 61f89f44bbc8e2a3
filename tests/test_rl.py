"""RL math against hand-computed values: KL estimators, baselines, losses, stage rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.model import token_logprobs
from score_jax.rl import (LOG_RATIO_LIMIT, RLBatch, RLSettings, group_advantages,
                          importance_ratio, kl_divergence, masked_mean, ppo_clip_loss,
                          reinforce_loss, rl_loss, shaped_second_reward, stage_token_weights)
from score_jax.trajectory import (ATTEMPT1, ATTEMPT2, INSTRUCTION, PAD, PROMPT, RolloutSpec,
                                  pack_trajectories)

from helpers import make_model


def test_kl_estimators_by_hand():
  logp = jnp.asarray([-1.0, -2.0, -0.5])
  ref = jnp.asarray([-1.5, -1.0, -0.5])
  # log r = ref − logp = [-0.5, 1.0, 0]
  np.testing.assert_allclose(kl_divergence(logp, ref, 'k1'), [0.5, -1.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(kl_divergence(logp, ref, 'k2'), [0.125, 0.5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(kl_divergence(logp, ref, 'k3'),
                             [np.exp(-0.5) - 1 + 0.5, np.e - 1 - 1.0, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown KL estimator 'k4'"):
    kl_divergence(logp, ref, 'k4')


def test_k3_estimates_the_true_kl_on_average():
  p = jnp.asarray([0.6, 0.3, 0.1])
  q = jnp.asarray([0.3, 0.4, 0.3])
  samples = jax.random.choice(jax.random.key(0), 3, (200_000,), p=p)
  estimate = kl_divergence(jnp.log(p)[samples], jnp.log(q)[samples], 'k3').mean()
  exact = float(jnp.sum(p * jnp.log(p / q)))
  assert abs(float(estimate) - exact) < 0.01


def test_rloo_and_mean_baselines_by_hand():
  rewards = jnp.asarray([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # two groups of 4
  # Group 0: [1,0,0,1]; leave-one-out means [1/3, 2/3, 2/3, 1/3].
  np.testing.assert_allclose(group_advantages(rewards, 4, 'rloo')[:4],
                             [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
  # Group 1: [1,1,1,0]; leave-one-out means [2/3, 2/3, 2/3, 1].
  np.testing.assert_allclose(group_advantages(rewards, 4, 'rloo')[4:],
                             [1 / 3, 1 / 3, 1 / 3, -1.0], rtol=1e-6)
  np.testing.assert_allclose(group_advantages(rewards, 4, 'mean'),
                             [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75], rtol=1e-6)
  np.testing.assert_allclose(group_advantages(rewards, 4, 'none'), rewards)
  # RLOO is the group-mean advantage scaled by k / (k − 1).
  np.testing.assert_allclose(group_advantages(rewards, 4, 'rloo'),
                             group_advantages(rewards, 4, 'mean') * 4 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match='not a whole number of groups of 3'):
    group_advantages(rewards, 3)



def test_a_conditioned_baseline_uses_the_samples_with_the_same_condition():
  # One group of 4: r2 = [1, 0, 1, 1] after attempt-1 outcomes r1 = [1, 1, 0, 1].
  r2 = jnp.asarray([1.0, 0.0, 1.0, 1.0])
  r1 = jnp.asarray([1.0, 1.0, 0.0, 1.0])
  # Samples 0, 1, 3 share r1 = 1: leave-one-out among them → [1 − 1/2, 0 − 1, 1 − 1/2];
  # sample 2 has no peer with r1 = 0 and falls back to all the others: 1 − 2/3.
  np.testing.assert_allclose(group_advantages(r2, 4, 'rloo', condition=r1),
                             [0.5, -1.0, 1 / 3, 0.5], rtol=1e-6)
  # 'mean' includes the sample itself: sample 2 is then its own baseline.
  np.testing.assert_allclose(group_advantages(r2, 4, 'mean', condition=r1),
                             [1 / 3, -2 / 3, 0.0, 1 / 3], rtol=1e-6)
  # A condition that is the same everywhere is no condition.
  np.testing.assert_allclose(group_advantages(r2, 4, 'rloo', condition=jnp.zeros(4)),
                             group_advantages(r2, 4, 'rloo'), rtol=1e-6)

def test_masked_mean():
  x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.asarray([[True, False, True], [False, False, True]])
  assert float(masked_mean(x, mask)) == pytest.approx(10 / 3)
  assert float(masked_mean(x, mask, jnp.float32(5))) == pytest.approx(2.0)
  assert float(masked_mean(x, jnp.zeros_like(mask))) == 0.0


def test_reinforce_loss_value_and_gradient():
  logp = jnp.asarray([[-1.0, -2.0, -3.0]])
  adv = jnp.asarray([[2.0, -1.0, 5.0]])
  mask = jnp.asarray([[True, True, False]])
  # −(2·(−1) + (−1)·(−2)) / 2 = 0
  assert float(reinforce_loss(logp, adv, mask)) == pytest.approx(0.0)
  grad = jax.grad(lambda lp: reinforce_loss(lp, adv, mask))(logp)
  np.testing.assert_allclose(grad, [[-1.0, 0.5, 0.0]])  # −A / n on masked tokens.


def test_ppo_clip_loss_by_hand():
  old = jnp.zeros((1, 4))
  # ratios e^x: [1.5, 0.5, 1.5, 0.5]; advantages [+1, +1, −1, −1]; ε = 0.2
  logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.5, 0.5]]))
  adv = jnp.asarray([[1.0, 1.0, -1.0, -1.0]])
  mask = jnp.ones((1, 4), bool)
  loss, clip_fraction = ppo_clip_loss(logp, old, adv, mask, 0.2)
  # min(ρA, clip(ρ)A): [min(1.5, 1.2), min(.5, .8), min(−1.5, −1.2), min(−.5, −.8)]
  #                  = [1.2, 0.5, −1.5, −0.8] → loss = −(−0.6)/4 = 0.15
  assert float(loss) == pytest.approx(0.15, rel=1e-5)
  assert float(clip_fraction) == pytest.approx(0.5)  # Tokens 0 and 3 hit the clip.
  grad = jax.grad(lambda lp: ppo_clip_loss(lp, old, adv, mask, 0.2)[0])(logp)
  # Clipped tokens get no gradient; others −ρA/n.
  np.testing.assert_allclose(grad, [[0.0, -0.5 / 4, 1.5 / 4, 0.0]], rtol=1e-5)


def test_ppo_at_ratio_one_has_the_reinforce_gradient():
  logp = jnp.asarray([[-1.0, -0.3, -2.0]])
  adv = jnp.asarray([[0.7, -1.2, 0.4]])
  mask = jnp.asarray([[True, True, True]])
  g_ppo = jax.grad(lambda lp: ppo_clip_loss(lp, jax.lax.stop_gradient(lp), adv, mask, 0.2)[0])(
      logp)
  g_reinforce = jax.grad(lambda lp: reinforce_loss(lp, adv, mask))(logp)
  np.testing.assert_allclose(g_ppo, g_reinforce, rtol=1e-6)


@pytest.mark.parametrize('r1, r2, expected', [(0, 1, 11.0), (1, 0, -10.0), (1, 1, 1.0),
                                              (0, 0, 0.0)])
def test_shaping_bonus_four_cases_alpha_10(r1, r2, expected):
  assert float(shaped_second_reward(jnp.float32(r1), jnp.float32(r2), 10.0)) == expected


# One row per reward case, two samples per prompt (pairs of rows), with this layout:
SEGMENT_ROW = [PAD, PROMPT, PROMPT, ATTEMPT1, ATTEMPT1, PAD, INSTRUCTION, ATTEMPT2, ATTEMPT2, PAD]
R1 = jnp.asarray([0.0, 1.0, 1.0, 0.0])
R2 = jnp.asarray([1.0, 0.0, 1.0, 0.0])


def rule(stage, **overrides):
  settings = dict(alpha=10.0, beta1=0.01, beta2=0.1, num_samples=2, baseline='rloo')
  settings.update(overrides)
  segments = jnp.asarray([SEGMENT_ROW] * 4)
  return stage_token_weights(RLSettings(stage, **settings), R1, R2, segments)


def test_stage1_rule_by_hand():
  w = rule('stage1')
  a1, a2 = slice(3, 5), slice(7, 9)
  # Only attempt 2 is rewarded: RLOO over pairs of r2 = [1, 0 | 1, 0] → [1, −1 | 1, −1].
  np.testing.assert_allclose(w.advantages[:, a2], [[1, 1], [-1, -1], [1, 1], [-1, -1]])
  assert float(jnp.abs(w.advantages[:, a1]).sum()) == 0
  np.testing.assert_array_equal(w.pg_mask[0], np.isin(SEGMENT_ROW, [ATTEMPT2]))
  np.testing.assert_allclose(w.kl_weights[0], [0, 0, 0, .1, .1, 0, 0, .01, .01, 0], rtol=1e-6)


def test_stage2_rule_by_hand_with_the_four_reward_cases():
  w = rule('stage2')
  # Shaped r2 for (r1, r2) = (0,1), (1,0), (1,1), (0,0) with α = 10: [11, −10, 1, 0].
  # RLOO over the pairs: [11 − (−10), −10 − 11 | 1 − 0, 0 − 1] = [21, −21, 1, −1].
  np.testing.assert_allclose(w.advantages[:, 7], [21.0, -21.0, 1.0, -1.0])
  # Attempt 1 uses r1 = [0, 1 | 1, 0] → [−1, 1 | 1, −1].
  np.testing.assert_allclose(w.advantages[:, 3], [-1.0, 1.0, 1.0, -1.0])
  np.testing.assert_array_equal(w.pg_mask[0], np.isin(SEGMENT_ROW, [ATTEMPT1, ATTEMPT2]))
  np.testing.assert_allclose(w.kl_weights[0], [0, 0, 0, .01, .01, 0, 0, .01, .01, 0], rtol=1e-6)
  # Nothing outside the attempts.
  outside = ~np.isin(SEGMENT_ROW, [ATTEMPT1, ATTEMPT2])
  assert float(jnp.abs(w.advantages[:, outside]).sum()) == 0



def test_stage2_with_the_baseline_of_the_same_first_outcome():
  # Shaped r2 for a right→right revision next to a wrong→right one, α = 10, one group of 4:
  # (r1, r2) = (1,1), (0,1), (1,1), (1,0): shaped [1, 11, 1, −10]. Over all samples, keeping
  # the right answer gets 1 − (11 + 1 − 10)/3 = 1/3, breaking it −10 − 13/3.
  r1 = jnp.asarray([1.0, 0.0, 1.0, 1.0])
  r2 = jnp.asarray([1.0, 1.0, 1.0, 0.0])
  segments = jnp.asarray([SEGMENT_ROW] * 4)
  w = stage_token_weights(RLSettings('stage2', num_samples=4), r1, r2, segments)
  np.testing.assert_allclose(w.advantages[:, 7], [1 / 3, 11 + 8 / 3, 1 / 3, -10 - 13 / 3],
                             rtol=1e-5)
  # Against the samples with the same attempt-1 outcome: (1 + α)(r2 − their mean r2), so the
  # two kept answers get 11 · (1 − 1/2), the broken one 11 · (0 − 1); the lone wrong→right
  # falls back to all the others: 11 · (1 − 2/3).
  same = stage_token_weights(
      RLSettings('stage2', num_samples=4, shaping_baseline='same_first_outcome'), r1, r2,
      segments)
  np.testing.assert_allclose(same.advantages[:, 7], [5.5, 11 / 3, 5.5, -11.0], rtol=1e-5)
  # Attempt 1 and the KL weights are the same rule either way.
  np.testing.assert_allclose(same.advantages[:, 3], w.advantages[:, 3])
  np.testing.assert_allclose(same.kl_weights, w.kl_weights)
  # Stage II's KL on attempt 1 can be its own weight (0: β1).
  pinned = rule('stage2', stage2_beta_attempt1=0.1)
  np.testing.assert_allclose(pinned.kl_weights[0], [0, 0, 0, .1, .1, 0, 0, .01, .01, 0],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown shaping baseline 'both'"):
    RLSettings('stage2', shaping_baseline='both')


def test_stage2_credits_attempt_1_with_the_rest_of_the_episode():
  # One group of 4, α = 10: (r1, r2) = (1,1), (0,1), (0,0), (1,0).
  r1 = jnp.asarray([1.0, 0.0, 0.0, 1.0])
  r2 = jnp.asarray([1.0, 1.0, 0.0, 0.0])
  segments = jnp.asarray([SEGMENT_ROW] * 4)
  own = stage_token_weights(RLSettings('stage2', num_samples=4), r1, r2, segments)
  # 'own' (γ = 0): r1 = [1, 0, 0, 1], leave-one-out → [2/3, −2/3, −2/3, 2/3].
  np.testing.assert_allclose(own.advantages[:, 3], [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-5)
  # 'episode': r1 + r2 = [2, 1, 0, 1] → [2 − 2/3, 1 − 1, 0 − 4/3, 1 − 1]. The wrong attempt 1
  # that attempt 2 fixed now ties with the right one it broke, and beats the one it did not.
  episode = stage_token_weights(
      RLSettings('stage2', num_samples=4, stage2_attempt1_return='episode'), r1, r2, segments)
  np.testing.assert_allclose(episode.advantages[:, 3], [4 / 3, 0.0, -4 / 3, 0.0], atol=1e-6)
  # 'shaped_episode': r1 + r2 + α(r2 − r1) = [2, 11, 0, −9] → [2 − 2/3, 11 + 7/3, 0 − 4/3,
  # −9 − 13/3]: a wrong attempt 1 that gets fixed earns more than a right one kept.
  shaped = stage_token_weights(
      RLSettings('stage2', num_samples=4, stage2_attempt1_return='shaped_episode'), r1, r2,
      segments)
  np.testing.assert_allclose(shaped.advantages[:, 3], [4 / 3, 40 / 3, -4 / 3, -40 / 3],
                             rtol=1e-5)
  # Attempt 2's credit, the KL weights and Stage I do not change.
  for w in (episode, shaped):
    np.testing.assert_allclose(w.advantages[:, 7], own.advantages[:, 7])
    np.testing.assert_allclose(w.kl_weights, own.kl_weights)
  stage1 = [stage_token_weights(RLSettings('stage1', num_samples=4, stage2_attempt1_return=c),
                                r1, r2, segments).advantages for c in ('own', 'episode')]
  np.testing.assert_allclose(stage1[0], stage1[1])
  with pytest.raises(ValueError, match="Unknown stage2 attempt1 return 'all'"):
    RLSettings('stage2', stage2_attempt1_return='all')


def test_stage2_rows_with_a_replayed_first_attempt_train_only_attempt_2():
  """State coverage: the first pair's attempt 1 came from the base model. Its tokens carry no
  policy gradient and no KL; its attempt 2 keeps the shaped advantage (taken against that
  attempt's reward); the other pair is untouched."""
  settings = RLSettings('stage2', alpha=10.0, beta1=0.01, num_samples=2)
  segments = jnp.asarray([SEGMENT_ROW] * 4)
  plain = stage_token_weights(settings, R1, R2, segments)
  replayed = stage_token_weights(settings, R1, R2, segments,
                                 jnp.asarray([True, True, False, False]))
  a1, a2 = slice(3, 5), slice(7, 9)
  assert not bool(replayed.pg_mask[:2, a1].any())
  assert float(jnp.abs(replayed.advantages[:2, a1]).sum()) == 0
  assert float(replayed.kl_weights[:2, a1].sum()) == 0
  np.testing.assert_allclose(replayed.advantages[:, a2], plain.advantages[:, a2])  # 21, −21, …
  np.testing.assert_array_equal(replayed.pg_mask[:, a2], plain.pg_mask[:, a2])
  for name in ('advantages', 'pg_mask', 'kl_weights'):
    np.testing.assert_array_equal(getattr(replayed, name)[2:], getattr(plain, name)[2:])


def test_stage2_attempt2_scale_multiplies_only_attempt_2s_advantages():
  plain, scaled = rule('stage2'), rule('stage2', stage2_attempt2_scale=1 / 11)
  np.testing.assert_allclose(scaled.advantages[:, 7], [21 / 11, -21 / 11, 1 / 11, -1 / 11],
                             rtol=1e-6)
  np.testing.assert_allclose(scaled.advantages[:, 3], plain.advantages[:, 3])
  np.testing.assert_allclose(scaled.kl_weights, plain.kl_weights)


def test_stage2_attempt1_scale_multiplies_only_attempt_1s_advantages():
  plain, scaled = rule('stage2'), rule('stage2', stage2_attempt1_scale=1 / 3)
  np.testing.assert_allclose(scaled.advantages[:, 3], plain.advantages[:, 3] / 3, rtol=1e-6)
  assert float(jnp.abs(scaled.advantages[:, 3]).sum()) > 0
  np.testing.assert_allclose(scaled.advantages[:, 7], plain.advantages[:, 7])
  np.testing.assert_allclose(scaled.kl_weights, plain.kl_weights)
  stage1 = rule('stage1'), rule('stage1', stage2_attempt1_scale=1 / 3)
  np.testing.assert_allclose(stage1[0].advantages, stage1[1].advantages)


def test_stage2_without_shaping_and_single_turn():
  w = rule('stage2', alpha=0.0)
  np.testing.assert_allclose(w.advantages[:, 7], [1.0, -1.0, 1.0, -1.0])
  single = rule('single_turn')
  np.testing.assert_allclose(single.advantages[:, 3], [-1.0, 1.0, 1.0, -1.0])
  assert not bool(single.pg_mask[:, 7:9].any())
  assert float(single.kl_weights[:, 7:9].sum()) == 0
  with pytest.raises(ValueError, match="Unknown stage 'stage3'"):
    rule('stage3')


# ---- the guards: a value no term selects cannot reach the loss ---------------------------------


def test_masked_mean_ignores_infinite_and_nan_values_outside_the_mask():
  x = jnp.asarray([[1.0, jnp.inf, 3.0], [jnp.nan, -jnp.inf, 6.0]])
  mask = jnp.asarray([[True, False, True], [False, False, True]])
  assert float(masked_mean(x, mask)) == pytest.approx(10 / 3)
  grad = jax.grad(lambda v: masked_mean(v, mask))(x)
  np.testing.assert_allclose(grad, np.where(mask, 1 / 3, 0.0), rtol=1e-6)


@pytest.mark.parametrize('algorithm', ['reinforce', 'ppo'])
def test_an_infinite_log_ratio_at_a_masked_position_changes_nothing(algorithm):
  """Stage I: attempt-1 tokens carry no policy-gradient term and prompt or padding slots no
  term at all. A log-ratio of +inf or -inf there (an old or reference log-prob of -inf)
  leaves the loss and its gradient finite and equal to those of the batch without it."""
  model, params, _ = make_model('tiny')
  spec = RolloutSpec(prompt_len=4, attempt1_len=4, stop_tokens=(2,), instruction_tokens=(5, 6),
                     attempt2_len=4)
  rollout = jax.tree.map(jnp.asarray, pack_trajectories(
      spec, [[7, 8], [9], [7, 8], [10, 11, 12]], [[13, 2], [14, 15, 2], [16], [17, 2]],
      [[18, 2], [19], [20, 21, 2], [22, 23, 24, 2]]))
  settings = RLSettings('stage1', num_samples=2, algorithm=algorithm)
  weights = stage_token_weights(settings, jnp.asarray([0.0, 1.0, 1.0, 0.0]),
                                jnp.asarray([1.0, 0.0, 0.0, 1.0]), rollout.segments)
  logp = token_logprobs(model, params, rollout.tokens, rollout.positions, rollout.valid)
  sampled = np.isin(rollout.segments, [ATTEMPT1, ATTEMPT2])
  assert (sampled & ~np.asarray(weights.pg_mask)).any()  # Attempt-1 tokens: no PG term.
  clean = RLBatch(tokens=rollout.tokens, valid=rollout.valid, positions=rollout.positions,
                  segments=rollout.segments, old_logp=logp, ref_logp=logp - 0.1,
                  advantages=weights.advantages, pg_mask=weights.pg_mask,
                  kl_weights=weights.kl_weights)
  poisoned = clean.replace(
      old_logp=jnp.where(weights.pg_mask, clean.old_logp, -jnp.inf),  # log ratio +inf
      ref_logp=jnp.where(sampled, clean.ref_logp, -jnp.inf))  # KL log ratio -inf
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p, batch: rl_loss(p, model, batch, settings)[0]))
  loss, grads = loss_and_grad(params, clean)
  poisoned_loss, poisoned_grads = loss_and_grad(params, poisoned)
  assert np.isfinite(float(poisoned_loss))
  assert float(poisoned_loss) == float(loss)
  for got, want in zip(jax.tree.leaves(poisoned_grads), jax.tree.leaves(grads)):
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_huge_importance_ratio_is_clipped_before_exp():
  logp = jnp.asarray([0.0, 0.0, -1.0])
  old = jnp.asarray([-1000.0, 1000.0, -1.0])
  ratio = importance_ratio(logp, old)
  np.testing.assert_allclose(ratio, [np.exp(LOG_RATIO_LIMIT), np.exp(-LOG_RATIO_LIMIT), 1.0],
                             rtol=1e-6)
  grad = jax.grad(lambda lp: importance_ratio(lp, old).sum())(logp)
  np.testing.assert_allclose(grad, [0.0, 0.0, 1.0])  # No gradient through the clip.
