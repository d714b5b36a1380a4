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
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_optax.weightings.aligned import kept_spectrum


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
