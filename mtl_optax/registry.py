"""Choose aggregators by name (for configs and benchmarks): the list of the
methods, each a factory in its own file of ``mtl_optax/methods/``.

    >>> import mtl_optax as mtl
    >>> tx = mtl.get_aggregator('mgda', normalization='l2')
    >>> 'aligned_mtl' in mtl.available()
    True
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable
import warnings

import jax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax.methods import aligned_mtl
from mtl_optax.methods import bargaining
from mtl_optax.methods import cagrad
from mtl_optax.methods import db_mtl
from mtl_optax.methods import conflict_free
from mtl_optax.methods import dual_cone
from mtl_optax.methods import dwa
from mtl_optax.methods import ema_weighting
from mtl_optax.methods import excess_mtl
from mtl_optax.methods import famo
from mtl_optax.methods import geometric_mean
from mtl_optax.methods import graddrop
from mtl_optax.methods import gradnorm
from mtl_optax.methods import gradvac
from mtl_optax.methods import imtl
from mtl_optax.methods import imtl_hybrid
from mtl_optax.methods import linear_scalarization
from mtl_optax.methods import mamg
from mtl_optax.methods import mgda
from mtl_optax.methods import moco
from mtl_optax.methods import modo
from mtl_optax.methods import sdmgrad
from mtl_optax.methods import pcgrad
from mtl_optax.methods import random_weighting
from mtl_optax.methods import stch
from mtl_optax.methods import uncertainty_weighting

# Every method: its name and its factory (the module is its file in
# mtl_optax/methods/).
_FACTORIES: dict[str, Callable[..., aggregating.Aggregator]] = {
    'linear_scalarization': linear_scalarization.linear_scalarization,
    'aligned_mtl': aligned_mtl.aligned_mtl,
    'mgda': mgda.mgda,
    'pcgrad': pcgrad.pcgrad,
    'mamg': mamg.mamg,
    'imtl_g': imtl.imtl_g,
    'cagrad': cagrad.cagrad,
    'nash_mtl': bargaining.nash_mtl,
    'upgrad': dual_cone.upgrad,
    'dualproj': dual_cone.dualproj,
    'gradvac': gradvac.gradvac,
    'fairgrad': bargaining.fairgrad,
    'conflict_free': conflict_free.conflict_free,
    'random_weighting': random_weighting.random_weighting,
    'ema_weighting': ema_weighting.ema_weighting,
    'graddrop': graddrop.graddrop,
    'uncertainty_weighting': uncertainty_weighting.uncertainty_weighting,
    'dwa': dwa.dwa,
    'gradnorm': gradnorm.gradnorm,
    'famo': famo.famo,
    'geometric_mean': geometric_mean.geometric_mean,
    'stch': stch.stch,
    'db_mtl': db_mtl.db_mtl,
    'imtl': imtl_hybrid.imtl,
    'moco': moco.moco,
    'excess_mtl': excess_mtl.excess_mtl,
    'modo': modo.modo,
    'sdmgrad': sdmgrad.sdmgrad,
}

# Former names, still accepted (with a DeprecationWarning) but not listed by
# `available()`.
_RENAMED = {'config': 'conflict_free'}

# Methods whose update needs `losses=`, and those whose factory needs
# `num_tasks=` (their state holds one value per task).
NEEDS_LOSSES = frozenset({'uncertainty_weighting', 'dwa', 'gradnorm', 'famo',
                          'geometric_mean', 'stch', 'db_mtl', 'imtl'})
NEEDS_NUM_TASKS = frozenset({'nash_mtl', 'gradvac', 'ema_weighting',
                             'uncertainty_weighting', 'dwa', 'gradnorm',
                             'stch', 'db_mtl', 'imtl',
                             'famo', 'moco', 'excess_mtl', 'modo',
                             'sdmgrad'})


# Methods whose state holds per-task statistics of the gradients (a tracked
# copy, accumulated squares: shaped like the parameters, so `init` needs them
# and they run at the parameter level only); the update may follow that
# tracked copy rather than the current gradients.
TRACKS_GRADIENTS = frozenset({'moco', 'db_mtl', 'excess_mtl'})


# Methods whose update needs `second_grads=` (and takes `third_grads=`): the
# stacked per-task gradients of independent batches.
NEEDS_SECOND_GRADS = frozenset({'modo', 'sdmgrad'})


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


def _canonical(name: Any, caller: str) -> str:
  """``name`` as registered (a former name warns and gives the new one), or
  a clear error."""
  if not isinstance(name, str):
    raise TypeError(
        f'{caller}: name must be a string, one of {", ".join(available())}; '
        f'got {name!r} ({type(name).__name__}).')
  if name in _RENAMED:
    warnings.warn(
        f'{caller}: the name {name!r} is deprecated; the method is now '
        f'{_RENAMED[name]!r}.', DeprecationWarning, stacklevel=3)
    return _RENAMED[name]
  if name in _FACTORIES:
    return name
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
  factory = _FACTORIES[_canonical(name, 'takes_keyword')]
  parameters = inspect.signature(factory).parameters
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
  name = _canonical(name, 'get_aggregator')
  factory = _FACTORIES[name]
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
  name = _canonical(name, 'for_tasks')
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
    kwargs.setdefault('weighting', mgda.mgda_weights)
  return get_aggregator(name, **kwargs)
