"""Hugging Face checkpoints: ``config.json`` ↔ score-jax architecture, import and export.

Supported: ``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``GemmaForCausalLM`` and
``Gemma2ForCausalLM`` with safetensors weights (one file or shards with an index), plus the
tokenizer files beside them (``tokenizer.json``, ``tokenizer_config.json``, the chat template).
Settings a score-jax model cannot reproduce (biases on the output projection, Qwen2's sliding
window, an unknown RoPE scaling) are refused with the setting named, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from score_jax.convert import safetensors_io
from score_jax.convert.layout import FAMILIES, family_of
from score_jax.convert.params import checkpoint_tensors, load_params
from score_jax.model import ModelConfig
from score_jax.sharding import MeshRules
from score_jax.tokenizer import HuggingFaceTokenizer, SentencePieceTokenizer

ARCHITECTURES = {
    'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM', 'gemma': 'GemmaForCausalLM',
    'gemma2': 'Gemma2ForCausalLM',
}
_FAMILY_OF_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'chat_template.jinja', 'tokenizer.model', 'generation_config.json')


# ---- config.json → architecture ---------------------------------------------------------------


def family_from_config(hf: dict, source: str = 'config.json') -> str:
  for name in hf.get('architectures') or ():
    if name in _FAMILY_OF_ARCHITECTURE:
      return _FAMILY_OF_ARCHITECTURE[name]
  if hf.get('model_type') in FAMILIES:
    return hf['model_type']
  raise ValueError(
      f'{source}: unsupported architecture {hf.get("architectures")} (model_type '
      f'{hf.get("model_type")!r}); supported: {sorted(_FAMILY_OF_ARCHITECTURE)}.')


def architecture_from_config(hf: dict, source: str = 'config.json') -> dict[str, Any]:
  """The ``ModelConfig`` architecture fields that a Hugging Face ``config.json`` describes.

  Raises:
    ValueError: an unsupported family or setting, naming it.
  """
  family = family_from_config(hf, source)

  def need(key: str):
    if hf.get(key) is None:
      raise ValueError(f'{source}: missing {key!r}.')
    return hf[key]

  heads = need('num_attention_heads')
  arch: dict[str, Any] = dict(
      vocab_size=need('vocab_size'), num_layers=need('num_hidden_layers'),
      d_model=need('hidden_size'), num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or need('hidden_size') // heads,
      mlp_dim=need('intermediate_size'), norm_eps=float(need('rms_norm_eps')),
      tie_embeddings=bool(hf.get('tie_word_embeddings', family in ('gemma', 'gemma2'))))
  arch.update(_rope(hf, source))

  for key in ('attention_bias', 'mlp_bias'):
    if hf.get(key) and family != 'qwen2':
      raise ValueError(f'{source}: {key}=true is not supported (score-jax has biases only on '
                       f'the q/k/v projections, as Qwen2 does).')
  if family in ('llama', 'qwen2'):
    _require_activation(hf, source, ('silu',))
    arch['activation'] = 'silu'
    arch['qkv_bias'] = family == 'qwen2'
    if family == 'qwen2' and hf.get('use_sliding_window'):
      raise ValueError(f'{source}: use_sliding_window=true is not supported for Qwen2.')
  else:
    _require_activation(hf, source, ('gelu_pytorch_tanh', 'gelu_tanh', 'gelu_new', 'gelu'))
    arch.update(activation='gelu_tanh', norm_scale_plus_one=True, embed_scale=True)
  if family == 'gemma2':
    arch.update(
        post_norms=True, attn_logit_softcap=float(hf.get('attn_logit_softcapping') or 0.0),
        final_logit_softcap=float(hf.get('final_logit_softcapping') or 0.0),
        query_pre_attn_scalar=float(hf.get('query_pre_attn_scalar') or arch['head_dim']),
        sliding_window=int(need('sliding_window')),
        attention_pattern=_attention_pattern(hf, arch['num_layers'], source))
  return arch


def _require_activation(hf: dict, source: str, allowed: tuple[str, ...]) -> None:
  # Gemma configs name the activation in either key; 'hidden_activation' wins when set.
  act = hf.get('hidden_activation') or hf.get('hidden_act') or allowed[0]
  if act not in allowed:
    raise ValueError(f'{source}: activation {act!r} is not supported; expected one of '
                     f'{allowed}.')


def _rope(hf: dict, source: str) -> dict[str, Any]:
  """RoPE settings from either the older (rope_theta, rope_scaling) or newer
  (rope_parameters) keys."""
  params = dict(hf.get('rope_parameters') or {})
  scaling = dict(hf.get('rope_scaling') or {}) or params
  theta = hf.get('rope_theta') or params.get('rope_theta') or 10_000.0
  kind = scaling.get('rope_type') or scaling.get('type') or 'default'
  if kind == 'default':
    return dict(rope_theta=float(theta), rope_scaling='none')
  if kind == 'llama3':
    return dict(rope_theta=float(theta), rope_scaling='llama3',
                rope_scaling_factor=float(scaling['factor']),
                rope_low_freq_factor=float(scaling['low_freq_factor']),
                rope_high_freq_factor=float(scaling['high_freq_factor']),
                rope_original_max_position=int(scaling['original_max_position_embeddings']))
  raise ValueError(f'{source}: RoPE scaling {kind!r} is not supported (only default and llama3).')


def _attention_pattern(hf: dict, num_layers: int, source: str) -> str:
  """Gemma 2's per-layer attention kinds as a repeating pattern ('local,global')."""
  types = hf.get('layer_types')
  if not types:
    return 'local,global'  # Gemma 2's fixed alternation, layer 0 sliding.
  kinds = []
  for t in types:
    if t not in ('sliding_attention', 'full_attention'):
      raise ValueError(f'{source}: unknown layer type {t!r} in layer_types.')
    kinds.append('local' if t == 'sliding_attention' else 'global')
  if len(kinds) != num_layers:
    raise ValueError(f'{source}: layer_types has {len(kinds)} entries for {num_layers} layers.')
  for period in range(1, num_layers + 1):
    if all(kinds[i] == kinds[i % period] for i in range(num_layers)):
      return ','.join(kinds[:period])
  raise AssertionError('unreachable')


