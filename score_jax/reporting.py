"""The paper-style table and the training-curve plot written at the end of a run."""

from __future__ import annotations

import io
from typing import Mapping

from etils import epath

from score_jax.writers import read_jsonl

TABLE_COLUMNS = (('acc_t1', 'Acc@t1'), ('acc_t2', 'Acc@t2'), ('delta', 'Δ(t1,t2)'),
                 ('delta_i2c', 'Δi→c'), ('delta_c2i', 'Δc→i'))


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """A Markdown table, in percent, of self-correction metrics for named rows."""
  header = '| method | ' + ' | '.join(name for _, name in TABLE_COLUMNS) + ' |'
  lines = [header, '|---' * (len(TABLE_COLUMNS) + 1) + '|']
  for name, values in rows.items():
    cells = [f'{100 * values[key]:.1f}' if key in values else '–' for key, _ in TABLE_COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


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
  ]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
  for ax, (title, keys) in zip(axes, panels):
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
