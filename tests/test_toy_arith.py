"""The toy arithmetic task: generator, slips, traces, TFDS round trip, tokenizer, registry."""

import os
import random

import numpy as np
import pytest

from score_jax import tasks
from score_jax.tasks import toy_arith

TRAIN, TEST = 300, 500


@pytest.fixture(scope='module')
def task():
  return tasks.get_task('toy_arith', train_size=TRAIN, test_size=TEST, path='',
                        heldout_ids='')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('toy_data'))


def test_worked_line_format_and_precedence():
  assert toy_arith.format_solution(toy_arith.solve([47, 38, 12], ['+', '-'])) == (
      '47+38=85, 85-12=73. A: 73')
  steps = toy_arith.solve([12, 3, 4, 5], ['+', '*', '-'])
  assert toy_arith.format_solution(steps) == '3*4=12, 12+12=24, 24-5=19. A: 19'
  # A slip in step 0 is carried through the later steps.
  slipped = toy_arith.solve([47, 38, 12], ['+', '-'], override=(0, 75))
  assert toy_arith.format_solution(slipped) == '47+38=75, 75-12=63. A: 63'


def test_extract_answer_and_score(task):
  assert toy_arith.extract_answer('47+38=85, 85-12=73. A: 73') == '73'
  assert toy_arith.extract_answer('A: 5 then A: 007') == '7'  # the last one, as an integer
  assert toy_arith.extract_answer('no answer') is None
  example = toy_arith.make_example([47, 38, 12], ['+', '-'])
  scores = task.score_batch([example] * 3, ['... A: 73', '... A: 63', ''])
  np.testing.assert_array_equal(scores, [1, 0, 0])
  assert task.score(example, 'A: 73') == 1.0


def test_slips_are_wrong_and_plausible():
  rng = random.Random(0)
  settings = toy_arith.ArithSettings(operators='+-*', num_operands=4)
  for _ in range(300):
    operands, ops = toy_arith.make_problem(rng, settings)
    right = toy_arith.solve(operands, ops)
    assert all(s.result >= 0 for s in right)
    slip = toy_arith.slipped_steps(operands, ops, rng, settings)
    assert slip[-1].result != right[-1].result and all(s.result >= 0 for s in slip)
    wrong_steps = [i for i, (a, b) in enumerate(zip(right, slip)) if a != b]
    # Exactly one step computes wrongly; the ones after it only inherit its value.
    first = wrong_steps[0]
    assert slip[first].result != toy_arith._apply(slip[first].op, slip[first].left,
                                                   slip[first].right)
    for step in slip[first + 1:]:
      assert step.result == toy_arith._apply(step.op, step.left, step.right)


def test_traces_follow_the_rates_and_avoid_the_test_split(task):
  traces = task.make_traces(4000, seed=3)
  assert traces == task.make_traces(4000, seed=3)
  assert traces[:50] != task.make_traces(50, seed=4)
  test_problems = {e.problem for e in task.generate('test')}
  assert not test_problems & {t.problem for t in traces}
  examples = [t.example for t in traces]
  r1 = task.score_batch(examples, [t.attempt1 for t in traces])
  r2 = task.score_batch(examples, [t.attempt2 for t in traces])
  rates = toy_arith.TraceRates()
  assert r1.mean() == pytest.approx(rates.first_correct, abs=0.03)
  copies = np.array([t.attempt1 == t.attempt2 for t in traces])
  assert copies[r1 == 1].mean() == pytest.approx(rates.keep_correct, abs=0.03)
  assert r2[r1 == 0].mean() == pytest.approx(rates.fix_wrong, abs=0.03)
  assert copies[r1 == 0].mean() == pytest.approx(rates.copy_wrong, abs=0.03)
  # Custom rates: attempt 1 always right and always kept.
  kept = task.make_traces(50, seed=0, first_correct=1.0, keep_correct=1.0)
  assert all(t.attempt1 == t.attempt2 == t.example.solution for t in kept)
  with pytest.raises(ValueError, match='fix_wrong'):
    task.make_traces(1, fix_wrong=0.8, copy_wrong=0.5)


