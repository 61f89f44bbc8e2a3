"""One small tokenizer interface for every model the project runs.

The sampler, the tasks and the trainer only need to turn text into ids and back and to know
a handful of special ids. Implementations: sentencepiece (Gemma's ``.model`` files and the
toy task's tokenizer, trained in-process) and the `tokenizers` library's models (a Hugging Face
``tokenizer.json``, or a byte-level BPE rebuilt from a GGUF file's metadata). Special and stop
tokens always come from the checkpoint, never from constants here.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Protocol, Sequence

import sentencepiece as spm


class Tokenizer(Protocol):
  """What the rest of score-jax needs from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def bos_id(self) -> int | None: ...  # None when the model adds no begin-of-sequence token.

  @property
  def eos_id(self) -> int: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_id(self, piece: str) -> int | None: ...  # The id of a special token, if it exists.

  def id_to_piece(self, token: int) -> str: ...  # The string of one token (e.g. '<|im_end|>').


class SentencePieceTokenizer:
  """A sentencepiece model behind the ``Tokenizer`` interface."""

  def __init__(self, model_proto: bytes):
    self._model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if self._sp.eos_id() < 0:
      raise ValueError('The sentencepiece model has no end-of-sequence token.')

  @classmethod
  def load(cls, path: str) -> 'SentencePieceTokenizer':
    if not os.path.exists(path):
      raise FileNotFoundError(f'No sentencepiece model at {path!r}.')
    with open(path, 'rb') as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    """Writes the ``.model`` file atomically (a reader never sees a partial file)."""
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
      f.write(self._model_proto)
    os.replace(tmp, path)

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, *, split_digits: bool = True,
            user_defined_symbols: Sequence[str] = (), character_coverage: float = 1.0,
            seed_sentencepiece_size: int = 100_000) -> 'SentencePieceTokenizer':
    """Trains a BPE sentencepiece model in memory (under a second for ~20k lines).

    ``pad=0, eos=1, bos=2, unk=3``. ``vocab_size`` is an upper bound: on text with little
    variety the trainer stops early instead of failing.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type='bpe', split_digits=split_digits, character_coverage=character_coverage,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False,
        user_defined_symbols=list(user_defined_symbols), byte_fallback=False,
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name='identity', seed_sentencepiece_size=seed_sentencepiece_size,
        minloglevel=2)
    return cls(model.getvalue())

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return max(self._sp.pad_id(), 0)

  @property
  def bos_id(self) -> int | None:
    return self._sp.bos_id() if self._sp.bos_id() >= 0 else None

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids; ids outside the vocabulary (a padded model's extra rows) are skipped."""
    size = self._sp.vocab_size()
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < size])

  def token_id(self, piece: str) -> int | None:
    i = self._sp.piece_to_id(piece)
    return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

  def id_to_piece(self, token: int) -> str:
    return self._sp.id_to_piece(int(token))


class HuggingFaceTokenizer:
  """A ``tokenizers.Tokenizer`` (``tokenizer.json`` or GGUF-built) behind the interface.

  Args:
    tokenizer: the ``tokenizers.Tokenizer``.
    eos_id: the end-of-sequence id (from the checkpoint's config).
    bos_id: the begin-of-sequence id, or None when the model uses none.
    pad_id: the padding id (default: ``eos_id``, as many checkpoints do).
  """

  def __init__(self, tokenizer, *, eos_id: int, bos_id: int | None = None,
               pad_id: int | None = None):
    self._tokenizer = tokenizer
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    for name, value in (('eos', eos_id), ('bos', bos_id), ('pad', pad_id)):
      if value is not None and not 0 <= value < size:
        raise ValueError(f'The {name} token id {value} is outside the vocabulary (size {size}).')
    self._eos_id, self._bos_id = eos_id, bos_id
    self._pad_id = eos_id if pad_id is None else pad_id

  @classmethod
  def from_file(cls, path: str, **special_ids) -> 'HuggingFaceTokenizer':
    import tokenizers  # pylint: disable=g-import-not-at-top
    if not os.path.exists(path):
      raise FileNotFoundError(f'No tokenizer at {path!r}.')
    return cls(tokenizers.Tokenizer.from_file(path), **special_ids)

  def save(self, path: str) -> None:
    """Writes ``tokenizer.json``."""
    self._tokenizer.save(path)

  @property
  def backend(self):
    """The underlying ``tokenizers.Tokenizer``."""
    return self._tokenizer

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  def encode(self, text: str) -> list[int]:
    """Ids of the text; special-token strings in it map to their ids, nothing is added."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids without special tokens (ids beyond the vocabulary are skipped)."""
    size = self.vocab_size
    return self._tokenizer.decode([int(i) for i in ids if 0 <= int(i) < size],
                                  skip_special_tokens=True)

  def token_id(self, piece: str) -> int | None:
    return self._tokenizer.token_to_id(piece)

  def id_to_piece(self, token: int) -> str:
    return self._tokenizer.id_to_token(int(token))
