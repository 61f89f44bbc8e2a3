"""The jitted update steps: SFT on given trajectories, and one RL update on a rollout batch.

Each step is a pure function of (train state, batch) compiled once per phase, with the train
state donated so its buffers are reused in place, and its output placed explicitly: the new
state in the layout the model's mesh rules give the parameters (Adam moments like their
parameters, counters replicated), so the next step's input is laid out exactly like this
step's and nothing recompiles. ``abstract_train_state`` is that layout without any arrays:
the restore target of a checkpoint and the input of an ahead-of-time compile.

With LoRA (``model.config.lora_rank > 0``) the train state holds only the adapters
(``score_jax.model.lora``): each step takes the frozen base weights as an argument (the RL
step's reference model is that same base), differentiates the adapted model with respect to
the adapters alone, and updates them.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_jax.model import Decoder, abstract_params, cast_floating, lora, token_logprobs
from score_jax.rl import (RLBatch, RLSettings, masked_mean, policy_logprobs, rl_loss,
                          rl_token_loss, sft_loss, stage_token_weights)
from score_jax.sharding import map_row_chunks
from score_jax.trajectory import ATTEMPT1, ATTEMPT2, Rollout

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
  if config.get('moment_dtype'):
    opt = _state_stored_in(opt, jnp.dtype(config.moment_dtype))
  # Both branches keep the same state structure, so a run resumed with clipping switched
  # on or off still restores its optimizer state.
  clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity()
  return optax.chain(clip, opt)


def _state_stored_in(tx: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """``tx`` with the floating leaves of its state (Adam's moments) stored in ``dtype`` and
  each update computed in fp32 from them (optax's own ``mu_dtype`` covers the first moment
  only)."""
  def init(params):
    return cast_floating(tx.init(params), dtype)

  def update(updates, state, params=None):
    updates, state = tx.update(updates, cast_floating(state, jnp.float32), params)
    return updates, cast_floating(state, dtype)

  return optax.GradientTransformation(init, update)


def rl_settings(config: ml_collections.ConfigDict, stage: str) -> RLSettings:
  """The RL update's settings for a phase of ``stage``, from ``config.rl`` (and the run's
  ``logprob_chunk``): the one place the config's RL fields are read."""
  rl = config.rl
  return RLSettings(
      stage=stage, alpha=rl.alpha, beta1=rl.beta1, beta2=rl.beta2,
      stage2_beta_attempt1=rl.stage2_beta_attempt1,
      stage2_attempt2_scale=rl.stage2_attempt2_scale,
      stage2_attempt1_scale=rl.stage2_attempt1_scale, num_samples=rl.num_samples,
      baseline=rl.baseline, normalize_std=rl.normalize_std,
      shaping_baseline=rl.shaping_baseline,
      stage2_attempt1_return=rl.stage2_attempt1_return, algorithm=rl.algorithm,
      clip_epsilon=rl.clip_epsilon, kl_estimator=rl.kl_estimator, ppo_epochs=rl.ppo_epochs,
      minibatches=rl.minibatches, logprob_chunk=config.logprob_chunk,
      attempt_grad_norms=rl.attempt_grad_norms)


# ---- the train state's layout ------------------------------------------------------------------


def trainable_params(model: Decoder):
  """``(shapes, logical_axes)`` of what a train state of ``model`` holds and updates: every
  parameter, or with LoRA the adapters alone."""
  if model.config.lora_rank:
    return lora.abstract_adapters(model)
  return abstract_params(model)


def policy_params(model: Decoder, trained, base):
  """The full parameter tree ``model`` runs: ``trained`` itself, or with LoRA the frozen
  ``base`` with the ``trained`` adapters added."""
  return lora.combine(base, trained) if model.config.lora_rank else trained


def train_state_shardings(model: Decoder, tx: optax.GradientTransformation):
  """The ``TrainState`` of shardings an update keeps its state in, or None without a mesh.

  Parameters follow the model's mesh rules; optimizer statistics of a parameter (Adam's
  moments) take that parameter's sharding; scalars (step, counts) are replicated.
  """
  rules = model.mesh_rules
  if rules is None:
    return None
  shapes, axes = trainable_params(model)
  params = rules.shardings(axes, shapes)
  opt_state = jax.eval_shape(tx.init, shapes)
  opt_shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, opt_state, params,
                                        transform_non_params=lambda _: rules.replicated())
  return TrainState(step=rules.replicated(), params=params, opt_state=opt_shardings)


