"""The papers' training configs (big_vision style), one module per benchmark.

Each module has ``get_config(**overrides) -> mtl_optax.training.Config``
with the papers' set-up as defaults (model, dataset, optimiser, schedule,
batch size, epochs); ``python -m mtl_optax.train --config NAME`` (the
``mtl-optax-train`` command) runs one, and ``--set key=value`` overrides
single fields. Importing this package needs only the core; ``get_config``
builds a ``training.Config`` and so needs the ``train`` extra.

Example:
  >>> from mtl_optax import configs
  >>> 'multi_mnist' in configs.NAMES
  True
"""

import importlib

NAMES = ('multi_mnist', 'celeb_a', 'cityscapes', 'cityscapes_mtan', 'nyuv2',
         'seven_scenes', 'cifar100_mt', 'office31', 'office_home')


def get_config(name: str, **overrides):
  """The config ``name``: ``mtl_optax.configs.<name>.get_config(**overrides)``.

  Args:
    name: one of ``NAMES``.
    **overrides: the module's own arguments (``arch=`` of ``nyuv2``,
      ``scene=`` of ``seven_scenes``) and ``Config`` fields to replace.

  Returns:
    A ``mtl_optax.training.Config``.

  Raises:
    KeyError: ``name`` is not one of ``NAMES``.
  """
  if name not in NAMES:
    raise KeyError(f'Unknown config {name!r}; known: {", ".join(NAMES)}.')
  module = importlib.import_module(f'{__name__}.{name}')
  return module.get_config(**overrides)
