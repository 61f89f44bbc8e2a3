r"""Prints (and writes) the paper-style self-correction table for a checkpoint.

  python -m score_jax.evaluate --checkpoint=/tmp/score-toy
  python -m score_jax.evaluate --checkpoint=/tmp/score-toy --step=400 --temperature=0.7 \
      --num_problems=200
  python -m score_jax.evaluate --config=configs/smollm2_135m.py:task=humaneval
  python -m score_jax.evaluate --checkpoint=/tmp/score-toy --attempt1_from=700

Without ``--checkpoint``, the weights the config names in ``init_from`` (a Hugging Face
directory or a GGUF file) are evaluated as they are: the table's base row. Data, and the
result, then go under ``--workdir``.

``--checkpoint`` is a training workdir (or its ``checkpoints/`` folder); the latest step is
used unless ``--step`` names another. A latest step whose files are damaged is passed over
for the next older one, with a warning (docs/faults.md); a damaged ``--step`` is an error.
The run's config is read from the checkpoint; pass ``--config`` (with overrides) only to
evaluate under different settings, e.g. another held-out split. Decoding is greedy by
default, as in the paper. When the checkpoint holds the frozen reference model of an RL run,
its row is printed too, so the table shows base vs trained; each model is read from the
checkpoint only when its row is evaluated (and only its parameters), so one copy of the
weights is in memory at a time. The result goes to ``--output`` (default
``WORKDIR/eval_step<N>.json``), and both attempts on every problem to ``..._samples.jsonl``
beside it.

``--attempt1_from`` (``base`` or a step of the same checkpoint) gives every row that model's
attempt 1s, decoded once, so that only attempt 2 is each row's own: it separates what
training did to attempt 2 from how it moved attempt 1 (docs/stage2.md, Hypothesis 13). When
the task names kinds of attempt (``Task.attempt_kind``; the toy task's habits), a second
table counts attempt 1's kinds and how many of each attempt 2 got right.

Paths may be URLs (``gs://...``). On a multi-host slice, run it on every host with
``SCORE_JAX_DISTRIBUTED=1`` as for ``score_jax.train``: each host scores its own rows and
process 0 prints and writes the result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

import ml_collections

from score_jax import config_lib, distributed, paths, reporting
from score_jax.checkpoints import (Checkpointer, UnreadableCheckpoint, checkpoint_dir,
                                   restore_models)
from score_jax.sampling import SamplingParams
from score_jax.training.errors import EXIT_INVALID, EXIT_STORAGE, StorageFault
from score_jax.training.evaluation import Evaluator, held_out_problems
from score_jax.training.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file to use instead of the one stored in the checkpoint.',
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None,
    'A training workdir or its checkpoints/; omit it to evaluate the config\'s init_from weights.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Sampling temperature; 0 is greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling threshold.')
_NUM_PROBLEMS = flags.DEFINE_integer('num_problems', None,
                                     'Held-out problems to use (default: config.eval).')
_BASE = flags.DEFINE_boolean('base', True, 'Also evaluate the stored reference (base) model.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the JSON result.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed (ignored when greedy).')
_ATTEMPT1_FROM = flags.DEFINE_string(
    'attempt1_from', '',
    'Give every row the attempt 1s of another model of the checkpoint: "base" (the stored '
    'reference model) or a step; only attempt 2 is then each row\'s own.')
_WORKDIR = flags.DEFINE_string(
    'workdir', '/tmp/score-jax-eval',
    'Where data and results go when there is no --checkpoint.')


def load_models(config):
  """(config, experiment, workdir, models, attempt1_source) for the flags.

  ``models`` lists the table's rows as ``(name, load)``: ``load()`` reads that model's
  parameters when its row is evaluated, so that only one model is in memory at a time.
  ``attempt1_source`` is the ``(name, load)`` of the model whose attempt 1s every row
  replays (``--attempt1_from``), or None.
  """
  if _CHECKPOINT.value is None:
    if config is None or not config.get('init_from'):
      raise ValueError('Give --checkpoint (a training workdir), or a --config whose init_from '
                       'names pretrained weights to evaluate.')
    workdir = _WORKDIR.value
    with distributed.main_process_first('data'):
      experiment = Experiment.from_config(config, workdir, with_train_split=False)
    if _ATTEMPT1_FROM.value:
      raise ValueError('--attempt1_from needs --checkpoint (the models it names are in one).')
    return config, experiment, workdir, [
        ('base', lambda: experiment.initial_params(config.seed)[0])], None
  workdir, directory = checkpoint_dir(_CHECKPOINT.value)
  say = print if distributed.is_main_process() else lambda *_: None
  with _open(directory) as checkpointer:
    step, meta = checkpointer.verified_meta(_STEP.value, log=say)
  # The run's own config (as saved with the checkpoint) unless --config overrides it.
  config = config or ml_collections.ConfigDict(meta['config'])
  with distributed.main_process_first('data'):
    experiment = Experiment.from_config(config, workdir, with_train_split=False)

  def load(reference: bool, at_step: int = step):
    # The policy of a LoRA run is its base with the adapters merged in (restore_models).
    with _open(directory) as checkpointer:
      policy, base = restore_models(experiment, checkpointer, at_step,
                                    with_reference=reference, with_policy=not reference)
    return base if reference else policy

  models = [('base', lambda: load(True))] if meta['has_reference'] and _BASE.value else []
  models.append((f'step {step}', lambda: load(False)))
  source = _ATTEMPT1_FROM.value
  if not source:
    return config, experiment, workdir, models, None
  if source == 'base':
    if not meta['has_reference']:
      raise ValueError('--attempt1_from=base: the checkpoint holds no reference model (it is '
                       'a warm start); name a step instead.')
    return config, experiment, workdir, models, ('base', lambda: load(True))
  if not source.isdigit():
    raise ValueError(f'--attempt1_from must be "base" or a checkpoint step; got {source!r}.')
  with _open(directory) as checkpointer:
    checkpointer.verified_meta(int(source), log=say)  # A clear error for a missing step.
  return config, experiment, workdir, models, (f'step {source}',
                                               lambda: load(False, int(source)))


@contextlib.contextmanager
def _open(directory: str):
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    yield checkpointer
  finally:
    checkpointer.close()


def _read(load):
  """``load()``, with damage the files alone did not show (a flipped bit) as one line."""
  try:
    return load()
  except UnreadableCheckpoint as e:
    _fail(f'The {e}; pick another with --step.', EXIT_STORAGE)


def _fail(message: str, exit_code: int = EXIT_INVALID):
  """Ends the command with one line on stderr (by default exit code 2: invalid input)."""
  print(f'score_jax.evaluate: {message}', file=sys.stderr, flush=True)
  raise SystemExit(exit_code)


def _print_progress(done: int, total: int, seconds: float) -> None:
  if distributed.is_main_process():
    print(f'  evaluated {done}/{total} problems ({seconds:.0f}s)', flush=True)


def _parse_flags(argv):
  """absl's flag parsing; an override of a field the config does not declare is one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' answer to an unknown field.
    _fail(f'invalid config: {config_lib.unknown_override(argv) or e}')


