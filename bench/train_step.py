r"""Throughput of the jitted SCoRe update against this machine's measured matmul rate.

  python bench/train_step.py                                 # SmolLM2-135M shape, f32
  python bench/train_step.py --dtypes=float32,bfloat16       # side by side, one process
  python bench/train_step.py --dtypes=float32,bfloat16 --lora_rank=16

One Stage II REINFORCE update (``training.steps.make_rl_step``: reference log-probs, the stage
weights with the α·(r2 − r1) bonus, policy forward and backward, Adam) on a batch of
two-attempt trajectories in the rollout's slot layout, every slot valid. Random weights (the
speed of a decoder does not depend on its values). Prints tokens/s, achieved FLOP/s and its
fraction of a large matmul's measured rate in the same dtype, the compile time and the
compiled step's memory, one row per compute dtype (parameters and Adam state stay fp32),
all measured in one process; ``--lora_rank=N`` adds a row for a LoRA update (rank N on the
attention and MLP kernels, the base frozen: the reference forward, the adapted model's
forward and backward without the frozen kernels' weight gradients, Adam on the adapters) in
the last dtype. The last line compares them: ``update bfloat16: R.RRx float32, ...``.

FLOPs counted per token: 2·N for the reference forward and 6·N for the policy's forward and
backward (N = parameters, the tied output matrix included), plus attention's 2·2·S·H·Dh per
layer forward (×4 for reference, forward and backward). The LoRA row is counted the same way
(the work a full update would do), so its "achieved" rate is an equivalent rate.

By default the script re-executes itself with glibc malloc settings that back large arrays
with transparent huge pages and keep freed memory (``machine.MALLOC_TUNABLES``): the step's
gigabytes of temporaries otherwise cost millions of page faults per step.
``--default_malloc`` keeps glibc's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# bench/machine.py, beside this script.
from machine import describe_machine, matmul_rate, use_tuned_malloc
from score_jax import config_lib
from score_jax.compilation import count_compilations
from score_jax.model import Decoder, init_params, lora
from score_jax.rl import RLSettings
from score_jax.sampling import RolloutSpec, pack_trajectories
from score_jax.training.steps import TrainState, make_optimizer, make_rl_step


def step_flops(config, num_params: int, tokens_per_row: int, rows: int) -> float:
  """FLOPs of one update: reference forward (1×), policy forward and backward (3×)."""
  c = config
  attention = c.num_layers * 4 * tokens_per_row * c.num_heads * c.head_dim  # per token, fwd
  return rows * tokens_per_row * 4 * (2 * num_params + attention)


def measure(args, dtype: str, lora_rank: int = 0) -> dict:
  """Compiles and times one update configuration; returns its table row's values."""
  model_config = config_lib.build_model_config(config_lib.model_config(
      args.preset, dtype=dtype, param_dtype='float32', remat_policy=args.remat,
      scan_layers=not args.unrolled))
  plain = Decoder(model_config)
  params, _ = init_params(plain, jax.random.key(0))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  if lora_rank:
    model = Decoder(dataclasses.replace(model_config, lora_rank=lora_rank,
                                        lora_alpha=2.0 * lora_rank))
    reference, trained = params, lora.init_adapters(model, jax.random.key(1))
  else:
    model, reference, trained = plain, jax.tree.map(jnp.copy, params), params
  tx = make_optimizer(config_lib.base_train_config().rl.optimizer)
  step = make_rl_step(model, tx, RLSettings(stage='stage2', alpha=10.0, beta1=0.01, beta2=0.1,
                                            num_samples=4, logprob_chunk=args.logprob_chunk))
  spec = RolloutSpec(prompt_len=args.prompt_len, attempt1_len=args.attempt_len,
                     stop_tokens=(2,), instruction_tokens=tuple(range(3, 3 + args.instruction_len)),
                     attempt2_len=args.attempt_len)
  rng = np.random.default_rng(0)
  draw = lambda n: rng.integers(3, model_config.vocab_size, n).tolist()
  rows = args.batch
  batch = jax.tree.map(jnp.asarray, pack_trajectories(
      spec, [draw(args.prompt_len) for _ in range(rows)],
      [draw(args.attempt_len) for _ in range(rows)], [draw(args.attempt_len) for _ in range(rows)]))
  batch = batch.replace(logprobs=jnp.asarray(rng.normal(-3, 1, batch.tokens.shape), jnp.float32))
  r1 = jnp.asarray(rng.integers(0, 2, rows), jnp.float32)
  r2 = jnp.asarray(rng.integers(0, 2, rows), jnp.float32)
  state = TrainState.create(trained, tx)
  del params, trained

  start = time.perf_counter()
  compiled = step.lower(state, reference, batch, r1, r2, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak_bytes = None
  if memory is not None:
    peak_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
                  memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  state, _ = jax.block_until_ready(step(state, reference, batch, r1, r2, jax.random.key(0)))
  times = []
  with count_compilations() as recompiles:
    for i in range(args.repeats):
      start = time.perf_counter()
      state, metrics = jax.block_until_ready(step(state, reference, batch, r1, r2,
                                                  jax.random.key(i + 1)))
      times.append(time.perf_counter() - start)
  assert np.isfinite(float(metrics['loss'])), metrics
  median = statistics.median(times)
  flops = step_flops(model_config, num_params, spec.total_len, rows)
  return dict(name=f'lora{lora_rank} ' * bool(lora_rank) + dtype + ' unrolled' * args.unrolled,
              dtype=dtype,
              num_params=num_params, rows=rows, slots=spec.total_len, median=median,
              tokens_per_s=rows * spec.total_len / median, flops=flops,
              achieved=flops / median, compile_s=compile_s, peak_bytes=peak_bytes,
              recompiles=recompiles.count)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--preset', default='smollm2_135m')
  parser.add_argument('--batch', type=int, default=8, help='trajectories per update')
  parser.add_argument('--prompt_len', type=int, default=64)
  parser.add_argument('--attempt_len', type=int, default=128)
  parser.add_argument('--instruction_len', type=int, default=32)
  parser.add_argument('--dtypes', default='float32',
                      help='comma-separated compute dtypes, timed one after another (params '
                           'stay fp32)')
  parser.add_argument('--lora_rank', type=int, default=0,
                      help='also time a LoRA update of this rank (in the last dtype); 0: none')
  parser.add_argument('--remat', default='none', help="remat policy: none, dots, full, ...")
  parser.add_argument('--unrolled', action='store_true',
                      help='unrolled layers (model.scan_layers=False) instead of a scan')
  parser.add_argument('--logprob_chunk', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--default_malloc', action='store_true',
                      help="keep glibc's default malloc settings (see machine.MALLOC_TUNABLES)")
  args = parser.parse_args()
  dtypes = [d.strip() for d in args.dtypes.split(',') if d.strip()]
  malloc = use_tuned_malloc(args.default_malloc)

  print(f'# train-step benchmark: {describe_machine()}; jax {jax.__version__}')
  print(malloc)
  rates = {dtype: matmul_rate(dtype) for dtype in dtypes}
  for dtype, rate in rates.items():
    print(f'# measured matmul rate ({dtype} operands, fp32 results, random square '
          f'operands): {rate / 1e9:.0f} GFLOP/s')
  results = [measure(args, dtype) for dtype in dtypes]
  if args.lora_rank:
    results.append(measure(args, dtypes[-1], args.lora_rank))
  max_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print('| model | update | remat | rows x slots | median s | tokens/s | GFLOP/step | '
        'achieved GFLOP/s | of matmul rate | compile s | step memory GiB | recompiles |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in results:
    peak = f'{r["peak_bytes"] / 2**30:.2f}' if r['peak_bytes'] is not None else 'n/a'
    print(f'| {args.preset} ({r["num_params"] / 1e6:.0f}M) | {r["name"]} | {args.remat} | '
          f'{r["rows"]} x {r["slots"]} | {r["median"]:.2f} | {r["tokens_per_s"]:.0f} | '
          f'{r["flops"] / 1e9:.0f} | {r["achieved"] / 1e9:.0f} | '
          f'{r["achieved"] / rates[r["dtype"]]:.0%} | {r["compile_s"]:.1f} | {peak} | '
          f'{r["recompiles"]} |')
  print(f'# max RSS of the process: {max_rss_gib:.1f} GiB')
  first = results[0]
  parts = [f'{r["name"]}: {r["tokens_per_s"] / first["tokens_per_s"]:.2f}x {first["name"]}'
           for r in results[1:len(dtypes)]]
  if args.lora_rank:
    full = results[-2]
    parts.append(f'{results[-1]["name"]}: '
                 f'{results[-1]["tokens_per_s"] / full["tokens_per_s"]:.2f}x {full["name"]}')
  print(f'update {", ".join(parts) if parts else first["name"]} '
        f'({first["tokens_per_s"]:.0f} tokens/s for {first["name"]})')


if __name__ == '__main__':
  main()
