r"""Reproduces the paper's tables in miniature: baselines, ablations, collapse diagnostics and
inference-time scaling, all with the one trainer.

  python -m score_jax.reproduce --config=configs/toy_arith.py --workdir=/tmp/score-repro
  python -m score_jax.reproduce --config=configs/toy_arith.py --workdir=/tmp/score-repro \
      --seeds=0,1,2 --methods=base,star,score

For each seed the config's leading ``sft`` phases warm-start a base model once (in
``WORKDIR/seed<S>/warm_start``); every method then starts from that model, in its own
``WORKDIR/seed<S>/<method>``, with the same budget as SCoRe's phases in the config: as many
steps, each one batch of ``rl.batch_size`` rollouts and one update (``score_jax.paper.tables``
lists the methods and their schedules). Held-out evaluations every ``--eval_every`` steps
trace each method's collapse (or not) over training. Then, for the SCoRe model (and the base
model) of the first seed, ``--scaling_samples`` two-attempt rollouts per problem at
temperature 1 compare majority voting over parallel first attempts with self-correction at
the same sample budget.

Written to ``WORKDIR``: ``tables.md`` and ``tables.json`` (the main table — base,
Self-Refine, STaR, Pair-SFT, SCoRe — and the ablation table, each metric as mean ± std over
seeds beside the paper's value, and the scaling table), ``edit_distance.png`` (the
edit-distance ratio between attempts on the held-out problems, per method),
``answer_change.png`` (the rate of a changed final answer and Δ over training) and
``inference_scaling.png``. Rerunning the command resumes: finished methods are read back and
an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags
import numpy as np

from score_jax import config_lib, paths
from score_jax.checkpoints import Checkpointer, restore_models
from score_jax import metrics as sc_metrics
from score_jax.paper import scaling
from score_jax.paper import tables as paper_tables
from score_jax.paper.tables import METHODS, METHODS_BY_NAME
from score_jax.training.errors import EXIT_INVALID, RunError
from score_jax.training.evaluation import Evaluator, held_out_problems
from score_jax.training.experiment import Experiment
from score_jax.training.phases import format_schedule
from score_jax.training.trainer import Trainer
from score_jax.writers import read_jsonl

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every run and the tables.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds to run every method with.')
_METHODS = flags.DEFINE_list('methods', [m.name for m in METHODS],
                             f'Methods to run, of {[m.name for m in METHODS]}.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 25,
                                   'Held-out evaluation every N training steps (0: only at the '
                                   'end), for the over-training plot.')
_SCALING_SAMPLES = flags.DEFINE_integer(
    'scaling_samples', 32, 'Two-attempt rollouts per problem for inference-time scaling '
    '(budgets 2, 4, … up to this); 0 skips it.')
_SCALING_PROBLEMS = flags.DEFINE_integer(
    'scaling_problems', 0, 'Held-out problems for inference-time scaling (0: config.eval).')
flags.mark_flags_as_required(['config', 'workdir'])


class Reproduction:
  """Runs every requested method for every seed and writes the tables and plots."""

  def __init__(self, config, workdir: str, seeds: list[int], methods: list[str],
               eval_every: int):
    self.config = config
    self.workdir = workdir
    self.seeds = seeds
    self.methods = methods
    self.eval_every = eval_every
    phases = config_lib.validate_train_config(config)
    leading = 0
    while leading < len(phases) and phases[leading].is_warm_start:
      leading += 1
    self.warm_phases, self.rl_phases = phases[:leading], phases[leading:]
    if not self.warm_phases or not self.rl_phases:
      raise ValueError(f'The config\'s schedule {config.schedule!r} must start with the '
                       f'warm-start sft phase(s) and continue with SCoRe\'s RL phases: the '
                       f'methods share the first and replace the second.')
    unknown = [m for m in methods if m not in METHODS_BY_NAME]
    if unknown:
      raise ValueError(f'Unknown methods {unknown}; methods are {list(METHODS_BY_NAME)}.')
    self.schedules = {m: paper_tables.method_schedule(m, self.rl_phases) for m in methods
                      if METHODS_BY_NAME[m].trains}
    self.experiment = Experiment.from_config(config, workdir)
    self.base_params = self.score_params = None  # The first seed's, for the scaling study.

  def _config_for(self, seed: int, schedule, method: str | None):
    c = self.config.copy_and_resolve_references()
    c.seed = seed
    c.schedule = format_schedule(schedule)
    c.eval.every_steps = self.eval_every
    if method == 'no_shaping':
      c.rl.alpha = 0.0
    return c

  def _log(self, message: str) -> None:
    print(message, flush=True)

  def run_seed(self, seed: int) -> dict:
    """Trains every method of one seed; returns {method: summary}."""
    seed_dir = os.path.join(self.workdir, f'seed{seed}')
    seed_start = time.perf_counter()
    self._log(f'==== seed {seed}: warm start ({format_schedule(self.warm_phases)}) '
              f'====')
    warm = Trainer(self._config_for(seed, self.warm_phases, None),
                   os.path.join(seed_dir, 'warm_start'), self.warm_phases, self.experiment)
    warm_summary = warm.run()
    base_params, base_eval = warm.params, warm_summary['final']
    summaries = {'warm_start': warm_summary}
    for method in self.methods:
      if not METHODS_BY_NAME[method].trains:
        continue
      method_dir = os.path.join(seed_dir, method)
      summary_path = os.path.join(method_dir, 'summary.json')
      if epath.Path(summary_path).exists():
        summaries[method] = json.loads(epath.Path(summary_path).read_text())
        self._log(f'==== seed {seed}: {method} already done ({summary_path}) ====')
        continue
      schedule = self.schedules[method]
      self._log(f'==== seed {seed}: {method} ({format_schedule(schedule)}) ====')
      trainer = Trainer(self._config_for(seed, schedule, method), method_dir, schedule,
                        self.experiment, initial_params=base_params, base_eval=base_eval)
      summaries[method] = trainer.run()
      if method == 'score' and seed == self.seeds[0]:
        self.score_params = trainer.params
      del trainer
    if seed == self.seeds[0]:
      self.base_params = base_params
    summaries['wall_s'] = time.perf_counter() - seed_start
    self._log(f'==== seed {seed}: done in {summaries["wall_s"] / 60:.1f} min (methods read back '
              f'from earlier runs not counted) ====')
    return summaries

  def first_seed_score_params(self):
    """The SCoRe model of the first seed (restored when this run did not train it)."""
    if self.score_params is not None:
      return self.score_params
    seed = self.seeds[0]
    checkpointer = Checkpointer(os.path.join(self.workdir, f'seed{seed}', 'score', 'checkpoints'),
                                async_save=False)
    try:
      params, _ = restore_models(self.experiment, checkpointer, with_reference=False)
    finally:
      checkpointer.close()
    return params


def _eval_curves(run_dir: str, base_eval: dict) -> list[tuple[int, dict]]:
  """(training steps after the warm start, held-out metrics) from a method's metrics.jsonl,
  starting from the shared base model's evaluation at step 0."""
  points = {0: base_eval}
  for record in read_jsonl(os.path.join(run_dir, 'metrics.jsonl')):
    if record.get('phase') in ('eval', 'final') and 'eval/delta' in record:
      points[record['step']] = {k.split('/', 1)[1]: v for k, v in record.items()
                                if k.startswith('eval/')}
  return sorted(points.items())


