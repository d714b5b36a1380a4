"""Training configs (big_vision style): one small file per benchmark.

Each module has ``get_config(**overrides) -> mtl_optax.training.Config``
with the papers' set-up as defaults; ``benchmarks/train.py --config NAME``
runs one, and ``--set key=value`` overrides single fields.
"""

import importlib

NAMES = ('multi_mnist', 'celeb_a', 'cityscapes', 'cityscapes_mtan', 'nyuv2',
         'seven_scenes', 'cifar100_mt')


def get_config(name: str, **overrides):
  """``benchmarks.configs.<name>.get_config(**overrides)``."""
  if name not in NAMES:
    raise KeyError(f'Unknown config {name!r}; known: {", ".join(NAMES)}.')
  module = importlib.import_module(f'{__name__}.{name}')
  return module.get_config(**overrides)