def test_forgotten_carry_is_the_first_carry_or_borrow_carried_through():
  assert [str(s) for s in toy_arith.forgotten_carry([7, 8, 2], ['+', '-'])] == ['7+8=5', '5-2=3']
  assert [str(s) for s in toy_arith.forgotten_carry([4, 1, 12, 8], ['+', '+', '-'])] == [
      '4+1=5', '5+12=17', '17-8=11']  # the first two steps need no carry
  assert [str(s) for s in toy_arith.forgotten_carry([12, 3, 2], ['-', '+'])] == [
      '12-3=11', '11+2=13']
  assert toy_arith.forgotten_carry([4, 1, 3], ['+', '+']) is None  # no carry anywhere
  assert toy_arith.forgotten_carry([7, 8, 9], ['+', '-']) is None  # 5-9 would go negative


def test_carry_habit_makes_attempt_one_forget_the_carry():
  settings = toy_arith.ArithSettings(digits=1, num_operands=3)
  traces = toy_arith.make_traces(settings, 3000, seed=0,
                                 rates=toy_arith.TraceRates(carry_habit=0.7))
  habit = [t for t in traces if toy_arith.forgotten_carry(
      *toy_arith.parse_problem(t.example.problem)) is not None]
  forgot = np.mean([t.attempt1 == toy_arith.format_solution(toy_arith.forgotten_carry(
      *toy_arith.parse_problem(t.example.problem))) for t in habit])
  assert 0.3 < len(habit) / len(traces) < 0.6
  assert forgot == pytest.approx(0.7, abs=0.04)  # the habit is the most likely attempt 1
  others = [t for t in traces if t not in habit]
  assert np.mean([t.attempt1 == t.example.solution for t in others]) == pytest.approx(
      0.6, abs=0.04)


def test_splits_are_deterministic_distinct_and_seeded(task):
  train, test = task.generate('train'), task.generate('test')
  assert len(train) == TRAIN and len(test) == TEST
  assert train == task.generate('train')
  assert not {e.problem for e in train} & {e.problem for e in test}
  assert len({e.problem for e in train}) == TRAIN
  other = tasks.get_task('toy_arith', train_size=TRAIN, test_size=TEST, seed=1)
  assert other.generate('test') != test


