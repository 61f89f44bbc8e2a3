"""The paper-style table and the training-curve plot written at the end of a run, and the
transcripts of held-out problems (``python -m score_jax.transcripts``)."""

from __future__ import annotations

import io
import json
import os
from typing import Mapping, Sequence

from etils import epath

from score_jax import paths
from score_jax.metrics import OUTCOME_NAMES
from score_jax.training.phases import parse_schedule
from score_jax.writers import read_jsonl


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A Markdown table, in percent, of self-correction metrics for named rows."""
  header = '| method | ' + ' | '.join(OUTCOME_NAMES.values()) + ' |'
  lines = [header, '|---' * (len(OUTCOME_NAMES) + 1) + '|']
  for name, values in rows.items():
    cells = [f'{100 * values[key]:.1f}' if key in values else '–' for key in OUTCOME_NAMES]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def attempt1_kinds(samples: Mapping[str, Sequence[Mapping]]) -> dict:
  """Per row, per kind of attempt 1 (``Task.attempt_kind``; in the order first seen):
  ``{'problems': N, 'attempt2_right': M}``. Empty when the task names no kinds."""
  out = {}
  for row, row_samples in samples.items():
    if not row_samples or 'kind1' not in row_samples[0]:
      return {}
    counts = out.setdefault(row, {})
    for sample in row_samples:
      entry = counts.setdefault(sample['kind1'], dict(problems=0, attempt2_right=0))
      entry['problems'] += 1
      entry['attempt2_right'] += int(sample['reward2'] > 0)
  return out


def format_attempt1_kinds(kinds: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
  """A Markdown table: problems per kind of attempt 1, and how many attempt 2 got right."""
  names = list(dict.fromkeys(k for counts in kinds.values() for k in counts))
  lines = ['| attempt 1 (problems / of them right at attempt 2) | ' + ' | '.join(kinds) + ' |',
           '|---' * (len(kinds) + 1) + '|']
  for name in names:
    cells = []
    for counts in kinds.values():
      entry = counts.get(name, dict(problems=0, attempt2_right=0))
      cells.append(f'{entry["problems"]} / {entry["attempt2_right"]}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def final_row_label(schedule: str) -> str:
  """The final row's name in a run's table: 'final (SCoRe)' after Stage I and Stage II, else
  the kinds of phase that trained it after the warm start ('final (single_turn)', ...)."""
  kinds = [phase.kind for phase in parse_schedule(schedule)] if schedule else []
  trained = list(dict.fromkeys(k for k in kinds if k != 'sft'))
  if {'stage1', 'stage2'} <= set(trained):
    return 'final (SCoRe)'
  return f'final ({", ".join(trained)})' if trained else 'final'


def write_run_summary(workdir: str, summary: dict) -> None:
  """The end of a run: prints its table (base and final rows), writes ``summary.json`` and
  plots ``curves.png`` from ``metrics.jsonl``."""
  base, final = summary['base'], summary['final']
  rows = {'base': base, final_row_label(summary.get('schedule', '')): final} if base else {
      'final': final}
  print('\n' + format_table(rows) + '\n', flush=True)
  summary_path = os.path.join(workdir, 'summary.json')
  paths.write_text(summary_path, json.dumps(summary, indent=2))
  plot = plot_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'curves.png'))
  print(f'wall time {duration(summary["wall_s"])}; summary in {summary_path}' +
        (f'; curves in {plot}' if plot else ''), flush=True)


EVALUATION_FIELDS = ('acc_t1', 'acc_t2', 'delta', 'delta_i2c', 'delta_c2i')


def held_out_evaluations(metrics_path: str, phases, base_eval: dict | None = None,
                         base_step: int = 0) -> list[dict]:
  """Every held-out evaluation of a run, in order, from its ``metrics.jsonl``: for each, the
  phase it ended or interrupted (``base`` for the model RL starts from), the steps of that
  phase done, the global step and the self-correction metrics. ``base_eval`` (at
  ``base_step``) stands in for a base evaluation the run did not make itself."""
  ends, total = [], 0
  for phase in phases:
    total += phase.steps
    ends.append((total, phase))

  def where(step: int) -> tuple[str, int]:
    for end, phase in ends:
      if step <= end:
        return phase.kind, step - (end - phase.steps)
    return ends[-1][1].kind, ends[-1][1].steps

  out = []
  if base_eval is not None:
    out.append(dict(phase='base', phase_step=0, step=base_step,
                    **{k: base_eval[k] for k in EVALUATION_FIELDS}))
  for record in read_jsonl(metrics_path):
    if 'eval/delta' not in record or (record.get('phase') == 'base' and out):
      continue
    kind, phase_step = ('base', 0) if record.get('phase') == 'base' else where(record['step'])
    out.append(dict(phase=kind, phase_step=phase_step, step=record['step'],
                    **{k: record[f'eval/{k}'] for k in EVALUATION_FIELDS}))
  return out


def duration(seconds: float) -> str:
  """'42m07s' under an hour, '3h05m' above."""
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def plot_curves(metrics_path: str, out_path: str) -> str | None:
  """Plots training rewards, held-out accuracy and KL from ``metrics.jsonl`` into a PNG.

  Either path may be a URL (``gs://...``). Returns the PNG's path, or None when there is
  nothing to plot.
  """
  records = read_jsonl(metrics_path) if epath.Path(metrics_path).exists() else []
  if not records:
    return None
  plt = pyplot()
  panels = [
      ('training reward', ('train/reward_t1', 'train/reward_t2')),
      ('held-out accuracy', ('eval/acc_t1', 'eval/acc_t2', 'eval/delta')),
      ('KL to the reference', ('train/kl_attempt1', 'train/kl_attempt2')),
      ('loss', ('train/loss',)),
      ('training outcome pairs', ('train/delta_i2c', 'train/delta_c2i', 'train/pairs_c2c',
                                  'train/pairs_i2i')),
      ('attempt 2 identical to attempt 1', ('train/identical_rate', 'eval/identical_rate')),
      ('mean |advantage|', ('train/advantage_abs_attempt1', 'train/advantage_abs_attempt2')),
      ('gradient norm per attempt', ('train/grad_norm_attempt1', 'train/grad_norm_attempt2')),
  ]
  # What an empty panel means, where it is a setting rather than a run without RL steps.
  why_empty = {'gradient norm per attempt': 'not measured: set rl.attempt_grad_norms=True'}
  columns = 4
  fig, axes = plt.subplots(len(panels) // columns, columns, figsize=(5 * columns, 3.4 * 2))
  for ax, (title, keys) in zip(axes.flat, panels):
    for key in keys:
      points = [(r['step'], r[key]) for r in records if r.get(key) is not None]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=key.split('/', 1)[1], marker='.' if len(points) < 30
                else None)
    ax.set_title(title)
    ax.set_xlabel('step')
    if ax.lines:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, why_empty.get(title, 'nothing logged'), ha='center', va='center',
              transform=ax.transAxes, color='gray')
  return save_png(fig, out_path)


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (imported only when plotting)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_png(fig, path: str) -> str:
  """Writes a figure as a PNG to a local path or a URL, closes it and returns the path."""
  fig.tight_layout()
  png = io.BytesIO()  # matplotlib writes local files only: render, then write the bytes.
  fig.savefig(png, format='png', dpi=100)
  pyplot().close(fig)
  epath.Path(path).write_bytes(png.getvalue())
  return path


# Transcripts (python -m score_jax.transcripts): a fixed rule picks the problems shown.
OUTCOMES = (('i→c', (0, 1)), ('c→i', (1, 0)), ('i→i', (0, 0)), ('c→c', (1, 1)))


def outcome(sample: Mapping) -> str:
  """'i→c', 'c→i', 'i→i' or 'c→c': attempt 1 then attempt 2, (i)ncorrect or (c)orrect."""
  rewards = (int(sample['reward1'] > 0), int(sample['reward2'] > 0))
  return next(name for name, pattern in OUTCOMES if pattern == rewards)


def choose(after: Sequence[Mapping], per_outcome: int) -> dict[str, list[Mapping]]:
  """The first ``per_outcome`` samples of each outcome, in the samples' (held-out) order."""
  chosen: dict[str, list[Mapping]] = {name: [] for name, _ in OUTCOMES}
  for sample in after:
    group = chosen[outcome(sample)]
    if len(group) < per_outcome:
      group.append(sample)
  return chosen


def _quote(text: str) -> str:
  body = text.strip() or '(empty)'
  return '\n'.join('    ' + line for line in body.splitlines())


def format_transcripts(before: Sequence[Mapping], after: Sequence[Mapping], per_outcome: int,
                       problems: Mapping[str, str] | None = None, instruction: str = '',
                       labels: tuple[str, str] = ('before', 'after')) -> str:
  """Markdown: for each outcome of the ``after`` model, the first ``per_outcome`` problems of
  that outcome in held-out order, each with both models' attempts (``before`` matched by id).

  ``problems`` maps ids to the problem text shown as each title; ``instruction`` is printed
  once, as the text between the attempts. The rule is fixed so that nobody picks examples.
  """
  by_id = {s['id']: s for s in before}
  counts = {name: sum(outcome(s) == name for s in after) for name, _ in OUTCOMES}
  lines = [f'Outcomes of the {labels[1]} model on {len(after)} held-out problems: ' +
           ', '.join(f'{name} {count}' for name, count in counts.items()) + '.']
  if instruction:
    lines += ['', f'The instruction before every attempt 2: "{instruction}"']
  for name, samples in choose(after, per_outcome).items():
    lines += ['', f'### {name} after training ({counts[name]} problems; the first '
              f'{len(samples)} shown)']
    for sample in samples:
      title = problems.get(sample['id'], sample['id']) if problems else sample['id']
      lines += ['', f'**{title}** (id `{sample["id"]}`)']
      for label, row in ((labels[0], by_id.get(sample['id'])), (labels[1], sample)):
        if row is None:
          continue
        marks = ['right' if row[f'reward{i}'] > 0 else 'wrong' for i in (1, 2)]
        lines += ['', f'{label}, attempt 1 ({marks[0]}):', '', _quote(row['attempt1']), '',
                  f'{label}, attempt 2 ({marks[1]}):', '', _quote(row['attempt2'])]
  return '\n'.join(lines) + '\n'
