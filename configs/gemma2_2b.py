r"""SCoRe on MATH with Gemma 2 2B on a v5p-8 slice (4 chips).

  python -m score_jax.train --config=configs/gemma2_2b.py --workdir=gs://BUCKET/run \
      --config.task.path=/data/MATH --config.task.heldout_ids=/data/math500_test.jsonl
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemma2_2b.py   # fits the slice?

The paper's MATH setting (Kumar et al., 2024, Table 8): Adam at 5e-6, batches of 512
two-attempt rollouts, sampling temperature 1.0, alpha 10, beta1 0.01, beta2 0.1, greedy
evaluation. Stage lengths are not reported: Stage I, then Stage II, over the paper's 3000
steps. Memory and step-time figures per chip, and why the slice and mesh are what they are:
docs/aot.md. In short: each chip holds 128 of the 512 rollouts, which it decodes in two chunks
of 64 (a whole-batch KV cache would not fit), and the update runs as four minibatches of 128
rollouts (one PPO epoch).

Variant (after the colon): ``tiny`` keeps every setting but shrinks the model, slots and batch
and targets a v5e:2x2 topology (the check's own test).
"""

import ml_collections

from score_jax import aot
from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, tiny=False)
  config = config_lib.paper_math_config(
      preset='gemma2_2b', template='gemma',
      tpu=aot.tpu_config('v5p', '2x2x1'),  # v5p-8
      mesh=config_lib.mesh_config(data=1, fsdp=4, tensor=1),
      minibatches=4, row_chunks=2)
  if args.tiny:
    config_lib.shrink_for_aot_test(config, 'tiny_gemma2', aot.tpu_config('v5e', '2x2'))
  return config
