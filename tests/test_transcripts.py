"""score_jax.transcripts: the fixed rule that picks the transcripts, and its command line."""

import json
import os
import subprocess
import sys

from score_jax import reporting


def _sample(problem_id, reward1, reward2, attempt1='a1', attempt2='a2'):
  return dict(id=problem_id, reward1=reward1, reward2=reward2, attempt1=attempt1,
              attempt2=attempt2)


AFTER = [_sample('p0', 1, 1), _sample('p1', 0, 1), _sample('p2', 1, 0), _sample('p3', 0, 1),
         _sample('p4', 0, 0), _sample('p5', 0, 1), _sample('p6', 1, 1)]


def test_outcomes_follow_both_rewards():
  assert [reporting.outcome(s) for s in AFTER] == [
      'c→c', 'i→c', 'c→i', 'i→c', 'i→i', 'i→c', 'c→c']


def test_choose_keeps_the_first_problems_of_each_outcome_in_order():
  chosen = reporting.choose(AFTER, per_outcome=2)
  assert {name: [s['id'] for s in group] for name, group in chosen.items()} == {
      'i→c': ['p1', 'p3'], 'c→i': ['p2'], 'i→i': ['p4'], 'c→c': ['p0', 'p6']}


def test_markdown_shows_both_models_on_the_chosen_problems():
  before = [_sample(s['id'], 0, 0, attempt1=f'old {s["id"]}') for s in AFTER]
  text = reporting.format_transcripts(before, AFTER, 1, problems={'p1': 'What is 1 + 1?'},
                                        instruction='Check your answer.')
  assert text.startswith('Outcomes of the after model on 7 held-out problems: '
                         'i→c 3, c→i 1, i→i 1, c→c 2.')
  assert 'The instruction before every attempt 2: "Check your answer."' in text
  assert '### i→c after training (3 problems; the first 1 shown)' in text
  assert '**What is 1 + 1?** (id `p1`)' in text
  # The base model's attempts come first, then the trained model's, each marked.
  assert text.index('before, attempt 1 (wrong):\n\n    old p1') < text.index(
      'after, attempt 2 (right):')
  assert 'p3' not in text  # the second i→c problem is not shown with per_outcome=1


def test_command_line_writes_the_markdown(tmp_path):
  for name, rows in (('before', [_sample('p1', 0, 0)]), ('after', AFTER)):
    with open(tmp_path / f'{name}.jsonl', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  out = tmp_path / 'transcripts.md'
  args = [sys.executable, '-m', 'score_jax.transcripts', f'--before={tmp_path}/before.jsonl',
          f'--after={tmp_path}/after.jsonl', '--per_outcome=1', f'--output={out}']
  result = subprocess.run(args, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == out.read_text() and '### c→i after training' in result.stdout

  missing = subprocess.run(args[:4] + [f'--after={tmp_path}/nowhere.jsonl'],
                           capture_output=True, text=True, check=False)
  assert missing.returncode != 0
  assert 'nowhere.jsonl does not exist' in missing.stderr
  assert 'Traceback' not in missing.stderr
  assert not os.path.exists(tmp_path / 'nowhere.jsonl')
