"""Chat templates: rendered ids, special tokens, stop tokens, and rollout text helpers."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.sampling import ATTEMPT1, ATTEMPT2, INSTRUCTION, PAD, PROMPT, Rollout
from score_jax.sampling.templates import TEMPLATES, get_template
from score_jax.trajectory import attempt_texts
from score_jax.tokenizer import SentencePieceTokenizer

ALL_SPECIALS = sorted({s for t in TEMPLATES.values() for s in t.specials})


@functools.lru_cache(maxsize=None)
def tokenizer(with_specials=True):
  texts = ['user\nassistant\n\nmodel system\n', 'Be brief.', 'What is 12 + 30?', 'Check the answer again.',
           'The answer is 42.'] * 50
  return SentencePieceTokenizer.train(
      texts, vocab_size=120, user_defined_symbols=ALL_SPECIALS if with_specials else ())


@pytest.mark.parametrize('name', sorted(TEMPLATES))
def test_rendering_round_trips_and_specials_are_single_ids(name):
  template = get_template(name)
  tok = tokenizer()
  ids = template.encode_prompt(tok, 'What is 12 + 30?', system='Be brief.')
  expected = template.prompt_format.format(
      user='What is 12 + 30?', system=template.system_format.format(system='Be brief.'))
  body = ids[1:] if template.add_bos else ids
  assert tok.decode(body) == expected
  if template.add_bos:
    assert ids[0] == tok.bos_id
  for special in template.specials:
    if special in expected:
      assert tok.token_id(special) in ids
  instruction = template.encode_instruction(tok, 'Check the answer again.')
  assert tok.decode(instruction) == template.instruction_format.format(
      instruction='Check the answer again.')
  stops = template.stop_tokens(tok)
  assert tok.eos_id in stops
  assert all(tok.token_id(p) in stops for p in template.stop_pieces)


def test_chatml_layout_is_exact():
  tok = tokenizer()
  ids = get_template('chatml').encode_prompt(tok, 'What is 12 + 30?')
  start, end = tok.token_id('<|im_start|>'), tok.token_id('<|im_end|>')
  assert ids[0] == start and ids.count(start) == 2 and ids.count(end) == 1
  assert tok.decode(ids) == ('<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n'
                             '<|im_start|>assistant\n')
  assert get_template('chatml').stop_tokens(tok)[0] == end


def test_missing_special_token_is_a_clear_error():
  with pytest.raises(ValueError, match=r"no special token '<start_of_turn>'.*pick the template"):
    get_template('gemma').encode_prompt(tokenizer(with_specials=False), 'hi')
  with pytest.raises(ValueError, match=r"Unknown chat template 'chatgpt'"):
    get_template('chatgpt')


def test_attempt_texts_strip_padding_and_stop_tokens():
  tok = tokenizer()
  a1, a2 = tok.encode('The answer is 42.'), tok.encode('The answer is 12.')
  eos = tok.eos_id
  prompt = tok.encode('What is 12 + 30?')
  instruction = tok.encode('Check the answer again.')
  row = ([0] + prompt + a1 + [eos, 0, 0] + instruction + a2 + [0])
  segments = ([PAD] + [PROMPT] * len(prompt) + [ATTEMPT1] * (len(a1) + 1) + [PAD] * 2 +
              [INSTRUCTION] * len(instruction) + [ATTEMPT2] * len(a2) + [PAD])
  rollout = Rollout(tokens=jnp.asarray([row]), valid=jnp.asarray([np.asarray(segments) > 0]),
                    positions=jnp.zeros((1, len(row)), jnp.int32),
                    segments=jnp.asarray([segments]), logprobs=jnp.zeros((1, len(row))),
                    stopped=jnp.asarray([[True, False]]))
  assert attempt_texts(rollout, tok, (eos,)) == [('The answer is 42.', 'The answer is 12.')]
