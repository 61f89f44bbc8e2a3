"""Turn formatting for the two-turn conversation, per model family, and text helpers.

A template decides three things: how the problem becomes the first prompt (ending with the
opening of the model's turn), what comes between attempt 1's stop token and attempt 2 (the
user turn carrying the self-correction instruction, then the model's turn again), and which
tokens stop an attempt. Special tokens are looked up by name in the tokenizer, never
hard-coded as ids, and text between them is encoded normally, so the same template works
with any checkpoint of the family. (Reading the attempts' texts back out of a rollout is
``score_jax.trajectory.attempt_texts``.)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from score_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Formats the conversation problem → attempt 1 → instruction → attempt 2.

  Attributes:
    name: how configs refer to the template.
    prompt_format: the first prompt; ``{user}`` is the problem text, ``{system}`` the
      rendered system block (empty when there is none).
    system_format: how a system message is rendered into ``{system}``.
    instruction_format: the tokens after attempt 1's stop token, with ``{instruction}``.
    specials: special-token strings that may appear in the formats.
    stop_pieces: special tokens that end an attempt (besides the end-of-sequence token).
    add_bos: prepend the tokenizer's begin-of-sequence token (when it has one).
  """

  name: str
  prompt_format: str
  instruction_format: str
  specials: tuple[str, ...] = ()
  stop_pieces: tuple[str, ...] = ()
  system_format: str = ''
  add_bos: bool = False

  def encode_prompt(self, tokenizer: Tokenizer, user: str, system: str | None = None):
    """Token ids of the first prompt, ending where the model's first attempt begins."""
    system_block = self.system_format.format(system=system) if system else ''
    ids = _render(tokenizer, self.prompt_format.format(user=user, system=system_block),
                  self.specials)
    if self.add_bos and tokenizer.bos_id is not None:
      ids = [tokenizer.bos_id] + ids
    return ids

  def encode_instruction(self, tokenizer: Tokenizer, instruction: str) -> list[int]:
    """Token ids placed after attempt 1's stop token, ending where attempt 2 begins."""
    return _render(tokenizer, self.instruction_format.format(instruction=instruction),
                   self.specials)

  def stop_tokens(self, tokenizer: Tokenizer) -> tuple[int, ...]:
    ids = [_special_id(tokenizer, piece) for piece in self.stop_pieces] + [tokenizer.eos_id]
    return tuple(dict.fromkeys(ids))  # Unique, in order.


def _special_id(tokenizer: Tokenizer, piece: str) -> int:
  token = tokenizer.token_id(piece)
  if token is None:
    raise ValueError(f'The tokenizer has no special token {piece!r}, which this chat template '
                     f'needs; pick the template that matches the checkpoint.')
  return token


def _render(tokenizer: Tokenizer, text: str, specials: Sequence[str]) -> list[int]:
  """Encodes text, mapping each special-token string to its single id."""
  if not specials:
    return tokenizer.encode(text)
  pattern = '(' + '|'.join(re.escape(s) for s in specials) + ')'
  ids: list[int] = []
  for part in re.split(pattern, text):
    if part in specials:
      ids.append(_special_id(tokenizer, part))
    elif part:
      ids.extend(tokenizer.encode(part))
  return ids


TEMPLATES: dict[str, ChatTemplate] = {
    # The toy task's own tokenizer: no chat markup; attempts end with end-of-sequence.
    'plain': ChatTemplate(name='plain', prompt_format='{system}{user}',
                          system_format='{system}\n', instruction_format='{instruction}',
                          add_bos=True),
    # ChatML (SmolLM2, Qwen2).
    'chatml': ChatTemplate(
        name='chatml',
        prompt_format='{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n',
        system_format='<|im_start|>system\n{system}<|im_end|>\n',
        instruction_format=('\n<|im_start|>user\n{instruction}<|im_end|>\n'
                            '<|im_start|>assistant\n'),
        specials=('<|im_start|>', '<|im_end|>'), stop_pieces=('<|im_end|>',)),
    # Gemma and Gemma 2 (no system role: a system message is prepended to the user turn).
    'gemma': ChatTemplate(
        name='gemma',
        prompt_format='<start_of_turn>user\n{system}{user}<end_of_turn>\n<start_of_turn>model\n',
        system_format='{system}\n\n',
        instruction_format=('\n<start_of_turn>user\n{instruction}<end_of_turn>\n'
                            '<start_of_turn>model\n'),
        specials=('<start_of_turn>', '<end_of_turn>'), stop_pieces=('<end_of_turn>',),
        add_bos=True),
    # Llama 3 instruct.
    'llama3': ChatTemplate(
        name='llama3',
        prompt_format=('{system}<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>'
                       '<|start_header_id|>assistant<|end_header_id|>\n\n'),
        system_format='<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>',
        instruction_format=('<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>'
                            '<|start_header_id|>assistant<|end_header_id|>\n\n'),
        specials=('<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'),
        stop_pieces=('<|eot_id|>',), add_bos=True),
}


