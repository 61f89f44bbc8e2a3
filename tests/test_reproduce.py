"""The paper's baselines as trainer phases, the reproduction command, and inference-time
scaling's majority vote."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config_lib
from score_jax import metrics
from score_jax.paper import scaling
from score_jax.paper import tables as paper_tables
from score_jax.training.experiment import Experiment
from score_jax.training.phases import Phase
from score_jax.training.trainer import Trainer
from score_jax.writers import read_jsonl

from test_train import REPO, smoke_config

# ---- majority voting ----------------------------------------------------------------------


def test_majority_vote_picks_the_most_frequent_answer_and_ignores_missing_ones():
  assert scaling.majority_vote_correct(['3', '5', '5', None], [1, 0, 0, 0]) is False
  assert scaling.majority_vote_correct(['3', '5', '3', None, None], [1, 0, 1, 0, 0]) is True
  # A tie goes to the answer seen first.
  assert scaling.majority_vote_correct(['5', '3', '3', '5'], [0, 1, 1, 0]) is False
  assert scaling.majority_vote_correct(['3', '5', '5', '3'], [1, 0, 0, 1]) is True
  assert scaling.majority_vote_correct([None, None], [0, 0]) is False
  with pytest.raises(ValueError, match='2 answers but 1 rewards'):
    scaling.majority_vote_correct(['1', '2'], [1])


def test_scaling_curve_spends_the_budget_two_ways():
  # Two problems, four rollouts each. Problem 0: first attempts mostly wrong, second attempts
  # right; problem 1: first attempts right, second attempts wrong.
  answers1 = np.array([['1', '1', '2', '1'], ['7', '7', '7', '8']], object)
  rewards1 = np.array([[0, 0, 1, 0], [1, 1, 1, 0]], np.float32)
  answers2 = np.array([['2', '2', '1', '1'], ['8', '8', '8', '8']], object)
  rewards2 = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
  rows = scaling.scaling_curve(answers1, rewards1, answers2, rewards2, [2, 4])
  # Budget 2: parallel votes over 2 first attempts ('1','1' → wrong; '7','7' → right) = 0.5;
  # sequential takes 1 rollout's second attempt ('2' right; '8' wrong) = 0.5.
  assert rows[0] == dict(budget=2, parallel=0.5, sequential=0.5)
  # Budget 4: parallel '1' (3 votes) wrong, '7' right = 0.5; sequential over 2 second
  # attempts: '2' right, '8' wrong = 0.5.
  assert rows[1] == dict(budget=4, parallel=0.5, sequential=0.5)
  with pytest.raises(ValueError, match='budget 3 must be even'):
    scaling.scaling_curve(answers1, rewards1, answers2, rewards2, [3])
  with pytest.raises(ValueError, match='budget 6'):
    scaling.scaling_curve(answers1, rewards1, answers2, rewards2, [6])


# ---- method schedules and aggregation ----------------------------------------------------

RL = [Phase('stage1', 100), Phase('stage2', 50), Phase('stage1', 100)]


@pytest.mark.parametrize('name,expected', [
    ('score', RL),
    ('no_shaping', RL),
    ('star', [Phase('star', 84), Phase('star', 83), Phase('star', 83)]),
    ('pair_sft', [Phase('pair_sft', 250)]),
    ('single_turn', [Phase('single_turn', 250)]),
    ('no_stage1', [Phase('stage2', 250)]),
    ('star_stage2', [Phase('stage1', 100), Phase('star', 50), Phase('stage1', 100)]),
])
def test_every_method_gets_scores_budget(name, expected):
  schedule = paper_tables.method_schedule(name, RL)
  assert schedule == expected
  assert sum(phase.steps for phase in schedule) == 250


def test_method_schedule_errors_name_the_problem():
  with pytest.raises(ValueError, match='replaces Stage II'):
    paper_tables.method_schedule('star_stage2', [Phase('stage1', 10)])
  with pytest.raises(ValueError, match='not a trained method'):
    paper_tables.method_schedule('base', RL)


def test_aggregate_gives_percent_mean_and_sample_std():
  results = [dict(acc_t1=0.5, acc_t2=0.6, delta=0.1, delta_i2c=0.2, delta_c2i=0.1),
             dict(acc_t1=0.7, acc_t2=0.6, delta=-0.1, delta_i2c=0.0, delta_c2i=0.1)]
  out = paper_tables.aggregate(results)
  assert out['acc_t1']['mean'] == pytest.approx(60.0)
  assert out['acc_t1']['std'] == pytest.approx(np.std([50.0, 70.0], ddof=1))
  assert out['delta']['seeds'] == pytest.approx([10.0, -10.0])
  assert paper_tables.aggregate(results[:1])['acc_t2']['std'] == 0.0


# ---- star and pair_sft phases in the trainer ----------------------------------------------


def _every_revision_succeeds(experiment):
  """Scores every attempt 1 wrong and every attempt 2 right (the trainer scores attempt 1
  first, then attempt 2), so that each sampled pair is a successful revision."""
  calls = []

  def score_batch(examples, attempts):
    calls.append(len(examples))
    return np.full(len(examples), float(len(calls) % 2 == 0), np.float32)

  experiment.task.score_batch = score_batch


@pytest.mark.parametrize('kind', ['star', 'pair_sft'])
def test_self_sft_phase_samples_builds_traces_and_fine_tunes(kind, tmp_path):
  # STaR with one epoch over its traces (one step of 64 here); Pair-SFT with no epoch limit
  # (every step of the phase).
  epochs = 1.0 if kind == 'star' else 0.0
  config = smoke_config(schedule=f'sft:4,{kind}:2', **{'eval.num_problems': 16,
                                                       'self_sft.epochs': epochs})
  phases = config_lib.validate_train_config(config)
  workdir = str(tmp_path)
  experiment = Experiment.from_config(config, workdir)
  _every_revision_succeeds(experiment)
  trainer = Trainer(config, workdir, phases, experiment)
  trainer.run()

  traces = read_jsonl(os.path.join(workdir, 'traces', f'phase2_{kind}.jsonl'))
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  sampling = [r for r in records if r.get('phase') == f'{kind}_sampling']
  steps = [r for r in records if r.get('phase') == kind]
  rollouts = 2 * config.rl.batch_size
  assert len(sampling) == 1 and sampling[0]['sample/traces'] == len(traces)
  assert sampling[0]['sample/reward_t1'] == 0.0 and sampling[0]['sample/reward_t2'] == 1.0
  if kind == 'star':
    assert len(traces) == rollouts  # Every wrong → right pair is kept.
  else:
    # Every distinct wrong attempt of a problem, paired with one of its right attempts.
    pairs = {(t['id'], t['attempt1']) for t in traces}
    assert len(pairs) == len(traces) and 0 < len(traces) <= rollouts
  assert [r['step'] for r in steps] == ([5] if kind == 'star' else [5, 6])
  assert read_jsonl(os.path.join(workdir, 'metrics.jsonl'))[-1]['step'] == 6
  assert all(np.isfinite(r['train/loss']) and r['train/loss'] > 0 for r in steps)
  ids = {str(e.id) for e in experiment.train_examples}
  assert {t['id'] for t in traces} <= ids


def test_self_sft_phase_with_no_traces_makes_no_updates(tmp_path):
  config = smoke_config(schedule='sft:4,star:2', **{'eval.num_problems': 16})
  phases = config_lib.validate_train_config(config)
  experiment = Experiment.from_config(config, str(tmp_path))
  experiment.task.score_batch = lambda examples, attempts: np.zeros(len(examples), np.float32)
  summary = Trainer(config, str(tmp_path), phases, experiment).run()
  assert summary['steps'] == 6
  assert read_jsonl(os.path.join(tmp_path, 'traces', 'phase2_star.jsonl')) == []
  records = read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  assert [r for r in records if r.get('phase') == 'star'] == []  # No SFT step was taken.
  # The base row is the model when the phase began; the final one is the same model.
  for field in metrics.OUTCOME_KEYS:
    assert summary['final'][field] == summary['base'][field]


# ---- the reproduction command -------------------------------------------------------------


@pytest.mark.slow
def test_reproduce_writes_every_row_of_both_tables_and_the_plots(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'score_jax.reproduce', '--config=configs/toy_arith.py:smoke',
       f'--workdir={tmp_path}', '--eval_every=3', '--scaling_samples=4',
       '--config.eval.num_problems=16'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  tables = json.loads((tmp_path / 'tables.json').read_text())
  expected = {'main': ['base', 'self_refine', 'star', 'pair_sft', 'score'],
              'ablation': ['score', 'single_turn', 'no_stage1', 'no_shaping', 'star_stage2']}
  for table, rows in expected.items():
    assert list(tables['tables'][table]) == rows
    for row in rows:
      ours = tables['tables'][table][row]['ours']
      assert set(ours) == set(metrics.OUTCOME_KEYS)
      assert all(np.isfinite(ours[m]['mean']) for m in metrics.OUTCOME_KEYS)
  assert tables['tables']['main']['score']['paper']['delta'] == 4.4
  assert tables['schedules']['star'] == 'star:2,star:2,star:2'
  assert [r['budget'] for r in tables['inference_scaling']['rows']['score']] == [2, 4]
  for png in ('edit_distance.png', 'answer_change.png', 'inference_scaling.png'):
    assert (tmp_path / png).stat().st_size > 1000
  markdown = (tmp_path / 'tables.md').read_text()
  assert '| SCoRe |' in markdown and '| Pair-SFT |' in markdown
  # The over-training curves hold the evaluations every 3 steps after the warm start.
  assert [p['step'] for p in tables['over_training']['score']] == [0, 3, 6]

  # A second run reads the finished methods back instead of training them again.
  again = subprocess.run(
      [sys.executable, '-m', 'score_jax.reproduce', '--config=configs/toy_arith.py:smoke',
       f'--workdir={tmp_path}', '--eval_every=3', '--scaling_samples=0',
       '--methods=base,score', '--config.eval.num_problems=16'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert 'score already done' in again.stdout


def test_reproduce_refuses_a_schedule_without_a_warm_start(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'score_jax.reproduce', '--config=configs/toy_arith.py:smoke',
       f'--workdir={tmp_path}', '--config.schedule=stage1:3'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'must start with the warm-start sft phase' in result.stderr


def test_self_sft_loss_covers_only_the_revision_unless_asked(tmp_path):
  """STaR and Pair-SFT learn attempt 2 with the sampled attempt 1 as context: the loss is
  the mean negative log-prob of attempt 2's tokens alone (both attempts with
  train_attempt1=True, as in the warm start)."""
  from score_jax.model import token_logprobs  # pylint: disable=g-import-not-at-top
  from score_jax.sampling import pack_trajectories  # pylint: disable=g-import-not-at-top
  from score_jax.trajectory import ATTEMPT1, ATTEMPT2  # pylint: disable=g-import-not-at-top
  from score_jax.training.steps import TrainState, make_optimizer, make_sft_step  # pylint: disable=g-import-not-at-top

  config = smoke_config()
  experiment = Experiment.from_config(config, str(tmp_path))
  model = experiment.model('train')
  params, _ = experiment.initial_params(0)
  batch = pack_trajectories(experiment.spec, [[3, 4, 5], [6, 7]], [[8, 9, 2], [10, 2]],
                            [[11, 12, 13, 2], [14, 2]])
  logp = np.asarray(token_logprobs(model, params, batch.tokens, batch.positions, batch.valid))
  segments, valid = np.asarray(batch.segments), np.asarray(batch.valid)
  tx = make_optimizer(config.self_sft.optimizer)
  for train_attempt1, segs in ((False, (ATTEMPT2,)), (True, (ATTEMPT1, ATTEMPT2))):
    mask = np.isin(segments, segs) & valid
    state = TrainState.create(jax.tree.map(jnp.copy, params), tx)
    _, metrics = make_sft_step(model, tx, train_attempt1=train_attempt1)(state, batch)
    assert float(metrics['tokens']) == mask.sum() == (6 if not train_attempt1 else 11)
    assert float(metrics['loss']) == pytest.approx(-logp[mask].mean(), rel=1e-5)


@pytest.mark.parametrize('num_traces,epochs,expected', [
    (286, 1.0, 5),     # ceil(286 / 64)
    (10749, 1.0, 84),  # capped at the phase's steps
    (286, 2.5, 12),    # ceil(2.5 * 286 / 64)
    (286, 0.0, 84),    # no epoch limit: every step
    (0, 0.0, 0),       # nothing to learn from
    (0, 1.0, 0),
])
def test_self_sft_updates_are_epochs_over_the_traces_capped_by_the_phase(num_traces, epochs,
                                                                         expected):
  from score_jax.training.self_sft import self_sft_updates  # pylint: disable=g-import-not-at-top
  assert self_sft_updates(84, num_traces, 64, epochs) == expected
