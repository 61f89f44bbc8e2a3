"""Code tasks: program extraction, HumanEval references and broken variants, MBPP files."""

import dataclasses
import json
import os

import pytest

from score_jax import tasks
from score_jax.rewards.sandbox import Status
from score_jax.tasks.code import (extract_program, humaneval_package_paths,
                                  names_only_passed_on, names_used_by_tests)

DATA = os.path.join(os.path.dirname(__file__), 'data')
# HumanEval problems whose canonical solution is sabotaged in a way its tests catch.
BROKEN = {
    'HumanEval/0': ('return True', 'return False'),  # has_close_elements: never close
    'HumanEval/2': ('return number % 1.0', 'return number % 1.0 + 0.5'),  # truncate_number
    'HumanEval/4': ('sum(abs(x - mean)', 'sum(abs(x + mean)'),  # mean_absolute_deviation
    'HumanEval/23': ('return len(string)', 'return len(string) - 1'),  # strlen
    'HumanEval/53': ('return x + y', 'return x - y'),  # add
}


@pytest.fixture(scope='module')
def humaneval():
  task = tasks.get_task('humaneval', timeout_s=10.0)
  return task, {e.id: e for e in task.load_split('test', '')}


@pytest.mark.parametrize('completion, program', [
    ('Here:\n```python\ndef f():\n  return 1\n```\nDone.', 'def f():\n  return 1'),
    ('```py\nx = 1\n```\nbetter:\n```\nx = 2\n```', 'x = 2'),  # the last block
    ('[BEGIN]\ndef g():\n  return 2\n[DONE]', 'def g():\n  return 2'),
    ('```python\nold = 1\n```\n[BEGIN]\nnew = 2\n[DONE]', 'new = 2'),  # ends later wins
    ('[BEGIN]\n```python\ninner = 3\n```\n[DONE]', 'inner = 3'),
    ('```python\ndef cut_off():\n  return', 'def cut_off():\n  return'),  # unterminated
    ('    return a + b\n', '    return a + b'),  # a bare body keeps its indentation
])
def test_program_extraction(completion, program):
  assert extract_program(completion) == program


def test_the_names_tests_use_are_found():
  expose, modules = names_used_by_tests('', [
      'assert math.isclose(area(2), 12.56, rel_tol=0.01)',
      'assert sorted(area_list([1])) == [3.14]'])
  assert expose == ('area', 'area_list') and modules == ('math',)
  expose, modules = names_used_by_tests('import re\nDATA = [1]\ndef helper():\n  pass',
                                        ['assert f(DATA, helper) == re.sub("a", "", "ab")'])
  assert expose == ('f',) and modules == ('re',)


def test_humaneval_sample_of_canonical_solutions_passes(humaneval):
  task, problems = humaneval
  assert len(problems) == 164
  sample = [problems[f'HumanEval/{i}'] for i in (0, 10, 32, 38, 50, 53, 87, 100, 129, 162)]
  completions = [e.answer[len(e.problem):] for e in sample]  # the canonical bodies
  results = task.run_batch(sample, completions)
  assert all(r.passed for r in results), [(e.id, r.status, r.detail)
                                          for e, r in zip(sample, results) if not r.passed]
  assert list(task.score_batch(sample[:2], completions[:2])) == [1.0, 1.0]


def test_a_whole_function_in_a_fence_also_passes(humaneval):
  task, problems = humaneval
  example = problems['HumanEval/53']
  completion = ('Sure.\n```python\ndef add(x: int, y: int):\n    """Add."""\n'
                '    return x + y\n```')
  assert task.score(example, completion) == 1.0
  assert task.score(example, '[BEGIN]\ndef add(x, y):\n    return y + x\n[DONE]') == 1.0


def test_broken_variants_fail(humaneval):
  task, problems = humaneval
  examples, completions = [], []
  for task_id, (old, new) in BROKEN.items():
    example = problems[task_id]
    body = example.answer[len(example.problem):]
    assert old in body, task_id
    examples.append(example)
    completions.append(body.replace(old, new))
  results = task.run_batch(examples, completions)
  assert [r.status for r in results] == [Status.FAILED] * len(BROKEN), [
      (e.id, r.status, r.detail) for e, r in zip(examples, results)]