# ---- architecture → config.json ---------------------------------------------------------------


def config_from_architecture(config: ModelConfig, dtype: str, *,
                             special_ids: dict[str, int | None] | None = None,
                             max_position_embeddings: int = 8192) -> dict[str, Any]:
  """A ``config.json`` that ``transformers`` (and serving stacks) load as this architecture."""
  family = family_of(config)
  c = config
  hf: dict[str, Any] = dict(
      architectures=[ARCHITECTURES[family]], model_type=family, vocab_size=c.vocab_size,
      hidden_size=c.d_model, intermediate_size=c.mlp_dim, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      head_dim=c.head_dim, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
      max_position_embeddings=max_position_embeddings, torch_dtype=dtype, dtype=dtype,
      rope_theta=c.rope_theta)
  rope = {'rope_type': 'default', 'rope_theta': c.rope_theta}
  if c.rope_scaling == 'llama3':
    scaling = dict(rope_type='llama3', factor=c.rope_scaling_factor,
                   low_freq_factor=c.rope_low_freq_factor,
                   high_freq_factor=c.rope_high_freq_factor,
                   original_max_position_embeddings=c.rope_original_max_position)
    hf['rope_scaling'] = scaling
    rope = dict(scaling, rope_theta=c.rope_theta)
  hf['rope_parameters'] = rope
  if family in ('llama', 'qwen2'):
    hf['hidden_act'] = 'silu'
  else:
    hf['hidden_act'] = hf['hidden_activation'] = 'gelu_pytorch_tanh'
  if family == 'llama':
    hf.update(attention_bias=False, mlp_bias=False)
  if family == 'qwen2':
    hf['use_sliding_window'] = False
  if family == 'gemma2':
    scalar = c.query_pre_attn_scalar or c.head_dim
    hf.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
              attn_logit_softcapping=c.attn_logit_softcap or None,
              final_logit_softcapping=c.final_logit_softcap or None,
              sliding_window=c.sliding_window,
              layer_types=['sliding_attention' if k == 'local' else 'full_attention'
                           for k in c.layer_kinds])
  for key, value in (special_ids or {}).items():
    if value is not None:
      hf[f'{key}_token_id'] = value
  return hf


# ---- import ---------------------------------------------------------------------------------


@dataclasses.dataclass
class HuggingFaceCheckpoint:
  """A Hugging Face checkpoint directory, opened lazily (no weights read yet)."""

  path: str
  hf_config: dict
  architecture: dict[str, Any]
  tokenizer: HuggingFaceTokenizer | None
  chat_template: str | None
  _reader: safetensors_io.TensorReader

  format = 'hf'

  @classmethod
  def open(cls, path: str) -> 'HuggingFaceCheckpoint':
    config_path = os.path.join(path, 'config.json')
    if not os.path.exists(config_path):
      raise FileNotFoundError(f'No config.json in {path!r}: not a Hugging Face checkpoint.')
    with open(config_path) as f:
      hf_config = json.load(f)
    architecture = architecture_from_config(hf_config, config_path)
    tokenizer, template = _read_tokenizer(path, hf_config)
    return cls(path=path, hf_config=hf_config, architecture=architecture, tokenizer=tokenizer,
               chat_template=template, _reader=safetensors_io.TensorReader(path))

  def tensor_names(self) -> list[str]:
    return self._reader.keys()

  def read(self, name: str) -> np.ndarray:
    return self._reader.get(name)

  def load_params(self, config: ModelConfig, mesh_rules: MeshRules | None = None):
    """The parameters in ``config``'s layout and dtype, placed by ``mesh_rules``."""
    return load_params(self.read, self.tensor_names(), config, mesh_rules, source=self.path)

  @property
  def max_position_embeddings(self) -> int:
    return int(self.hf_config.get('max_position_embeddings') or 8192)

  def write_tokenizer_files(self, directory: str) -> None:
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(self.path, name)):
        shutil.copy(os.path.join(self.path, name), os.path.join(directory, name))


