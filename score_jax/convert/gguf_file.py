"""GGUF files (llama.cpp's format) of the Llama architecture: weights, tokenizer, chat template.

Tensors are dequantised to float32 with the ``gguf`` package, one tensor at a time, and
renamed to their Hugging Face names so the rest of the importer is shared. llama.cpp stores
the q and k projections with the rows of each head permuted for its interleaved RoPE; they
are put back in the half-split order score-jax (and Hugging Face) use. Getting this wrong
still "runs" but changes the logits by ~16 on SmolLM2: the parity test catches it.

The tokenizer is rebuilt from the file's vocabulary and merges as a byte-level BPE in the
``tokenizers`` library, with the pre-tokenizer the file names (SmolLM2's splits every
digit), and the special ids and chat template come from the file's metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import numpy as np

from score_jax.convert.params import load_params
from score_jax.model import ModelConfig
from score_jax.sharding import MeshRules
from score_jax.tokenizer import HuggingFaceTokenizer

# Hugging Face name → GGUF name (per-layer names carry {i}).
_NAMES = {
    'model.embed_tokens.weight': 'token_embd.weight',
    'model.norm.weight': 'output_norm.weight',
    'lm_head.weight': 'output.weight',
    'model.layers.{i}.self_attn.q_proj.weight': 'blk.{i}.attn_q.weight',
    'model.layers.{i}.self_attn.k_proj.weight': 'blk.{i}.attn_k.weight',
    'model.layers.{i}.self_attn.v_proj.weight': 'blk.{i}.attn_v.weight',
    'model.layers.{i}.self_attn.o_proj.weight': 'blk.{i}.attn_output.weight',
    'model.layers.{i}.mlp.gate_proj.weight': 'blk.{i}.ffn_gate.weight',
    'model.layers.{i}.mlp.up_proj.weight': 'blk.{i}.ffn_up.weight',
    'model.layers.{i}.mlp.down_proj.weight': 'blk.{i}.ffn_down.weight',
    'model.layers.{i}.input_layernorm.weight': 'blk.{i}.attn_norm.weight',
    'model.layers.{i}.post_attention_layernorm.weight': 'blk.{i}.ffn_norm.weight',
}

# Pre-tokenizers by the file's ``tokenizer.ggml.pre``.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = ('smollm', 'gpt2', 'default', 'llama-bpe')

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types.


def _to_regex(template: str) -> re.Pattern:
  return re.compile('^' + re.escape(template).replace(r'\{i\}', r'(\d+)') + '$')


_THEIRS_TO_OURS = [(_to_regex(gguf), hf) for hf, gguf in _NAMES.items()]


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head q/k row permutation (interleaved → half-split RoPE)."""
  rows, cols = w.shape
  return w.reshape(num_heads, rows // num_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@dataclasses.dataclass
class GGUFCheckpoint:
  """A ``.gguf`` file of the Llama architecture, opened lazily."""

  path: str
  architecture: dict[str, Any]
  tokenizer: HuggingFaceTokenizer
  chat_template: str | None
  max_position_embeddings: int
  _reader: Any
  _tensors: dict[str, Any]  # GGUF name → ReaderTensor

  format = 'gguf'

  @classmethod
  def open(cls, path: str) -> 'GGUFCheckpoint':
    import gguf  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise FileNotFoundError(f'No GGUF file at {path!r}.')
    try:
      reader = gguf.GGUFReader(path)
    except Exception as e:  # The gguf package raises several kinds on a malformed file.
      raise ValueError(f'{path} is not a readable GGUF file: {e}') from None
    meta = _Metadata(reader, path)
    arch = meta.get('general.architecture')
    if arch != 'llama':
      raise ValueError(f'{path}: GGUF architecture {arch!r} is not supported (only llama).')
    tensors = {t.name: t for t in reader.tensors}
    heads = meta.need('llama.attention.head_count')
    d_model = meta.need('llama.embedding_length')
    tokens = meta.get('tokenizer.ggml.tokens')
    architecture = dict(
        vocab_size=int(meta.get('llama.vocab_size') or len(tokens)),
        num_layers=meta.need('llama.block_count'), d_model=d_model, num_heads=heads,
        num_kv_heads=meta.get('llama.attention.head_count_kv') or heads,
        head_dim=meta.get('llama.rope.dimension_count') or d_model // heads,
        mlp_dim=meta.need('llama.feed_forward_length'),
        rope_theta=float(meta.get('llama.rope.freq_base') or 10_000.0), rope_scaling='none',
        norm_eps=float(meta.need('llama.attention.layer_norm_rms_epsilon')),
        activation='silu', tie_embeddings='output.weight' not in tensors)
    architecture = {k: int(v) if isinstance(v, (np.integer,)) else v
                    for k, v in architecture.items()}
    if meta.get('llama.rope.scaling.type') not in (None, 'none'):
      raise ValueError(f'{path}: RoPE scaling {meta.get("llama.rope.scaling.type")!r} is not '
                       f'supported for GGUF files.')
    return cls(path=path, architecture=architecture, tokenizer=_tokenizer(meta, path),
               chat_template=meta.get('tokenizer.chat_template'),
               max_position_embeddings=int(meta.get('llama.context_length') or 8192),
               _reader=reader, _tensors=tensors)

  def tensor_names(self) -> list[str]:
    """Tensor names in the Hugging Face convention."""
    names = []
    for name in self._tensors:
      for pattern, hf in _THEIRS_TO_OURS:
        match = pattern.match(name)
        if match:
          names.append(hf.format(i=match.group(1)) if match.groups() else hf)
          break
      else:
        names.append(name)  # Unknown: reported by the importer as having no place.
    return names

  def read(self, name: str) -> np.ndarray:
    """One tensor, dequantised to float32, in the Hugging Face layout."""
    return self._dequantised(name)

  def __post_init__(self):
    # Devices ask for their shards of one tensor in a row: dequantise it once.
    self._dequantised = functools.lru_cache(maxsize=4)(self._dequantise)

  def _dequantise(self, name: str) -> np.ndarray:
    import gguf  # pylint: disable=g-import-not-at-top
    layer = re.search(r'\.(\d+)\.', name)
    template = re.sub(r'\.\d+\.', '.{i}.', name, count=1) if layer else name
    if template not in _NAMES:
      raise KeyError(f'{self.path}: no GGUF tensor corresponds to {name!r}.')
    tensor = self._tensors[_NAMES[template].format(i=layer.group(1) if layer else '')]
    w = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims innermost first.
    w = w.reshape(shape)
    if template.endswith('q_proj.weight'):
      w = unpermute_rope_rows(w, self.architecture['num_heads'])
    elif template.endswith('k_proj.weight'):
      w = unpermute_rope_rows(w, self.architecture['num_kv_heads'])
    return w

  def load_params(self, config: ModelConfig, mesh_rules: MeshRules | None = None):
    """The parameters in ``config``'s layout and dtype, placed by ``mesh_rules``."""
    return load_params(self.read, self.tensor_names(), config, mesh_rules, source=self.path)


class _Metadata:
  """Typed access to a GGUF file's key/value metadata."""

  def __init__(self, reader, path: str):
    self._fields = reader.fields
    self._path = path

  def get(self, key: str):
    field = self._fields.get(key)
    if field is None:
      return None
    value = field.contents()
    if isinstance(value, np.generic):
      value = value.item()
    return value

  def need(self, key: str):
    value = self.get(key)
    if value is None:
      raise ValueError(f'{self._path}: the GGUF metadata lacks {key!r}.')
    return value


def _tokenizer(meta: _Metadata, path: str) -> HuggingFaceTokenizer:
  """A byte-level BPE ``tokenizers.Tokenizer`` from the file's vocabulary and merges."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  kind = meta.get('tokenizer.ggml.model')
  if kind != 'gpt2':
    raise ValueError(f'{path}: tokenizer model {kind!r} is not supported (only byte-level BPE, '
                     f'"gpt2").')
  pre = meta.get('tokenizer.ggml.pre') or 'default'
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f'{path}: pre-tokenizer {pre!r} is not supported; supported: '
                     f'{PRE_TOKENIZERS}.')
  tokens = meta.need('tokenizer.ggml.tokens')
  merges = [tuple(m.split(' ', 1)) for m in meta.need('tokenizer.ggml.merges')]
  types = meta.get('tokenizer.ggml.token_type') or [1] * len(tokens)
  bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                   ignore_merges=pre == 'llama-bpe')
  tokenizer = tokenizers.Tokenizer(bpe)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre != 'llama-bpe')
  if pre == 'smollm':
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre == 'llama-bpe':
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), behavior='isolated'), byte_level])
  else:
    tokenizer.pre_tokenizer = byte_level
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(
      [tokenizers.AddedToken(t, special=True, normalized=False)
       for t, kind in zip(tokens, types) if kind == _CONTROL])
  tokenizer.add_tokens([tokenizers.AddedToken(t, normalized=False)
                        for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
  add_bos = meta.get('tokenizer.ggml.add_bos_token')
  return HuggingFaceTokenizer(
      tokenizer, eos_id=int(meta.need('tokenizer.ggml.eos_token_id')),
      bos_id=(int(meta.get('tokenizer.ggml.bos_token_id'))
              if add_bos and meta.get('tokenizer.ggml.bos_token_id') is not None else None),
      pad_id=meta.get('tokenizer.ggml.padding_token_id'))
