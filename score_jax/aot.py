r"""Ahead-of-time check: do a config's RL update and rollout fit its TPU slice?

  pip install 'score-jax[tpu]'        # or: pip install 'libtpu==0.0.42.*' (own environment)
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemini_scale.py
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemma2_2b.py:tiny

No TPU is needed: libtpu describes the slice in ``config.tpu`` (``tpu_config`` below), and
the two programs the trainer runs at every RL step are lowered and compiled for it, exactly
as ``score_jax.train`` builds them:

* the RL update (``train_steps.make_rl_step``: reference log-probs, stage weights, loss,
  gradients, Adam) over a rollout batch of the config's shapes, train state donated;
* the two-turn rollout (``sampling.make_rollout_fn``) on the sampling-layout weights.

Every array is abstract (``jax.eval_shape`` plus the model's logical-axis shardings), so no
weight is ever materialised. The report gives, per chip: parameter, optimizer-state,
reference and sampling-copy bytes (exact, from the shardings), the KV cache (analytic), each
program's arguments, outputs and temporaries (``compiled.memory_analysis()``), the peak of
each phase of an RL step against the chip's HBM, FLOPs per step (analytic:
``cost_analysis()`` counts a scanned layer once) with the step time they imply at the chip's
peak rate, and each compile time. The last line is ``fits: PEAK / HBM GiB per chip`` or
``does not fit: ...`` with what to change; the exit code is 1 when it does not fit,
including when the compiler itself runs out of HBM (``RESOURCE_EXHAUSTED``).

What lives in HBM during a step (as ``score_jax.train`` holds it): the train state (policy
parameters and Adam moments) and the frozen reference throughout; during the rollout, the
sampling-layout copy of the weights, the prompts and the rollout's own buffers (KV cache,
logits; one chunk of rows at a time with ``rollout.row_chunks``); during the update, the
rollout batch and the update's temporaries (the sampling copy is gone by then:
``Trainer._sample`` drops it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import math
import re
import threading
import time
from typing import Any, Callable

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import optax

from score_jax import config_lib, sharding
from score_jax.model import Decoder, ModelConfig, cast_floating, empty_cache
from score_jax.sampling import Rollout, RolloutSpec, SamplingParams, make_rollout_fn
from score_jax.train_steps import RLStepConfig, TrainState, make_optimizer, make_rl_step

GIB = 1024 ** 3
LIBTPU_PIN = 'libtpu==0.0.42.*'

# Per chip: the HBM a program may use (as libtpu 0.0.42's compiler reports it in its
# out-of-memory errors), peak dense bf16 FLOP/s and HBM bandwidth (Cloud TPU system
# architecture pages), JAX's topology prefix and chip config, the chips one host drives,
# and the TensorCores a chip counts for in slice names (v5p-8 is 4 chips).
CHIPS = {
    'v4': dict(prefix='v4', chip_config_name='megacore', hbm_gib=30.75, peak_tflops=275.0,
               hbm_gbps=1228.0, chips_per_host_bounds='2,2,1', cores_per_chip=2),
    'v5e': dict(prefix='v5e', chip_config_name='default', hbm_gib=15.75, peak_tflops=197.0,
                hbm_gbps=819.0, chips_per_host_bounds='2,2,1', cores_per_chip=1),
    'v5p': dict(prefix='v5', chip_config_name='megacore', hbm_gib=95.74, peak_tflops=459.0,
                hbm_gbps=2765.0, chips_per_host_bounds='2,2,1', cores_per_chip=2),
    'v6e': dict(prefix='v6e', chip_config_name='default', hbm_gib=31.25, peak_tflops=918.0,
                hbm_gbps=1640.0, chips_per_host_bounds='2,2,1', cores_per_chip=1),
}


def tpu_config(generation: str, topology: str) -> ml_collections.ConfigDict:
  """``config.tpu`` for a slice, e.g. ``tpu_config('v5p', '8x8x8')`` (v5p-1024).

  Fields may be overridden like any other (``--config.tpu.topology=4x4x4``); the chip's
  figures (``hbm_gib``, ``peak_tflops``, ``hbm_gbps``) come from ``CHIPS``. The trainer
  ignores this section; only this check reads it.
  """
  if generation not in CHIPS:
    raise ValueError(f'tpu.generation must be one of {sorted(CHIPS)}; got {generation!r}.')
  chip = dict(CHIPS[generation])
  del chip['prefix']
  return ml_collections.ConfigDict(dict(generation=generation, topology=topology, **chip))


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as this check uses it (validated ``config.tpu``)."""

  generation: str
  topology: str
  chip_config_name: str
  chips_per_host_bounds: tuple[int, ...]
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  cores_per_chip: int

  @classmethod
  def from_config(cls, tpu: ml_collections.ConfigDict | None) -> 'Slice':
    if tpu is None:
      raise ValueError('The config has no tpu section; add config.tpu = '
                       "aot.tpu_config('v5p', '4x4x4') (score_jax.aot).")
    if tpu.generation not in CHIPS:
      raise ValueError(f'tpu.generation must be one of {sorted(CHIPS)}; got '
                       f'{tpu.generation!r}.')
    dims = tpu.topology.split('x')
    if not all(d.isdigit() and int(d) > 0 for d in dims) or len(dims) not in (2, 3):
      raise ValueError(f'tpu.topology must look like 2x2 or 4x4x8; got {tpu.topology!r}.')
    bounds = str(tpu.chips_per_host_bounds).split(',')
    if len(bounds) != 3 or not all(b.strip().isdigit() and int(b) > 0 for b in bounds):
      raise ValueError(f'tpu.chips_per_host_bounds must be three sizes such as "2,2,1"; got '
                       f'{tpu.chips_per_host_bounds!r}.')
    bounds = tuple(int(b) for b in bounds)
    for name in ('hbm_gib', 'peak_tflops', 'hbm_gbps'):
      if tpu[name] <= 0:
        raise ValueError(f'tpu.{name} must be positive; got {tpu[name]}.')
    return cls(tpu.generation, tpu.topology, tpu.chip_config_name, bounds,
               float(tpu.hbm_gib), float(tpu.peak_tflops), float(tpu.hbm_gbps),
               int(tpu.cores_per_chip))

  @property
  def num_chips(self) -> int:
    return math.prod(int(d) for d in self.topology.split('x'))

  @property
  def name(self) -> str:
    """The Cloud TPU name: v5p counts TensorCores (v5p-8 is 4 chips), v5e chips."""
    return f'{self.generation}-{self.num_chips * self.cores_per_chip}'

  def devices(self) -> list:
    """The slice's compile-only devices (libtpu's topology description)."""
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    prefix = CHIPS[self.generation]['prefix']
    dims = [int(d) for d in self.topology.split('x')] + [1]
    # A slice smaller than one host's chips is driven by one host.
    bounds = tuple(min(d, b) for d, b in zip(dims, self.chips_per_host_bounds))
    try:
      topology = topologies.get_topology_desc(
          topology_name=f'{prefix}:{self.topology}', platform='tpu',
          chip_config_name=self.chip_config_name, chips_per_host_bounds=bounds, num_slices=1)
    except jax.errors.JaxRuntimeError as e:
      raise ValueError(f'tpu.topology {self.topology!r} ({self.generation}) is not a slice libtpu '
                       f'knows: {str(e).splitlines()[0]}') from None
    return list(topology.devices)


