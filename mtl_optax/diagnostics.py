"""Diagnostics of a gradient system, all read off the Gramian (no extra pass).

- Dominance rate (Def. 1 of Senushkin et al.): the condition number
  ``σ_max / σ_min`` of the matrix of task gradients, over its numerical rank
  (the singular values kept by Aligned-MTL's truncation, ``σ² > σ_max² T eps``)
  so that it stays finite for rank-deficient systems; 1 for a zero system.
- Gradient magnitude similarity (Yu et al., 2020): ``2‖g_i‖‖g_j‖ /
  (‖g_i‖² + ‖g_j‖²)``, the minimum over pairs (1 when T = 1); a pair of zero
  gradients counts as similar (1).
- Minimum pairwise cosine similarity (1 when T = 1); a zero gradient has
  cosine 0 with everything.
- Maximum norm ratio ``max_t ‖g_t‖ / min_t ‖g_t‖``, capped at ``1/eps`` (so a
  zero gradient gives ``1/eps``, not Inf); 1 for a zero system.

One diagnostic needs two Gramians: ``jacobian_isotropy(gram_theta, gram_z)``,
the condition number of the encoder's Jacobian on the span of the tasks'
gradients with respect to the shared representation, the quantity on which
the guarantees of the representation-level ("-UB") methods depend (see its
docstring, and ``mtl.representation_gramians`` to measure both Gramians).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_optax.gramians import kept_spectrum


class Diagnostics(NamedTuple):
  """Scalars describing one step's gradient system."""
  dominance_rate: jax.Array
  gradient_magnitude_similarity: jax.Array
  min_cosine: jax.Array
  max_norm_ratio: jax.Array
  rank: jax.Array


def _safe_div(x, y, default):
  ok = y > 0
  return jnp.where(ok, x / jnp.where(ok, y, 1), default)


def _spectrum(gram):
  return jnp.linalg.eigvalsh(0.5 * (gram + gram.T))


def _dominance_from_spectrum(squared):
  keep, rank = kept_spectrum(squared)
  top = jnp.max(squared)
  low = jnp.min(jnp.where(keep, squared, jnp.inf))
  return jnp.where(rank > 0, jnp.sqrt(_safe_div(top, low, 1.0)), 1.0)


def dominance_rate(gram: jax.Array) -> jax.Array:
  """Condition number of the task-gradient matrix over its numerical rank."""
  return _dominance_from_spectrum(_spectrum(gram))


def _pairwise(gram):
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  t = gram.shape[0]
  off = ~jnp.eye(t, dtype=bool)
  return norms, off


def min_cosine(gram: jax.Array) -> jax.Array:
  """Smallest cosine between two different task gradients."""
  norms, off = _pairwise(gram)
  cos = _safe_div(gram, norms[:, None] * norms[None, :], 0.0)
  return jnp.min(jnp.where(off, jnp.clip(cos, -1, 1), 1.0))


def gradient_magnitude_similarity(gram: jax.Array) -> jax.Array:
  """Smallest pairwise gradient magnitude similarity."""
  norms, off = _pairwise(gram)
  d = jnp.diag(gram)
  gms = _safe_div(2 * norms[:, None] * norms[None, :], d[:, None] + d[None, :],
                  1.0)
  return jnp.min(jnp.where(off, gms, 1.0))


def max_norm_ratio(gram: jax.Array) -> jax.Array:
  """Largest over smallest task-gradient norm, capped at ``1/eps``."""
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  top, low = jnp.max(norms), jnp.min(norms)
  cap = 1 / jnp.finfo(gram.dtype).eps
  return jnp.where(top > 0, jnp.minimum(_safe_div(top, low, cap), cap), 1.0)


def from_gramian(gram: jax.Array) -> Diagnostics:
  """All diagnostics of the system with Gramian ``gram`` (any positive scale).

  Args:
    gram: ``[T, T]`` Gramian.

  Returns:
    A ``Diagnostics`` of float32 (or wider) scalars; never NaN for a finite
    Gramian.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g = jnp.array([[2., 0.], [0., 1.]])
    >>> float(mtl.diagnostics.from_gramian(g @ g.T).dominance_rate)
    2.0
  """
  squared = _spectrum(gram)
  _, rank = kept_spectrum(squared)
  dtype = gram.dtype
  return Diagnostics(
      dominance_rate=_dominance_from_spectrum(squared).astype(dtype),
      gradient_magnitude_similarity=gradient_magnitude_similarity(
          gram).astype(dtype),
      min_cosine=min_cosine(gram).astype(dtype),
      max_norm_ratio=max_norm_ratio(gram).astype(dtype),
      rank=rank.astype(jnp.int32),
  )


