r"""Prints (and writes) the paper-style self-correction table for a checkpoint.

  python -m score_jax.evaluate --checkpoint=/tmp/score-toy
  python -m score_jax.evaluate --checkpoint=/tmp/score-toy --step=400 --temperature=0.7 \
      --num_problems=200

``--checkpoint`` is a training workdir (or its ``checkpoints/`` folder); the latest step is
used unless ``--step`` names another. The run's config is read from the checkpoint; pass
``--config`` (with overrides) only to evaluate under different settings, e.g. another
held-out split. Decoding is greedy by default, as in the paper. When
the checkpoint holds the frozen reference model of an RL run, its row is printed too, so
the table shows base vs trained. The result goes to ``--output`` (default
``WORKDIR/eval_step<N>.json``).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

import jax
import ml_collections

from score_jax import config_lib, reporting
from score_jax.checkpoints import Checkpointer, abstract_like
from score_jax.evaluation import Evaluator
from score_jax.experiment import Experiment
from score_jax.model import init_params
from score_jax.sampling import SamplingParams
from score_jax.train_steps import TrainState, make_optimizer

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file to use instead of the one stored in the checkpoint.',
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A training workdir or its checkpoints/.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Sampling temperature; 0 is greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling threshold.')
_NUM_PROBLEMS = flags.DEFINE_integer('num_problems', None,
                                     'Held-out problems to use (default: config.eval).')
_BASE = flags.DEFINE_boolean('base', True, 'Also evaluate the stored reference (base) model.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the JSON result.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed (ignored when greedy).')
flags.mark_flags_as_required(['checkpoint'])


def checkpoint_dir(path: str) -> tuple[str, str]:
  """(workdir, checkpoints directory) for a workdir or a checkpoints directory path."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return path, os.path.join(path, 'checkpoints')
  if os.path.isdir(path):
    return os.path.dirname(path), path
  raise FileNotFoundError(f'No checkpoint directory at {path!r}.')


def restore_models(config, experiment: Experiment, checkpointer: Checkpointer, meta: dict):
  """(policy params, reference params or None) from the checkpoint ``meta`` describes."""
  phases = config_lib.parse_schedule(meta['schedule'])
  kind = phases[min(meta['phase_index'], len(phases) - 1)][0]
  section = config.sft if kind == 'sft' else config.rl
  params, _ = init_params(experiment.model('train'), jax.random.key(0))
  target = abstract_like(TrainState.create(params, make_optimizer(section.optimizer)))
  reference_target = abstract_like(params) if meta['has_reference'] else None
  state, reference, _ = checkpointer.restore(target, reference_target, meta['global_step'])
  return state.params, reference


def main(argv):
  del argv
  config_lib.quiet_library_logs()
  try:
    workdir, directory = checkpoint_dir(_CHECKPOINT.value)
    checkpointer = Checkpointer(directory, async_save=False)
    try:
      meta = checkpointer.read_meta(_STEP.value)
      # The run's own config (as saved with the checkpoint) unless --config overrides it.
      config = _CONFIG.value or ml_collections.ConfigDict(meta['config'])
      experiment = Experiment.from_config(config, workdir)
      params, reference = restore_models(config, experiment, checkpointer, meta)
    finally:
      checkpointer.close()
    step = meta['global_step']
    sampling = SamplingParams.create(_TEMPERATURE.value, _TOP_P.value)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'score_jax.evaluate: {e}') from None

  examples = experiment.test_examples[:_NUM_PROBLEMS.value or config.eval.num_problems]
  evaluator = Evaluator(experiment, config.eval.batch_size)
  rows = {}
  if reference is not None and _BASE.value:
    print(f'evaluating the reference (base) model on {len(examples)} problems', flush=True)
    rows['base'] = evaluator.run(reference, examples, sampling, _SEED.value, progress=True)
  print(f'evaluating step {step} on {len(examples)} problems', flush=True)
  rows[f'step {step}'] = evaluator.run(params, examples, sampling, _SEED.value, progress=True)
  print('\n' + reporting.format_table(rows) + '\n')
  output = _OUTPUT.value or os.path.join(workdir, f'eval_step{step}.json')
  with open(output, 'w') as f:
    json.dump(dict(rows=rows, step=step, temperature=_TEMPERATURE.value,
                   top_p=_TOP_P.value, num_problems=len(examples)), f, indent=2)
  print(f'written to {output}')


if __name__ == '__main__':
  app.run(main)
