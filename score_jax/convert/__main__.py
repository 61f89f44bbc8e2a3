r"""Converts checkpoints between score-jax and the formats serving stacks read.

  # A trained run's policy (latest step, or --step) → a Hugging Face checkpoint:
  python -m score_jax.convert --checkpoint=/tmp/score-smollm2 --output=/tmp/smollm2-score

  # ... and check that transformers gives the export's first held-out answers as score-jax
  # does, both in fp32 (a bf16 evaluation, e.g. the run's own eval_final_samples.jsonl, differs
  # from fp32 on some near-tied tokens, whichever library runs it):
  python -m score_jax.evaluate --checkpoint=/tmp/score-smollm2 --nobase --num_problems=10 \
      --config=configs/smollm2_score.py --config.model.dtype=float32 --output=/tmp/fp32/eval.json
  python -m score_jax.convert --checkpoint=/tmp/score-smollm2 --output=/tmp/smollm2-score \
      --check_against=/tmp/fp32/eval_samples.jsonl --check_num=10

  # A GGUF file or a Hugging Face directory → a Hugging Face checkpoint (f32 safetensors),
  # read and written through score-jax's own importer and exporter:
  python -m score_jax.convert --input=SmolLM2-135M-Instruct.Q4_1.gguf --output=/tmp/smollm2-hf

The output loads with ``transformers.AutoModelForCausalLM.from_pretrained(OUTPUT)`` (and so
in vLLM and other stacks that read Hugging Face checkpoints). The tokenizer files go with it
when the source has a Hugging Face tokenizer (a GGUF file's is rebuilt as ``tokenizer.json``,
its chat template kept). To train from a checkpoint, no conversion is needed: name it in a
config (``--config.init_from=PATH``).
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags

import ml_collections

from score_jax import config_lib
from score_jax.convert import hf, model_config_for, open_pretrained

_INPUT = flags.DEFINE_string('input', None, 'A Hugging Face checkpoint directory or a .gguf file.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'A score-jax training workdir (or its checkpoints/ folder).')
_STEP = flags.DEFINE_integer('step', None, 'With --checkpoint: the step (default: the latest).')
_OUTPUT = flags.DEFINE_string('output', None, 'The Hugging Face checkpoint directory to write.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                           'Dtype of the written weights (default: the parameters\' own).')
_CHECK_AGAINST = flags.DEFINE_string(
    'check_against', None,
    'With --checkpoint: an evaluation samples file of the exported step, evaluated in fp32 '
    '(score_jax.evaluate --config.model.dtype=float32); the export, loaded in transformers in '
    'fp32, must give the same greedy attempt 1 on its first --check_num problems '
    '(score_jax/convert/parity.py).')
_CHECK_NUM = flags.DEFINE_integer('check_num', 3, 'Problems compared by --check_against.')
flags.mark_flags_as_required(['output'])


def _from_input(path: str):
  pretrained = open_pretrained(path)
  config = model_config_for(pretrained, scan_layers=True)
  print(f'importing {path} ({pretrained.format}, {config.num_params() / 1e6:.1f}M parameters)',
        flush=True)
  return pretrained.load_params(config), config, pretrained, pretrained.tokenizer


def _from_checkpoint(path: str, step: int | None):
  from score_jax.checkpoints import Checkpointer, checkpoint_dir, restore_models  # pylint: disable=g-import-not-at-top
  from score_jax.training.experiment import Experiment  # pylint: disable=g-import-not-at-top
  workdir, directory = checkpoint_dir(path)
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    meta = checkpointer.read_meta(step)
    config = ml_collections.ConfigDict(meta['config'])
    experiment = Experiment.from_config(config, workdir, with_train_split=False)
    print(f'restoring step {meta["global_step"]} from {directory}', flush=True)
    params, _ = restore_models(experiment, checkpointer, meta['global_step'],
                               with_reference=False)
  finally:
    checkpointer.close()
  return params, experiment


def _check_against(experiment, samples_path: str, output: str) -> bool:
  """Compares the export's greedy attempts 1 in transformers with an evaluation's; prints
  each and returns whether all agree."""
  from score_jax.convert import parity  # pylint: disable=g-import-not-at-top
  from score_jax.writers import read_jsonl  # pylint: disable=g-import-not-at-top
  problems = {e.id: experiment.task.first_turn_prompt(e) for e in experiment.test_examples}
  results = parity.compare(read_jsonl(samples_path), problems, output,
                           experiment.spec.attempt1_len, _CHECK_NUM.value,
                           system=experiment.config.task.system_prompt or None)
  for r in results:
    print(f'{"same" if r.same else "DIFFERENT"} attempt 1 on {r.id!r}: score-jax {r.ours!r}' +
          ('' if r.same else f', transformers {r.theirs!r}'))
  same = sum(r.same for r in results)
  print(f'transformers gives the same greedy attempt 1 on {same} of {len(results)} problems')
  return same == len(results)


def main(argv):
  del argv
  config_lib.quiet_library_logs()
  if (_INPUT.value is None) == (_CHECKPOINT.value is None):
    raise SystemExit('score_jax.convert: give exactly one of --input and --checkpoint.')
  start = time.perf_counter()
  try:
    if _INPUT.value is not None:
      params, config, source, tokenizer = _from_input(_INPUT.value)
    else:
      params, experiment = _from_checkpoint(_CHECKPOINT.value, _STEP.value)
      config, source, tokenizer = (experiment.model_config, experiment.pretrained,
                                   experiment.tokenizer)
    if not isinstance(tokenizer, hf.HuggingFaceTokenizer):
      tokenizer = None  # e.g. the toy task's sentencepiece model: weights and config only.
    files = hf.export(params, config, _OUTPUT.value, dtype=_DTYPE.value, tokenizer=tokenizer,
                      chat_template=getattr(source, 'chat_template', None),
                      source=source if isinstance(source, hf.HuggingFaceCheckpoint) else None)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'score_jax.convert: {e}') from None
  written = sorted(set(os.listdir(_OUTPUT.value)) - set(files))
  print(f'wrote {", ".join(files + written)} to {os.path.abspath(_OUTPUT.value)} '
        f'in {time.perf_counter() - start:.1f} s')
  if tokenizer is None:
    print('no Hugging Face tokenizer to write (the source has none): add tokenizer files '
          'before loading the export with a tokenizer.')
  if _CHECK_AGAINST.value:
    if _CHECKPOINT.value is None or tokenizer is None:
      raise SystemExit('score_jax.convert: --check_against needs --checkpoint of a run whose '
                       'model has a Hugging Face tokenizer.')
    try:
      agree = _check_against(experiment, _CHECK_AGAINST.value, _OUTPUT.value)
    except (ValueError, FileNotFoundError) as e:
      raise SystemExit(f'score_jax.convert: {e}') from None
    if not agree:
      raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