def require_libtpu() -> None:
  """Stops with the install command when libtpu (TPU topology descriptions) is missing."""
  if importlib.util.find_spec('libtpu') is None:
    raise SystemExit(
        'score_jax.aot compiles for TPU topologies and needs libtpu, which is not installed: '
        f"pip install 'score-jax[tpu]' (or pip install '{LIBTPU_PIN}'), preferably in an "
        'environment of its own; set JAX_PLATFORMS=cpu there for ordinary runs.')


# ---- abstract, sharded inputs ----------------------------------------------------------------


def _sds(shape, dtype, sharding_) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: _sds(a.shape, a.dtype, s), abstract, shardings)


def abstract_params(model: Decoder):
  """(abstract parameter tree, logical axes), via ``eval_shape`` of the model's init."""
  def init_fn(key):
    ones = jnp.ones((1, 1), jnp.int32)
    return model.init(key, ones, ones, ones.astype(bool))['params']
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  return nn.meta.unbox(boxed), sharding.logical_axes_of(boxed)


def abstract_train_state(params, tx: optax.GradientTransformation, rules: sharding.MeshRules):
  """The abstract TrainState; Adam moments take their parameter's sharding."""
  state = jax.eval_shape(functools.partial(TrainState.create, tx=tx), params)
  param_shardings = jax.tree.map(lambda p: p.sharding, params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, state.opt_state, param_shardings,
      transform_non_params=lambda _: rules.replicated())
  return TrainState(step=_sds((), jnp.int32, rules.replicated()), params=params,
                    opt_state=_with_shardings(state.opt_state, opt_shardings))


