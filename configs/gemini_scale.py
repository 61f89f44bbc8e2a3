r"""SCoRe on MATH at Gemini scale: Llama 3.1 405B shapes on a v5p-1024 slice (512 chips).

  python -m score_jax.train --config=configs/gemini_scale.py --workdir=gs://BUCKET/run \
      --config.task.path=/data/MATH --config.task.heldout_ids=/data/math500_test.jsonl
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemini_scale.py   # fits the slice?

The paper's MATH setting (Kumar et al., 2024, Table 8): Adam at 5e-6, batches of 512
two-attempt rollouts, sampling temperature 1.0, alpha 10, beta1 0.01, beta2 0.1, greedy
evaluation. Stage lengths are not reported: Stage I, then Stage II, over the paper's 3000
steps. Memory and step-time figures per chip, and why the mesh is what it is: docs/aot.md.
The paper trains Gemini 1.5 Flash, whose size is not public; Llama 3.1 405B stands in as
the largest open shape. In short: bfloat16 parameters and tensor=16 keep the sampling copy of
the weights within a chip, and the update runs as sixteen minibatches of 32 rollouts.

Variant (after the colon): ``tiny`` keeps every setting but shrinks the model, slots and batch
and targets a v5e:2x2 topology (the check's own test).
"""

import ml_collections

from score_jax import aot
from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, tiny=False)
  config = config_lib.base_train_config()
  config.seed = 0

  config.model_preset = 'llama3_1_405b'
  # bfloat16 parameters (and so Adam moments): float32 ones would make the sampling copy of
  # the weights 109 GiB per chip at tensor=16. Caveat: a bfloat16 weight ignores updates
  # below about 2^-8 (0.4%) of its size, so at a learning rate of 5e-6 most updates round
  # away; docs/aot.md says what would let float32 master weights fit.
  config.model = config_lib.model_config(
      'llama3_1_405b', param_dtype='bfloat16', dtype='bfloat16', scan_layers=True,
      remat_policy='full')
  config.tpu = aot.tpu_config('v5p', '8x8x8')  # v5p-1024
  config.mesh = config_lib.mesh_config(data=1, fsdp=32, tensor=16)

  config.task.name = 'math'
  config.task.template = 'llama3'
  config.task.instruction = 'paper_math'
  config.task.path = ''  # The MATH directory or JSONL file (--config.task.path=...).
  config.task.heldout_ids = ''  # MATH500's ids (its test.jsonl), held out for evaluation.
  # MATH slot widths: the paper's first-turn prompt plus a problem, two worked solutions, and
  # the paper's self-correction instruction (about 90 tokens in the chat template).
  config.rollout.prompt_len = 512
  config.rollout.attempt1_len = 1024
  config.rollout.instruction_len = 128
  config.rollout.attempt2_len = 1024
  config.rollout.temperature = 1.0

  config.schedule = 'stage1:1000,stage2:2000'
  config.rl.batch_size = 512
  config.rl.num_samples = 4  # Not reported in the paper; RLOO needs at least 2.
  # One pass over the 512 rollouts in sixteen minibatches (16 rows per chip in one update would
  # not fit): the first is exactly on-policy, the others importance-corrected and clipped.
  config.rl.algorithm = 'ppo'
  config.rl.ppo_epochs = 1
  config.rl.minibatches = 16
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

  if args.tiny:
    config.model_preset = 'tiny'
    config.model = config_lib.model_config(
        'tiny', param_dtype='float32', dtype='bfloat16', scan_layers=True,
        remat_policy='full')
    _shrink_for_tests(config)
  return config


def _shrink_for_tests(config: ml_collections.ConfigDict) -> None:
  config.tpu = aot.tpu_config('v5e', '2x2')
  config.mesh = config_lib.mesh_config(data=1, fsdp=-1, tensor=1)
  config.rollout.prompt_len = 16
  config.rollout.attempt1_len = 32
  config.rollout.instruction_len = 8
  config.rollout.attempt2_len = 32
  config.rl.batch_size = 8 * config.rl.minibatches  # 2 rows per chip in each minibatch.
  config.eval.batch_size = 16
