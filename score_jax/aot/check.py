"""The check itself: compile a config's RL update and rollout for its slice, size both per
chip against HBM, and say what to change when they do not fit."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from score_jax import config_lib, sharding
from score_jax.aot.programs import (GIB, Program, abstract_key, abstract_rollout,
                                    bytes_per_chip, compile_program, rollout_flops, rollout_spec,
                                    say, sds, update_flops, with_shardings)
from score_jax.aot.slices import Slice
from score_jax.model import Decoder, ModelConfig, abstract_params, cast_floating, empty_cache
from score_jax.sampling import SamplingParams, make_rollout_fn
from score_jax.training.phases import Phase
from score_jax.training.steps import (abstract_reference_of, abstract_train_state, make_optimizer,
                                      make_rl_step, rl_settings)


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


def first_rl_phase(phases: list[Phase]) -> Phase:
  for phase in phases:
    if phase.is_rl:
      return phase
  raise ValueError('schedule has no RL phase (stage1, stage2 or single_turn) to check; '
                   f'got {[phase.kind for phase in phases]}.')


def check(config: ml_collections.ConfigDict) -> Result:
  """Compiles the config's RL update and rollout for its slice and sizes both per chip."""
  phase = first_rl_phase(config_lib.validate_train_config(config))
  if config.get('lora') and config.lora.rank:
    # The trainer's LoRA state (frozen base, adapters, their optimizer) has another layout and
    # other sizes; checking the full-weight programs instead would report the wrong memory.
    raise ValueError(f'lora.rank={config.lora.rank}: the ahead-of-time check compiles '
                     'full-weight training only; set --config.lora.rank=0 to check that.')
  kind = phase.kind
  tpu = Slice.from_config(config.get('tpu'))
  model_config = config_lib.build_model_config(config.model)
  spec = rollout_spec(config)
  if not phase.two_turns:
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
  say(f'slice {tpu.name} (topology {tpu.topology}, {tpu.num_chips} chips of {tpu.hbm_gib:g} '
       f'GiB HBM, {tpu.peak_tflops:g} bf16 TFLOP/s); mesh data={mesh.shape["data"]} '
       f'fsdp={mesh.shape["fsdp"]} tensor={mesh.shape["tensor"]}; {versions}')
  say(f'model {config.get("model_preset", "?")}: {c.num_params() / 1e9:.2f} B parameters, '
       f'params {c.param_dtype}, compute {c.dtype}, remat {c.remat_policy}, '
       f'{"scanned" if c.scan_layers else "unrolled"} layers')
  say(f'phase {kind}: {batch} rollouts x {length} slots (prompt {spec.prompt_len}, attempt 1 '
       f'{spec.attempt1_len}, instruction {spec.instruction_width}, attempt 2 '
       f'{spec.attempt2_len}); {batch / data_ways:g} rows per chip; rl.algorithm '
       f'{config.rl.algorithm}, {config.rl.ppo_epochs} epoch(s) x {config.rl.minibatches} '
       f'minibatch(es)')

  tx = make_optimizer(config.rl.optimizer, phase.steps)
  state = abstract_train_state(train_model, tx)  # The trainer's layout, not a copy of it.
  reference = abstract_reference_of(train_model, config)  # In rl.reference_dtype.
  # The trainer gathers the weights for sampling in the compute dtype (Trainer.__init__).
  params_shape, axes = abstract_params(train_model)
  sample_shape = cast_floating(params_shape, model_config.jnp_dtype)
  sample_params = with_shardings(sample_shape, sample_rules.shardings(axes, sample_shape))
  rollout = abstract_rollout(batch, length, train_rules)
  rewards = sds((batch,), jnp.float32, train_rules.sharding(('batch',), (batch,)))
  key = abstract_key(train_rules)
  prompt_rows = train_rules.sharding(('batch', 'length'), (batch, spec.prompt_len))
  prompts = sds((batch, spec.prompt_len), jnp.int32, prompt_rows)
  prompt_valid = sds((batch, spec.prompt_len), bool, prompt_rows)
  scalar = sds((), jnp.float32, train_rules.replicated())
  sampling = SamplingParams(temperature=scalar, top_p=scalar)
  # One chunk of rows decodes at a time (rollout.row_chunks), each with its own cache.
  cache_shape = jax.eval_shape(lambda: empty_cache(model_config, batch // spec.row_chunks,
                                                   length))
  cache = with_shardings(cache_shape, sample_rules.shardings(cache_shape.logical_axes(),
                                                              cache_shape))
  sizes = dict(params=bytes_per_chip(state.params), optimizer=bytes_per_chip(state.opt_state),
               reference=bytes_per_chip(reference), sampling_copy=bytes_per_chip(sample_params),
               kv_cache=bytes_per_chip(cache), rollout_batch=bytes_per_chip(rollout))

  programs = {}
  programs['update'] = compile_program(
      f'RL update ({kind})', make_rl_step(train_model, tx, rl_settings(config, kind)),
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
