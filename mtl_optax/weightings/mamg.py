"""MAMG (Chai et al., IEEE TCYB 2022): the gradient clipping rule, Algorithm 1,
in coefficient form for any number of tasks.

For each task i and each other task j (random order), when the running
``g_i'`` conflicts with ``g_j`` (``<g_i', g_j> < 0``, Def. 1):

    Pγ = g_i' - g_j                                   (Def. 2)
    cos φ_i = <g_i', Pγ> / (‖g_i'‖ ‖Pγ‖),  cos φ_j = <g_j, Pγ> / (‖g_j‖ ‖Pγ‖)   (2)
    Δg_ij = ‖g_i' cos φ_i - g_j cos φ_j‖              (3)
    g_i' ← g_i' - Δg_ij Pγ / ‖Pγ‖                     (4)

and the result is the mean ``(1/T) Σ_i g_i'`` (line 13).

Readings (documented choices):
- Eq. (3) is read literally: ``g cos φ`` is the gradient *vector* scaled by
  its cosine with Pγ, and Δg is the norm of the difference of the two scaled
  vectors (not the difference of their projections' lengths).
- For T > 2 the rule is applied to the running ``g_i'`` (Algorithm 1 updates
  ``g_i`` in place as it loops over ``j``), each ``g_j`` is the original.
- Preferences weight the clipped gradients in the mean: ``(1/T) Σ w_i g_i'``.
- Consequence for T = 2 (a property of Algorithm 1, pinned by a test):
  Eq. (3) is symmetric, ``Δg_ij = Δg_ji``, and ``Pγ_ji = -Pγ_ij``, so the
  clip of task 1 against task 2 and that of task 2 against task 1 cancel in
  the sum: MAMG returns the plain mean gradient. The paper's analysis
  (Fig. 2(d), Lemma 1, Theorem 1) instead clips one task only,
  ``g^MG = g_i' + g_j``; Algorithm 1 is what is implemented here.
- A zero ``g_i'`` or ``g_j`` cannot conflict (the inner product is 0), and a
  zero ``Pγ`` means ``g_i' = g_j``, which does not conflict either.

Everything is tracked as coefficient vectors over the task gradients, with
norms and inner products read off the Gramian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl_optax.weightings.linear import preference_vector
from mtl_optax.weightings.pcgrad import _surgery


def _safe_div(x, y):
  ok = y > 0
  return jnp.where(ok, x / jnp.where(ok, y, 1), 0)


def mamg(
    gram: jax.Array,
    orders: jax.Array,
    preferences: jax.Array | None = None,
) -> jax.Array:
  """MAMG coefficients ``c = (1/T) Σ_i w_i a_i`` of the mean clipped gradient.

  Args:
    gram: ``[T, T]`` Gramian.
    orders: ``[T, T]`` visiting orders (``mtl_optax.weightings.random_orders``).
    preferences: ``[T]`` weights in the mean; default all ones.

  Returns:
    ``[T]`` coefficients.
  """
  t = gram.shape[0]
  w = preference_vector(preferences, t, gram.dtype)
  eye = jnp.eye(t, dtype=gram.dtype)

  def clip(a, j):
    e_j = eye[j]
    k_a = gram @ a
    gi_gi = jnp.maximum(a @ k_a, 0)          # ‖g_i'‖²
    gi_gj = k_a[j]                           # <g_i', g_j>
    gj_gj = gram[j, j]                       # ‖g_j‖²
    p = a - e_j                              # Pγ = g_i' - g_j
    p_p = jnp.maximum(gi_gi - 2 * gi_gj + gj_gj, 0)
    norm_p = jnp.sqrt(p_p)
    cos_i = _safe_div(gi_gi - gi_gj, jnp.sqrt(gi_gi) * norm_p)  # <g_i',Pγ>
    cos_j = _safe_div(gi_gj - gj_gj, jnp.sqrt(gj_gj) * norm_p)  # <g_j,Pγ>
    # Δg = ‖cos_i g_i' - cos_j g_j‖
    delta2 = (cos_i**2 * gi_gi - 2 * cos_i * cos_j * gi_gj + cos_j**2 * gj_gj)
    delta = jnp.sqrt(jnp.maximum(delta2, 0))
    conflict = (gi_gj < 0) & (norm_p > 0)
    return a - jnp.where(conflict, _safe_div(delta, norm_p), 0) * p

  rows = _surgery(gram, orders, clip)
  return (w @ rows) / t
