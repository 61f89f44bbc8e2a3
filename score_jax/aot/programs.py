"""The programs the check compiles: abstract sharded inputs, analytic FLOPs, and compiling
with the compiler's memory analysis (or its out-of-memory message)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from score_jax import sharding
from score_jax.model import ModelConfig
from score_jax.sampling import Rollout, RolloutSpec

GIB = 1024 ** 3


# ---- abstract, sharded inputs ----------------------------------------------------------------


def sds(shape, dtype, sharding_) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: sds(a.shape, a.dtype, s), abstract, shardings)


def abstract_rollout(batch: int, length: int, rules: sharding.MeshRules) -> Rollout:
  """A rollout batch as the update receives it: rows split like the rollout's output."""
  row = lambda dtype, width=length: sds((batch, width), dtype, rules.sharding(
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


def say(line: str) -> None:
  print(line, flush=True)  # Progress lines: compiles take minutes.


@contextlib.contextmanager
def _ticking(what: str, every_s: float = 30.0):
  """Prints a line every ``every_s`` seconds while a compile runs."""
  start = time.perf_counter()
  stop = threading.Event()

  def tick():
    while not stop.wait(every_s):
      say(f'  ... still compiling {what} ({time.perf_counter() - start:.0f} s)')

  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def compile_program(name: str, fn: Callable, *args) -> Program:
  """Lowers and compiles ``fn`` for the abstract ``args``; records its memory analysis."""
  say(f'compiling the {name} ...')
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
    say(f'  the compiler ran out of memory after {program.seconds:.0f} s: '
         f'{program.out_of_memory}')
    return program
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  program = Program(name, seconds, arguments=memory.argument_size_in_bytes,
                    outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
                    temporaries=memory.temp_size_in_bytes,
                    code=memory.generated_code_size_in_bytes)
  say(f'  compiled in {seconds:.0f} s: {program.peak / GIB:.2f} GiB per chip at peak')
  return program