def abstract_params_of(model: Decoder, trainable: bool = False):
  """The parameters (or with ``trainable`` what a train state holds of them: with LoRA, the
  adapters) as ``ShapeDtypeStruct``s with the shardings the model's mesh rules give them
  (the layout ``init_params`` creates them in), computing nothing."""
  shapes, axes = trainable_params(model) if trainable else abstract_params(model)
  if model.mesh_rules is None:
    return shapes
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                sharding=sharding),
                      shapes, model.mesh_rules.shardings(axes, shapes))


def reference_dtype(model: Decoder, config: ml_collections.ConfigDict):
  """The dtype the run keeps its frozen reference model in (``rl.reference_dtype``, by
  default the parameters')."""
  return jnp.dtype(config.rl.get('reference_dtype') or model.config.param_dtype)


def abstract_reference_of(model: Decoder, config: ml_collections.ConfigDict):
  """The reference model's parameters as ``ShapeDtypeStruct``s (a checkpoint's restore
  target): ``abstract_params_of(model)`` in ``reference_dtype``."""
  return cast_floating(abstract_params_of(model), reference_dtype(model, config))


def abstract_train_state(model: Decoder, tx: optax.GradientTransformation) -> TrainState:
  """The train state as ``ShapeDtypeStruct``s with their shardings, computing nothing."""
  shapes = jax.eval_shape(functools.partial(TrainState.create, tx=tx),
                          trainable_params(model)[0])
  shardings = train_state_shardings(model, tx)
  if shardings is None:
    return shapes
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                sharding=sharding),
                      shapes, shardings)


def make_create_state(model: Decoder, tx: optax.GradientTransformation):
  """``fn(params) -> TrainState``: a fresh optimizer on the parameters, in the update's layout."""
  return jax.jit(functools.partial(TrainState.create, tx=tx),
                 out_shardings=train_state_shardings(model, tx))


def _step_out_shardings(model: Decoder, tx: optax.GradientTransformation):
  """(new state, metrics) of a step: the state's layout, scalar metrics replicated."""
  state = train_state_shardings(model, tx)
  return None if state is None else (state, model.mesh_rules.replicated())


def _apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                    opt_state=opt_state)


def sft_step(model: Decoder, tx: optax.GradientTransformation, logprob_chunk: int,
             train_attempt1: bool, state: TrainState, batch: Rollout, base_params=None):
  """One teacher-forced update on the attempt tokens of packed trajectories: both attempts,
  or with ``train_attempt1=False`` only attempt 2 (attempt 1 is then context only).
  ``base_params``: the frozen base weights, with LoRA (else None)."""
  loss_mask = batch.segments == ATTEMPT2
  if train_attempt1:
    loss_mask |= batch.segments == ATTEMPT1
  loss = lambda p, *args: sft_loss(policy_params(model, p, base_params), *args)
  grad_fn = jax.value_and_grad(loss, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, model, batch.tokens, batch.positions, batch.valid,
                                loss_mask, logprob_chunk)
  metrics['grad_norm'] = optax.global_norm(grads)
  return _apply_gradients(state, grads, tx), metrics


