"""Public checkpoints in and out: Hugging Face safetensors, GGUF files, their tokenizers.

    pretrained = open_pretrained('/path/to/hf_dir')          # or '/path/to/model.gguf'
    config = model_config_for(pretrained, dtype='bfloat16')  # the checkpoint's architecture
    params = pretrained.load_params(config, mesh_rules)      # each device reads its shard
    hf.export(params, config, '/tmp/out', source=pretrained)  # back to safetensors

Configs name a checkpoint with ``--config.init_from=PATH``; ``python -m score_jax.convert``
converts files and exports trained runs (see its ``--help``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from score_jax.convert import hf
from score_jax.convert.gguf_file import GGUFCheckpoint
from score_jax.convert.hf import HuggingFaceCheckpoint
from score_jax.model import ModelConfig

Pretrained = HuggingFaceCheckpoint | GGUFCheckpoint

# ModelConfig fields that are run settings rather than architecture: a config may set them
# for an imported checkpoint too.
RUN_SETTINGS = ('param_dtype', 'dtype', 'scan_layers', 'scan_unroll', 'scan_decode',
                'remat_policy')

__all__ = ['GGUFCheckpoint', 'HuggingFaceCheckpoint', 'Pretrained', 'RUN_SETTINGS', 'hf',
           'model_config_for', 'open_pretrained']


def open_pretrained(path: str) -> Pretrained:
  """Opens a Hugging Face checkpoint directory or a ``.gguf`` file (no weights read yet).

  Raises:
    FileNotFoundError: nothing usable at ``path``.
    ValueError: an unsupported or malformed checkpoint, naming the problem.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return HuggingFaceCheckpoint.open(path)
  if os.path.isfile(path) and path.endswith('.gguf'):
    return GGUFCheckpoint.open(path)
  if os.path.isfile(path):
    raise ValueError(f'{path!r} is neither a .gguf file nor a Hugging Face checkpoint '
                     f'directory.')
  raise FileNotFoundError(f'No checkpoint at {path!r} (expected a Hugging Face directory with '
                          f'config.json or a .gguf file).')


def model_config_for(pretrained: Pretrained, **run_settings: Any) -> ModelConfig:
  """The checkpoint's architecture with run settings (dtype, scan, remat) from the caller."""
  unknown = sorted(set(run_settings) - set(RUN_SETTINGS))
  if unknown:
    raise ValueError(f'{unknown} are architecture fields, fixed by the checkpoint; only '
                     f'{RUN_SETTINGS} may be set.')
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)
              if f.default is not dataclasses.MISSING}
  return ModelConfig.from_mapping({**defaults, **pretrained.architecture, **run_settings})
