"""The jitted update steps: SFT on given trajectories, and one RL update on a rollout batch.

Each step is a pure function of (train state, batch) compiled once per phase, sharded by
the model's mesh rules, with the train state donated so its buffers are reused in place.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_jax.model import Decoder, token_logprobs
from score_jax.rl import RLBatch, RLSettings, rl_loss, sft_loss, stage_token_weights
from score_jax.sampling.rollout import ATTEMPT1, ATTEMPT2, Rollout
from score_jax.sharding import map_row_chunks

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Policy parameters, optimizer state, and the number of updates applied in this phase."""

  step: Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up, then constant or cosine decay to ``final_fraction`` of the peak by
  ``total_steps`` (the phase's length)."""
  warmup = max(config.warmup_steps, 0)
  if config.decay == 'constant':
    if warmup == 0:
      return optax.constant_schedule(config.learning_rate)
    return optax.linear_schedule(0.0, config.learning_rate, warmup)
  if config.decay == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.final_fraction)
  raise ValueError(f"optimizer.decay must be 'constant' or 'cosine'; got {config.decay!r}.")


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int = 0) -> optax.GradientTransformation:
  """Adam or AdamW on ``learning_rate_schedule``, after global-norm clipping."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name == 'adam':
    opt = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
  elif config.name == 'adamw':
    opt = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay)
  else:
    raise ValueError(f"optimizer.name must be 'adam' or 'adamw'; got {config.name!r}.")
  # Both branches keep the same state structure, so a run resumed with clipping switched
  # on or off still restores its optimizer state.
  clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()
  return optax.chain(clip, opt)


@dataclasses.dataclass(frozen=True)
class RLStepConfig:
  """Static settings of an RL update (one per phase)."""

  stage: str
  alpha: float
  beta1: float
  beta2: float
  num_samples: int
  baseline: str = 'rloo'
  normalize_std: bool = False
  algorithm: str = 'reinforce'
  clip_epsilon: float = 0.2
  kl_estimator: str = 'k3'
  ppo_epochs: int = 1
  minibatches: int = 1
  logprob_chunk: int = 256

  @property
  def loss_settings(self) -> RLSettings:
    return RLSettings(algorithm=self.algorithm, clip_epsilon=self.clip_epsilon,
                      kl_estimator=self.kl_estimator, logprob_chunk=self.logprob_chunk)


def _apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                    opt_state=opt_state)


def sft_step(model: Decoder, tx: optax.GradientTransformation, logprob_chunk: int,
             train_attempt1: bool, state: TrainState, batch: Rollout):
  """One teacher-forced update on the attempt tokens of packed trajectories: both attempts,
  or with ``train_attempt1=False`` only attempt 2 (attempt 1 is then context only)."""
  loss_mask = batch.segments == ATTEMPT2
  if train_attempt1:
    loss_mask |= batch.segments == ATTEMPT1
  grad_fn = jax.value_and_grad(sft_loss, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, model, batch.tokens, batch.positions, batch.valid,
                                loss_mask, logprob_chunk)
  metrics['grad_norm'] = optax.global_norm(grads)
  return _apply_gradients(state, grads, tx), metrics


def rl_step(model: Decoder, tx: optax.GradientTransformation, config: RLStepConfig,
            state: TrainState, ref_params, rollout: Rollout, r1: Array, r2: Array, rng: Array):
  """One RL update: reference log-probs, stage weights, then K epochs over minibatches.

  REINFORCE is the on-policy case (one epoch, one minibatch); PPO reuses the batch for
  ``ppo_epochs`` passes with the sampler's log-probs as π_old.
  """
  # The reference forward runs one minibatch of rows at a time, like the updates, so that
  # its activations never span the whole batch.
  ref_logp = jax.lax.stop_gradient(map_row_chunks(
      lambda rows: token_logprobs(model, ref_params, *rows, chunk_size=config.logprob_chunk),
      config.minibatches, (rollout.tokens, rollout.positions, rollout.valid)))
  weights = stage_token_weights(
      config.stage, r1, r2, rollout.segments, alpha=config.alpha, beta1=config.beta1,
      beta2=config.beta2, num_samples=config.num_samples, baseline=config.baseline,
      normalize_std=config.normalize_std)
  batch = RLBatch(tokens=rollout.tokens, valid=rollout.valid, positions=rollout.positions,
                  segments=rollout.segments, old_logp=rollout.logprobs, ref_logp=ref_logp,
                  advantages=weights.advantages, pg_mask=weights.pg_mask,
                  kl_weights=weights.kl_weights)
  batch_size = batch.tokens.shape[0]
  minibatch = batch_size // config.minibatches
  grad_fn = jax.value_and_grad(rl_loss, has_aux=True)

  def one_minibatch(state, rows):
    part = jax.tree.map(lambda x: x[rows], batch)
    (_, metrics), grads = grad_fn(state.params, model, part, config.loss_settings)
    metrics['grad_norm'] = optax.global_norm(grads)
    return _apply_gradients(state, grads, tx), metrics

  def one_epoch(state, epoch):
    order = jnp.arange(batch_size)
    if config.minibatches > 1:
      order = jax.random.permutation(jax.random.fold_in(rng, epoch), batch_size)
    return jax.lax.scan(one_minibatch, state, order.reshape(config.minibatches, minibatch))

  state, metrics = jax.lax.scan(one_epoch, state, jnp.arange(config.ppo_epochs))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics['advantage_abs'] = jnp.sum(jnp.abs(weights.advantages) * weights.pg_mask) / (
      jnp.maximum(jnp.sum(weights.pg_mask), 1))
  return state, metrics


def make_sft_step(model: Decoder, tx: optax.GradientTransformation, logprob_chunk: int = 256,
                  train_attempt1: bool = True):
  return jax.jit(functools.partial(sft_step, model, tx, logprob_chunk, train_attempt1),
                 donate_argnums=(0,))


def make_rl_step(model: Decoder, tx: optax.GradientTransformation, config: RLStepConfig):
  return jax.jit(functools.partial(rl_step, model, tx, config), donate_argnums=(0,))