def rl_step(model: Decoder, tx: optax.GradientTransformation, settings: RLSettings,
            state: TrainState, ref_params, rollout: Rollout, r1: Array, r2: Array, rng: Array,
            replayed_first: Array | None = None):
  """One RL update: reference log-probs, stage weights, then K epochs over minibatches.

  REINFORCE is the on-policy case (one epoch, one minibatch); PPO reuses the batch for
  ``ppo_epochs`` passes with the sampler's log-probs as π_old. ``replayed_first`` [B] marks
  rows whose attempt 1 the policy did not sample (``stage_token_weights``). With LoRA,
  ``ref_params`` is the frozen base the adapters in ``state`` are added to.
  """
  # The reference forward runs one minibatch of rows at a time, like the updates, so that
  # its activations never span the whole batch.
  ref_model = lora.base_model(model)
  ref_logp = jax.lax.stop_gradient(map_row_chunks(
      lambda rows: token_logprobs(ref_model, ref_params, *rows,
                                  chunk_size=settings.logprob_chunk),
      settings.minibatches, (rollout.tokens, rollout.positions, rollout.valid)))
  weights = stage_token_weights(settings, r1, r2, rollout.segments, replayed_first)
  batch = RLBatch(tokens=rollout.tokens, valid=rollout.valid, positions=rollout.positions,
                  segments=rollout.segments, old_logp=rollout.logprobs, ref_logp=ref_logp,
                  advantages=weights.advantages, pg_mask=weights.pg_mask,
                  kl_weights=weights.kl_weights)
  batch_size = batch.tokens.shape[0]
  minibatch = batch_size // settings.minibatches

  def one_minibatch(state, rows):
    part = jax.tree.map(lambda x: x[rows], batch)
    grads, metrics = _rl_gradients(model, settings, state.params, part, ref_params)
    metrics['grad_norm'] = optax.global_norm(grads)
    return _apply_gradients(state, grads, tx), metrics

  def one_epoch(state, epoch):
    order = jnp.arange(batch_size)
    if settings.minibatches > 1:
      order = jax.random.permutation(jax.random.fold_in(rng, epoch), batch_size)
    return jax.lax.scan(one_minibatch, state, order.reshape(settings.minibatches, minibatch))

  state, metrics = jax.lax.scan(one_epoch, state, jnp.arange(settings.ppo_epochs))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics['advantage_abs'] = masked_mean(jnp.abs(weights.advantages), weights.pg_mask)
  for name, segment in (('attempt1', ATTEMPT1), ('attempt2', ATTEMPT2)):
    metrics[f'advantage_abs_{name}'] = masked_mean(
        jnp.abs(weights.advantages), weights.pg_mask & (rollout.segments == segment))
  return state, metrics


def _rl_gradients(model: Decoder, settings: RLSettings, params, batch: RLBatch, base_params):
  """(gradient of ``rl_loss``, its metrics); with ``settings.attempt_grad_norms`` the metrics
  also hold the gradient norm of each attempt's term (its policy gradient and KL).

  The update's gradient is computed the same way either way, so that measuring never changes
  training (a sum of per-attempt gradients would differ from it by rounding, and sampling
  turns that into a different run). Attempt 1's term is pulled back from d loss / d logp on its
  tokens; attempt 2's is the rest of the gradient, so where attempt 2 has no term its norm is
  zero up to rounding. ``params`` are the trained parameters (with LoRA the adapters, added
  to ``base_params``).
  """
  full = lambda p: policy_params(model, p, base_params)
  (_, metrics), grads = jax.value_and_grad(lambda p: rl_loss(full(p), model, batch, settings),
                                           has_aux=True)(params)
  if not settings.attempt_grad_norms:
    return grads, metrics
  (logp, entropy), backward = jax.vjp(
      lambda p: policy_logprobs(full(p), model, batch, settings), params)
  dloss_dlogp = jax.grad(lambda lp: rl_token_loss(lp, entropy, batch, settings)[0])(logp)
  in_attempt1 = batch.segments == ATTEMPT1
  grads1, = backward((jnp.where(in_attempt1, dloss_dlogp, 0.0), jnp.zeros_like(entropy)))
  metrics['grad_norm_attempt1'] = optax.global_norm(grads1)
  metrics['grad_norm_attempt2'] = optax.global_norm(jax.tree.map(jnp.subtract, grads, grads1))
  return grads, metrics


def make_sft_step(model: Decoder, tx: optax.GradientTransformation, logprob_chunk: int = 256,
                  train_attempt1: bool = True):
  """``fn(state, batch[, base_params]) -> (state, metrics)``, jitted, the state donated
  (``base_params`` with LoRA)."""
  return jax.jit(functools.partial(sft_step, model, tx, logprob_chunk, train_attempt1),
                 donate_argnums=(0,), out_shardings=_step_out_shardings(model, tx))


def make_rl_step(model: Decoder, tx: optax.GradientTransformation, settings: RLSettings):
  """``fn(state, ref_params, rollout, r1, r2, rng[, replayed_first]) -> (state, metrics)``,
  jitted, the state donated."""
  return jax.jit(functools.partial(rl_step, model, tx, settings), donate_argnums=(0,),
                 out_shardings=_step_out_shardings(model, tx))
