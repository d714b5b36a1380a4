"""Choose aggregators by name (for configs and benchmarks).

    >>> import mtl_optax as mtl
    >>> tx = mtl.get_aggregator('mgda', normalization='l2')
    >>> 'aligned_mtl' in mtl.available()
    True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from optax.experimental import aggregating

from mtl_optax import aggregators
from mtl_optax import baselines
from mtl_optax import loss_weighting
from mtl_optax import weightings

_FACTORIES: dict[str, Callable[..., aggregating.Aggregator]] = {
    'linear_scalarization': aggregators.linear_scalarization,
    'aligned_mtl': aggregators.aligned_mtl,
    'mgda': aggregators.mgda,
    'pcgrad': aggregators.pcgrad,
    'mamg': aggregators.mamg,
    'imtl_g': baselines.imtl_g,
    'cagrad': baselines.cagrad,
    'nash_mtl': baselines.nash_mtl,
    'upgrad': baselines.upgrad,
    'dualproj': baselines.dualproj,
    'gradvac': baselines.gradvac,
    'fairgrad': baselines.fairgrad,
    'config': baselines.config,
    'random_weighting': baselines.random_weighting,
    'ema_weighting': baselines.ema_weighting,
    'graddrop': baselines.graddrop,
    'uncertainty_weighting': loss_weighting.uncertainty_weighting,
    'dwa': loss_weighting.dwa,
    'gradnorm': loss_weighting.gradnorm,
    'famo': loss_weighting.famo,
    'geometric_mean': loss_weighting.geometric_mean,
}

# Methods whose update needs `losses=`, and those whose factory needs
# `num_tasks=` (their state holds one value per task).
NEEDS_LOSSES = frozenset({'uncertainty_weighting', 'dwa', 'gradnorm', 'famo',
                          'geometric_mean'})
NEEDS_NUM_TASKS = frozenset({'nash_mtl', 'gradvac', 'ema_weighting',
                             'uncertainty_weighting', 'dwa', 'gradnorm',
                             'famo'})


# Methods that take task preferences (linear scalarization calls them
# `weights`).
TAKES_PREFERENCES = frozenset({'linear_scalarization', 'aligned_mtl', 'pcgrad',
                               'mamg', 'upgrad', 'dualproj', 'gradvac'})


def available() -> tuple[str, ...]:
  """Names accepted by ``get_aggregator``, sorted."""
  return tuple(sorted(_FACTORIES))


def get_aggregator(name: str, **kwargs: Any) -> aggregating.Aggregator:
  """Builds the aggregator called ``name`` with the factory's keywords.

  Args:
    name: one of ``available()``.
    **kwargs: keyword arguments of the factory (e.g. ``num_tasks=``).

  Returns:
    An ``Aggregator``.

  Raises:
    KeyError: for an unknown name, listing the known ones.
  """
  try:
    factory = _FACTORIES[name]
  except KeyError:
    raise KeyError(
        f'Unknown aggregator {name!r}; available: {", ".join(available())}.'
    ) from None
  return factory(**kwargs)


def for_tasks(name: str, *, num_tasks: int,
              preferences: jax.Array | None = None,
              **kwargs: Any) -> aggregating.Aggregator:
  """Builds ``name`` for a ``num_tasks``-task problem with default settings.

  What benchmarks and training configs need to build any method the same
  way: ``num_tasks`` is passed to every factory (the stateful ones require
  it), ``preferences`` to the methods that take them (``TAKES_PREFERENCES``;
  linear scalarization's ``weights``), and ``ema_weighting`` smooths MGDA's
  coefficients (as CR-MOGM does) unless ``weighting=`` is given.

  Args:
    name: one of ``available()``.
    num_tasks: ``T``.
    preferences: ``[T]`` task preferences, or None for the default.
    **kwargs: further keyword arguments of the factory (e.g. ``shared=``).

  Returns:
    An ``Aggregator``.

  Raises:
    ValueError: if ``preferences`` is given to a method that takes none.

  Example:
    >>> import mtl_optax as mtl
    >>> tx = mtl.registry.for_tasks('nash_mtl', num_tasks=3)
    >>> tx = mtl.registry.for_tasks('aligned_mtl', num_tasks=2,
    ...                             preferences=[0.2, 0.8])
  """
  kwargs = dict(kwargs, num_tasks=num_tasks)
  if preferences is not None:
    if name not in TAKES_PREFERENCES:
      raise ValueError(
          f'{name!r} takes no task preferences; those that do: '
          f'{", ".join(sorted(TAKES_PREFERENCES))}.')
    key = 'weights' if name == 'linear_scalarization' else 'preferences'
    kwargs[key] = preferences
  if name == 'ema_weighting':
    kwargs.setdefault('weighting', weightings.mgda)
  return get_aggregator(name, **kwargs)
