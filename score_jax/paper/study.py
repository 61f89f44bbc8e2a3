r"""Small tables of runs that share a warm start: one hypothesis, several settings, seeds.

  python -m score_jax.paper.study --config=configs/toy_arith.py --workdir=/tmp/study \
      --seeds=0,1 --variant='default:' --variant='alpha1:rl.alpha=1.0' \
      --variant='short:schedule=sft:300,stage1:100,stage2:50'

The config's leading ``sft`` phases warm-start a base model once per seed (in
``WORKDIR/seed<S>/warm_start``, trained once and restored on later calls). Each variant,
``NAME:field=value;field=value`` (config fields, values as Python literals or bare strings),
then runs the config's RL phases from that model in ``WORKDIR/seed<S>/<NAME>``, with
held-out evaluations every ``eval.every_steps`` steps. A finished variant is read back, not
rerun. ``WORKDIR/study.md`` and ``study.json`` hold one row per variant and seed: the held-out
metrics at the end of each phase, and the last Stage II steps' training diagnostics (the rate
of identical attempts, the training Δ, the mean |advantage| and gradient norm of each
attempt's term). docs/stage2.md is written from such tables.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags
import numpy as np

from score_jax import config_lib, paths
from score_jax.checkpoints import Checkpointer, restore_models
from score_jax.training.errors import EXIT_INVALID, RunError
from score_jax.training.experiment import Experiment
from score_jax.training.phases import format_schedule
from score_jax.training.trainer import Trainer
from score_jax.writers import read_jsonl

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the runs and the table.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (each its own warm start).')
_VARIANTS = flags.DEFINE_multi_string('variant', ['default:'],
                                      'NAME:field=value;field=value (repeatable).')
flags.mark_flags_as_required(['config', 'workdir'])

# Training diagnostics averaged over the last DIAGNOSTIC_STEPS steps of each RL phase.
DIAGNOSTICS = ('delta', 'identical_rate', 'reward_t1', 'reward_t2', 'advantage_abs_attempt1',
               'advantage_abs_attempt2', 'grad_norm_attempt1', 'grad_norm_attempt2',
               'kl_attempt1', 'kl_attempt2')
DIAGNOSTIC_STEPS = 10


def phase_results(run_dir: str, phases, base_eval: dict) -> list[dict]:
  """The held-out evaluation at the end of each phase and the diagnostics of its last steps."""
  records = read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
  evals = {r['step']: {k.split('/', 1)[1]: v for k, v in r.items() if k.startswith('eval/')}
           for r in records if r.get('phase') in ('eval', 'final') and 'eval/delta' in r}
  rows, end = [dict(phase='base', step=0, eval=base_eval)], 0
  for phase in phases:
    end += phase.steps
    steps = [r for r in records if r.get('phase') == phase.kind and 'train/loss' in r
             and end - phase.steps < r['step'] <= end]
    last = steps[-DIAGNOSTIC_STEPS:]
    diagnostics = {k: float(np.mean([r[f'train/{k}'] for r in last]))
                   for k in DIAGNOSTICS if last and f'train/{k}' in last[0]}
    rows.append(dict(phase=phase.kind, step=end, eval=evals.get(end), train=diagnostics))
  return rows


class Study:
  """Runs every variant for every seed from the seed's shared warm start."""

  def __init__(self, config, workdir: str, variants: list[tuple[str, dict]]):
    self.config, self.workdir, self.variants = config, workdir, variants
    phases = config_lib.validate_train_config(config)
    self.warm_phases = [p for p in phases if p.is_warm_start]
    if not self.warm_phases or phases[:len(self.warm_phases)] != self.warm_phases:
      raise ValueError(f'The schedule {config.schedule!r} must start with its sft phases.')
    self.experiment = Experiment.from_config(config, workdir)

  def warm_start(self, seed: int):
    """(parameters, held-out result) of the seed's base model, trained on the first call."""
    run_dir = os.path.join(self.workdir, f'seed{seed}', 'warm_start')
    summary_path = epath.Path(run_dir) / 'summary.json'
    if summary_path.exists():
      checkpointer = Checkpointer(os.path.join(run_dir, 'checkpoints'), async_save=False)
      try:
        params, _ = restore_models(self.experiment, checkpointer, with_reference=False)
      finally:
        checkpointer.close()
      return params, json.loads(summary_path.read_text())['final']
    c = self.config.copy_and_resolve_references()
    c.seed = seed
    c.schedule = format_schedule(self.warm_phases)
    trainer = Trainer(c, run_dir, self.warm_phases, self.experiment)
    summary = trainer.run()
    return trainer.params, summary['final']

  def run_seed(self, seed: int) -> dict:
    params, base_eval = self.warm_start(seed)
    results = {}
    for name, overrides in self.variants:
      c = config_lib.apply_overrides(self.config, overrides)
      c.seed = seed
      phases = config_lib.validate_train_config(c)
      rl_phases = [p for p in phases if not p.is_warm_start]
      c.schedule = format_schedule(rl_phases)
      run_dir = os.path.join(self.workdir, f'seed{seed}', name)
      if not (epath.Path(run_dir) / 'summary.json').exists():
        print(f'==== seed {seed}: {name} {overrides} ({c.schedule}) ====', flush=True)
        Trainer(c, run_dir, rl_phases, self.experiment, initial_params=params,
                base_eval=base_eval).run()
      results[name] = dict(overrides=overrides, schedule=c.schedule,
                           phases=phase_results(run_dir, rl_phases, base_eval))
    return results


