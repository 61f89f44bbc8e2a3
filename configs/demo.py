"""The decoder demo: a model preset on a mesh over every local device.

  python -m score_jax.demo --config=configs/demo.py                   # tiny Llama-shaped model
  python -m score_jax.demo --config=configs/demo.py:model=tiny_gemma2 # tiny Gemma-2 shape
  python -m score_jax.demo --config=configs/demo.py --config.model.num_layers=4

Arguments after the colon: model=<preset> (see score_jax/model/presets.py).
"""

import ml_collections

from score_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, model='tiny')
  config = ml_collections.ConfigDict()
  config.model_preset = args.model
  config.model = config_lib.model_config(args.model)
  config.mesh = config_lib.mesh_config(data=1, fsdp=-1, tensor=1)
  config.seed = 0
  config.demo = ml_collections.ConfigDict(dict(batch_size=8, prompt_len=16, new_tokens=32))
  return config
