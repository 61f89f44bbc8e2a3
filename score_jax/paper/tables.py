"""The paper's comparison tables: methods, the paper's numbers, aggregation over seeds, and
the Markdown tables and plots that ``score_jax.reproduce`` writes.

Numbers are Kumar et al. (2024), MATH500 with Gemini 1.5 Flash: Table 3 for the main rows
(all five metrics) and the ablation study for Δ(t1, t2) (the only metric it reports for
every row). They are a reference for the ordering of methods, not a target: the miniature
runs a 0.8M-parameter model on toy arithmetic.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from score_jax import reporting
from score_jax.metrics import OUTCOME_KEYS as METRICS
from score_jax.metrics import OUTCOME_NAMES as METRIC_NAMES
from score_jax.training.phases import Phase

# Percent, in METRICS order; None where the paper reports no value.
PAPER_MAIN = {
    'base': (52.6, 41.4, -11.2, 4.6, 15.8),
    'self_refine': (52.8, 51.8, -1.0, 3.2, 4.2),
    'star': (53.6, 54.0, 0.4, 2.6, 2.2),
    'pair_sft': (52.4, 54.2, 1.8, 5.4, 3.6),
    'score': (60.0, 64.4, 4.4, 5.8, 1.4),
}
PAPER_ABLATION_DELTA = {
    'score': 4.4, 'single_turn': -2.4, 'no_stage1': 2.2, 'no_shaping': 2.6, 'star_stage2': 2.2,
}


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of the tables: how it trains after the shared warm start."""
  name: str
  label: str
  description: str
  tables: tuple[str, ...]  # 'main' and/or 'ablation'.
  trains: bool = True


METHODS = (
    Method('base', 'Base model', 'the warm-started model, two attempts with the instruction',
           ('main',), trains=False),
    Method('self_refine', 'Self-Refine (prompting)',
           'the same model prompted to revise: the instruction, no training', ('main',),
           trains=False),
    Method('star', 'STaR (D+)', 'three rounds: sample, keep wrong → right revisions, SFT',
           ('main',)),
    Method('pair_sft', 'Pair-SFT', 'wrong attempts paired with right answers, SFT', ('main',)),
    Method('score', 'SCoRe', "the config's Stage I / Stage II schedule", ('main', 'ablation')),
    Method('single_turn', 'w/o multi-turn training (single-turn RL)',
           'REINFORCE on attempt 1 only, evaluated with two attempts', ('ablation',)),
    Method('no_stage1', 'w/o Stage I', 'Stage II for the whole RL budget', ('ablation',)),
    Method('no_shaping', 'w/o reward shaping (α = 0)', "SCoRe's schedule with α = 0",
           ('ablation',)),
    Method('star_stage2', 'w/ STaR instead of REINFORCE in Stage II',
           "SCoRe's schedule with each Stage II phase a STaR round", ('ablation',)),
)
METHODS_BY_NAME = {m.name: m for m in METHODS}


