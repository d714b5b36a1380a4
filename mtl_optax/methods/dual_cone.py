"""UPGrad and DualProj (Quinton & Rey, "Jacobian descent for multi-objective
optimization", 2024): projections onto the dual cone of the task gradients,
``C = {d : <d, g_t> ≥ 0 for all t}``, so the result conflicts with no task.

The projection of ``x = Σ_t u_t g_t`` onto ``C`` is ``Σ_t (u_t + v_t) g_t``
with ``v = argmin_{v ≥ 0} ½ vᵀ K v + vᵀ K u`` (the dual of
``min ‖d - x‖²  s.t.  G d ≥ 0``), a non-negative quadratic program on the
Gramian solved exactly by the active-set method of
``mtl_optax.weightings.active_set`` (Lawson–Hanson), for all right-hand
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

from mtl_optax import active_set
from mtl_optax.methods.linear_scalarization import preference_vector


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


def upgrad(gram: jax.Array, preferences: jax.Array | None = None,
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


def dualproj(gram: jax.Array, preferences: jax.Array | None = None,
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
