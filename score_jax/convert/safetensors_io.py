"""Reading and writing safetensors files with numpy alone, lazily.

The format is an 8-byte little-endian header length, a JSON header (per tensor: dtype,
shape, byte offsets into the data that follows), then raw little-endian bytes. Reading
memory-maps the file, so a tensor (or one slice of it) is read from disk only when it is
used: an importer can hand each device just its shard of a weight without the whole
checkpoint ever sitting in host memory.

A checkpoint is either one ``model.safetensors`` file or several shards named by
``model.safetensors.index.json`` (the Hugging Face layout); :class:`TensorReader` opens
either.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    'F64': np.dtype('<f8'), 'F32': np.dtype('<f4'), 'F16': np.dtype('<f2'),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype('<i8'), 'I32': np.dtype('<i4'),
    'I16': np.dtype('<i2'), 'I8': np.dtype('i1'), 'U8': np.dtype('u1'), 'BOOL': np.dtype('?'),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


class SafetensorsFile:
  """One ``.safetensors`` file: its tensor names, shapes and memory-mapped arrays."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, 'rb') as f:
        (header_len,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError) as e:
      raise ValueError(f'{path} is not a readable safetensors file: {e}') from None
    self.metadata = header.pop('__metadata__', {}) or {}
    self._entries = header
    self._data_start = 8 + header_len
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]['shape'])

  def array(self, name: str) -> np.ndarray:
    """The tensor as a read-only memory-mapped array (no bytes read until used)."""
    entry = self._entries[name]
    if entry['dtype'] not in _DTYPES:
      raise ValueError(f'{self.path}: tensor {name!r} has unsupported dtype {entry["dtype"]}.')
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode='r')
    start, end = entry['data_offsets']
    raw = self._mmap[self._data_start + start:self._data_start + end]
    return raw.view(_DTYPES[entry['dtype']]).reshape(entry['shape'])


class TensorReader:
  """Every tensor of a checkpoint directory (one file, or shards listed by an index)."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    self._files: dict[str, SafetensorsFile] = {}
    self._where: dict[str, str] = {}
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get('weight_map')
      if not isinstance(weight_map, dict):
        raise ValueError(f'{index_path} has no "weight_map" object.')
      for name, filename in weight_map.items():
        self._where[name] = os.path.join(directory, filename)
    elif os.path.exists(single_path):
      for name in self._file(single_path).keys():
        self._where[name] = single_path
    else:
      raise FileNotFoundError(
          f'No {SINGLE_FILE} or {INDEX_FILE} in {directory!r}: not a safetensors checkpoint.')

  def _file(self, path: str) -> SafetensorsFile:
    if path not in self._files:
      if not os.path.exists(path):
        raise FileNotFoundError(f'The checkpoint index names {path!r}, which does not exist.')
      self._files[path] = SafetensorsFile(path)
    return self._files[path]

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def keys(self) -> list[str]:
    return list(self._where)

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(f'The checkpoint has no tensor {name!r}.')
    return self._file(self._where[name]).array(name)


def write_file(path: str, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors (in the given order) to one safetensors file, atomically."""
  header: dict = {'__metadata__': dict(metadata or {})}
  offset = 0
  for name, array in tensors.items():
    if array.dtype not in _NAMES:
      raise ValueError(f'Cannot write tensor {name!r} of dtype {array.dtype} to safetensors.')
    header[name] = {'dtype': _NAMES[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + array.nbytes]}
    offset += array.nbytes
  header_bytes = json.dumps(header, separators=(',', ':')).encode()
  header_bytes += b' ' * (-len(header_bytes) % 8)  # Align the data to 8 bytes.
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(header_bytes)))
    f.write(header_bytes)
    for array in tensors.values():
      f.write(np.ascontiguousarray(array).tobytes())
  os.replace(tmp, path)


def write_checkpoint(directory: str, tensors: Iterator[tuple[str, np.ndarray]],
                     max_shard_bytes: int = 4 << 30) -> list[str]:
  """Writes ``(name, array)`` pairs as one file, or as shards plus an index when large.

  Arrays are consumed one at a time, so at most one shard is held in host memory.

  Returns:
    The file names written.
  """
  os.makedirs(directory, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  sizes = [0]
  paths: list[str] = []
  total = 0

  def flush(shard: dict[str, np.ndarray], number: int) -> None:
    path = os.path.join(directory, f'shard-{number:05d}.safetensors.partial')
    write_file(path, shard, {'format': 'pt'})
    paths.append(path)

  weight_map: dict[str, int] = {}
  for name, array in tensors:
    if sizes[-1] and sizes[-1] + array.nbytes > max_shard_bytes:
      flush(shards[-1], len(paths))
      shards[-1] = {}
      sizes.append(0)
    shards[-1][name] = array
    sizes[-1] += array.nbytes
    total += array.nbytes
    weight_map[name] = len(sizes) - 1
  flush(shards[-1], len(paths))
  shards.clear()

  if len(paths) == 1:
    names = [SINGLE_FILE]
  else:
    names = [f'model-{i + 1:05d}-of-{len(paths):05d}.safetensors' for i in range(len(paths))]
  for path, name in zip(paths, names):
    os.replace(path, os.path.join(directory, name))
  stale_index = os.path.join(directory, INDEX_FILE)
  if len(names) > 1:
    index = {'metadata': {'total_size': total},
             'weight_map': {k: names[v] for k, v in weight_map.items()}}
    with open(stale_index, 'w') as f:
      json.dump(index, f, indent=2)
  elif os.path.exists(stale_index):
    os.remove(stale_index)  # A previous sharded export must not shadow the single file.
  return names
