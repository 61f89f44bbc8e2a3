r"""Trains a model to self-correct with SCoRe (Kumar et al., 2024).

  python -m score_jax.train --config=configs/toy_arith.py --workdir=/tmp/score-toy
  python -m score_jax.train --config=configs/toy_arith.py:smoke --workdir=/tmp/smoke \
      --config.schedule=sft:20,stage2:5

The config's ``schedule`` lists the phases (``sft``, ``stage1``, ``stage2``, ``single_turn``,
``star``, ``pair_sft``; ``score_jax/training/phases.py`` says what each does). Metrics go to
``WORKDIR/metrics.jsonl`` and TensorBoard; checkpoints to ``WORKDIR/checkpoints`` (rerunning the command resumes from the
latest one, and SIGTERM saves one before exiting); at the end the base and final models are
evaluated on the held-out problems and ``WORKDIR/summary.json`` and ``WORKDIR/curves.png``
are written. ``WORKDIR`` may be a local path or a URL such as ``gs://bucket/run``.

Multi-host runs (a TPU slice: every host runs this same command): with
``SCORE_JAX_DISTRIBUTED=1`` in the environment, ``main`` first calls
``jax.distributed.initialize()``, which finds the other hosts itself on a TPU VM (and under
Slurm or Open MPI). To name the job explicitly, e.g. several CPU processes on one machine,
set ``SCORE_JAX_COORDINATOR=host:port``, ``SCORE_JAX_NUM_PROCESSES`` and
``SCORE_JAX_PROCESS_ID`` as well (``score_jax/distributed.py``). Every process then packs,
decodes and scores only its own rows of each batch (the batch axis is split over the mesh
axes ``data`` and ``fsdp``); metrics are gathered so that all processes agree; only
process 0 prints and writes metrics, the summary and the plot; every process takes part in
each checkpoint save and restore, and a SIGTERM on any process stops all of them after the
same step.

Exit codes (``score_jax/training/errors.py``): 0 done; 2 invalid config or input, one line
on stderr; 3 training diverged (the last good checkpoint is kept); 4 a storage fault (a
checkpoint or the metrics could not be written, or no checkpoint can be read: one line
naming the path, the reason and the checkpoint a rerun resumes from; docs/faults.md); 143
preempted by SIGTERM after saving a checkpoint (rerun to resume); 1 an unexpected error.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from score_jax import config_lib, distributed
from score_jax.training.errors import EXIT_INVALID, EXIT_STORAGE, RunError, storage_reason
from score_jax.training.experiment import Experiment
from score_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, summary.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str, exit_code: int):
  """Ends the command with one line on stderr."""
  print(message, file=sys.stderr, flush=True)
  raise SystemExit(exit_code)


def _parse_flags(argv):
  """absl's flag parsing; an override of a field the config does not declare is one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' answer to an unknown field.
    _fail(f'Invalid config: {config_lib.unknown_override(argv) or e}', EXIT_INVALID)


def main(argv):
  del argv
  # Before any other JAX call (nothing imported above creates arrays): every host joins.
  try:
    distributed.maybe_initialize()
  except ValueError as e:
    _fail(f'Invalid environment: {e}', EXIT_INVALID)
  config_lib.quiet_library_logs()
  config = _CONFIG.value
  workdir = _WORKDIR.value
  try:
    phases = config_lib.validate_train_config(config)
    # Process 0 builds the data (and tokenizer) under the workdir first; the others read them.
    with distributed.main_process_first('data'):
      experiment = Experiment.from_config(config, workdir)
    trainer = Trainer(config, workdir, phases, experiment)
  except RunError as e:
    _fail(str(e), e.exit_code)
  except (ValueError, FileNotFoundError, NotImplementedError) as e:
    _fail(f'Invalid config: {e}', EXIT_INVALID)
  except (OSError, RuntimeError) as e:  # The data or the tokenizer cannot be written.
    if storage_reason(e) is None:
      raise
    _fail(f'Could not write to {workdir}: {storage_reason(e)}.', EXIT_STORAGE)
  try:
    trainer.run()
  except RunError as e:
    _fail(str(e), e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
