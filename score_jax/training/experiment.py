"""What the trainer and the evaluator share: task, data, tokenizer, template, model, mesh.

``Experiment.from_config`` turns a validated config into the concrete pieces, once; both
entry points (``score_jax.train`` and ``score_jax.evaluate``) start from it, so a model
evaluated on its own is set up exactly as it was during training.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from score_jax import config_lib, sharding, tasks
from score_jax.model import Decoder, ModelConfig, abstract_params, init_params
from score_jax.sampling.templates import ChatTemplate, JinjaChatTemplate, get_template
from score_jax.tokenizer import Tokenizer
from score_jax.trajectory import RolloutSpec, pack_prompts


@dataclasses.dataclass
class Experiment:
  """The concrete pieces a config describes."""

  config: ml_collections.ConfigDict
  task: Any  # A score_jax.tasks task.
  tokenizer: Tokenizer
  template: ChatTemplate
  instruction: str
  spec: RolloutSpec  # The two-turn slot layout.
  model_config: ModelConfig
  mesh: jax.sharding.Mesh
  train_examples: Sequence[Any]
  test_examples: Sequence[Any]
  pretrained: Any = None  # The checkpoint ``config.init_from`` names (score_jax.convert).
  _prompt_cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, workdir: str,
                  mesh: jax.sharding.Mesh | None = None,
                  with_train_split: bool = True) -> 'Experiment':
    """Builds (or loads, when cached) the data and tokenizer and checks that they fit.

    Args:
      config: a validated training config.
      workdir: the run's directory (data go under ``workdir/data`` unless the config
        names a data directory).
      mesh: the device mesh (default: the one ``config.mesh`` describes).
      with_train_split: load the training split too (evaluation does not need it).

    Raises:
      ValueError: a setting that does not fit the data, e.g. prompts longer than the
        prompt slot or a vocabulary larger than the model's.
    """
    data_dir = config.task.data_dir or os.path.join(workdir, 'data')
    task = build_task(config.task)
    # Evaluation needs no training data (HumanEval, for one, has only a test split).
    train_examples = (task.load_split(config.task.train_split, data_dir)
                      if with_train_split else [])
    test_examples = task.load_split(config.task.test_split, data_dir)
    pretrained = None
    if config.get('init_from'):
      from score_jax import convert  # pylint: disable=g-import-not-at-top
      pretrained = convert.open_pretrained(config.init_from)
    if pretrained is not None and pretrained.tokenizer is not None:
      tokenizer = pretrained.tokenizer
    else:
      tokenizer = task.tokenizer(data_dir)
    if tokenizer is None:
      raise ValueError(
          f'Task {config.task.name!r} uses the model\'s tokenizer, and none was given: set '
          f'--config.init_from to a checkpoint that has one.')
    template = _template(config.task.template, pretrained)
    instruction = task.instruction_text(config.task.instruction)
    rollout = config.rollout
    spec = RolloutSpec(
        prompt_len=rollout.prompt_len, attempt1_len=rollout.attempt1_len,
        stop_tokens=template.stop_tokens(tokenizer),
        instruction_tokens=tuple(template.encode_instruction(tokenizer, instruction)),
        attempt2_len=rollout.attempt2_len, instruction_len=rollout.instruction_len,
        pad_id=tokenizer.pad_id, top_k=rollout.top_k, vocab_size=tokenizer.vocab_size,
        row_chunks=rollout.get('row_chunks', 1),
        decode_block_len=rollout.get('decode_block_len', 0))
    model_config = config_lib.build_model_config(
        config.model, pretrained.architecture if pretrained is not None else None)
    if model_config.vocab_size < tokenizer.vocab_size:
      raise ValueError(
          f'model.vocab_size ({model_config.vocab_size}) is smaller than the tokenizer\'s '
          f'vocabulary ({tokenizer.vocab_size}); raise --config.model.vocab_size.')
    experiment = cls(config=config, task=task, tokenizer=tokenizer, template=template,
                     instruction=instruction, spec=spec, model_config=model_config,
                     mesh=mesh if mesh is not None else config_lib.build_mesh(config.mesh),
                     train_examples=train_examples, test_examples=test_examples,
                     pretrained=pretrained)
    experiment.check_prompts_fit()
    return experiment

  # ---- models -------------------------------------------------------------------------------

  def model(self, rules: str = 'train', adapted: bool = False) -> Decoder:
    """The decoder under the training or the sampling rule set of the mesh; ``adapted``: with
    the LoRA adapters of ``config.lora`` (the model of the phases after the warm start)."""
    model_config = self.model_config
    if adapted:
      model_config = config_lib.adapted_model_config(model_config, self.config)
    return Decoder(model_config, sharding.MeshRules(self.mesh, sharding.RULE_SETS[rules]))

  @property
  def uses_lora(self) -> bool:
    return bool(self.config.get('lora') and self.config.lora.rank)

  def initial_params(self, seed: int):
    """``(params, logical_axes)`` in the training layout: the imported checkpoint's
    weights when the config names one, else a seeded random initialisation."""
    model = self.model('train')
    if self.pretrained is None:
      return init_params(model, jax.random.key(seed))
    params = self.pretrained.load_params(self.model_config, model.mesh_rules)
    return params, abstract_params(model)[1]

  def rollout_spec(self, two_turns: bool = True) -> RolloutSpec:
    if two_turns:
      return self.spec
    return dataclasses.replace(self.spec, attempt2_len=0, instruction_tokens=(),
                               instruction_len=0)

  # ---- prompts ------------------------------------------------------------------------------

  def prompt_ids(self, example) -> list[int]:
    """The first prompt's token ids for an example (cached by example id)."""
    key = example.id
    if key not in self._prompt_cache:
      system = self.config.task.system_prompt or None
      self._prompt_cache[key] = self.template.encode_prompt(
          self.tokenizer, self.task.first_turn_prompt(example), system=system)
    return self._prompt_cache[key]

  def pack_prompts(self, examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    return pack_prompts([self.prompt_ids(e) for e in examples], self.spec.prompt_len,
                        self.spec.pad_id)

  def check_prompts_fit(self) -> None:
    """Stops at start-up, not mid-run, when a prompt is longer than the prompt slot."""
    for split, examples in (('train', self.train_examples), ('test', self.test_examples)):
      longest = max((len(self.prompt_ids(e)), e.id) for e in examples) if len(examples) else (0,
                                                                                              '')
      if longest[0] > self.spec.prompt_len:
        raise ValueError(
            f'The {split} prompt of example {longest[1]!r} has {longest[0]} tokens but '
            f'rollout.prompt_len is {self.spec.prompt_len}; raise --config.rollout.prompt_len '
            f'to at least {longest[0]}.')


def _template(name: str, pretrained) -> ChatTemplate | JinjaChatTemplate:
  """A built-in template by name, or (name 'checkpoint') the checkpoint's own."""
  if name != JinjaChatTemplate.name:
    return get_template(name)
  if pretrained is None or not pretrained.chat_template:
    raise ValueError("task.template='checkpoint' needs a checkpoint with a chat template in "
                     "--config.init_from; otherwise name a built-in template.")
  return JinjaChatTemplate(pretrained.chat_template)


def build_task(task_config: ml_collections.ConfigDict) -> tasks.Task:
  """The task ``config.task`` names, with its task-specific settings."""
  return tasks.get_task(task_config.name, **_task_options(task_config))


def _task_options(task_config: ml_collections.ConfigDict) -> dict:
  """Task-specific settings: everything under ``config.task`` the Experiment does not use."""
  shared = {'name', 'template', 'instruction', 'system_prompt', 'data_dir', 'train_split',
            'test_split'}
  return {k: v for k, v in task_config.items() if k not in shared}
