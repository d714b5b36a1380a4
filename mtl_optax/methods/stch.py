"""STCH, smooth Tchebycheff scalarization (Lin et al., ICML 2024).

The Tchebycheff scalarization ``max_t w_t (L_t - z*_t)`` (``z*`` the ideal
point, ``w`` the preferences) smoothed with a log-sum-exp of temperature
``μ`` (the paper's Eq. 7)::

    g_μ(θ) = μ log Σ_t exp(w_t (L_t - z*_t) / μ),

whose gradient is ``Σ_t c_t g_t`` with::

    c_t = w_t softmax(w ∘ (L - z*) / μ)_t.

As ``μ → 0`` all the weight goes to the task furthest from its ideal value
(the Tchebycheff max); as ``μ → ∞`` the weights tend to ``w / T``.

Readings (the paper states the scalarization; these are our choices):

* ``z*``: the ideal point is given (``ideal_point=``) or, by default, the
  running minimum of the losses seen so far, the current call's included
  (so ``L - z* >= 0``, and the first call, where ``L = z*``, weighs all
  tasks ``w_t / T``).
* ``w``: defaults to ones (the official multi-task code's effective weights),
  so the coefficients sum to 1, like IMTL-G's; the paper's ``λ`` on the
  simplex is ``preferences=jnp.full(T, 1/T)``.
* The official multi-task code (STCH_MTL, LibMTL's ``STCH``) differs from
  the paper's formula: it trains ``Σ log L_t`` for some warm-up epochs, then
  applies the log-sum-exp to ``log(L_t / n_t)`` (``n`` the warm-up's mean
  losses) instead of ``L_t - z*_t``, times ``T``. That variant is not what
  this factory computes; it is ``stch_weights`` applied to ``log(L / n)``,
  with each ``g_t`` divided by ``L_t``.

References:
  Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
  Multi-Objective Optimization", ICML 2024.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _loss_aggregator
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import state_dtype


class StchState(NamedTuple):
  """STCH's own state: ``ideal`` is the ``[T]`` ideal point ``z*`` (the
  running minimum of the losses, or the given point), ``count`` the calls
  seen (``z*`` is set from the first call's losses)."""
  ideal: jax.Array
  count: jax.Array


def stch_weights(losses: jax.Array, ideal: jax.Array, mu: float = 1.0,
                 preferences: jax.Array | None = None) -> jax.Array:
  """STCH coefficients ``w ∘ softmax(w ∘ (L - z*) / μ)``.

  The gradient of ``μ log Σ_t exp(w_t (L_t - z*_t) / μ)`` with respect to the
  losses.

  Args:
    losses: ``[T]`` task losses ``L``.
    ideal: ``[T]`` ideal point ``z*``.
    mu: the smoothing ``μ > 0``.
    preferences: ``[T]`` preferences ``w``; default ones.

  Returns:
    ``[T]`` coefficients, summing to ``Σ_t w_t softmax(...)_t`` (1 for
    ``w = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> c = weightings.stch(jnp.array([2., 1.]), jnp.zeros(2), mu=1.0)
    >>> [round(x, 4) for x in c.tolist()]
    [0.7311, 0.2689]
  """
  w = (jnp.ones_like(losses) if preferences is None
       else jnp.asarray(preferences, losses.dtype))
  return w * jax.nn.softmax(w * (losses - ideal) / mu)


def stch(mu: float = 1.0, *, num_tasks: int | None = None,
         preferences: jax.Array | None = None,
         ideal_point: jax.Array | None = None,
         shared: gram_lib.SharedMask = None,
         track_diagnostics: bool = True) -> aggregating.Aggregator:
  """STCH, smooth Tchebycheff scalarization (Lin et al., ICML 2024).

  Descends ``μ log Σ_t exp(w_t (L_t - z*_t) / μ)``: the update is
  ``Σ_t c_t g_t`` with ``c = w ∘ softmax(w ∘ (L - z*) / μ)``. ``z*`` is
  ``ideal_point`` if given, else the running minimum of the losses passed
  so far (the current ones included). See the module docstring for the
  readings (``w`` defaults to ones; the official code's log-normalised
  warm-up variant is not this).

  Cost: one weighted sum (and a Gramian for the diagnostics if tracked).

  Args:
    mu: the smoothing ``μ`` (small: close to the Tchebycheff max; large:
      close to the ``w``-weighted mean).
    num_tasks: ``T`` (required).
    preferences: ``[T]`` non-negative preferences ``w``; default ones.
    ideal_point: ``[T]`` fixed ideal point ``z*``; default the running
      minimum of the losses.
    shared: which leaves are shared (only matters for diagnostics).
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator`` whose update takes ``losses=``; ``inner`` state is a
    ``StchState``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a non-positive or non-finite ``mu``, ``num_tasks < 1``,
      or ``preferences``/``ideal_point`` that are not finite ``[T]`` vectors
      (negative preferences included).

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.stch(mu=1.0, num_tasks=2)
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[1., 0.], [0., 1.]])}
    >>> state = tx.init(params)
    >>> d, state = tx.update(grads, state, params, losses=jnp.array([2., 1.]))
    >>> d['w'].tolist()       # first call: z* = L, the weights are uniform
    [0.5, 0.5]
    >>> d, state = tx.update(grads, state, params, losses=jnp.array([3., 1.]))
    >>> [round(x, 4) for x in d['w'].tolist()]   # z* = (2, 1): L - z* = (1, 0)
    [0.7311, 0.2689]
  """
  name = 'stch'
  t = _require_num_tasks(name, num_tasks)
  _checks.check_positive(
      'mu', mu, method=name,
      hint='the smoothing μ of the log-sum-exp; small approaches the '
      'Tchebycheff max, large the weighted mean')
  _checks.check_preferences('preferences', preferences, method=name,
                            num_tasks=t)
  if ideal_point is not None and jnp.asarray(ideal_point).shape != (t,):
    raise ValueError(
        f'stch: `ideal_point` has shape {jnp.asarray(ideal_point).shape}; '
        f'expected ({t},): one ideal loss per task, e.g. jnp.zeros({t}).')
  if ideal_point is not None and not bool(
      jnp.all(jnp.isfinite(jnp.asarray(ideal_point)))):
    raise ValueError('stch: `ideal_point` has NaN/Inf entries; pass finite '
                     'ideal losses (e.g. zeros), or None for the running '
                     'minimum.')
  fixed = None if ideal_point is None else jnp.asarray(ideal_point)
  prefs = None if preferences is None else jnp.asarray(preferences)

  def coefficients(losses, gram_hat, scale, inner):
    if fixed is None:
      ideal = jnp.where(inner.count == 0, losses,
                        jnp.minimum(inner.ideal, losses))
    else:
      ideal = fixed.astype(losses.dtype)
    c = stch_weights(losses, ideal, mu, prefs)
    return c, StchState(ideal.astype(inner.ideal.dtype), inner.count + 1)

  def init():
    ideal = (jnp.zeros((t,), state_dtype()) if fixed is None
             else fixed.astype(state_dtype()))
    return StchState(ideal, jnp.zeros((), jnp.int32))

  return _loss_aggregator(name, coefficients, init, num_tasks=t,
                          shared=shared, track_diagnostics=track_diagnostics)