def main(argv):
  del argv
  try:
    distributed.maybe_initialize()  # Before any other JAX call.
  except ValueError as e:
    _fail(str(e))
  config_lib.quiet_library_logs()
  try:
    config, experiment, workdir, models, attempt1_source = load_models(_CONFIG.value)
    sampling = SamplingParams.create(_TEMPERATURE.value, _TOP_P.value)
  except StorageFault as e:
    _fail(str(e), EXIT_STORAGE)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))

  try:
    examples = held_out_problems(experiment.test_examples, _NUM_PROBLEMS.value,
                                 config.eval.num_problems)
  except ValueError as e:
    _fail(str(e))
  evaluator = Evaluator(experiment, config.eval.batch_size)
  main_process = distributed.is_main_process()
  say = functools.partial(print, flush=True) if main_process else lambda *_, **__: None
  rows, samples = {}, {}
  start = time.perf_counter()
  replay = None
  if attempt1_source is not None:
    source_name, load = attempt1_source
    say(f'decoding the attempt 1s of {source_name} on {len(examples)} problems')
    params = _read(load)
    replay = evaluator.first_attempts(params, examples, sampling, _SEED.value)
    del params
  for name, load in models:
    what = 'the reference (base) model' if name == 'base' and _CHECKPOINT.value else name
    if replay is not None:
      name = f'{name}, attempt 1 of {source_name}'
    say(f'evaluating {what} on {len(examples)} problems')
    samples[name] = []
    params = _read(load)
    rows[name] = evaluator.run(params, examples, sampling, _SEED.value, samples=samples[name],
                               after_batch=_print_progress, replay=replay)
    del params
  label = models[-1][0].replace(' ', '')
  if replay is not None:
    label += f'_attempt1_{source_name.replace(" ", "")}'
  wall_s = time.perf_counter() - start
  if not main_process:
    return
  print('\n' + reporting.format_table(rows) + '\n')
  kinds = reporting.attempt1_kinds(samples)
  if kinds:
    print(reporting.format_attempt1_kinds(kinds) + '\n')
  print(f'{len(examples)} problems in {wall_s:.0f} s')
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  output = _OUTPUT.value or os.path.join(workdir, f'eval_{label}.json')
  paths.write_text(output, json.dumps(dict(
      rows=rows, label=label, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      num_problems=len(examples), wall_s=wall_s, attempt1_from=_ATTEMPT1_FROM.value or None,
      **({'attempt1_kinds': kinds} if kinds else {})), indent=2))
  samples_path = os.path.splitext(output)[0] + '_samples.jsonl'
  paths.write_text(samples_path, ''.join(
      json.dumps(dict(row=row, **sample)) + '\n'
      for row, row_samples in samples.items() for sample in row_samples))
  print(f'written to {output} (both attempts per problem in {samples_path})')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