def _edit_ratios(samples_path: str) -> np.ndarray:
  samples = read_jsonl(samples_path)
  return sc_metrics.edit_distance_ratios([s['attempt1'] for s in samples],
                                         [s['attempt2'] for s in samples])


def build_tables(per_seed: dict[int, dict], methods: list[str]) -> dict:
  """tables.json's content: both tables with ours (over seeds) and the paper's values."""
  tables = {}
  for table in ('main', 'ablation'):
    rows = {}
    for method in METHODS:
      if table not in method.tables or method.name not in methods:
        continue
      source = method.name if method.trains else 'warm_start'
      results = [summaries[source]['final'] for summaries in per_seed.values()
                 if source in summaries]
      if results:
        rows[method.name] = dict(label=method.label, description=method.description,
                                 ours=paper_tables.aggregate(results),
                                 paper=paper_tables.paper_row(table, method.name))
    tables[table] = rows
  return tables


def _fail(message: str, exit_code: int):
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
  config_lib.quiet_library_logs()
  start = time.perf_counter()
  workdir = paths.absolute(_WORKDIR.value)
  try:
    seeds = [int(s) for s in _SEEDS.value]
    reproduction = Reproduction(_CONFIG.value, workdir, seeds, list(_METHODS.value),
                                _EVAL_EVERY.value)
    # Checked now, not after hours of training.
    scaling_examples = held_out_problems(
        reproduction.experiment.test_examples, _SCALING_PROBLEMS.value,
        reproduction.config.eval.num_problems, flag='--scaling_problems')
  except (ValueError, FileNotFoundError) as e:
    _fail(f'score_jax.reproduce: {e}', EXIT_INVALID)
  try:
    per_seed = {seed: reproduction.run_seed(seed) for seed in seeds}
  except RunError as e:  # Preempted (rerun to resume), diverged, or a mismatched workdir.
    _fail(f'score_jax.reproduce: {e}', e.exit_code)
  methods = list(_METHODS.value)
  result = dict(seeds=seeds, tables=build_tables(per_seed, methods),
                seed_wall_s={seed: summaries['wall_s'] for seed, summaries in per_seed.items()},
                schedules={m: format_schedule(s)
                           for m, s in reproduction.schedules.items()},
                warm_start=format_schedule(reproduction.warm_phases))

  # Collapse diagnostics (first seed): edit-distance ratios and the curves over training.
  seed_dir = os.path.join(workdir, f'seed{seeds[0]}')
  base_eval = per_seed[seeds[0]]['warm_start']['final']
  ratios = {'base': _edit_ratios(os.path.join(seed_dir, 'warm_start',
                                              'eval_final_samples.jsonl'))}
  curves = {}
  for method in methods:
    if METHODS_BY_NAME[method].trains:
      run_dir = os.path.join(seed_dir, method)
      ratios[method] = _edit_ratios(os.path.join(run_dir, 'eval_final_samples.jsonl'))
      curves[method] = _eval_curves(run_dir, base_eval)
  result['edit_distance'] = {m: dict(mean=float(np.mean(r)), zero=float(np.mean(r == 0)))
                             for m, r in ratios.items()}
  result['over_training'] = {m: [dict(step=s, **v) for s, v in points]
                             for m, points in curves.items()}
  plots = [paper_tables.plot_edit_ratios(ratios, os.path.join(workdir, 'edit_distance.png')),
           paper_tables.plot_over_training(curves, os.path.join(workdir, 'answer_change.png'))]

  # Inference-time scaling (first seed): base and SCoRe models.
  if _SCALING_SAMPLES.value and 'score' in methods:
    exp, config = reproduction.experiment, reproduction.config
    evaluator = Evaluator(exp, config.eval.batch_size)
    n = _SCALING_SAMPLES.value
    budgets = [b for b in (2, 4, 8, 16, 32, 64, 128) if b <= n]
    scaling_rows = {}
    for name, params in (('base', reproduction.base_params),
                         ('score', reproduction.first_seed_score_params())):
      print(f'==== inference-time scaling: {name}, {n} rollouts x {len(scaling_examples)} '
            f'problems ====', flush=True)
      votes = scaling.sample_votes(
          evaluator, params, scaling_examples, n, seed=seeds[0],
          progress=lambda done, total: done % 8 == 0 and print(f'   {done}/{total} rollouts '
                                                               f'per problem', flush=True))
      scaling_rows[name] = scaling.scaling_curve(*votes, budgets)
    result['inference_scaling'] = dict(num_problems=len(scaling_examples), temperature=1.0,
                                       rows=scaling_rows)
    plots.append(paper_tables.plot_scaling(scaling_rows,
                                           os.path.join(workdir, 'inference_scaling.png')))

  result['wall_s'] = time.perf_counter() - start
  paths.write_text(os.path.join(workdir, 'tables.json'), json.dumps(result, indent=2))
  markdown = tables_markdown(result, len(seeds))
  paths.write_text(os.path.join(workdir, 'tables.md'), markdown)
  print('\n' + markdown, flush=True)
  print(f'\nwritten: {os.path.join(workdir, "tables.md")}, tables.json, ' +
        ', '.join(os.path.basename(p) for p in plots) +
        f' (this command: {result["wall_s"] / 60:.1f} min)', flush=True)