def test_humaneval_prompt_and_instruction(humaneval):
  task, problems = humaneval
  prompt = task.first_turn_prompt(problems['HumanEval/0'])
  assert problems['HumanEval/0'].problem in prompt and '```python' in prompt
  assert task.instruction == tasks.INSTRUCTIONS['paper_code']


def test_mbpp_sample_loads_by_split_and_its_references_pass():
  task = tasks.get_task('mbpp', path=os.path.join(DATA, 'mbpp_sample.jsonl'))
  sizes = {s: len(task.load_split(s, '')) for s in task.splits}
  assert sizes == dict(train=3, validation=1, test=3, prompt=3, all=10)
  examples = task.load_split('all', '')
  results = task.run_batch(examples, [f'[BEGIN]\n{e.answer}\n[DONE]' for e in examples])
  assert all(r.passed for r in results), [(e.id, r.detail) for e, r in zip(examples, results)]
  prompt = task.first_turn_prompt(task.load_split('test', '')[0])
  assert prompt.count('[BEGIN]') == 3 and prompt.startswith('You are an expert Python')
  assert prompt.rstrip().endswith('assert sum_of_squares(10) == 385')
  paired = tasks.get_task('mbpp_humaneval', path=os.path.join(DATA, 'mbpp_sample.jsonl'))
  assert len(paired.load_split('train')) == 7 and len(paired.load_split('test')) == 164


def test_mbpp_errors_name_the_file_line_and_field(tmp_path):
  with pytest.raises(FileNotFoundError, match='/no/such/mbpp.jsonl'):
    tasks.get_task('mbpp', path='/no/such/mbpp.jsonl').load_split('all', '')
  with pytest.raises(ValueError, match='MBPP needs a path'):
    tasks.get_task('mbpp').load_split('all', '')
  good = json.dumps(dict(task_id=11, text='t', code='def f():\n  return 1',
                         test_list=['assert f() == 1']))
  for line, message in (
      ('{"task_id": 12, "text": ', r'bad.jsonl, line 2: not valid JSON'),
      (json.dumps(dict(task_id=12, text='t', code='c')),
       r"bad.jsonl, line 2 \(task_id 12\): field 'test_list' must be list; got missing"),
      (json.dumps(dict(task_id='12', text='t', code='c', test_list=['assert 1'])),
       r"line 2 \(task_id '12'\): field 'task_id' must be int; got str"),
      (json.dumps(dict(task_id=12, text='t', code='c', test_list=[])),
       r"line 2 \(task_id 12\): field 'test_list' must be a non-empty list")):
    path = tmp_path / 'bad.jsonl'
    path.write_text(good + '\n' + line + '\n')
    with pytest.raises(ValueError, match=message):
      tasks.get_task('mbpp', path=str(path)).load_split('all', '')


def test_only_inputs_built_by_program_classes_are_unchecked():
  assert names_only_passed_on(
      '', ['assert max_chain_length([Pair(5, 24), Pair(15, 25)], 2) == 1'],
      ('Pair', 'max_chain_length')) == ('Pair',)
  assert names_only_passed_on('', ['assert f([P(1)], key=K(3)) == 2'], 'fPK') == ('K', 'P')
  for tests in (['assert f(g(1)) == g(2)'], ['assert f(g)'], ['assert f(g(1))', 'g(f(2))'],
                ['assert g(g(1)) == 1']):
    assert names_only_passed_on('', tests, ('f', 'g')) == (), tests
  mbpp = tasks.get_task('mbpp', path=os.path.join(DATA, 'mbpp_sample.jsonl'))
  assert all(e.unchecked == () for e in mbpp.load_split('all', ''))


def _readable_in_the_sandbox(path):
  """False where the sandbox's own empty /tmp, /var/tmp or /dev/shm covers the path anyway (a
  clone under /tmp, as in CI): there the cheats below fail with nothing hidden too, so only the
  default's hiding can be checked, not the cheat's success without it."""
  path = os.path.realpath(path)
  return not any(path == top or path.startswith(top + os.sep)
                 for top in ('/tmp', '/var/tmp', '/dev/shm'))


