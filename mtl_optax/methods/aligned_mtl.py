"""Aligned-MTL (Senushkin et al., CVPR 2023; "θ-aligned", Def. 2 of its
earlier version): align the task gradients to an orthogonal system with unit
condition number.

With the task gradients as the columns of ``G = U Σ Vᵀ`` (thin SVD), the
aligned gradient is ``σ_min U Vᵀ w`` (the Procrustes solution ``U Vᵀ`` scaled
by the smallest singular value, applied to the preferences ``w``). Since
``U = G V Σ⁻¹``, it is ``G c`` with

    c = σ_min · V Λ^{-1/2} Vᵀ w,     K = Gᵀ G = V Λ Vᵀ,

so only the T×T Gramian is decomposed. Rank truncation as in the reference
implementations: eigenvalues ``λ ≤ λ_max · T · eps`` are dropped (``eps`` of
the Gramian's dtype), and ``σ_min`` is the smallest kept singular value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl_optax.methods.linear_scalarization import preference_vector

SCALE_MODES = ('min', 'median', 'rmse')


def _check_scale_mode(scale_mode):
  if scale_mode not in SCALE_MODES:
    raise ValueError(
        f'scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}.')


def kept_spectrum(squared: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Which eigenvalues of a Gramian count: ``λ > λ_max · T · eps``.

  Args:
    squared: ``[T]`` eigenvalues of ``K`` (squared singular values of ``G``).

  Returns:
    ``(keep, rank)``: a ``[T]`` bool mask and the number of kept values.
  """
  t = squared.shape[0]
  eps = jnp.finfo(squared.dtype).eps
  tol = jnp.max(squared) * t * eps
  keep = squared > jnp.maximum(tol, 0)
  return keep, jnp.sum(keep)


def alignment_scale(squared, keep, scale_mode: str = 'min') -> jax.Array:
  """The scale ``σ`` of the aligned system from the kept eigenvalues of ``K``.

  Args:
    squared: ``[T]`` eigenvalues of ``K``.
    keep: ``[T]`` bool mask of the kept eigenvalues.
    scale_mode: ``'min'`` (``σ_min``, the paper), ``'median'`` (square root of
      the median kept eigenvalue; for an even number of kept values the
      *lower* of the two middle ones, as the authors' code does with
      ``torch.median`` on the kept eigenvalues of ``K``; the same element as
      the lower median of the singular values, ``sqrt`` being monotone) or
      ``'rmse'`` (square root of the mean kept eigenvalue).

  Returns:
    A scalar; 0 when nothing is kept (a zero Jacobian).
  """
  _check_scale_mode(scale_mode)
  rank = jnp.sum(keep)
  any_kept = rank > 0
  big = jnp.finfo(squared.dtype).max
  if scale_mode == 'min':
    value = jnp.min(jnp.where(keep, squared, big))
  elif scale_mode == 'rmse':
    value = jnp.sum(jnp.where(keep, squared, 0)) / jnp.maximum(rank, 1)
  else:
    # Kept values sorted ascending sit at positions T-rank .. T-1; the lower
    # median (torch.median's convention) is at offset (rank-1)//2.
    ordered = jnp.sort(jnp.where(keep, squared, -big))
    t = squared.shape[0]
    lower = t - rank + (rank - 1) // 2
    value = ordered[jnp.clip(lower, 0, t - 1)]
  return jnp.where(any_kept, jnp.sqrt(jnp.where(any_kept, value, 1)), 0)


def aligned(
    gram: jax.Array,
    preferences: jax.Array | None = None,
    scale_mode: str = 'min',
) -> jax.Array:
  """Aligned-MTL coefficients ``c = σ · V Λ^{-1/2} Vᵀ w`` from the Gramian.

  Args:
    gram: ``[T, T]`` Gramian ``K = G Gᵀ`` of the task gradients.
    preferences: ``[T]`` task preferences ``w``; default all ones, the sum
      convention of the paper (``w = 1`` for MTL) and its official code. Pass
      ``jnp.full(T, 1/T)`` for the mean convention of other libraries; the
      update scales linearly with ``w``.
    scale_mode: how ``σ`` is chosen (see ``alignment_scale``).

  Returns:
    ``[T]`` coefficients; all zeros for a zero Gramian.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[3., 0.], [0., 1.]])   # orthogonal, unequal norms
    >>> weightings.aligned(g @ g.T).tolist()   # rescaled to the smaller norm
    [0.3333333432674408, 1.0]
  """
  _check_scale_mode(scale_mode)
  t = gram.shape[0]
  dtype = gram.dtype
  w = preference_vector(preferences, t, dtype)
  sym = 0.5 * (gram + gram.T)
  squared, vectors = jnp.linalg.eigh(sym)
  keep, _ = kept_spectrum(squared)
  inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, squared, 1)), 0)
  sigma = alignment_scale(squared, keep, scale_mode)
  return sigma * (vectors @ (inv_sqrt * (vectors.T @ w)))


def aligned_direction_svd(
    matrix: jax.Array,
    preferences: jax.Array | None = None,
    scale_mode: str = 'min',
) -> tuple[jax.Array, jax.Array]:
  """Reference Aligned-MTL from the thin SVD of the ``[T, P]`` matrix itself.

  ``matrix = A S Bᵀ`` (rows are task gradients), so in the paper's notation
  (columns are gradients) ``U = B`` and ``V = A``; the aligned direction is
  ``σ · B Aᵀ w``. Same truncation as ``aligned`` (``s² ≤ s_max² · T · eps``).
  This decomposes the full matrix: accurate for ill-conditioned problems, but
  far more costly than the Gramian path. Used by ``aligned_mtl(method='svd')``.

  Args:
    matrix: ``[T, P]`` stacked, flattened shared gradients.
    preferences: ``[T]`` task preferences (default all ones).
    scale_mode: ``'min'`` | ``'median'`` | ``'rmse'``.

  Returns:
    ``(direction, coefficients)``: the ``[P]`` aligned direction and the
    ``[T]`` coefficients ``c`` with ``direction = c @ matrix`` (for logging).
  """
  _check_scale_mode(scale_mode)
  t = matrix.shape[0]
  w = preference_vector(preferences, t, matrix.dtype)
  a, s, bt = jnp.linalg.svd(matrix, full_matrices=False)
  squared = s * s
  keep, _ = kept_spectrum(squared)
  sigma = alignment_scale(squared, keep, scale_mode)
  projected = jnp.where(keep, a.T @ w, 0)
  direction = sigma * (bt.T @ projected)
  inv_s = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
  coefficients = sigma * (a @ (inv_s * projected))
  return direction, coefficients