def empty(dtype=jnp.float32) -> Diagnostics:
  """Diagnostics before the first step (all ones, rank 0)."""
  one = jnp.ones((), dtype)
  return Diagnostics(one, one, one, one, jnp.zeros((), jnp.int32))


def _jacobi_scaled(gram: jax.Array, d: jax.Array) -> jax.Array:
  """``D K D`` with ``D = diag(d)``, symmetrised."""
  k = gram * d[:, None] * d[None, :]
  return 0.5 * (k + k.T)


def jacobian_isotropy(gram_theta: jax.Array, gram_z: jax.Array) -> jax.Array:
  r"""How far the encoder's Jacobian is from isotropic on the tasks' span.

  For an encoder ``z = encode(θ_sh, x)`` (``z`` flattened over the batch, of
  size ``Z``) with Jacobian ``J = ∂z/∂θ_sh`` (``[Z, P]``), let ``G_z``
  (``[T, Z]``) hold the task gradients with respect to ``z`` and ``G_θ = G_z
  J`` (``[T, P]``) those with respect to ``θ_sh``. This is

  .. math::
    ι = \sqrt{λ_{\max} / λ_{\min}}, \qquad K_θ v = λ K_z v,
    \quad v \in \mathrm{range}(K_z),

  over the generalized eigenvalues of ``K_θ = G_θ G_θᵀ`` and ``K_z = G_z
  G_zᵀ``. Equivalently, with ``Q`` (``[Z, r]``) an orthonormal basis of the
  span of the ``T`` z-gradients, ``ι = σ_max(Jᵀ Q) / σ_min(Jᵀ Q)``: the
  condition number of the Jacobian restricted to the directions the tasks
  use, i.e. of ``J Jᵀ`` compressed to that span, square-rooted so that it
  is a ratio of singular values like the dominance rate. ``ι = 1`` exactly
  when that compression is ``c I`` (``Qᵀ J Jᵀ Q = c I``, i.e. ``K_θ = c
  K_z``); then every inner product between directions in the span keeps its
  sign when mapped to the parameters, ``<Jᵀ a, Jᵀ b> = c <a, b>``.

  Why it matters: Theorem 1(b) of Sener & Koltun (2018) states that the
  MGDA-UB direction ``d_z`` (MGDA on ``K_z``) maps to a parameter direction
  ``Jᵀ d_z`` that conflicts with no task. Its proof's step (9) ⇔ (10) uses
  that ``aᵀ M b ≥ 0 ⇔ aᵀ b ≥ 0`` for ``M = J Jᵀ`` positive definite, which
  holds for all ``a, b`` only when ``M ∝ I``; on the tasks' span, only when
  ``ι = 1``. In general, for any ``d_z`` in the span and any task ``t``,

  .. math::
    \cos(d_z, g_{z,t}) > \frac{ι^2 - 1}{ι^2 + 1}
    \;\Rightarrow\; \langle J^\top d_z, g_{θ,t} \rangle > 0,

  (write ``K_θ = Rᵀ B R``, ``K_z = Rᵀ R``; ``B``'s eigenvalues lie in
  ``[λ_min, λ_max]``, so ``B - c I`` with ``c = (λ_min + λ_max) / 2`` has norm
  ``(λ_max - λ_min) / 2``), and MGDA-UB has ``cos(d_z, g_{z,t}) ≥ ‖d_z‖ /
  ‖g_{z,t}‖``. Beyond that bound conflicts can occur, and do in many random
  cases (``tests/test_isotropy.py``). Senushkin et al. (2023) assume the
  same isotropy for Aligned-MTL-UB (their ``JᵀJ = λI``, with ``J`` written
  transposed: the same ``Z × Z`` matrix as our ``J Jᵀ``); their Fig. 3 is a
  picture of that matrix for the first 50 channels of ResNet-18's layer-4
  output, a qualitative sketch without a number. ``ι`` is the number that
  matters from it, read off two ``T × T`` Gramians: the condition of the
  matrix on the ``≤ T`` directions the tasks use. It is at most the
  condition number of the whole Jacobian (their Theorem 2's ``D(J)``),
  which is rarely computable.

  Numerics: both Gramians are first scaled by ``D = diag(K_z)^{-1/2}`` on
  both sides (a congruence, which leaves the generalized eigenvalues
  unchanged and removes differences in gradient norms), then ``K_θ`` by its
  largest diagonal entry. The span is that of the eigenvectors of the scaled
  ``K_z`` with eigenvalues above ``sqrt(eps)`` times the largest: directions
  of nearly linearly dependent task gradients (duplicated tasks, a task with
  a zero z-gradient) are left out, since whitening them would amplify the
  rounding errors of ``K_θ`` beyond ``sqrt(eps)`` (with such a direction
  left out the value is that of a subspace of the span, never above the
  full span's). Within the span the relative error is about ``eps`` times
  the condition number of the scaled ``K_z``. ``λ_min`` is raised to
  ``λ_max · T · eps · cond`` (``cond`` the kept eigenvalues' ratio), the
  resolution of the computed ``λ``'s, so the result is finite: at most
  ``(T · eps)^{-1/2}`` (T = 2: 2048 in float32, 4.7e7 in float64); a value near
  that cap means ``J Jᵀ`` is singular on the span to working precision.
  The part of ``K_θ`` outside the span of ``K_z`` (zero in exact arithmetic:
  a zero ``∂L_t/∂z`` has a zero ``∂L_t/∂θ_sh``) is ignored.

  Args:
    gram_theta: ``[T, T]`` Gramian of the per-task gradients with respect to
      the shared (encoder) parameters, ``K_θ = G_z J Jᵀ G_zᵀ``.
    gram_z: ``[T, T]`` Gramian of the per-task gradients with respect to the
      shared representation (flattened over batch and features), ``K_z``.

  Returns:
    A scalar ``ι ≥ 1`` in the Gramians' dtype (at least float32); 1 when
    ``K_z`` is zero (no span) or ``K_θ`` is zero on it (``K_θ = 0 · K_z``).
    Never NaN for finite Gramians.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g_z = jnp.array([[1., 0., 0.], [-1., 1., 0.]])      # [T = 2, Z = 3]
    >>> iso = jnp.array([[2., 0., 0., 0.], [0., 2., 0., 0.],
    ...                  [0., 0., 2., 0.]])                  # J Jᵀ = 4 I
    >>> g_theta = g_z @ iso                                  # [T, P = 4]
    >>> k_z, k_theta = g_z @ g_z.T, g_theta @ g_theta.T
    >>> round(float(mtl.diagnostics.jacobian_isotropy(k_theta, k_z)), 4)
    1.0
    >>> aniso = jnp.diag(jnp.array([1., 3., 1.]))            # J Jᵀ = diag(1, 9, 1)
    >>> g_theta = g_z @ aniso
    >>> round(float(mtl.diagnostics.jacobian_isotropy(
    ...     g_theta @ g_theta.T, k_z)), 4)
    3.0

  References:
    Sener & Koltun, `Multi-Task Learning as Multi-Objective Optimization
    <https://arxiv.org/abs/1810.04650>`_, NeurIPS 2018, Theorem 1 and its
    proof (supplement A).

    Senushkin et al., `Independent Component Alignment for Multi-Task
    Learning <https://arxiv.org/abs/2305.19000>`_, CVPR 2023, Def. 3,
    Fig. 3 and Theorem 2.
  """
  dtype = jnp.result_type(jnp.float32, jnp.asarray(gram_theta).dtype,
                          jnp.asarray(gram_z).dtype)
  k_theta = jnp.asarray(gram_theta, dtype)
  k_z = jnp.asarray(gram_z, dtype)
  t = k_z.shape[0]
  eps = jnp.finfo(dtype).eps
  # Jacobi scaling by K_z's diagonal: (D K_θ D, D K_z D) has the generalized
  # eigenvalues of (K_θ, K_z) on the span; zero-gradient tasks get D = 0.
  diag_z = jnp.maximum(jnp.diag(k_z), 0)
  d = _safe_div(1.0, jnp.sqrt(diag_z), 0.0)
  k_z = _jacobi_scaled(k_z, d)
  k_theta = _jacobi_scaled(k_theta, d)
  k_theta = k_theta / jnp.maximum(jnp.max(jnp.abs(jnp.diag(k_theta))),
                                  jnp.finfo(dtype).tiny)
  s, u = jnp.linalg.eigh(k_z)
  s_max = jnp.max(s)
  keep = s > jnp.maximum(s_max * jnp.sqrt(eps), 0)
  rank = jnp.sum(keep)
  s_low = jnp.min(jnp.where(keep, s, jnp.inf))
  # Whitened basis of the span: B = Wᵀ K_θ W is J Jᵀ compressed to it.
  w = u * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, s, 1)), 0)[None, :]
  b = w.T @ k_theta @ w
  b = 0.5 * (b + b.T)
  # Dropped directions get the mean kept eigenvalue, inside [λ_min, λ_max].
  fill = jnp.trace(b) / jnp.maximum(rank, 1)
  b = b + jnp.diag(jnp.where(keep, 0, fill))
  lam = jnp.linalg.eigvalsh(b)
  top = lam[-1]
  cond = _safe_div(s_max, s_low, 1.0)
  low = jnp.maximum(lam[0], top * t * eps * cond)
  ratio = jnp.sqrt(_safe_div(top, low, 1.0))
  return jnp.where((rank > 0) & (top > 0), ratio, 1.0).astype(dtype)
