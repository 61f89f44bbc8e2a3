r"""SCoRe on the built-in toy arithmetic task: the embedded default, sized for a CPU.

  python -m score_jax.train --config=configs/toy_arith.py --workdir=/tmp/score-toy
  python -m score_jax.train --config=configs/toy_arith.py:smoke --workdir=/tmp/score-smoke

The run builds the task's data and tokenizer, warm-starts a small decoder from scratch by
SFT on generated two-attempt traces (the "base model"), then runs SCoRe Stage I and Stage
II, evaluates both on the held-out problems and prints the self-correction table.

Variant (after the colon): ``smoke`` runs the same path in about a minute (for tests).
The phase schedule is a field like any other, e.g. ``--config.schedule=sft:600,stage2:200``
(the paper's "no Stage I" ablation).
"""

import ml_collections

from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, smoke=False)
  config = config_lib.base_train_config()
  config.seed = 0

  config_lib.toy_arith_task(config.task)  # One-digit, three-operand problems.
  config.task.template = 'plain'

  config.model = config_lib.model_config(
      'tiny', vocab_size=128, num_layers=4, d_model=128, num_heads=4, num_kv_heads=2,
      head_dim=32, mlp_dim=384,
      # The four scanned layers compiled as straight-line code: about 1.3x the SFT steps/s of
      # a scanned loop, the same parameters and SFT losses (docs/stage2.md, Hypothesis 17).
      scan_unroll=4)
  config.model_preset = 'tiny'

  # Prompts are at most 8 tokens, worked attempts at most 23 and the instruction 8.
  config.rollout.prompt_len = 10
  config.rollout.attempt1_len = 26
  config.rollout.instruction_len = 8
  config.rollout.attempt2_len = 26
  config.rollout.temperature = 1.0

  # Phases: warm-start the base model, then SCoRe Stage I and Stage II, as in the paper.
  # 600 SFT steps teach the arithmetic itself, so the base model's errors are its habits (the
  # forgotten carry, the second guess) rather than random slips (docs/stage2.md, Hypothesis 11).
  config.schedule = 'sft:600,stage1:100,stage2:100'
  config.sft.batch_size = 64
  # How the warm-start traces behave (score_jax.tasks.toy_arith.TraceRates).
  config.sft.trace_options = ml_collections.ConfigDict(dict(
      first_correct=0.8, keep_correct=0.85, fix_wrong=0.25, copy_wrong=0.6, carry_habit=0.7,
      # The base model, asked to revise, changes right answers to wrong ones (docs/tasks.md).
      second_guess=0.9,
      # After a random slip attempt 2 writes the line afresh: the base model re-derives a step
      # instead of copying it, while it still copies the habit's line (docs/stage2.md,
      # Hypotheses 15 and 16).
      slip_fix=1.0, slip_copy=0.0))
  config.sft.optimizer.learning_rate = 3e-3
  config.sft.optimizer.warmup_steps = 30
  config.sft.optimizer.decay = 'cosine'
  config.sft.optimizer.final_fraction = 0.05
  config.rl.batch_size = 64
  config.rl.num_samples = 4
  config.rl.optimizer.learning_rate = 1e-4
  config.rl.optimizer.warmup_steps = 10
  # Stage II's pace, per attempt (docs/stage2.md, Hypotheses 12, 19 and 20). Attempt 1 moves
  # at a tenth of Stage I's rate: faster, it trades the correction for its own accuracy and
  # writes new wrong steps. Attempt 2 moves three times faster than that: the rate is 3e-5
  # and attempt 1's advantages are scaled by 1/3 (Adam sizes the step by attempt 2's term).
  # Attempt 2's baseline comes from the samples whose attempt 1 scored the same, which keeps
  # that pace from teaching it to break right answers.
  config.rl.stage_learning_rate.stage2 = 3e-5
  config.rl.stage2_attempt1_scale = 1 / 3
  config.rl.shaping_baseline = 'same_first_outcome'
  config.rl.alpha = 10.0
  config.rl.beta1 = 0.01
  config.rl.beta2 = 0.1
  config.rl.attempt_grad_norms = True  # Cheap at this size; the Stage II diagnostics.

  config.eval.every_steps = 50
  config.eval.num_problems = 500
  config.checkpoint.every_steps = 100
  config.log_every_steps = 20

  if args.smoke:
    config.task.train_size = 2000
    config.task.test_size = 64
    config.model.num_layers = 2
    config.model.d_model = 64
    config.model.mlp_dim = 128
    config.model.head_dim = 16
    config.schedule = 'sft:20,stage1:3,stage2:3'
    config.sft.batch_size = 16
    config.rl.batch_size = 16
    config.eval.every_steps = 0
    config.eval.num_problems = 32
    config.checkpoint.every_steps = 10
    config.log_every_steps = 5
  return config
