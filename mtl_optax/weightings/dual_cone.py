"""UPGrad and DualProj (Quinton & Rey, "Jacobian descent for multi-objective
optimization", 2024): projections onto the dual cone of the task gradients,
``C = {d : <d, g_t> ≥ 0 for all t}``, so the result conflicts with no task.

The projection of ``x = Σ_t u_t g_t`` onto ``C`` is ``Σ_t (u_t + v_t) g_t``
with ``v = argmin_{v ≥ 0} ½ vᵀ K v + vᵀ K u`` (the dual of
``min ‖d - x‖²  s.t.  G d ≥ 0``). Writing ``K = RᵀR`` (``R = Λ^{1/2} Vᵀ``
from ``eigh``), that is the non-negative least-squares problem
``min_{v≥0} ‖R v + R u‖²``, solved by ``optax.nnls`` (Polyak's fast projected
gradient) for all right-hand sides at once, on the Gramian of the unit
gradients (the same cone, a unit diagonal: well conditioned whatever the
gradients' norms).

- UPGrad: project every task gradient (``u = e_i``) and take the
  preference-weighted sum of the projections.
- DualProj: project the preference-weighted sum (``u = w``).

Convention: preferences default to all ones (a sum, like every method here);
the authors' library uses ``1/T`` (a mean).
"""

import jax
import jax.numpy as jnp
import optax

from mtl_optax.weightings.linear import preference_vector


def _factor(gram):
  squared, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
  return jnp.sqrt(jnp.maximum(squared, 0))[:, None] * vectors.T


def project_to_dual_cone(gram: jax.Array, u: jax.Array, iters: int = 500
                         ) -> jax.Array:
  """Coefficients of the projection of ``Σ u_t g_t`` onto the dual cone.

  Args:
    gram: ``[T, T]`` Gramian.
    u: ``[T]`` coefficients of the vector to project, or ``[T, M]`` for M
      vectors at once (columns).
    iters: iterations of ``optax.nnls``.

  Returns:
    ``u + v`` with the shape of ``u``.
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
  r = _factor(unit_gram)
  projected = u_unit + optax.nnls(r, -(r @ u_unit), iters)
  return projected / (n if u.ndim == 1 else n[:, None])


def upgrad(gram: jax.Array, preferences: jax.Array | None = None,
           iters: int = 500) -> jax.Array:
  """UPGrad coefficients ``Σ_i w_i π_C(g_i)``.

  Args:
    gram: ``[T, T]`` Gramian.
    preferences: ``[T]`` weights of the projected gradients; default ones.
    iters: NNLS iterations.

  Returns:
    ``[T]`` coefficients.
  """
  t = gram.shape[0]
  projected = project_to_dual_cone(gram, jnp.eye(t, dtype=gram.dtype), iters)
  return projected @ preference_vector(preferences, t, gram.dtype)


def dualproj(gram: jax.Array, preferences: jax.Array | None = None,
             iters: int = 500) -> jax.Array:
  """DualProj coefficients ``π_C(Σ_t w_t g_t)``.

  Args:
    gram: ``[T, T]`` Gramian.
    preferences: ``[T]`` weights of the projected sum; default ones.
    iters: NNLS iterations.

  Returns:
    ``[T]`` coefficients.
  """
  t = gram.shape[0]
  return project_to_dual_cone(
      gram, preference_vector(preferences, t, gram.dtype), iters)
