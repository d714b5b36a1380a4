"""Choose aggregators by name (for configs and benchmarks).

    >>> import mtl_optax as mtl
    >>> tx = mtl.get_aggregator('mgda', normalization='l2')
    >>> 'aligned_mtl' in mtl.available()
    True
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import jax
from optax.experimental import aggregating

from mtl_optax import _checks
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


class UnknownAggregatorError(KeyError, ValueError):
  """An aggregator name that is not registered (a ``KeyError``, and a
  ``ValueError`` for code that treats it as a bad argument)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ''


def available() -> tuple[str, ...]:
  """Names accepted by ``get_aggregator``, sorted."""
  return tuple(sorted(_FACTORIES))


def _factory(name: Any, caller: str) -> Callable[..., aggregating.Aggregator]:
  """The factory registered as ``name``, or a clear error."""
  if not isinstance(name, str):
    raise TypeError(
        f'{caller}: name must be a string, one of {", ".join(available())}; '
        f'got {name!r} ({type(name).__name__}).')
  if name in _FACTORIES:
    return _FACTORIES[name]
  close = difflib.get_close_matches(name, available(), n=3)
  hint = f' Did you mean {" or ".join(map(repr, close))}?' if close else ''
  raise UnknownAggregatorError(
      f'{caller}: unknown aggregator {name!r}.{hint} Available: '
      f'{", ".join(available())}.')


def takes_keyword(name: str, keyword: str) -> bool:
  """Whether the factory registered as ``name`` takes ``keyword``.

  Example:
    >>> takes_keyword('pcgrad', 'seed'), takes_keyword('mgda', 'seed')
    (True, False)
  """
  parameters = inspect.signature(_factory(name, 'takes_keyword')).parameters
  return keyword in parameters


def _check_keywords(name: str, factory: Callable[..., Any],
                    kwargs: dict[str, Any], caller: str) -> None:
  """Names the factory's keywords when one it does not take is passed."""
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return
  if any(p.kind is inspect.Parameter.VAR_KEYWORD
         for p in parameters.values()):
    return
  unknown = sorted(set(kwargs) - set(parameters))
  if unknown:
    raise TypeError(
        f'{caller}: {name} takes no keyword argument '
        f'{", ".join(map(repr, unknown))}; it takes '
        f'{", ".join(parameters)}.')


def get_aggregator(name: str, **kwargs: Any) -> aggregating.Aggregator:
  """Builds the aggregator called ``name`` with the factory's keywords.

  Args:
    name: one of ``available()``.
    **kwargs: keyword arguments of the factory (e.g. ``num_tasks=``).

  Returns:
    An ``Aggregator``.

  Raises:
    UnknownAggregatorError: (a ``KeyError`` and a ``ValueError``) for an
      unknown name, listing the known ones and the closest matches.
    TypeError: if ``name`` is not a string or a keyword is not one of the
      factory's.
    ValueError: for a keyword's invalid value (the factory's checks).
  """
  factory = _factory(name, 'get_aggregator')
  _check_keywords(name, factory, kwargs, 'get_aggregator')
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
    UnknownAggregatorError: (a ``KeyError`` and a ``ValueError``) for an
      unknown name.
    TypeError: if ``name`` is not a string, ``num_tasks`` not an integer, or
      a keyword is not one of the factory's.
    ValueError: if ``num_tasks < 1``, ``preferences`` is given to a method
      that takes none, or a keyword's value is invalid.

  Example:
    >>> import mtl_optax as mtl
    >>> tx = mtl.registry.for_tasks('nash_mtl', num_tasks=3)
    >>> tx = mtl.registry.for_tasks('aligned_mtl', num_tasks=2,
    ...                             preferences=[0.2, 0.8])
  """
  _factory(name, 'for_tasks')
  _checks.check_num_tasks(num_tasks, method=f'for_tasks({name!r})',
                          required=True)
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
