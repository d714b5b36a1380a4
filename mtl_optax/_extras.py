"""Optional parts of mtl_optax and the pip extras that install them.

The core (aggregators, weightings, Gramians, Jacobians, diagnostics, metrics,
line searches, sharding helpers) needs only jax, jaxlib, optax, chex and
numpy. The model zoo, the data pipelines and the training loop need more;
each of them calls ``_require`` first, so that a missing extra fails with an
error that says what to install instead of a bare ``No module named 'flax'``.
"""

from __future__ import annotations

import importlib.util

# What each extra provides, as the top-level modules to look for and a name
# for the error message.
_NAMES = {
    'flax': 'Flax',
    'tensorflow_datasets': 'TensorFlow Datasets',
    'orbax.checkpoint': 'Orbax',
}


def _missing(module: str) -> bool:
  """True if ``module`` cannot be found (without importing it)."""
  try:
    return importlib.util.find_spec(module) is None
  except (ImportError, ValueError):   # a missing parent package, or blocked
    return True


def _require(module: str, extra: str, part: str) -> None:
  """Raises ``ModuleNotFoundError`` naming ``extra`` if ``module`` is absent.

  Args:
    module: the module the optional part imports, e.g. ``'flax'``.
    extra: the pip extra that installs it, e.g. ``'zoo'``.
    part: the part of mtl_optax that needs it, e.g. ``'mtl_optax.models'``.

  Raises:
    ModuleNotFoundError: (an ``ImportError``) with a message such as
      ``mtl_optax.models needs Flax: pip install 'mtl-optax[zoo]'``.
  """
  if _missing(module):
    name = _NAMES.get(module, module)
    raise ModuleNotFoundError(
        f"{part} needs {name}: pip install 'mtl-optax[{extra}]' "
        f'(No module named {module!r})', name=module)