class JinjaChatTemplate:
  """A checkpoint's own chat template (the Jinja source Hugging Face and GGUF files carry).

  It is rendered exactly as ``transformers``' ``apply_chat_template`` would render it. The
  tokens between the two attempts are what the template puts after an assistant turn
  holding attempt 1 and before the next assistant turn; the token that closes an assistant
  turn (``<|im_end|>``, ``<end_of_turn>``, ...) becomes a stop token.
  """

  name = 'checkpoint'
  _SENTINEL = '\x00attempt\x00'

  def __init__(self, source: str):
    import jinja2.sandbox  # pylint: disable=g-import-not-at-top
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals['raise_exception'] = _raise_template_error
    env.globals['strftime_now'] = lambda fmt: __import__('time').strftime(fmt)
    try:
      self._template = env.from_string(source)
    except jinja2.TemplateError as e:
      raise ValueError(f'The checkpoint\'s chat template does not parse: {e}') from None
    self.source = source

  def render(self, tokenizer: Tokenizer, messages: list[dict], add_generation_prompt: bool):
    specials = {}
    for name, token in (('bos_token', tokenizer.bos_id), ('eos_token', tokenizer.eos_id)):
      specials[name] = tokenizer.id_to_piece(token) if token is not None else ''
    return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                 **specials)

  def encode_prompt(self, tokenizer: Tokenizer, user: str, system: str | None = None):
    messages = ([{'role': 'system', 'content': system}] if system else []) + [
        {'role': 'user', 'content': user}]
    return tokenizer.encode(self.render(tokenizer, messages, add_generation_prompt=True))

  def _after_attempt(self, tokenizer: Tokenizer, instruction: str | None) -> list[int]:
    """Token ids the template puts after an assistant turn holding attempt 1."""
    messages = [{'role': 'user', 'content': 'problem'},
                {'role': 'assistant', 'content': self._SENTINEL}]
    if instruction is not None:
      messages.append({'role': 'user', 'content': instruction})
    text = self.render(tokenizer, messages, add_generation_prompt=instruction is not None)
    if text.count(self._SENTINEL) != 1:
      raise ValueError('The checkpoint\'s chat template does not render assistant turns '
                       'verbatim; name a built-in template with --config.task.template.')
    return tokenizer.encode(text.split(self._SENTINEL, 1)[1])

  def _turn_end(self, tokenizer: Tokenizer) -> int | None:
    """The id that closes an assistant turn, when the template closes it with one token."""
    after = self._after_attempt(tokenizer, None)
    if after and tokenizer.decode(after[:1]) == '':  # A special token (decodes to nothing).
      return after[0]
    return None

  def encode_instruction(self, tokenizer: Tokenizer, instruction: str) -> list[int]:
    ids = self._after_attempt(tokenizer, instruction)
    end = self._turn_end(tokenizer)
    # Attempt 1 ends with the turn-closing token the model generated; what follows is ours.
    return ids[1:] if end is not None and ids[:1] == [end] else ids

  def stop_tokens(self, tokenizer: Tokenizer) -> tuple[int, ...]:
    end = self._turn_end(tokenizer)
    return tuple(dict.fromkeys(([end] if end is not None else []) + [tokenizer.eos_id]))


def _raise_template_error(message: str):
  raise ValueError(f'The checkpoint\'s chat template refused the conversation: {message}')


def get_template(name: str) -> ChatTemplate:
  if name not in TEMPLATES:
    raise ValueError(f'Unknown chat template {name!r}; known templates: {sorted(TEMPLATES)}.')
  return TEMPLATES[name]