def table_markdown(per_seed: dict[int, dict]) -> str:
  """One row per variant, seed and phase end: held-out metrics, then training diagnostics."""
  lines = ['| variant | seed | after | Acc@t1 | Acc@t2 | Δ | Δi→c | Δc→i | identical | '
           'train Δ | |A1| | |A2| | ‖g1‖ | ‖g2‖ |', '|' + '---|' * 15]
  pct = lambda e, k: f'{100 * e[k]:.1f}' if e else '–'
  num = lambda t, k, f='.3f': format(t[k], f) if k in t else '–'
  for seed, variants in per_seed.items():
    for name, result in variants.items():
      for row in result['phases']:
        e, t = row['eval'], row.get('train', {})
        lines.append(
            f'| {name} | {seed} | {row["phase"]}@{row["step"]} | ' +
            ' | '.join(pct(e, k) for k in ('acc_t1', 'acc_t2', 'delta', 'delta_i2c',
                                           'delta_c2i')) +
            f' | {num(t, "identical_rate", ".2f")} | {num(t, "delta", "+.3f")} | '
            f'{num(t, "advantage_abs_attempt1")} | {num(t, "advantage_abs_attempt2")} | '
            f'{num(t, "grad_norm_attempt1", ".2f")} | {num(t, "grad_norm_attempt2", ".2f")} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  config_lib.quiet_library_logs()
  workdir = paths.absolute(_WORKDIR.value)
  try:
    variants = [config_lib.parse_variant(v) for v in _VARIANTS.value]
    for _, overrides in variants:
      config_lib.apply_overrides(_CONFIG.value, overrides)
    study = Study(_CONFIG.value, workdir, variants)
    per_seed = {int(seed): study.run_seed(int(seed)) for seed in _SEEDS.value}
  except ValueError as e:
    print(f'score_jax.paper.study: {e}', file=sys.stderr)
    raise SystemExit(EXIT_INVALID) from None
  except RunError as e:
    print(f'score_jax.paper.study: {e}', file=sys.stderr)
    raise SystemExit(e.exit_code) from None
  table = table_markdown(per_seed)
  paths.write_text(os.path.join(workdir, 'study.json'), json.dumps(per_seed, indent=2))
  paths.write_text(os.path.join(workdir, 'study.md'), table + '\n')
  print('\n' + table, flush=True)


if __name__ == '__main__':
  app.run(main)
