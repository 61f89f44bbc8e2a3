r"""Ahead-of-time check: do a config's RL update and rollout fit its TPU slice?

  pip install 'score-jax[tpu]'        # or: pip install 'libtpu==0.0.42.*' (own environment)
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemini_scale.py
  JAX_PLATFORMS=cpu python -m score_jax.aot --config=configs/gemma2_2b.py:tiny

No TPU is needed: libtpu describes the slice in ``config.tpu`` (``slices.tpu_config``), and
the two programs the trainer runs at every RL step are lowered and compiled for it, exactly
as ``score_jax.train`` builds them:

* the RL update (``training.steps.make_rl_step``: reference log-probs, stage weights, loss,
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
including when the compiler itself runs out of HBM (``RESOURCE_EXHAUSTED``), and 2 for an
invalid config.

What lives in HBM during a step (as ``score_jax.train`` holds it): the train state (policy
parameters and Adam moments) and the frozen reference throughout; during the rollout, the
sampling-layout copy of the weights, the prompts and the rollout's own buffers (KV cache,
logits; one chunk of rows at a time with ``rollout.row_chunks``); during the update, the
rollout batch and the update's temporaries (the sampling copy is gone by then:
``training.runners.RLRunner`` drops it).

Modules: ``slices`` (the chips and ``config.tpu``), ``programs`` (abstract inputs, analytic
FLOPs, compiling), ``check`` (the check and its report), ``__main__`` (the command).
"""

from score_jax.aot.check import Result, check, first_rl_phase, format_report
from score_jax.aot.programs import GIB, Program, compile_program, rollout_flops, update_flops
from score_jax.aot.slices import (CHIPS, LIBTPU_PIN, LibtpuMissing, Slice, require_libtpu,
                                  tpu_config)

__all__ = [
    'CHIPS', 'GIB', 'LIBTPU_PIN', 'LibtpuMissing', 'Program', 'Result', 'Slice', 'check',
    'compile_program', 'first_rl_phase', 'format_report', 'require_libtpu', 'rollout_flops',
    'tpu_config', 'update_flops',
]
