r"""Converts checkpoints between score-jax and the formats serving stacks read.

  # A trained run's policy (latest step, or --step) → a Hugging Face checkpoint:
  python -m score_jax.convert --checkpoint=/tmp/score-smollm2 --output=/tmp/smollm2-score

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
  return params, experiment.model_config, experiment.pretrained, experiment.tokenizer


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
      params, config, source, tokenizer = _from_checkpoint(_CHECKPOINT.value, _STEP.value)
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


if __name__ == '__main__':
  app.run(main)
