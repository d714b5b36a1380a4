"""Gradient Vaccine (Wang et al., ICLR 2021), in coefficient form.

For each task i and each other task j (random order), with ``φ_ij`` the
cosine between the running ``g_i'`` and ``g_j`` and ``φ̂_ij`` its EMA target:
if ``φ_ij < φ̂_ij``,

    g_i' ← g_i' + ‖g_i'‖ (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (‖g_j‖ √(1-φ̂²)) · g_j,

which sets the cosine of ``g_i'`` with ``g_j`` to ``φ̂_ij``; then
``φ̂_ij ← (1-β) φ̂_ij + β φ_ij`` (with the ``φ_ij`` measured before the
change). The result is ``Σ_i w_i g_i'``. Targets start at 0, where the rule
is PCGrad's.

Reading: the paper applies the rule per parameter group (layer); this is the
whole-shared-parameter version, where one Gramian describes all groups.
"""

import jax
import jax.numpy as jnp
from jax import lax

from mtl_optax.methods.linear_scalarization import preference_vector


def gradvac(
    gram: jax.Array,
    targets: jax.Array,
    orders: jax.Array,
    beta: float = 0.5,
    preferences: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """GradVac coefficients and the new EMA targets.

  Args:
    gram: ``[T, T]`` Gramian.
    targets: ``[T, T]`` EMA cosine targets ``φ̂`` (zeros initially).
    orders: ``[T, T]`` visiting orders (``random_orders``).
    beta: EMA rate.
    preferences: ``[T]`` weights of the sum; default ones.

  Returns:
    ``(coefficients, new_targets)``.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  eye = jnp.eye(t, dtype=dtype)
  w = preference_vector(preferences, t, dtype)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))

  def per_task(i, order, target_row):
    def step(a, j):
      k_a = gram @ a
      gi_norm = jnp.sqrt(jnp.maximum(a @ k_a, 0))
      denom = gi_norm * norms[j]
      phi = jnp.where(denom > 0, k_a[j] / jnp.where(denom > 0, denom, 1), 0)
      phi = jnp.clip(phi, -1, 1)
      goal = jnp.clip(target_row[j], -1 + 1e-6, 1 - 1e-6)
      root_goal = jnp.sqrt(1 - goal**2)
      coef = gi_norm * (goal * jnp.sqrt(1 - phi**2) - phi * root_goal) / (
          jnp.where(norms[j] > 0, norms[j], 1) * root_goal)
      active = (j != i) & (phi < goal) & (denom > 0)
      a = a + jnp.where(active, coef, 0) * eye[j]
      return a, jnp.where(j != i, phi, target_row[j])

    a, phis = lax.scan(step, eye[i], order)
    measured = jnp.zeros((t,), dtype).at[order].set(phis)
    new_row = jnp.where(jnp.arange(t) == i, target_row,
                        (1 - beta) * target_row + beta * measured)
    return a, new_row

  rows, new_targets = jax.vmap(per_task)(jnp.arange(t), orders, targets)
  return w @ rows, new_targets
