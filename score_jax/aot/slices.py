"""TPU slices as the ahead-of-time check knows them: chips, their figures, and libtpu."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import jax
import ml_collections

GIB = 1024 ** 3
LIBTPU_PIN = 'libtpu==0.0.42.*'

# Per chip: the HBM a program may use (as libtpu 0.0.42's compiler reports it in its
# out-of-memory errors), peak dense bf16 FLOP/s and HBM bandwidth (Cloud TPU system
# architecture pages), JAX's topology prefix and chip config, the chips one host drives,
# and the TensorCores a chip counts for in slice names (v5p-8 is 4 chips).
CHIPS = {
    'v4': dict(prefix='v4', chip_config_name='megacore', hbm_gib=30.75, peak_tflops=275.0,
               hbm_gbps=1228.0, chips_per_host_bounds='2,2,1', cores_per_chip=2),
    'v5e': dict(prefix='v5e', chip_config_name='default', hbm_gib=15.75, peak_tflops=197.0,
                hbm_gbps=819.0, chips_per_host_bounds='2,2,1', cores_per_chip=1),
    'v5p': dict(prefix='v5', chip_config_name='megacore', hbm_gib=95.74, peak_tflops=459.0,
                hbm_gbps=2765.0, chips_per_host_bounds='2,2,1', cores_per_chip=2),
    'v6e': dict(prefix='v6e', chip_config_name='default', hbm_gib=31.25, peak_tflops=918.0,
                hbm_gbps=1640.0, chips_per_host_bounds='2,2,1', cores_per_chip=1),
}


def tpu_config(generation: str, topology: str) -> ml_collections.ConfigDict:
  """``config.tpu`` for a slice, e.g. ``tpu_config('v5p', '8x8x8')`` (v5p-1024).

  Fields may be overridden like any other (``--config.tpu.topology=4x4x4``); the chip's
  figures (``hbm_gib``, ``peak_tflops``, ``hbm_gbps``) come from ``CHIPS``. The trainer
  ignores this section; only this check reads it.
  """
  if generation not in CHIPS:
    raise ValueError(f'tpu.generation must be one of {sorted(CHIPS)}; got {generation!r}.')
  chip = dict(CHIPS[generation])
  del chip['prefix']
  return ml_collections.ConfigDict(dict(generation=generation, topology=topology, **chip))


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as this check uses it (validated ``config.tpu``)."""

  generation: str
  topology: str
  chip_config_name: str
  chips_per_host_bounds: tuple[int, ...]
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  cores_per_chip: int

  @classmethod
  def from_config(cls, tpu: ml_collections.ConfigDict | None) -> 'Slice':
    if tpu is None:
      raise ValueError('The config has no tpu section; add config.tpu = '
                       "aot.tpu_config('v5p', '4x4x4') (score_jax.aot).")
    if tpu.generation not in CHIPS:
      raise ValueError(f'tpu.generation must be one of {sorted(CHIPS)}; got '
                       f'{tpu.generation!r}.')
    dims = tpu.topology.split('x')
    if not all(d.isdigit() and int(d) > 0 for d in dims) or len(dims) not in (2, 3):
      raise ValueError(f'tpu.topology must look like 2x2 or 4x4x8; got {tpu.topology!r}.')
    bounds = str(tpu.chips_per_host_bounds).split(',')
    if len(bounds) != 3 or not all(b.strip().isdigit() and int(b) > 0 for b in bounds):
      raise ValueError(f'tpu.chips_per_host_bounds must be three sizes such as "2,2,1"; got '
                       f'{tpu.chips_per_host_bounds!r}.')
    bounds = tuple(int(b) for b in bounds)
    for name in ('hbm_gib', 'peak_tflops', 'hbm_gbps'):
      if tpu[name] <= 0:
        raise ValueError(f'tpu.{name} must be positive; got {tpu[name]}.')
    return cls(tpu.generation, tpu.topology, tpu.chip_config_name, bounds,
               float(tpu.hbm_gib), float(tpu.peak_tflops), float(tpu.hbm_gbps),
               int(tpu.cores_per_chip))

  @property
  def num_chips(self) -> int:
    return math.prod(int(d) for d in self.topology.split('x'))

  @property
  def name(self) -> str:
    """The Cloud TPU name: v5p counts TensorCores (v5p-8 is 4 chips), v5e chips."""
    return f'{self.generation}-{self.num_chips * self.cores_per_chip}'

  def devices(self) -> list:
    """The slice's compile-only devices (libtpu's topology description)."""
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    prefix = CHIPS[self.generation]['prefix']
    dims = [int(d) for d in self.topology.split('x')] + [1]
    # A slice smaller than one host's chips is driven by one host.
    bounds = tuple(min(d, b) for d, b in zip(dims, self.chips_per_host_bounds))
    try:
      topology = topologies.get_topology_desc(
          topology_name=f'{prefix}:{self.topology}', platform='tpu',
          chip_config_name=self.chip_config_name, chips_per_host_bounds=bounds, num_slices=1)
    except jax.errors.JaxRuntimeError as e:
      raise ValueError(f'tpu.topology {self.topology!r} ({self.generation}) is not a slice libtpu '
                       f'knows: {str(e).splitlines()[0]}') from None
    return list(topology.devices)


class LibtpuMissing(RuntimeError):
  """libtpu, which describes TPU topologies, is not installed."""


def require_libtpu() -> None:
  """Raises ``LibtpuMissing``, naming the install command, when libtpu is not installed."""
  if importlib.util.find_spec('libtpu') is None:
    raise LibtpuMissing(
        'score_jax.aot compiles for TPU topologies and needs libtpu, which is not installed: '
        f"pip install 'score-jax[tpu]' (or pip install '{LIBTPU_PIN}'), preferably in an "
        'environment of its own; set JAX_PLATFORMS=cpu there for ordinary runs.')
