r"""Two-turn rollout throughput on the SmolLM2-135M shape, side by side with Tunix's ``Sampler``.

Tunix is not a dependency of score-jax: this script runs in a virtual environment of its own.

  python3.11 -m venv /tmp/venv-tunix
  /tmp/venv-tunix/bin/pip install google-tunix==0.1.7
  /tmp/venv-tunix/bin/pip install --no-deps -e .
  /tmp/venv-tunix/bin/python bench/tunix_rollout.py                  # batch 8 and 32, 3 repeats
  /tmp/venv-tunix/bin/python bench/tunix_rollout.py --batch=8 --tunix_dtype=bfloat16
  /tmp/venv-tunix/bin/python bench/tunix_rollout.py --layers=2 --batch=2 --repeats=1  # a smoke test

Both sides run random weights of the SmolLM2-135M shape (Llama: vocab 49152, d_model 576,
30 layers, 9 query and 3 KV heads of 64, MLP 1536, tied embeddings) on the same prompts and
instruction. Each repeat times our jitted rollout (prompt 64 → attempt 1 of 128 →
instruction of 32 → attempt 2 of 128, temperature 1.0) and then Tunix doing the same two
turns: ``Sampler`` generates 128 tokens after the prompt, the instruction is appended and a
second ``Sampler`` generates 128 more after prompt + attempt 1 + instruction. Tunix samples at
temperature 1.0 with neither top-k nor top-p filtering (``top_p=1.0`` takes its plain
``categorical`` path). No row stops early (both sides' stop token is -1, which is never
sampled), so both produce batch × 256 tokens (checked); prefills are in the wall times. Each
Tunix turn has its own KV cache, just big enough for it (prompt + attempt 1 = 192 slots,
then the whole 352), as ours grows its cache from 192 to 352 slots. The first call of
either side (its compilations) is timed apart; the repeats time later calls and count any
recompilation. Ratios (Tunix's time over ours) are taken per repeat and the median is
reported. The last line is a one-line summary. Both sides run under the malloc settings of
``machine.MALLOC_TUNABLES`` unless --default_malloc is given.

Tunix's ``Sampler`` takes and returns strings: a small tokenizer makes a text the token ids,
space-separated. What Tunix does differently: it is stateless between the turns, so turn 2
prefills prompt + attempt 1 + instruction again (224 tokens) instead of the instruction alone;
its Llama prefill computes logits at every position; by default it records no log-probs
(ours records each sampled token's fp32 log-prob: pass --tunix_logprobs to ask Tunix for
them too); its compute dtype is its weights' dtype (--tunix_dtype); and its Llama ignores
``rope_theta`` (RoPE runs at 1e6 whatever the config says; no effect on speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import tunix
from tunix.generate import sampler as sampler_lib
from tunix.models import dummy_model_creator
from tunix.models.llama3 import model as llama3

# bench/machine.py and bench/rollout.py, beside this script.
from machine import describe_machine, use_tuned_malloc
from rollout import (NEVER_SAMPLED, OurRollout, Workload, add_workload_arguments, print_header,
                     print_row)
from score_jax import config_lib
from score_jax.compilation import count_compilations
from score_jax.model import Decoder, init_params

class IdTokenizer:
  """Tunix's tokenizer protocol over raw token ids: a text is its ids, space-separated."""

  def __init__(self, pad_id: int):
    self._pad_id = pad_id

  def encode(self, text: str, **_) -> list[int]:
    return [int(token) for token in text.split()]

  def decode(self, ids, **_) -> str:
    return ' '.join(str(int(token)) for token in ids)

  def bos_id(self) -> None:
    return None  # The Sampler prepends no BOS.

  def eos_id(self) -> int:
    return NEVER_SAMPLED

  def pad_id(self) -> int:
    return self._pad_id


def tunix_config(config) -> llama3.ModelConfig:
  """Tunix's Llama 3 config of the same shape as our ``ModelConfig``."""
  return llama3.ModelConfig(
      num_layers=config.num_layers, vocab_size=config.vocab_size, embed_dim=config.d_model,
      hidden_dim=config.mlp_dim, num_heads=config.num_heads, head_dim=config.head_dim,
      num_kv_heads=config.num_kv_heads, rope_theta=int(config.rope_theta),
      norm_eps=config.norm_eps, weight_tying=config.tie_embeddings)