def test_dataset_round_trips_through_tfds(task, data_dir):
  for split, expected in (('train', task.generate('train')), ('test', task.generate('test'))):
    loaded = task.load_split(split, data_dir)
    assert len(loaded) == len(expected)
    for i in (0, 1, len(expected) // 2, len(expected) - 1):
      assert loaded[i] == expected[i]
    assert loaded[-1] == expected[-1]
  files = os.listdir(task.dataset_dir(data_dir))
  assert any('array_record' in name for name in files), files
  # A second task object reads the same files (no rebuild): same records.
  again = tasks.get_task('toy_arith', train_size=TRAIN, test_size=TEST)
  assert again.load_split('test', data_dir)[7] == task.generate('test')[7]


class _TwinBuilder:
  """A builder that loses TFDS's rename race: it raises as TFDS does when another run's
  dataset lands first, after that run has (``finished=True``) or has not written it."""

  def __init__(self, data_dir, finished):
    self.data_dir, self.finished, self.calls = data_dir, finished, 0

  def download_and_prepare(self):
    self.calls += 1
    if self.finished:
      with open(os.path.join(self.data_dir, 'dataset_info.json'), 'w') as f:
        f.write('{}')
    raise FileExistsError('Cannot rename incomplete.X_1.0.0: destination 1.0.0 already exists.')


def test_a_twin_run_building_the_same_dataset_reuses_its_files(tmp_path):
  from score_jax.tasks import base
  won = _TwinBuilder(str(tmp_path), finished=True)
  base.write_once(won)  # The other run's finished copy is used; no error.
  assert won.calls == 1
  base.write_once(won)  # Present now: not written again.
  assert won.calls == 1
  lost = _TwinBuilder(str(tmp_path / 'other'), finished=False)
  os.makedirs(lost.data_dir)
  with pytest.raises(FileExistsError):  # No finished dataset there: the error is real.
    base.write_once(lost)


def test_tokenizer_round_trips_every_text_and_is_cached(task, data_dir):
  tokenizer = task.tokenizer(data_dir)
  path = os.path.join(task.dataset_dir(data_dir), f'tokenizer_v{task.vocab_size}.model')
  assert os.path.exists(path)
  mtime = os.stat(path).st_mtime_ns
  cached = task.tokenizer(data_dir)
  assert os.stat(path).st_mtime_ns == mtime
  assert cached.encode('12+34=?') == tokenizer.encode('12+34=?')
  texts = []
  for split in task.splits:
    for example in task.load_split(split, data_dir):
      texts += [example.problem, task.first_turn_prompt(example), example.solution]
  for trace in task.make_traces(500, seed=0):
    texts += [trace.attempt1, trace.attempt2]
  texts += list(tasks.INSTRUCTIONS.values())
  for text in texts:
    assert tokenizer.decode(tokenizer.encode(text)) == text
  # Digits are single pieces, so every number is spelled digit by digit.
  assert [tokenizer.decode([i]) for i in tokenizer.encode('1234')] == ['1', '2', '3', '4']


def test_lengths_fit_the_trainer_slots(task, data_dir):
  tokenizer = task.tokenizer(data_dir)
  assert len(tokenizer.encode(task.instruction)) <= 8
  for trace in task.make_traces(300, seed=0):
    prompt = len(tokenizer.encode(task.first_turn_prompt(trace.example)))
    attempts = [len(tokenizer.encode(a)) for a in (trace.attempt1, trace.attempt2)]
    assert prompt <= 24 and max(attempts) <= 40 and prompt + max(attempts) < 48


def test_registry_and_options():
  assert {'toy_arith', 'math', 'humaneval', 'mbpp', 'mbpp_humaneval'} <= set(tasks.list_tasks())
  with pytest.raises(ValueError, match='Unknown task'):
    tasks.get_task('nope')
  with pytest.raises(ValueError, match="does not take the option"):
    tasks.get_task('toy_arith', path='/some/file')
  with pytest.raises(ValueError, match='digits'):
    tasks.get_task('toy_arith', digits=0)
  task = tasks.get_task('toy_arith')
  assert task.instruction == tasks.INSTRUCTIONS['toy']
  assert task.instruction_text('paper_math').startswith('There might be an error')
  with pytest.raises(ValueError, match='Unknown instruction preset'):
    task.instruction_text('nope')
  with pytest.raises(ValueError, match="no split 'validation'"):
    task.load_split('validation', '/tmp')


def test_second_guess_makes_attempt_two_undo_a_right_borrow():
  settings = toy_arith.ArithSettings(digits=1, num_operands=3)
  rates = toy_arith.TraceRates(carry_habit=0.7, second_guess=0.9, keep_correct=0.85)
  traces = toy_arith.make_traces(settings, 3000, seed=0, rates=rates)
  right_first = [t for t in traces if t.attempt1 == t.example.solution]
  doubted = [t for t in right_first if toy_arith.forgotten_carry(
      *toy_arith.parse_problem(t.example.problem), operators='-') is not None]
  undone = [t for t in doubted if t.attempt2 == toy_arith.format_solution(
      toy_arith.forgotten_carry(*toy_arith.parse_problem(t.example.problem), operators='-'))]
  assert len(doubted) > 100
  assert len(undone) / len(doubted) == pytest.approx(0.9, abs=0.04)
  # Every undone borrow breaks the right answer: a c→i revision the base model learns.
  assert all(toy_arith.extract_answer(t.attempt2) != t.example.answer for t in undone)
  # Right attempts with no borrow keep their answer at keep_correct.
  others = [t for t in right_first if t not in doubted]
  assert np.mean([t.attempt2 == t.attempt1 for t in others]) == pytest.approx(0.85, abs=0.04)
  # second_guess=0 draws the same traces as before the option existed.
  plain = toy_arith.make_traces(settings, 200, seed=0, rates=toy_arith.TraceRates(carry_habit=0.7))
  again = toy_arith.make_traces(settings, 200, seed=0, rates=toy_arith.TraceRates(
      carry_habit=0.7, second_guess=0.0))
  assert plain == again


def test_slip_rates_set_attempt_two_after_a_slip_but_not_after_the_habit():
  settings = toy_arith.ArithSettings(digits=1, num_operands=3)
  rates = toy_arith.TraceRates(carry_habit=0.7, fix_wrong=0.1, copy_wrong=0.8,
                               slip_fix=0.6, slip_copy=0.3)
  traces = toy_arith.make_traces(settings, 4000, seed=0, rates=rates)

  def habit_line(t):
    habit = toy_arith.forgotten_carry(*toy_arith.parse_problem(t.example.problem))
    return habit is not None and t.attempt1 == toy_arith.format_solution(habit)

  wrong = [t for t in traces if t.attempt1 != t.example.solution]
  habits = [t for t in wrong if habit_line(t)]
  slips = [t for t in wrong if not habit_line(t)]
  assert len(habits) > 500 and len(slips) > 300
  for group, fix, copy in ((habits, 0.1, 0.8), (slips, 0.6, 0.3)):
    assert np.mean([t.attempt2 == t.example.solution for t in group]) == pytest.approx(
        fix, abs=0.05)
    assert np.mean([t.attempt2 == t.attempt1 for t in group]) == pytest.approx(copy, abs=0.05)
  # Unset, a slip takes fix_wrong and copy_wrong like the habit.
  unset = toy_arith.make_traces(settings, 4000, seed=0, rates=toy_arith.TraceRates(
      carry_habit=0.7, fix_wrong=0.1, copy_wrong=0.8))
  slips = [t for t in unset if t.attempt1 != t.example.solution and not habit_line(t)]
  assert np.mean([t.attempt2 == t.example.solution for t in slips]) == pytest.approx(
      0.1, abs=0.05)
  with pytest.raises(ValueError, match='slip_fix must be a probability'):
    toy_arith.TraceRates(slip_fix=1.5)
  with pytest.raises(ValueError, match='slip_fix \\+ slip_copy'):
    toy_arith.TraceRates(slip_fix=0.5)  # with copy_wrong's 0.6


@pytest.mark.parametrize('problem, line, kind', [
    ('7+8-3', '7+8=15, 15-3=12. A: 12', 'right'),
    ('7+8-3', '7+8=5, 5-3=2. A: 2', 'carry habit'),       # the first carry forgotten
    ('7+8-9', '7+8=15, 15-9=14. A: 14', 'second guess'),  # the borrow undone
    ('7+8-3', '7+8=15, 15-3=13. A: 13', 'other wrong'),
    ('7+8-3', '7+8=16, 16-4=12. A: 12', 'other right'),   # the answer right, the line not
    ('7+8-3', 'no answer', 'other wrong'),
])
def test_attempt_kind_names_the_traces_habits(task, problem, line, kind):
  example = toy_arith.make_example(*toy_arith.parse_problem(problem))
  assert task.attempt_kind(example, line) == kind
  assert kind in toy_arith.ATTEMPT_KINDS
  # What the generator writes is what the kinds recognise.
  operands, ops = toy_arith.parse_problem(problem)
  if kind == 'carry habit':
    assert toy_arith.format_solution(toy_arith.forgotten_carry(operands, ops)) == line


def test_tasks_without_known_patterns_name_no_kind():
  assert tasks.Task.attempt_kind(None, None, 'A: 3') is None