def tables_markdown(result: dict, num_seeds: int) -> str:
  """tables.md: the two tables, the schedules, edit distances and the scaling table."""
  seeds = ', '.join(map(str, result['seeds']))
  parts = [f'# SCoRe in miniature (seeds {seeds})', '',
           'Percent of held-out problems, greedy decoding' +
           (', mean ± standard deviation over seeds.' if num_seeds > 1 else ', one seed.') +
           ' Paper: Kumar et al. (2024), MATH500 with Gemini 1.5 Flash (the ablation study '
           'reports Δ only). The Self-Refine row is the base model prompted with the '
           'instruction: the same measurement as the base row here.', '',
           '## Main table', '', paper_tables.markdown_table('main', result['tables']['main'],
                                                             num_seeds), '',
           '## Ablations', '', paper_tables.markdown_table('ablation',
                                                           result['tables']['ablation'],
                                                           num_seeds), '',
           '## Schedules after the warm start (' + result['warm_start'] + ')', '']
  parts += [f'- {METHODS_BY_NAME[m].label}: `{s}`' for m, s in result['schedules'].items()]
  parts += ['', '## Edit-distance ratio between attempts (held-out, first seed)', '',
            '| method | mean | attempt 2 identical |', '|---|---|---|']
  parts += [f'| {METHODS_BY_NAME[m].label} | {v["mean"]:.3f} | {100 * v["zero"]:.1f}% |'
            for m, v in result['edit_distance'].items()]
  if 'inference_scaling' in result:
    s = result['inference_scaling']
    parts += ['', f'## Inference-time scaling (first seed, {s["num_problems"]} problems, '
              f'temperature {s["temperature"]})', '',
              '| model | samples per problem | majority of parallel | K self-corrected |',
              '|---|---|---|---|']
    for name, rows in s['rows'].items():
      parts += [f'| {METHODS_BY_NAME[name].label} | {r["budget"]} | '
                f'{100 * r["parallel"]:.1f} | {100 * r["sequential"]:.1f} |' for r in rows]
  return '\n'.join(parts) + '\n'


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