def abstract_rollout(batch: int, length: int, rules: sharding.MeshRules) -> Rollout:
  """A rollout batch as the update receives it: rows split like the rollout's output."""
  row = lambda dtype, width=length: _sds((batch, width), dtype, rules.sharding(
      ('batch', 'length'), (batch, width)))
  return Rollout(tokens=row(jnp.int32), valid=row(bool), positions=row(jnp.int32),
                 segments=row(jnp.int32), logprobs=row(jnp.float32), stopped=row(bool, 2))


def abstract_key(rules: sharding.MeshRules):
  key = jax.eval_shape(lambda: jax.random.key(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rules.replicated())


def bytes_per_chip(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def rollout_spec(config: ml_collections.ConfigDict) -> RolloutSpec:
  """The config's slot layout; token values do not matter for shapes (no tokenizer here)."""
  r = config.rollout
  if r.instruction_len <= 0:
    raise ValueError('rollout.instruction_len must be positive for this check (it has no '
                     f'tokenizer to measure the instruction); got {r.instruction_len}.')
  return RolloutSpec(prompt_len=r.prompt_len, attempt1_len=r.attempt1_len, stop_tokens=(1,),
                     instruction_tokens=(2,) * r.instruction_len,
                     attempt2_len=r.attempt2_len, instruction_len=r.instruction_len,
                     top_k=r.top_k, row_chunks=r.get('row_chunks', 1),
                     decode_block_len=r.get('decode_block_len', 0))


def rl_step_config(config: ml_collections.ConfigDict, kind: str) -> RLStepConfig:
  """The update's static settings, as ``score_jax.train`` derives them for a phase."""
  rl = config.rl
  return RLStepConfig(
      stage=kind, alpha=rl.alpha, beta1=rl.beta1, beta2=rl.beta2, num_samples=rl.num_samples,
      baseline=rl.baseline, normalize_std=rl.normalize_std, algorithm=rl.algorithm,
      clip_epsilon=rl.clip_epsilon, kl_estimator=rl.kl_estimator, ppo_epochs=rl.ppo_epochs,
      minibatches=rl.minibatches, logprob_chunk=config.logprob_chunk)


# ---- analytic FLOPs ----------------------------------------------------------------------------


def _layer_matmul_params(c: ModelConfig) -> int:
  return c.num_layers * (2 * c.d_model * c.num_heads * c.head_dim +
                         2 * c.d_model * c.num_kv_heads * c.head_dim + 3 * c.d_model * c.mlp_dim)


def _attention_flops(c: ModelConfig, queries: int, keys: int) -> int:
  """Forward FLOPs of q·k and weights·v for one row (masks do not skip work)."""
  return 4 * queries * keys * c.num_heads * c.head_dim * c.num_layers


def update_flops(c: ModelConfig, config: ml_collections.ConfigDict, batch: int,
                 length: int) -> dict[str, float]:
  """FLOPs of one RL update: reference forward (2N per token), then per epoch forward and
  backward (6N per token), plus attention; ``executed`` adds what remat recomputes."""
  body, head = _layer_matmul_params(c), c.d_model * c.vocab_size
  tokens = batch * length
  attention = _attention_flops(c, length, length) * batch
  epochs = config.rl.ppo_epochs
  model = (2 * (body + head) * tokens + attention) + epochs * (
      6 * (body + head) * tokens + 3 * attention)
  recompute = 2 * head * tokens  # Log-prob chunks are checkpointed.
  if c.remat_policy == 'full':
    recompute += 2 * body * tokens + attention
  elif c.remat_policy == 'dots_no_batch':
    recompute += attention  # Weight matmuls are saved; batched (attention) dots are not.
  return dict(model=model, executed=model + epochs * recompute)


def rollout_flops(c: ModelConfig, spec: RolloutSpec, batch: int) -> dict[str, float]:
  """FLOPs of a worst-case rollout (every row decodes both full attempts): 2N per token
  through the layers, the vocabulary projection per sampled token, attention over the
  whole cache."""
  body, head = _layer_matmul_params(c), c.d_model * c.vocab_size
  slots = spec.total_len
  prefill_tokens = spec.prompt_len + spec.instruction_width
  decode_steps = spec.attempt1_len + spec.attempt2_len
  prefill = batch * (2 * body * prefill_tokens + 2 * 2 * head +
                     _attention_flops(c, prefill_tokens, slots))
  decode_step = batch * (2 * (body + head) + _attention_flops(c, 1, slots))
  return dict(prefill=prefill, decode_step=decode_step, decode_steps=decode_steps,
              total=prefill + decode_steps * decode_step, row_chunks=spec.row_chunks)


# ---- compiling -----------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
  """One compiled program's per-chip memory (bytes) and compile time, or the compiler's
  out-of-memory message."""

  name: str
  seconds: float
  arguments: int = 0
  outputs: int = 0
  aliased: int = 0
  temporaries: int = 0
  code: int = 0
  out_of_memory: str = ''

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def _out_of_memory_summary(message: str) -> str:
  """One line from the compiler's RESOURCE_EXHAUSTED error: HBM needed against available,
  or, for on-chip VMEM, which operation's fusion did not fit."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  for line in lines:
    if 'exceeds available HBM' in line or 'Ran out of memory on HBM' in line:
      return line.replace('RESOURCE_EXHAUSTED: ', '')[:300]
  for line in lines:
    if 'memory space vmem' in line:
      op = re.search(r'op_name="([^"]+)"', line)
      where = ' in ' + '/'.join(op.group(1).split('/')[-2:]) if op else ''
      return (f'on-chip VMEM too small for a fusion{where} (XLA error E1001; other per-chip '
              'shapes avoid it)')
  return lines[0][:300] if lines else 'RESOURCE_EXHAUSTED'


def _say(line: str) -> None:
  print(line, flush=True)  # Progress lines: compiles take minutes.


@contextlib.contextmanager
def _ticking(what: str, every_s: float = 30.0):
  """Prints a line every ``every_s`` seconds while a compile runs."""
  start = time.perf_counter()
  stop = threading.Event()

  def tick():
    while not stop.wait(every_s):
      _say(f'  ... still compiling {what} ({time.perf_counter() - start:.0f} s)')

  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def compile_program(name: str, fn: Callable, *args) -> Program:
  """Lowers and compiles ``fn`` for the abstract ``args``; records its memory analysis."""
  _say(f'compiling the {name} ...')
  start = time.perf_counter()
  try:
    with _ticking(name):
      compiled = fn.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if 'RESOURCE_EXHAUSTED' not in message and 'exceeds' not in message:
      raise
    program = Program(name, time.perf_counter() - start,
                      out_of_memory=_out_of_memory_summary(message))
    _say(f'  the compiler ran out of memory after {program.seconds:.0f} s: '
         f'{program.out_of_memory}')
    return program
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  program = Program(name, seconds, arguments=memory.argument_size_in_bytes,
                    outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
                    temporaries=memory.temp_size_in_bytes,
                    code=memory.generated_code_size_in_bytes)
  _say(f'  compiled in {seconds:.0f} s: {program.peak / GIB:.2f} GiB per chip at peak')
  return program


# ---- the check -----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
  """Everything the report prints; sizes are bytes per chip."""

  sizes: dict[str, int]
  programs: dict[str, Program]
  phases: dict[str, int]
  flops: dict[str, Any]
  seconds: dict[str, float]
  hbm: int
  verdict: str
  fits: bool


def first_rl_phase(phases: list[tuple[str, int]]) -> tuple[str, int]:
  for kind, steps in phases:
    if kind in config_lib.RL_KINDS:
      return kind, steps
  raise ValueError('schedule has no RL phase (stage1, stage2 or single_turn) to check; '
                   f'got {[kind for kind, _ in phases]}.')


def check(config: ml_collections.ConfigDict) -> Result:
  """Compiles the config's RL update and rollout for its slice and sizes both per chip."""
  phases = config_lib.validate_train_config(config)
  kind, phase_steps = first_rl_phase(phases)
  tpu = Slice.from_config(config.get('tpu'))
  model_config = config_lib.build_model_config(config.model)
  spec = rollout_spec(config)
  if kind == 'single_turn':
    spec = dataclasses.replace(spec, attempt2_len=0, instruction_tokens=(), instruction_len=0)
  devices = tpu.devices()
  mesh = config_lib.build_mesh(config.mesh, devices)
  train_rules = sharding.MeshRules(mesh, sharding.TRAIN_RULES)
  sample_rules = sharding.MeshRules(mesh, sharding.SAMPLE_RULES)
  train_model, sample_model = Decoder(model_config, train_rules), Decoder(model_config,
                                                                          sample_rules)
  batch, length = config.rl.batch_size, spec.total_len
  data_ways = mesh.shape['data'] * mesh.shape['fsdp']
  c = model_config
  versions = f'jax {jax.__version__}, libtpu {importlib.metadata.version("libtpu")}'
  _say(f'slice {tpu.name} (topology {tpu.topology}, {tpu.num_chips} chips of {tpu.hbm_gib:g} '
       f'GiB HBM, {tpu.peak_tflops:g} bf16 TFLOP/s); mesh data={mesh.shape["data"]} '
       f'fsdp={mesh.shape["fsdp"]} tensor={mesh.shape["tensor"]}; {versions}')
  _say(f'model {config.get("model_preset", "?")}: {c.num_params() / 1e9:.2f} B parameters, '
       f'params {c.param_dtype}, compute {c.dtype}, remat {c.remat_policy}, '
       f'{"scanned" if c.scan_layers else "unrolled"} layers')
  _say(f'phase {kind}: {batch} rollouts x {length} slots (prompt {spec.prompt_len}, attempt 1 '
       f'{spec.attempt1_len}, instruction {spec.instruction_width}, attempt 2 '
       f'{spec.attempt2_len}); {batch / data_ways:g} rows per chip; rl.algorithm '
       f'{config.rl.algorithm}, {config.rl.ppo_epochs} epoch(s) x {config.rl.minibatches} '
       f'minibatch(es)')

  params_shape, axes = abstract_params(train_model)
  params = _with_shardings(params_shape, train_rules.shardings(axes, params_shape))
  # The trainer gathers the weights for sampling in the compute dtype (Trainer.__init__).
  sample_shape = cast_floating(params_shape, model_config.jnp_dtype)
  sample_params = _with_shardings(sample_shape, sample_rules.shardings(axes, sample_shape))
  tx = make_optimizer(config.rl.optimizer, phase_steps)
  state = abstract_train_state(params, tx, train_rules)
  reference = params
  rollout = abstract_rollout(batch, length, train_rules)
  rewards = _sds((batch,), jnp.float32, train_rules.sharding(('batch',), (batch,)))
  key = abstract_key(train_rules)
  prompt_rows = train_rules.sharding(('batch', 'length'), (batch, spec.prompt_len))
  prompts = _sds((batch, spec.prompt_len), jnp.int32, prompt_rows)
  prompt_valid = _sds((batch, spec.prompt_len), bool, prompt_rows)
  scalar = _sds((), jnp.float32, train_rules.replicated())
  sampling = SamplingParams(temperature=scalar, top_p=scalar)
  # One chunk of rows decodes at a time (rollout.row_chunks), each with its own cache.
  cache_shape = jax.eval_shape(lambda: empty_cache(model_config, batch // spec.row_chunks,
                                                   length))
  cache = _with_shardings(cache_shape, sample_rules.shardings(cache_shape.logical_axes(),
                                                              cache_shape))
  sizes = dict(params=bytes_per_chip(state.params), optimizer=bytes_per_chip(state.opt_state),
               reference=bytes_per_chip(reference), sampling_copy=bytes_per_chip(sample_params),
               kv_cache=bytes_per_chip(cache), rollout_batch=bytes_per_chip(rollout))

  programs = {}
  programs['update'] = compile_program(
      f'RL update ({kind})', make_rl_step(train_model, tx, rl_step_config(config, kind)),
      state, reference, rollout, rewards, rewards, key)
  programs['rollout'] = compile_program(
      'rollout' + (' (two turns)' if spec.two_turns else ''),
      make_rollout_fn(sample_model, spec), sample_params, prompts, prompt_valid, key, sampling)

  resident = sizes['params'] + sizes['optimizer'] + sizes['reference']
  phase_peaks = dict(rollout=resident + programs['rollout'].peak,
                     update=programs['update'].peak)
  hbm = int(tpu.hbm_gib * GIB)
  flops = dict(update=update_flops(c, config, batch, length),
               rollout=rollout_flops(c, spec, batch))
  seconds = _implied_seconds(tpu, flops, sizes)
  failed = [key for key, program in programs.items() if program.out_of_memory]
  worst = max(phase_peaks, key=phase_peaks.get)
  if failed:
    program = programs[failed[0]]
    verdict = (f'does not fit: the compiler ran out of memory for the {program.name} '
               f'({program.out_of_memory}); ' + _advice(config, c, mesh, sizes, programs,
                                                        failed[0], compiler_failed=True))
  elif phase_peaks[worst] > hbm:
    verdict = (f'does not fit: {phase_peaks[worst] / GIB:.1f} / {tpu.hbm_gib:g} GiB per chip '
               f'during the {worst}; ' + _advice(config, c, mesh, sizes, programs, worst))
  else:
    verdict = f'fits: {phase_peaks[worst] / GIB:.1f} / {tpu.hbm_gib:g} GiB per chip'
  return Result(sizes=sizes, programs=programs, phases=phase_peaks, flops=flops,
                seconds=seconds, hbm=hbm, verdict=verdict, fits=not failed and
                phase_peaks[worst] <= hbm)


def _implied_seconds(tpu: Slice, flops: dict, sizes: dict[str, int]) -> dict[str, float]:
  """Lower bounds on time: FLOPs at the slice's peak rate; a decode step also has to read
  the weights (the sampling copy, in the compute dtype) and a chunk's KV cache from HBM,
  and every chunk of rows decodes its own steps."""
  peak = tpu.peak_tflops * 1e12 * tpu.num_chips
  roll = flops['rollout']
  read_s = (sizes['sampling_copy'] + sizes['kv_cache']) / (tpu.hbm_gbps * 1e9)
  chunks = roll['row_chunks']
  decode_s = roll['decode_steps'] * chunks * max(roll['decode_step'] / peak / chunks, read_s)
  out = dict(update=flops['update']['executed'] / peak,
             rollout=roll['prefill'] / peak + decode_s,
             decode_read=roll['decode_steps'] * chunks * read_s)
  out['step'] = out['update'] + out['rollout']
  return out


def _advice(config, c: ModelConfig, mesh, sizes: dict[str, int], programs: dict[str, Program],
            phase: str, compiler_failed: bool = False) -> str:
  """What to change, for the two biggest consumers of the phase that does not fit (the
  program's own buffers first when the compiler ran out of HBM for it)."""
  rows = config.rl.batch_size / (mesh.shape['data'] * mesh.shape['fsdp'])
  spec_chunks = config.rollout.get('row_chunks', 1)
  state_fix = ('raise mesh.fsdp (parameters, Adam moments and the reference are split over '
               'fsdp x tensor)')
  copy_fix = (f'raise mesh.tensor (the sampling copy of the weights, '
              f'{sizes["sampling_copy"] / GIB:.1f} GiB, is split over tensor only)')
  if phase == 'update':
    per_update = rows / config.rl.minibatches
    if c.remat_policy == 'none':
      temp_fix = 'turn on remat (model.remat_policy=full)'
    else:
      temp_fix = (f'lower the rows per chip in an update ({per_update:g} now): split it with '
                  f'rl.algorithm=ppo rl.minibatches={config.rl.minibatches * 2}, or give '
                  'data x fsdp more chips')
    parts = [(math.inf if compiler_failed else programs['update'].temporaries, temp_fix),
             (sizes['params'] + sizes['optimizer'] + sizes['reference'], state_fix)]
  else:
    other = programs['rollout'].temporaries - sizes['kv_cache']
    parts = [(math.inf if compiler_failed else sizes['kv_cache'] + max(other, 0),
              f'decode fewer rows at a time ({rows / spec_chunks:g} per chip now; their KV '
              f'cache is {sizes["kv_cache"] / GIB:.1f} GiB): raise rollout.row_chunks to '
              f'{spec_chunks * 2}, give data x fsdp more chips or shorten the rollout slots'),
             (sizes['sampling_copy'], copy_fix),
             (sizes['params'] + sizes['optimizer'] + sizes['reference'], state_fix)]
  parts.sort(key=lambda p: -p[0])
  return '; or '.join(fix for _, fix in parts[:2])


# ---- the report ----------------------------------------------------------------------------


def format_report(result: Result) -> list[str]:
  gib = lambda b: f'{b / GIB:8.2f}'
  s, p = result.sizes, result.programs
  lines = ['per chip (GiB):',
           f'  policy parameters      {gib(s["params"])}',
           f'  optimizer state        {gib(s["optimizer"])}',
           f'  reference parameters   {gib(s["reference"])}',
           f'  sampling copy          {gib(s["sampling_copy"])}   (weights in the sampling layout)',
           f'  KV cache               {gib(s["kv_cache"])}   (analytic; inside the rollout)',
           f'  rollout batch          {gib(s["rollout_batch"])}   (the update\'s input)']
  for key, label in (('update', 'RL update'), ('rollout', 'rollout')):
    program = p[key]
    if program.out_of_memory:
      lines.append(f'  {label:22} out of memory: {program.out_of_memory}')
      continue
    lines.append(f'  {label:22} {gib(program.peak)}   (arguments {program.arguments / GIB:.2f}, '
                 f'outputs {program.outputs / GIB:.2f}, aliased {program.aliased / GIB:.2f}, '
                 f'temporaries {program.temporaries / GIB:.2f})')
  if not any(program.out_of_memory for program in p.values()):
    lines += [f'  peak in the rollout    {gib(result.phases["rollout"])}   '
              '(train state + reference + rollout program)',
              f'  peak in the update     {gib(result.phases["update"])}   '
              '(update program, train state and reference included)',
              f'  HBM                    {gib(result.hbm)}']
  f, t = result.flops, result.seconds
  chunks = f['rollout']['row_chunks']
  chunk_note = f' in each of {chunks} row chunks' if chunks > 1 else ''
  lines += ['FLOPs per RL step (analytic, whole slice):',
            f'  update   {f["update"]["model"]:.3e} model (8N per token + attention), '
            f'{f["update"]["executed"]:.3e} executed with remat -> {t["update"]:.2f} s at peak',
            f'  rollout  {f["rollout"]["total"]:.3e} (worst case: '
            f'{f["rollout"]["decode_steps"]} decode steps'
            f'{chunk_note}) -> {t["rollout"]:.2f} s '
            f'(HBM reads alone {t["decode_read"]:.2f} s)',
            f'  step     >= {t["step"]:.2f} s at peak',
            'compile: ' + ', '.join(f'{program.name} {program.seconds:.0f} s'
                                    for program in p.values())]
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_lib.quiet_library_logs()
  require_libtpu()
  try:
    result = check(_CONFIG.value)
  except ValueError as e:
    raise SystemExit(f'Invalid config: {e}') from None
  for line in format_report(result):
    print(line)
  print(result.verdict, flush=True)
  if not result.fits:
    raise SystemExit(1)


if __name__ == '__main__':
  # Defined here, not at import: config files import this module for ``tpu_config`` while
  # other entry points (score_jax.train) own their --config flag.
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                            lock_config=True)
  flags.mark_flags_as_required(['config'])
  app.run(main)
