"""MATH answers: extraction, equivalence (hand-written verdicts), time limits, data loading."""

import json
import os
import shutil
import time

import pytest

from score_jax import tasks
from score_jax.rewards import math_answers
from score_jax.rewards.math_answers import extract_answer

DATA = os.path.join(os.path.dirname(__file__), 'data')
TIMEOUT_S = 3.0
# A verdict must come back within the per-check deadline plus the cost of killing and
# restarting a worker (the next call pays the restart; this bound covers both).
BOUND_S = TIMEOUT_S + 2.0


@pytest.fixture(scope='module')
def verifier():
  v = math_answers.MathVerifier(timeout_s=TIMEOUT_S, max_answer_chars=10**7)
  yield v
  v.close()


EXTRACTION_CASES = [
    ('So the answer is $\\boxed{5}$.', '5'),
    ('Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.', '\\frac{3}{4}'),
    ('The final answer is 12.', '12'),
    ('the FINAL ANSWER IS $x^2$', 'x^2'),
    ('\\boxed{\\frac{1}{2}}', '\\frac{1}{2}'),  # nested braces
    ('\\boxed{\\{1,2\\}}', '\\{1,2\\}'),  # escaped braces do not count
    ('\\boxed{\\boxed{7}}', '7'),  # a box in a box
    ('\\boxed{\\frac{1}{\\boxed{2}}}', '\\frac{1}{2}'),
    ('First \\boxed{3}, then on reflection \\boxed{4}.', '4'),  # the last one wins
    ('\\boxed{3}. Final Answer: The final answer is $4$. I hope it is correct.', '4'),
    ('Final Answer: The final answer is $4$. Check: \\boxed{5}', '5'),
    ('\\fbox{9}', '9'),
    ('so \\boxed 6$ done', '6'),
    ('\\boxed{ (1, 2] }', '(1, 2]'),
    ('The final answer is $\\boxed{\\dfrac{1}{3}}$. I hope it is correct.', '\\dfrac{1}{3}'),
    ('The final answer is $\\$5$.', '\\$5'),
    ('no answer here', None),
    ('\\boxed{}', None),
    ('\\boxed{never closed \\boxed{2}', None),
    ('', None),
]


@pytest.mark.parametrize('text, expected', EXTRACTION_CASES)
def test_extraction(text, expected):
  assert extract_answer(text) == expected


EQUIVALENCE_CASES = [
    # fractions and decimals
    ('\\frac{1}{2}', '0.5', True), ('\\frac{1}{2}', '\\dfrac{1}{2}', True),
    ('\\frac{3}{4}', '3/4', True), ('-\\frac{3}{4}', '-0.75', True),
    ('\\frac{1}{3}', '0.333', False), ('\\frac{7}{2}', '3\\frac{1}{2}', True),
    ('\\frac{2}{3}', '\\frac{3}{2}', False),
    # LaTeX forms
    ('\\sqrt{2}/2', '\\frac{\\sqrt{2}}{2}', True), ('5\\sqrt{2}', '\\sqrt{50}', True),
    ('2^{10}', '1024', True), ('x^2+2x+1', '(x+1)^2', True), ('x^2+1', '1+x^2', True),
    ('2\\pi', '6.283185', True), ('9\\pi', '9 \\pi', True), ('\\infty', '\\infty', True),
    ('\\begin{pmatrix} 4 \\\\ 1 \\end{pmatrix}', '\\begin{pmatrix}4\\\\1\\end{pmatrix}', True),
    ('\\begin{pmatrix} 4 \\\\ 1 \\end{pmatrix}', '\\begin{pmatrix}1\\\\4\\end{pmatrix}', False),
    # units, degrees, percent, currency, text
    ('5\\text{ cm}', '5', True), ('70^\\circ', '70', True), ('\\$5', '5', True),
    ('10\\%', '10', True), ('\\text{(B)}', 'B', True), ('\\text{Monday}', 'Monday', True),
    # intervals and sets
    ('(1,2]', '(1, 2]', True), ('[1,2)', '(1,2)', False), ('(-2, 2)', '(-2,2)', True),
    ('\\{1,2\\}', '\\{2,1\\}', True),
    # several answers in one
    ('-2, 2', '2, -2', True), ('-2, 2', '2', False),
    # equations and plain numbers
    ('3', 'x=3', True), ('y=2x+3', '2x+3', True), ('10', '10.0', True), ('3', '4', False),
    ('1,000', '1000', True),
]


@pytest.mark.parametrize('gold, answer, expected', EQUIVALENCE_CASES)
def test_equivalence(verifier, gold, answer, expected):
  verdict = verifier.verify(gold, answer)
  assert verdict.equivalent == expected, verdict


def test_missing_answers_are_not_equivalent(verifier):
  assert verifier.verify('3', None) == math_answers.Verdict(False, 'no_answer')
  assert verifier.verify(None, '3').reason == 'no_answer'
  assert verifier.verify('3', ' 3 ').reason == 'match'  # decided without the worker


@pytest.mark.parametrize('name, answer', [
    ('tower of exponents', '2^{2^{2^{2^{2^{2^{2^{2}}}}}}}'),
    ('huge power', '10^{10^{10}}'),
    ('huge factorial', '(10^{8})!'),
    ('deep parentheses', '(' * 900 + '1' + ')' * 900),
    ('deep fractions', '\\frac{' * 300 + '1' + '}{2}' * 300),
    ('deep roots', '\\sqrt{' * 500 + '2' + '}' * 500),
    ('megabyte of text', 'x' * (1 << 20)),
    ('long sum', '1+' * 100_000 + '1'),
])
def test_adversarial_answers_return_in_time(verifier, name, answer):
  start = time.monotonic()
  verdict = verifier.verify('2', answer)
  elapsed = time.monotonic() - start
  assert not verdict.equivalent, (name, verdict)
  assert elapsed < BOUND_S, f'{name}: {elapsed:.1f} s'


