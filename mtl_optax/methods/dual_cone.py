"""UPGrad and DualProj (Quinton & Rey, "Jacobian descent for multi-objective
optimization", 2024): projections onto the dual cone of the task gradients,
``C = {d : <d, g_t> ≥ 0 for all t}``, so the result conflicts with no task.

The projection of ``x = Σ_t u_t g_t`` onto ``C`` is ``Σ_t (u_t + v_t) g_t``
with ``v = argmin_{v ≥ 0} ½ vᵀ K v + vᵀ K u`` (the dual of
``min ‖d - x‖²  s.t.  G d ≥ 0``), a non-negative quadratic program on the
Gramian solved exactly by the active-set method of
``mtl_optax.active_set`` (Lawson–Hanson), for all right-hand
sides at once, on the Gramian of the unit gradients (the same cone, a unit
diagonal: well conditioned whatever the gradients' norms).

- UPGrad: project every task gradient (``u = e_i``) and take the
  preference-weighted sum of the projections.
- DualProj: project the preference-weighted sum (``u = w``).

Convention: preferences default to all ones (a sum, like every method here);
the authors' library uses ``1/T`` (a mean).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import active_set
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector
from mtl_optax.methods._core import _stateless


def project_to_dual_cone(gram: jax.Array, u: jax.Array,
                         max_iters: int | None = None) -> jax.Array:
  """Coefficients of the projection of ``Σ u_t g_t`` onto the dual cone.

  Args:
    gram: ``[T, T]`` Gramian.
    u: ``[T]`` coefficients of the vector to project, or ``[T, M]`` for M
      vectors at once (columns).
    max_iters: iteration limit of the active-set solver (default
      ``5T + 20``, never reached on the property suite).

  Returns:
    ``u + v`` with the shape of ``u``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[1., 0.], [-1., 1.]])          # g₀ conflicts with g₁
    >>> c = weightings.project_to_dual_cone(g @ g.T, jnp.array([1., 0.]))
    >>> [round(float(x), 6) + 0.0 for x in g @ (c @ g)]  # conflicts with none
    [0.5, 0.0]
  """
  # Precondition: the dual cone of {g_t} is that of the unit gradients
  # {g_t/‖g_t‖}, whose Gramian has a unit diagonal. Solving there keeps the
  # NNLS well conditioned when the task-gradient norms differ by orders of
  # magnitude (on the raw Gramian, 500 iterations left conflicts with tasks
  # whose norms differed 10-100×).
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  n = jnp.where(norms > 0, norms, 1)
  unit_gram = gram / (n[:, None] * n[None, :])
  u_unit = u * (n if u.ndim == 1 else n[:, None])
  unit_gram = 0.5 * (unit_gram + unit_gram.T)

  def solve(column):
    return active_set.nonnegative_quadratic(
        unit_gram, -(unit_gram @ column), max_iters=max_iters).x

  if u.ndim == 1:
    projected = u_unit + solve(u_unit)
  else:
    projected = u_unit + jax.vmap(solve, in_axes=1, out_axes=1)(u_unit)
  return projected / (n if u.ndim == 1 else n[:, None])


def upgrad_weights(gram: jax.Array,
                   preferences: jax.Array | None = None,
                   max_iters: int | None = None) -> jax.Array:
  """UPGrad coefficients ``Σ_i w_i π_C(g_i)``.

  Args:
    gram: ``[T, T]`` Gramian.
    preferences: ``[T]`` weights of the projected gradients; default ones.
    max_iters: iteration limit of the active-set solver.

  Returns:
    ``[T]`` coefficients.
  """
  t = gram.shape[0]
  projected = project_to_dual_cone(gram, jnp.eye(t, dtype=gram.dtype),
                                   max_iters)
  return projected @ preference_vector(preferences, t, gram.dtype)


def dualproj_weights(gram: jax.Array,
                     preferences: jax.Array | None = None,
                     max_iters: int | None = None) -> jax.Array:
  """DualProj coefficients ``π_C(Σ_t w_t g_t)``.

  Args:
    gram: ``[T, T]`` Gramian.
    preferences: ``[T]`` weights of the projected sum; default ones.
    max_iters: iteration limit of the active-set solver.

  Returns:
    ``[T]`` coefficients.
  """
  t = gram.shape[0]
  return project_to_dual_cone(
      gram, preference_vector(preferences, t, gram.dtype), max_iters)


def _dual_cone_aggregator(method, weighting, preferences, shared, num_tasks,
                          max_iters, per_group=None):
  """UPGrad or DualProj (``weighting(K, preferences, max_iters)``), after
  checking the arguments they share."""
  _checks.check_num_tasks(num_tasks, method=method)
  _checks.check_preferences('preferences', preferences, method=method,
                            num_tasks=num_tasks)
  _checks.check_int_at_least(
      'max_iters', max_iters, 1, method=method, allow_none=True,
      hint='the solver\'s iteration limit; None for the default 5T + 20')
  return _stateless(lambda k: weighting(k, preferences, max_iters),
                    shared, num_tasks, preferences, per_group=per_group,
                    method=method)


def upgrad(preferences: jax.Array | None = None, *,
           shared: gram_lib.SharedMask = None,
           per_group: gram_lib.PerGroup = None,
           num_tasks: int | None = None, max_iters: int | None = None
           ) -> aggregating.Aggregator:
  """UPGrad (Quinton & Rey, 2024): every task gradient projected onto the dual
  cone of the task gradients, then summed with the preferences (default ones;
  the authors' library uses 1/T). Conflicts with no task.

  Args:
    preferences: ``[T]`` weights of the projections (and of the heads).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
    num_tasks: ``T``, to record the weights in the state.
    max_iters: iteration limit of the exact active-set solver of each
      projection (default ``5T + 20``).

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries), ``max_iters < 1`` or
      ``num_tasks < 1``.
  """
  return _dual_cone_aggregator('upgrad', upgrad_weights, preferences,
                               shared, num_tasks, max_iters, per_group)


def dualproj(preferences: jax.Array | None = None, *,
             shared: gram_lib.SharedMask = None,
             per_group: gram_lib.PerGroup = None,
             num_tasks: int | None = None, max_iters: int | None = None
             ) -> aggregating.Aggregator:
  """DualProj (Quinton & Rey, 2024): the preference-weighted sum projected onto
  the dual cone of the task gradients. Conflicts with no task.

  Args:
    preferences: ``[T]`` weights of the sum (default ones).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
    num_tasks: ``T``, to record the weights in the state.
    max_iters: iteration limit of the exact active-set solver (default
      ``5T + 20``).

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries), ``max_iters < 1`` or
      ``num_tasks < 1``.
  """
  return _dual_cone_aggregator('dualproj', dualproj_weights, preferences,
                               shared, num_tasks, max_iters, per_group)