def _special(value) -> str | None:
  """A special token from tokenizer_config.json: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get('content')
  return value if isinstance(value, str) else None


def _read_tokenizer(path: str, hf_config: dict):
  """(tokenizer or None, chat template or None) from the files beside the weights.

  ``tokenizer.json`` is preferred; a sentencepiece ``tokenizer.model`` is used when it is the
  only one (its special ids are its own).
  """
  tokenizer_path = os.path.join(path, 'tokenizer.json')
  settings: dict = {}
  settings_path = os.path.join(path, 'tokenizer_config.json')
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      settings = json.load(f)
  template = settings.get('chat_template')
  template_path = os.path.join(path, 'chat_template.jinja')
  if os.path.exists(template_path):
    with open(template_path) as f:
      template = f.read()
  if isinstance(template, list):  # Several named templates: use the default one.
    template = next((t['template'] for t in template if t.get('name') == 'default'), None)
  if not os.path.exists(tokenizer_path):
    sentencepiece_path = os.path.join(path, 'tokenizer.model')  # Older Gemma and Llama 2 repos.
    if os.path.exists(sentencepiece_path):
      return SentencePieceTokenizer.load(sentencepiece_path), template
    return None, template

  import tokenizers  # pylint: disable=g-import-not-at-top
  backend = tokenizers.Tokenizer.from_file(tokenizer_path)

  def special_id(key: str) -> int | None:
    piece = _special(settings.get(f'{key}_token'))
    if piece is not None and backend.token_to_id(piece) is not None:
      return backend.token_to_id(piece)
    value = hf_config.get(f'{key}_token_id')
    return value[0] if isinstance(value, list) else value

  eos = special_id('eos')
  if eos is None:
    raise ValueError(f'{path}: neither tokenizer_config.json nor config.json names an '
                     f'end-of-sequence token.')
  add_bos = settings.get('add_bos_token', True)
  bos = special_id('bos') if add_bos is not False else None
  return HuggingFaceTokenizer(backend, eos_id=eos, bos_id=bos, pad_id=special_id('pad')), template


# ---- export ---------------------------------------------------------------------------------


def export(params: Any, config: ModelConfig, directory: str, *, dtype: str | None = None,
           tokenizer=None, chat_template: str | None = None, source=None,
           max_shard_bytes: int = 4 << 30) -> list[str]:
  """Writes ``params`` as a Hugging Face checkpoint that ``transformers`` loads.

  Args:
    params: the parameter tree of ``config``'s model.
    config: its architecture.
    directory: created if needed; existing weight files there are replaced.
    dtype: 'float32', 'bfloat16' or 'float16' (default: the parameters' dtype).
    tokenizer: a ``HuggingFaceTokenizer`` to save as ``tokenizer.json`` (optional).
    chat_template: written to ``tokenizer_config.json`` with the tokenizer.
    source: the imported checkpoint, whose tokenizer files are copied when it has them.
    max_shard_bytes: larger checkpoints are split into shards with an index.

  Returns:
    The weight files written.
  """
  dtype = dtype or config.param_dtype
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
  special_ids = None
  if tokenizer is not None:
    special_ids = dict(bos=tokenizer.bos_id, eos=tokenizer.eos_id, pad=tokenizer.pad_id)
  max_positions = getattr(source, 'max_position_embeddings', 8192)
  tensors = checkpoint_tensors(params, config, np.dtype(jax.numpy.dtype(dtype)))
  if jax.process_index() != 0:
    for _ in tensors:  # Every process takes part in gathering; process 0 writes.
      pass
    return []
  files = safetensors_io.write_checkpoint(directory, tensors, max_shard_bytes)
  hf_config = config_from_architecture(config, dtype, special_ids=special_ids,
                                       max_position_embeddings=max_positions)
  _write_json(os.path.join(directory, 'config.json'), hf_config)
  if source is not None and hasattr(source, 'write_tokenizer_files'):
    source.write_tokenizer_files(directory)
  elif tokenizer is not None and hasattr(tokenizer, 'save'):
    tokenizer.save(os.path.join(directory, 'tokenizer.json'))
    settings = {'tokenizer_class': 'PreTrainedTokenizerFast',
                'eos_token': tokenizer.backend.id_to_token(tokenizer.eos_id),
                'pad_token': tokenizer.backend.id_to_token(tokenizer.pad_id),
                'bos_token': (tokenizer.backend.id_to_token(tokenizer.bos_id)
                              if tokenizer.bos_id is not None else None),
                'add_bos_token': tokenizer.bos_id is not None}
    if chat_template:
      settings['chat_template'] = chat_template
    _write_json(os.path.join(directory, 'tokenizer_config.json'), settings)
  return files


def _write_json(path: str, value: dict) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)
