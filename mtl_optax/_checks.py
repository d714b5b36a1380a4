"""Argument checks for the public factories, with one message style.

Every factory checks its hyperparameters when it is called, so a bad value
fails at construction with a message that names the method, the argument, the
value received, the valid range and a hint::

    cagrad: c must be >= 0 (the radius factor of the ball around the mean
    gradient; the paper uses 0.4-0.5, 0 gives the mean gradient), got -1.0.

Wrong types raise ``TypeError``; values of the right type outside the valid
range (including NaN and ±Inf) raise ``ValueError``. Traced values (a factory
called under ``jax.vmap`` or ``jax.jit``) cannot be inspected: their type and
shape are checked, their values are not.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import numpy as np


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _show(value: Any) -> str:
  """The received value, as the messages print it."""
  if isinstance(value, (bool, np.bool_)):
    return repr(bool(value))
  if isinstance(value, numbers.Integral):
    return repr(int(value))
  if isinstance(value, numbers.Real):
    return repr(float(value))
  if isinstance(value, (str, bytes)) or value is None:
    return repr(value)
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return f'{type(value).__name__} object'
  if arr.dtype.kind in 'biuf':
    if arr.ndim == 0:
      return _show(arr.item())
    text = np.array2string(arr, separator=', ', threshold=8)
    return f'{text} (shape {arr.shape})'
  return f'{type(value).__name__} object'


def _fail(error, method: str, name: str, requirement: str, value: Any,
          hint: str | None, shown: str | None = None):
  note = f' ({hint})' if hint else ''
  shown = _show(value) if shown is None else shown
  raise error(f'{method}: {name} must be {requirement}{note}, got {shown}.')


def _interval(low, high, low_open, high_open) -> str:
  if low is None and high is None:
    return ''
  if high is None:
    return f'> {low:g}' if low_open else f'>= {low:g}'
  if low is None:
    return f'< {high:g}' if high_open else f'<= {high:g}'
  left = '(' if low_open else '['
  right = ')' if high_open else ']'
  return f'in {left}{low:g}, {high:g}{right}'


def _is_real(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, numbers.Real):
    return True
  dtype = getattr(value, 'dtype', None)
  return (dtype is not None and np.ndim(value) == 0
          and np.dtype(dtype).kind in 'iuf')


def check_in_range(name: str, value: Any, low: float | None,
                   high: float | None, *, method: str,
                   low_open: bool = False, high_open: bool = False,
                   hint: str | None = None) -> Any:
  """Checks a finite real number in an interval (either end may be None).

  Args:
    name: the argument's name.
    value: the value received.
    low: lower end, or None.
    high: upper end, or None.
    method: the factory's name, which starts the message.
    low_open: exclude ``low``.
    high_open: exclude ``high``.
    hint: what the argument means and what to pass instead.

  Returns:
    ``value`` unchanged.

  Raises:
    TypeError: if ``value`` is not a real number (bools are not).
    ValueError: if it is NaN, ±Inf or outside the interval.
  """
  requirement = _interval(low, high, low_open, high_open)
  if not _is_real(value) and not (_is_traced(value) and np.ndim(value) == 0):
    _fail(TypeError, method, name, f'a real number {requirement}'.rstrip(),
          value, hint, shown=f'{_show(value)} ({type(value).__name__})')
  if _is_traced(value):
    return value
  x = float(value)
  if not np.isfinite(x):
    finite = f'finite and {requirement}' if requirement else 'finite'
    _fail(ValueError, method, name, finite, value, hint)
  below = low is not None and (x <= low if low_open else x < low)
  above = high is not None and (x >= high if high_open else x > high)
  if below or above:
    _fail(ValueError, method, name, requirement, value, hint)
  return value


def check_positive(name: str, value: Any, *, method: str,
                   hint: str | None = None) -> Any:
  """Checks a finite real number ``> 0`` (see ``check_in_range``)."""
  return check_in_range(name, value, 0, None, method=method, low_open=True,
                        hint=hint)


def check_non_negative(name: str, value: Any, *, method: str,
                       hint: str | None = None) -> Any:
  """Checks a finite real number ``>= 0`` (see ``check_in_range``)."""
  return check_in_range(name, value, 0, None, method=method, hint=hint)


def _is_integer(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, numbers.Integral):
    return True
  dtype = getattr(value, 'dtype', None)
  return (dtype is not None and np.ndim(value) == 0
          and np.dtype(dtype).kind in 'iu' and not _is_traced(value))


def check_integer(name: str, value: Any, *, method: str,
                  hint: str | None = None) -> int:
  """Checks an integer (e.g. a seed: any sign).

  Args:
    name: the argument's name.
    value: the value received.
    method: the factory's name.
    hint: what the argument means.

  Returns:
    ``int(value)``.

  Raises:
    TypeError: if ``value`` is not an integer (floats and bools are not).
  """
  if not _is_integer(value):
    _fail(TypeError, method, name, 'an integer', value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  return int(value)


def check_int_at_least(name: str, value: Any, minimum: int, *, method: str,
                       hint: str | None = None,
                       allow_none: bool = False) -> int | None:
  """Checks an integer ``>= minimum`` (iterations, intervals, counts).

  Args:
    name: the argument's name.
    value: the value received.
    minimum: the smallest valid value.
    method: the factory's name.
    hint: what the argument means and what to pass instead.
    allow_none: accept None (returned as is).

  Returns:
    ``int(value)``, or None.

  Raises:
    TypeError: if ``value`` is not an integer (``2.0`` and ``True`` are not).
    ValueError: if it is smaller than ``minimum``.
  """
  if value is None and allow_none:
    return None
  requirement = f'an integer >= {minimum}'
  if allow_none:
    requirement = f'None or {requirement}'
  if not _is_integer(value):
    _fail(TypeError, method, name, requirement, value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  if int(value) < minimum:
    _fail(ValueError, method, name, requirement, value, hint)
  return int(value)


def check_one_of(name: str, value: Any, options: Sequence[Any], *,
                 method: str, hint: str | None = None) -> Any:
  """Checks that ``value`` is one of ``options`` (strings or small ints).

  Args:
    name: the argument's name.
    value: the value received.
    options: the valid values.
    method: the factory's name.
    hint: what the options mean.

  Returns:
    ``value`` unchanged.

  Raises:
    ValueError: if it is not one of them (a bool never matches an int).
  """
  def same(option):
    # Strings match strings and integers integers: 1.0 and True are not 1,
    # and an array never compares (its == is elementwise).
    if isinstance(option, str):
      return isinstance(value, str) and value == option
    return (_is_integer(value) and not _is_traced(value)
            and int(value) == option)

  if not any(same(o) for o in options):
    choices = ', '.join(repr(o) for o in options)
    _fail(ValueError, method, name, f'one of {choices}', value, hint)
  return value


def check_bool(name: str, value: Any, *, method: str,
               hint: str | None = None) -> bool:
  """Checks a bool (``np.bool_`` too).

  Returns:
    ``bool(value)``.

  Raises:
    TypeError: for anything else (``0``/``1`` included).
  """
  if not isinstance(value, (bool, np.bool_)):
    _fail(TypeError, method, name, 'True or False', value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  return bool(value)


def check_callable(name: str, value: Any, *, method: str,
                   hint: str | None = None) -> Any:
  """Checks a callable.

  Raises:
    TypeError: if ``value`` is not callable.
  """
  if not callable(value):
    _fail(TypeError, method, name, 'callable', value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  return value


def check_transformation(name: str, value: Any, *, method: str,
                         allow_none: bool = True,
                         hint: str | None = None) -> Any:
  """Checks an Optax transformation (anything with ``init`` and ``update``).

  Raises:
    TypeError: if ``value`` lacks callable ``init``/``update`` (or is None
      when ``allow_none`` is False).
  """
  if value is None and allow_none:
    return None
  if not (callable(getattr(value, 'init', None))
          and callable(getattr(value, 'update', None))):
    requirement = 'an Optax GradientTransformation (with init and update)'
    if allow_none:
      requirement = f'None or {requirement}'
    _fail(TypeError, method, name, requirement, value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  return value


def check_num_tasks(num_tasks: Any, *, method: str,
                    required: bool = False) -> int | None:
  """Checks ``num_tasks``: None (if not required) or an integer ``>= 1``.

  Args:
    num_tasks: the value received.
    method: the factory's name.
    required: whether the method keeps one value per task in its state.

  Returns:
    ``int(num_tasks)``, or None.

  Raises:
    TypeError: if it is required and None, or not an integer.
    ValueError: if it is smaller than 1.
  """
  if num_tasks is None:
    if required:
      raise TypeError(
          f'{method} keeps one value per task in its state: pass '
          'num_tasks=T (the optimizer state is created from the parameters, '
          'which do not tell T).')
    return None
  return check_int_at_least(
      'num_tasks', num_tasks, 1, method=method,
      hint='the number of tasks T, the leading axis of the stacked gradients')


def check_preferences(name: str, value: Any, *, method: str,
                      num_tasks: int | None = None,
                      non_negative: bool = True) -> int | None:
  """Checks task preferences: a 1-D, finite, non-negative, not-all-zero vector.

  Args:
    name: the argument's name (``'preferences'``; ``'weights'`` for linear
      scalarization).
    value: None (the default preferences) or anything array-like.
    method: the factory's name.
    num_tasks: ``T`` if given; the preferences must have ``T`` entries.
    non_negative: reject negative entries (False for a plain weighted sum,
      where a negative weight deliberately ascends a loss).

  Returns:
    The number of entries, or None for None.

  Raises:
    TypeError: if ``value`` is not a numeric array.
    ValueError: if it is not 1-D and non-empty, has NaN/Inf or negative
      entries, is all zeros, or has a length other than ``num_tasks``.
  """
  if value is None:
    return None
  hint = ('one weight per task, e.g. jnp.ones(T) (the sum) or '
          'jnp.full(T, 1/T) (the mean)')
  if _is_traced(value):
    shape = np.shape(value)
    kind = np.dtype(value.dtype).kind
  else:
    try:
      arr = np.asarray(value)
    except Exception:  # pylint: disable=broad-except
      arr = np.asarray(None, object)
    shape, kind = arr.shape, arr.dtype.kind
  if kind not in 'iuf':
    _fail(TypeError, method, name, 'a numeric 1-D array', value, hint,
          shown=f'{_show(value)} ({type(value).__name__})')
  if len(shape) != 1 or shape[0] < 1:
    _fail(ValueError, method, name, 'a non-empty 1-D array', value, hint)
  t = int(shape[0])
  if num_tasks is not None and t != num_tasks:
    raise ValueError(
        f'{method}: num_tasks={num_tasks} but {name} has {t} entries; pass '
        f'{name} with one entry per task, or num_tasks={t} (or leave '
        f'num_tasks out: {name} implies it).')
  if _is_traced(value):
    return t
  x = arr.astype(np.float64)
  if not np.all(np.isfinite(x)):
    _fail(ValueError, method, name, 'finite', value, hint)
  if non_negative and np.any(x < 0):
    _fail(ValueError, method, name, 'non-negative', value,
          'a negative weight would ascend that task\'s loss; use 0 to leave '
          'a task out')
  if non_negative and not np.any(x > 0):
    _fail(ValueError, method, name, 'a vector with a positive entry', value,
          'all-zero weights give a zero update; ' + hint)
  if not np.any(x != 0):
    _fail(ValueError, method, name, 'a vector with a non-zero entry', value,
          'all-zero weights give a zero update; ' + hint)
  return t
