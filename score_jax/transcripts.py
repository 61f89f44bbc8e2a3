r"""Transcripts of a run's held-out problems, before and after training, chosen by a fixed rule.

  python -m score_jax.transcripts --workdir=/tmp/score-smollm2
  python -m score_jax.transcripts --workdir=/tmp/score-smollm2 --per_outcome=3 \
      --output=/tmp/transcripts.md

Reads the greedy evaluations a training run wrote (``eval_base_samples.jsonl`` and
``eval_final_samples.jsonl``; ``--before``/``--after`` name other sample files, such as the
``eval_step<N>_samples.jsonl`` of an evaluation between stages) and prints Markdown: for each
outcome of the *after* model on a problem — attempt 1 wrong and attempt 2 right (i→c), right
then wrong (c→i), wrong twice (i→i), right twice (c→c) — the first ``--per_outcome`` problems
of that outcome in held-out order, each with the problem, both models' attempts and the
instruction between them. The rule is fixed so that nobody picks the flattering examples.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from etils import epath

from score_jax import config_lib, paths
from score_jax.reporting import format_transcripts
from score_jax.writers import read_jsonl

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir with its evaluation samples.')
_BEFORE = flags.DEFINE_string('before', '', 'Samples before (default: WORKDIR/eval_base_samples.jsonl).')
_AFTER = flags.DEFINE_string('after', '', 'Samples after (default: WORKDIR/eval_final_samples.jsonl).')
_PER_OUTCOME = flags.DEFINE_integer('per_outcome', 2, 'Problems shown per outcome.')
_OUTPUT = flags.DEFINE_string('output', '', 'Also write the Markdown here.')


def _run_context(workdir: str) -> tuple[dict[str, str], str]:
  """The held-out problems' texts and the instruction, from the run's stored config."""
  from score_jax.checkpoints import Checkpointer, checkpoint_dir  # pylint: disable=g-import-not-at-top
  from score_jax.training.experiment import build_task  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  run_dir, directory = checkpoint_dir(workdir)
  config = ml_collections.ConfigDict(
      Checkpointer(directory, async_save=False).read_meta()['config'])
  task = build_task(config.task)
  data_dir = config.task.data_dir or os.path.join(run_dir, 'data')
  examples = task.load_split(config.task.test_split, data_dir)
  problems = {e.id: task.first_turn_prompt(e) for e in examples[:config.eval.num_problems]}
  return problems, task.instruction_text(config.task.instruction)


def main(argv):
  del argv
  config_lib.quiet_library_logs()
  workdir = _WORKDIR.value
  if not workdir and not (_BEFORE.value and _AFTER.value):
    raise app.UsageError('Give --workdir, or both --before and --after.')
  before_path = _BEFORE.value or os.path.join(workdir, 'eval_base_samples.jsonl')
  after_path = _AFTER.value or os.path.join(workdir, 'eval_final_samples.jsonl')
  for path in (before_path, after_path):
    if not epath.Path(path).exists():
      raise app.UsageError(f'{path} does not exist: it is written by a training run\'s '
                           'held-out evaluations (score_jax.train).')
  problems, instruction = _run_context(workdir) if workdir else ({}, '')
  text = format_transcripts(read_jsonl(before_path), read_jsonl(after_path),
                            _PER_OUTCOME.value, problems, instruction)
  print(text, end='')
  if _OUTPUT.value:
    paths.write_text(_OUTPUT.value, text)


if __name__ == '__main__':
  app.run(main)
