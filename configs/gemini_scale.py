r"""SCoRe on MATH at Gemini scale: Llama 3.1 405B shapes on a v5p-1024 slice (512 chips).

  python -m score_jax.train --config=configs/gemini_scale.py --workdir=gs://BUCKET/run \
      --config.task.path=/data/MATH --config.task.heldout_ids=/data/math500_test.jsonl
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemini_scale.py   # fits the slice?

The paper's MATH setting (Kumar et al., 2024, Table 8): Adam at 5e-6, batches of 512
two-attempt rollouts, sampling temperature 1.0, alpha 10, beta1 0.01, beta2 0.1, greedy
evaluation. Stage lengths are not reported: Stage I, then Stage II, over the paper's 3000
steps. Memory and step-time figures per chip, and why the mesh is what it is: docs/aot.md.
The paper trains Gemini 1.5 Flash, whose size is not public; Llama 3.1 405B stands in as
the largest open shape. In short: float32 master weights with bfloat16 Adam moments and
reference, tensor=16 to keep the bfloat16 sampling copy of the weights within a chip, and the
update as sixteen minibatches of 32 rollouts.

Variant (after the colon): ``tiny`` keeps every setting but shrinks the model, slots and batch
and targets a v5e:2x2 topology (the check's own test).
"""

import ml_collections

from score_jax import aot
from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, tiny=False)
  # float32 master weights (a bfloat16 weight ignores updates below about 2^-8 of its size,
  # so at the paper's 5e-6 most updates would round away), with Adam's moments and the
  # frozen reference stored in bfloat16 to fit the slice: the sampling copy (bfloat16, split
  # over tensor only) is 54.6 GiB per chip. docs/aot.md has the figures.
  config = config_lib.paper_math_config(
      preset='llama3_1_405b', template='llama3',
      tpu=aot.tpu_config('v5p', '8x8x8'),  # v5p-1024
      mesh=config_lib.mesh_config(data=1, fsdp=32, tensor=16),
      minibatches=16,
      param_dtype='float32')
  config.rl.optimizer.moment_dtype = 'bfloat16'
  config.rl.reference_dtype = 'bfloat16'
  if args.tiny:
    config_lib.shrink_for_aot_test(config, 'tiny', aot.tpu_config('v5e', '2x2'))
  return config