def test_a_megabyte_of_text_extracts_quickly():
  for text in ('y' * (1 << 20) + '\\boxed{42}', '\\boxed{' + '{' * (1 << 20),
               '\\boxed{' * (1 << 18), 'final answer is ' * 60_000):
    start = time.monotonic()
    extract_answer(text)
    assert time.monotonic() - start < 2.0


def test_the_deadline_kills_and_restarts_the_worker():
  # A deadline shorter than math-verify's own: the worker is killed mid-check, then restarted.
  v = math_answers.MathVerifier(timeout_s=0.02)
  try:
    v.verify('1', '2')  # starts the worker
    verdict = v.verify('x^2+2x+1', '\\frac{' * 100 + '(x+1)^2' + '}{1}' * 100)
    assert verdict == math_answers.Verdict(False, 'timeout')
    v.timeout_s = 10.0
    assert v.verify('\\frac{1}{2}', '0.5') == math_answers.Verdict(True, 'verified')
  finally:
    v.close()


def test_verify_works_from_threads():
  v = math_answers.MathVerifier(timeout_s=TIMEOUT_S, num_workers=2)
  try:
    verdicts = v.verify_batch(['\\frac12', '3', '(1,2)', '4'], ['0.5', '4', '(1,2)', '2^2'])
    assert [x.equivalent for x in verdicts] == [True, False, True, True]
  finally:
    v.close()


# ---- the MATH task: loading and errors -------------------------------------------------------

def _math_task(path, heldout=''):
  return tasks.get_task('math', path=path, heldout_ids=heldout, timeout_s=TIMEOUT_S)


def test_math_layout_with_heldout_ids(tmp_path):
  task = _math_task(os.path.join(DATA, 'math_sample'),
                    os.path.join(DATA, 'math_sample_heldout.txt'))
  try:
    train, test = (task.load_split(s, str(tmp_path)) for s in ('train', 'test'))
    assert (len(train), len(test)) == (15, 5)
    assert test[0].id == 'test/algebra/11.json' and test[0].answer == '3'
    assert {e.id for e in train}.isdisjoint(e.id for e in test)
    assert test[3].answer == '\\begin{pmatrix} 4 \\\\ 1 \\end{pmatrix}'
    completions = [e.solution for e in test]
    completions[1] = 'Final Answer: The final answer is $41$. I hope it is correct.'
    assert list(task.score_batch(test, completions)) == [1, 0, 1, 1, 1]
    assert task.first_turn_prompt(test[0]).startswith(tasks.PAPER_MATH_FIRST_TURN)
  finally:
    task.close()


def test_math_jsonl_with_math500_style_ids(tmp_path):
  source = tmp_path / 'math.jsonl'
  heldout = tmp_path / 'heldout.jsonl'
  rows = []
  for root, _, files in sorted(os.walk(os.path.join(DATA, 'math_sample'))):
    for name in sorted(files):
      with open(os.path.join(root, name)) as f:
        row = json.load(f)
      row['unique_id'] = os.path.relpath(os.path.join(root, name),
                                         os.path.join(DATA, 'math_sample'))
      rows.append(row)
  source.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  heldout.write_text(json.dumps({'unique_id': rows[0]['unique_id'], 'answer': 'x'}) + '\n')
  task = _math_task(str(source), str(heldout))
  test = task.load_split('test', str(tmp_path / 'data'))
  assert [e.id for e in test] == [rows[0]['unique_id']]
  assert len(task.load_split('train', str(tmp_path / 'data'))) == len(rows) - 1


def test_math_errors_name_the_file_record_and_field(tmp_path):
  with pytest.raises(FileNotFoundError, match='/no/such/dir'):
    _math_task('/no/such/dir').load_split('train', str(tmp_path))
  with pytest.raises(ValueError, match='needs path'):
    _math_task('').load_split('train', str(tmp_path))
  root = tmp_path / 'MATH'
  shutil.copytree(os.path.join(DATA, 'math_sample'), root)
  bad = root / 'train' / 'algebra' / '2.json'
  bad.write_text(json.dumps({'problem': 'What is 1+1?', 'level': 'Level 1',
                             'type': 'Algebra'}))
  with pytest.raises(ValueError, match=r"2\.json: field 'solution' is missing"):
    _math_task(str(root)).load_split('train', str(tmp_path / 'd1'))
  bad.write_text(json.dumps({'problem': 'What is 1+1?', 'solution': 'It is two.'}))
  with pytest.raises(ValueError, match=r"2\.json: field 'solution' has no \\boxed"):
    _math_task(str(root)).load_split('train', str(tmp_path / 'd2'))
  bad.write_text('{"problem": "What is')
  with pytest.raises(ValueError, match=r'2\.json: not valid JSON'):
    _math_task(str(root)).load_split('train', str(tmp_path / 'd3'))
  lines = tmp_path / 'bad.jsonl'
  lines.write_text('{"problem": "p", "solution": "\\\\boxed{1}"}\n{"problem": 3, '
                   '"solution": "s"}\n')
  with pytest.raises(ValueError, match="bad.jsonl, line 2: field 'problem' must be"):
    _math_task(str(lines)).load_split('train', str(tmp_path / 'd4'))
  ids = tmp_path / 'ids.txt'
  ids.write_text('test/algebra/999.json\n')
  with pytest.raises(ValueError, match=r"ids.txt: 1 held-out id\(s\) are not in"):
    _math_task(os.path.join(DATA, 'math_sample'), str(ids)).load_split('test',
                                                                      str(tmp_path / 'd5'))