class TunixRollout:
  """The same two turns with Tunix's ``Sampler`` (random weights of the same shape)."""

  def __init__(self, transformer, config, prompts, instruction, attempt_len, temperature,
               logprobs):
    model_config = transformer.config
    # The pad id is out of the vocabulary: nothing sampled or given is ever taken for padding.
    tokenizer = IdTokenizer(pad_id=config.vocab_size)
    prompt_len = len(prompts[0])
    self.turn_prompt_lens = (prompt_len, prompt_len + attempt_len + len(instruction))

    def sampler(prompt_len: int):
      cache = sampler_lib.CacheConfig(
          cache_size=prompt_len + attempt_len, num_layers=model_config.num_layers,
          num_kv_heads=model_config.num_kv_heads, head_dim=model_config.head_dim)
      return sampler_lib.Sampler(transformer, tokenizer, cache)

    self.samplers = [sampler(length) for length in self.turn_prompt_lens]
    self.prompts = [tokenizer.decode(prompt) for prompt in prompts]
    self.instruction = tokenizer.decode(instruction)
    self.attempt_len = attempt_len
    self.kwargs = dict(max_generation_steps=attempt_len, temperature=temperature, top_p=1.0,
                       top_k=None, return_logprobs=logprobs)
    start = time.perf_counter()
    with count_compilations() as compiles:
      self.time(0)
    self.first_call_s, self.compiles = time.perf_counter() - start, compiles.count

  def generate(self, turn: int, texts, seed: int):
    output = self.samplers[turn](texts, max_prompt_length=self.turn_prompt_lens[turn],
                                 seed=2 * seed + turn, **self.kwargs)
    # No padding, no early stop: every row is exactly its prompt and attempt_len new tokens.
    assert output.padded_prompt_tokens.shape[1] == self.turn_prompt_lens[turn], \
        output.padded_prompt_tokens.shape
    assert all(len(tokens) == self.attempt_len for tokens in output.tokens), \
        [len(tokens) for tokens in output.tokens]
    return output

  def time(self, seed: int) -> float:
    start = time.perf_counter()
    first = self.generate(0, self.prompts, seed)
    second = self.generate(1, [f'{prompt} {attempt} {self.instruction}'
                               for prompt, attempt in zip(self.prompts, first.text)], seed)
    elapsed = time.perf_counter() - start
    self.generated = sum(len(t) for t in first.tokens) + sum(len(t) for t in second.tokens)
    return elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_workload_arguments(parser, batch='8,32')
  parser.add_argument('--dtype', default='bfloat16',
                      help='our compute dtype (weights are kept in fp32 and cast once)')
  parser.add_argument('--tunix_dtype', default='float32',
                      help="Tunix's weight dtype, which is its compute dtype")
  parser.add_argument('--tunix_logprobs', action='store_true',
                      help="ask Tunix for the sampled tokens' log-probs (ours records them)")
  parser.add_argument('--preset', default='smollm2_135m')
  parser.add_argument('--layers', type=int, default=0,
                      help="override the preset's layer count (e.g. 2 for a quick test)")
  args = parser.parse_args()
  malloc = use_tuned_malloc(args.default_malloc)

  config = config_lib.build_model_config(config_lib.model_config(args.preset))
  if args.layers:
    config = dataclasses.replace(config, num_layers=args.layers)
  params, _ = init_params(Decoder(config), jax.random.key(0))
  model = Decoder(dataclasses.replace(config, dtype=args.dtype))
  transformer = dummy_model_creator.create_dummy_model(
      llama3.Llama3, tunix_config(config), dtype=jnp.dtype(args.tunix_dtype))

  layers = f', {config.num_layers} layers' if args.layers else ''
  print(f'# two-turn rollout vs Tunix: {args.preset}{layers} (random weights), '
        f'{describe_machine()}; jax {jax.__version__}, tunix {tunix.__version__}')
  print(malloc)
  print(f'# P={args.prompt_len} L1=L2={args.attempt_len} I={args.instruction_len}, '
        f'temperature {args.temperature}, no top-k/top-p; compute dtype ours {args.dtype}, '
        f'Tunix {args.tunix_dtype}; Tunix log-probs {"on" if args.tunix_logprobs else "off"}; '
        f'{args.repeats} repeats')

  workload = Workload(args, config.vocab_size)
  header = ['batch', 'tokens', 'ours s', 'ours tokens/s', 'ours first call s (compiles)',
            'ours recompiles', 'tunix s', 'tunix tokens/s', 'tunix first call s (compiles)',
            'tunix recompiles', 'ratio']
  print_header(header)
  summaries = []
  for batch, prompts in workload.batches():
    ours = OurRollout(model, params, workload.spec, prompts, args.temperature)
    peer = TunixRollout(transformer, config, prompts, workload.instruction, args.attempt_len,
                        args.temperature, args.tunix_logprobs)
    ours_times, tunix_times = [], []
    recompiles = [0, 0]
    for repeat in range(args.repeats):
      for side, (runner, times) in enumerate(((ours, ours_times), (peer, tunix_times))):
        with count_compilations() as compiles:
          times.append(runner.time(repeat + 1))
        recompiles[side] += compiles.count
    tokens = batch * 2 * args.attempt_len
    assert ours.generated == peer.generated == tokens, (ours.generated, peer.generated)
    ours_s, tunix_s = statistics.median(ours_times), statistics.median(tunix_times)
    ratio = statistics.median(t / o for t, o in zip(tunix_times, ours_times))
    row = [batch, tokens, f'{ours_s:.2f}', f'{tokens / ours_s:.0f}',
           f'{ours.first_call_s:.1f} ({ours.compiles})', recompiles[0], f'{tunix_s:.2f}',
           f'{tokens / tunix_s:.0f}', f'{peer.first_call_s:.1f} ({peer.compiles})', recompiles[1],
           f'{ratio:.2f}x']
    print_row(row, flush=True)
    summaries.append(f'batch {batch}: {ratio:.1f}x tunix ({tokens / ours_s:.0f} vs '
                     f'{tokens / tunix_s:.0f} tokens/s)')
  print('; '.join(summaries))


if __name__ == '__main__':
  main()
