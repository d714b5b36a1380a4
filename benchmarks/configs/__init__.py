"""The training configs moved to ``mtl_optax.configs`` (they ship with the
package); this re-export keeps ``from configs import ...`` working in
scripts run from a clone."""

import importlib

from mtl_optax.configs import get_config  # noqa: F401
from mtl_optax.configs import NAMES  # noqa: F401


def __getattr__(name):
  """``configs.multi_mnist`` and the like: the package's config modules."""
  if name in NAMES:
    return importlib.import_module(f'mtl_optax.configs.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