def method_schedule(name: str, rl_phases: Sequence[Phase]) -> list[Phase]:
  """A method's phases after the warm start, on the same budget as SCoRe's ``rl_phases``:
  the same number of steps, each one batch of rollouts and one update."""
  total = sum(phase.steps for phase in rl_phases)
  if name == 'score' or name == 'no_shaping':
    return list(rl_phases)
  if name == 'star':  # Three rounds, as in the paper.
    if total < 3:
      raise ValueError(f'STaR needs at least 3 RL steps of budget for 3 rounds; got {total}.')
    return [Phase('star', total // 3 + (i < total % 3)) for i in range(3)]
  if name == 'pair_sft':
    return [Phase('pair_sft', total)]
  if name == 'single_turn':
    return [Phase('single_turn', total)]
  if name == 'no_stage1':
    return [Phase('stage2', total)]
  if name == 'star_stage2':
    if not any(phase.kind == 'stage2' for phase in rl_phases):
      raise ValueError("the 'star_stage2' ablation replaces Stage II, and the schedule has none.")
    return [Phase('star', p.steps) if p.kind == 'stage2' else p for p in rl_phases]
  raise ValueError(f'{name!r} is not a trained method; methods are {list(METHODS_BY_NAME)}.')


def aggregate(results: Sequence[Mapping[str, float]]) -> dict[str, dict]:
  """Mean, sample standard deviation (0 for one seed) and per-seed values, in percent."""
  out = {}
  for metric in METRICS:
    values = [100.0 * r[metric] for r in results]
    out[metric] = dict(mean=float(np.mean(values)),
                       std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                       seeds=values)
  return out


def paper_row(table: str, name: str) -> dict[str, float | None]:
  if table == 'main':
    values = PAPER_MAIN.get(name)
    return dict(zip(METRICS, values)) if values else {m: None for m in METRICS}
  return {m: (PAPER_ABLATION_DELTA.get(name) if m == 'delta' else None) for m in METRICS}


def markdown_table(table: str, rows: Mapping[str, dict], num_seeds: int) -> str:
  """Ours (mean ± std over seeds) beside the paper's value for each metric."""
  header = ['method'] + [f'{METRIC_NAMES[m]} ours' for m in METRICS] + [
      f'{METRIC_NAMES[m]} paper' for m in METRICS]
  lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
  for name, row in rows.items():
    ours = [f'{row["ours"][m]["mean"]:.1f}' + (f' ± {row["ours"][m]["std"]:.1f}'
                                                if num_seeds > 1 else '') for m in METRICS]
    paper = ['–' if row['paper'][m] is None else f'{row["paper"][m]:.1f}' for m in METRICS]
    lines.append('| ' + ' | '.join([METHODS_BY_NAME[name].label] + ours + paper) + ' |')
  return '\n'.join(lines)


def plot_edit_ratios(ratios: Mapping[str, np.ndarray], path: str) -> str:
  """Histograms of the edit-distance ratio between attempts, one panel per method (the
  paper's Figure 3): mass at 0 means attempt 2 copies attempt 1."""
  plt = reporting.pyplot()
  names = list(ratios)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
  bins = np.linspace(0.0, 1.0, 21)
  for ax, name in zip(axes.flat, names):
    values = np.asarray(ratios[name])
    ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / max(len(values), 1)))
    ax.set_title(f'{METHODS_BY_NAME[name].label}\n(0: {np.mean(values == 0):.0%} of problems)',
                 fontsize=8)
    ax.set_xlabel('edit distance ratio', fontsize=8)
    ax.set_ylim(0, 1)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  return reporting.save_png(fig, path)


def plot_over_training(curves: Mapping[str, Sequence[tuple[int, dict]]], path: str) -> str:
  """Held-out rate of a changed final answer and Δ(t1, t2) over training, per method (the
  paper's Figure 5 measures the first on training samples; these are held-out)."""
  plt = reporting.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for name, points in curves.items():
    if not points:
      continue
    steps = [s for s, _ in points]
    axes[0].plot(steps, [r['different_answer_rate'] for _, r in points], marker='.',
                 label=METHODS_BY_NAME[name].label)
    axes[1].plot(steps, [r['delta'] for _, r in points], marker='.',
                 label=METHODS_BY_NAME[name].label)
  axes[0].set_title('different final answer in attempt 2 (held-out)', fontsize=9)
  axes[1].set_title('Δ(t1, t2) (held-out)', fontsize=9)
  for ax in axes:
    ax.set_xlabel('training step after the warm start')
  axes[1].legend(fontsize=7)
  return reporting.save_png(fig, path)


def plot_scaling(curves: Mapping[str, Sequence[dict]], path: str) -> str:
  """Majority-vote accuracy against samples per problem: parallel vs self-correction."""
  plt = reporting.pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, rows in curves.items():
    budgets = [r['budget'] for r in rows]
    label = METHODS_BY_NAME[name].label
    ax.plot(budgets, [100 * r['parallel'] for r in rows], marker='o', linestyle='--',
            label=f'{label}: majority of 2K parallel')
    ax.plot(budgets, [100 * r['sequential'] for r in rows], marker='s',
            label=f'{label}: majority of K, each self-corrected')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('samples per problem (2K)')
  ax.set_ylabel('accuracy (%)')
  ax.legend(fontsize=7)
  return reporting.save_png(fig, path)
