r"""Throughput of the two-turn rollout: generated tokens per second.

  python bench/rollout.py                                   # tiny and SmolLM2-135M shapes
  python bench/rollout.py --presets=smollm2_135m --batch=8,32 --repeats=5

Random weights (the speed of a decoder does not depend on its values); no row stops early,
so every row generates ``2 * attempt_len`` tokens. Each configuration compiles once, is
warmed up, then timed ``--repeats`` times; the median is reported. Generated tokens count
both attempts; the prompt and instruction prefills are included in the wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import config_lib
from score_jax.compilation import count_compilations
from score_jax.model import Decoder, init_params
from score_jax.sampling import RolloutSpec, SamplingParams, make_rollout_fn, pack_prompts


def bench_one(preset: str, batch: int, prompt_len: int, attempt_len: int, instruction_len: int,
              dtype: str, repeats: int, temperature: float) -> dict:
  config = config_lib.build_model_config(config_lib.model_config(preset, dtype=dtype,
                                                                 param_dtype=dtype))
  model = Decoder(config)
  params, _ = init_params(model, jax.random.key(0))
  # A stop token that random weights essentially never pick first: -1 is out of range.
  spec = RolloutSpec(prompt_len=prompt_len, attempt1_len=attempt_len, stop_tokens=(-1,),
                     instruction_tokens=tuple(range(3, 3 + instruction_len)),
                     attempt2_len=attempt_len)
  rollout_fn = make_rollout_fn(model, spec)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, config.vocab_size, prompt_len).tolist() for _ in range(batch)]
  tokens, valid = pack_prompts(prompts, prompt_len)
  tokens, valid = jnp.asarray(tokens), jnp.asarray(valid)
  sampling = SamplingParams.create(temperature=temperature)

  start = time.perf_counter()
  with count_compilations() as compiles:
    out = jax.block_until_ready(rollout_fn(params, tokens, valid, jax.random.key(0), sampling))
  first_call = time.perf_counter() - start
  generated = int(np.isin(np.asarray(out.segments), [2, 4]).sum())
  times = []
  with count_compilations() as recompiles:
    for i in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(rollout_fn(params, tokens, valid, jax.random.key(i + 1), sampling))
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return dict(preset=preset, batch=batch, generated=generated, median_s=median,
              tokens_per_s=generated / median, compile_s=compiles.seconds,
              first_call_s=first_call, recompiles=recompiles.count)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--presets', default='tiny,smollm2_135m')
  parser.add_argument('--batch', default='32', help='comma-separated batch sizes')
  parser.add_argument('--prompt_len', type=int, default=64)
  parser.add_argument('--attempt_len', type=int, default=128)
  parser.add_argument('--instruction_len', type=int, default=32)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--temperature', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  device = jax.devices()[0]
  print(f'# rollout benchmark: jax {jax.__version__}, {jax.device_count()} x '
        f'{device.device_kind} ({device.platform}), {platform.processor() or platform.machine()}, '
        f'dtype {args.dtype}, P={args.prompt_len} L1=L2={args.attempt_len} '
        f'I={args.instruction_len}, temperature {args.temperature}')
  print('| preset | batch | generated tokens | median s | tokens/s | compile s | recompiles |')
  print('|---|---|---|---|---|---|---|')
  for preset in args.presets.split(','):
    for batch in (int(b) for b in args.batch.split(',')):
      r = bench_one(preset, batch, args.prompt_len, args.attempt_len, args.instruction_len,
                    args.dtype, args.repeats, args.temperature)
      print(f"| {r['preset']} | {r['batch']} | {r['generated']} | {r['median_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['compile_s']:.1f} | {r['recompiles']} |", flush=True)


if __name__ == '__main__':
  main()