# A HumanEval/53 completion that looks its canonical solution up in the dataset file.
_LOOK_UP_THE_ANSWER = '''    import gzip, json
    with gzip.open({path!r}, 'rt') as f:
        for line in f:
            problem = json.loads(line)
            if problem['task_id'] == 'HumanEval/53':
                namespace = {{}}
                exec(problem['prompt'] + problem['canonical_solution'], namespace)
                return namespace['add'](x, y)
'''


def test_humaneval_shaped_hacks_do_not_pass(humaneval):
  task, problems = humaneval
  data_file = os.path.join(humaneval_package_paths()[0], 'data', 'HumanEval.jsonl.gz')
  # Each passed before the sandbox checked results and guarded shared classes.
  cheats = {  # task id: (completion, status, reason)
      'HumanEval/53': ('    class Same:\n        def __eq__(self, other):\n            return True\n'
                       '    return Same()\n',
                       Status.FAILED, 'ResultRefused add returned an object of type Same'),
      'HumanEval/38': ('    return s\nimport random\nrandom._inst._randbelow = lambda n: 0\n',
                       Status.FAILED, 'Tampered random._inst was given the attribute _randbelow'),
      'HumanEval/50': ("    return 'a' * len(s)\nimport random\n"  # every input is 'aaa...'
                       'random.Random._randbelow = lambda self, n: 0\n', Status.FAILED,
                       'Tampered random.Random._randbelow was changed'),
  }
  examples = [problems[i] for i in cheats]
  results = task.run_batch(examples, [c[0] for c in cheats.values()])
  for (task_id, (_, status, reason)), result in zip(cheats.items(), results):
    assert (result.status, task_id) == (status, task_id), result.detail
    assert reason in result.detail, (task_id, result.detail)
  if os.geteuid() != 0:
    pytest.skip('hiding paths needs a mount namespace (root)')
  example = problems['HumanEval/53']
  cheat = _LOOK_UP_THE_ANSWER.format(path=data_file)
  hidden = task.run_batch([example], [cheat])[0]
  assert hidden.status == Status.FAILED and 'FileNotFoundError' in hidden.detail, hidden.detail
  if _readable_in_the_sandbox(data_file):
    open_task = tasks.get_task('humaneval', hide_paths=())  # the same cheat, nothing hidden
    assert open_task.run_batch([example], [cheat])[0].passed


def test_the_mbpp_file_is_hidden_by_default():
  if os.geteuid() != 0:
    pytest.skip('hiding paths needs a mount namespace (root)')
  path = os.path.join(DATA, 'mbpp_sample.jsonl')
  task = tasks.get_task('mbpp', path=path)
  assert os.path.realpath(path) in task.sandbox.config.hide_paths
  example = task.load_split('test', '')[0]  # sum_of_squares
  cheat = ('def sum_of_squares(n):\n  import json\n'
           f'  for line in open({path!r}):\n    record = json.loads(line)\n'
           '    if "sum_of_squares" in record["code"]:\n      namespace = {}\n'
           '      exec(record["code"], namespace)\n'
           '      return namespace["sum_of_squares"](n)')
  result = task.run_batch([example], [cheat])[0]
  # Hidden, the file reads as empty (the answer is never found); under a private /tmp, it is gone.
  expected = 'AssertionError' if _readable_in_the_sandbox(path) else 'FileNotFoundError'
  assert result.status == Status.FAILED and expected in result.detail, result.detail
  if _readable_in_the_sandbox(path):
    open_task = tasks.get_task('mbpp', path=path, hide_paths=())
    assert open_task.run_batch([example], [cheat])[0].passed


def test_results_checking_is_a_task_option():
  task = tasks.get_task('mbpp', path=os.path.join(DATA, 'mbpp_sample.jsonl'),
                        check_results=False)
  example = task.load_split('test', '')[0]
  assert task.job(example, 'x = 1').check_results is False
  generator = 'def sum_of_squares(n):\n  yield from [sum(i * i for i in range(1, n + 1))]'
  example = dataclasses.replace(example, tests=('assert list(sum_of_squares(3)) == [14]',))
  assert task.run_batch([example], [generator])[0].passed
  checked = tasks.get_task('mbpp', path=os.path.join(DATA, 'mbpp_sample.jsonl'))
  result = checked.run_batch([example], [generator])[0]
  assert result.status == Status.FAILED and 'type generator' in result.detail
