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
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import kept_spectrum
from mtl_optax.gramians import preference_vector
from mtl_optax.methods._core import DirectionFn
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import gramian_direction
from mtl_optax.methods._core import leaves_finite

SCALE_MODES = ('min', 'median', 'rmse')


def _check_scale_mode(scale_mode):
  if scale_mode not in SCALE_MODES:
    raise ValueError(
        f'scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}.')


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


def _aligned_svd_direction(shared, preferences, scale_mode) -> DirectionFn:
  """Aligned-MTL from the SVD of the concatenated shared leaves (reference)."""

  def direction_fn(grads, inner, extra):
    t = gram_lib.num_tasks(grads)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    leaves, treedef = jax.tree.flatten(grads)
    flags = jax.tree.leaves(mask)
    # Zero-size leaves have no columns to decompose (and no entries to
    # scale); `combine` still gives them their zero-size update.
    shared_leaves = [g for g, m in zip(leaves, flags) if m and g.size > 0]
    heads = preference_vector(preferences, t)
    heads_ok = leaves_finite(grads, mask, shared=False)
    if not shared_leaves:
      return Proposal(heads, None, inner, heads_ok,
                      lambda: gram_lib.weighted_sum(heads, grads, mask, heads))
    acc = jnp.result_type(*[gram_lib.accumulation_dtype(g.dtype)
                            for g in shared_leaves])
    matrix = jnp.concatenate(
        [g.reshape(t, -1).astype(acc) for g in shared_leaves], axis=1)
    top = jnp.max(jnp.abs(matrix))
    inv = gram_lib._inverse_scale(top, acc)  # pylint: disable=protected-access
    scaled = matrix * inv
    # LAPACK's SVD does not terminate on a matrix containing Inf: decompose a
    # finite stand-in and poison the result instead (the step is skipped).
    finite = jnp.all(jnp.isfinite(scaled))
    flat, c = aligned_direction_svd(
        jnp.where(finite, scaled, 0), heads.astype(acc), scale_mode)
    flat = jnp.where(finite, flat, jnp.nan)
    c = jnp.where(finite, c, jnp.nan)
    flat = flat / inv   # Aligned-MTL is scale-equivariant: undo the scaling
    gram_hat = scaled @ scaled.T
    gram_hat = gram_hat / jnp.where(jnp.max(jnp.diag(gram_hat)) > 0,
                                    jnp.max(jnp.diag(gram_hat)), 1)

    def combine():
      head_part = jax.tree.leaves(
          gram_lib.weighted_sum(heads, grads, mask, heads))
      out, offset = [], 0
      for g, m, h in zip(leaves, flags, head_part):
        if m:
          size = g[0].size
          out.append(flat[offset:offset + size].reshape(g.shape[1:]).astype(
              g.dtype))
          offset += size
        else:
          out.append(h)
      return jax.tree.unflatten(treedef, out)

    return Proposal(c, gram_hat, inner, heads_ok & jnp.all(jnp.isfinite(flat)),
                    combine)

  return direction_fn


def aligned_mtl(
    preferences: jax.Array | None = None,
    scale_mode: str = 'min',
    *,
    shared: gram_lib.SharedMask = None,
    per_group: gram_lib.PerGroup = None,
    method: str = 'eigh',
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """Aligned-MTL (Senushkin et al., CVPR 2023): ``σ_min · U Vᵀ w``.

  The task gradients are aligned to the closest orthogonal system (the
  Procrustes solution ``U Vᵀ`` of ``G = U Σ Vᵀ``) scaled by the smallest
  singular value, so the aligned system has dominance rate 1; the update is
  that system applied to the preferences ``w``. Computed from ``eigh`` of the
  T×T Gramian (see ``mtl_optax.weightings.aligned``).

  Preference convention: ``w`` defaults to all ones, the paper's ``w = 1`` for
  MTL and its official code (a sum). Other libraries use ``w = 1/T`` (a
  mean); pass ``preferences=jnp.full(T, 1/T)`` for that. Task-specific leaves
  get ``Σ_t w_t g_t``.

  Precision: from the Gramian, float32 gradients resolve singular values down
  to about ``sqrt(T · eps) ≈ 2e-3`` of the largest; smaller ones are treated
  as zero (rank truncation). ``method='svd'`` decomposes the stacked matrix
  itself (exact to ``T · eps``) at a much higher cost.

  Args:
    preferences: ``[T]`` task preferences ``w``; default all ones.
    scale_mode: 'min' (the paper), 'median' or 'rmse' (see
      ``mtl_optax.weightings.aligned``).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
      ``method='eigh'`` only.
    method: 'eigh' (Gramian, the fast path) or 'svd' (reference: thin SVD of
      the concatenated ``[T, P]`` matrix).
    num_tasks: ``T``, to record the weights in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for an unknown ``scale_mode`` or ``method``, invalid
      ``preferences`` (1-D, finite, non-negative, not all zero, ``num_tasks``
      entries) or ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, optax, mtl_optax as mtl
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[3., 0.], [0., 1.]])}   # task 1 dominates
    >>> tx = mtl.aligned_mtl()
    >>> update, state = tx.update(grads, tx.init(params))
    >>> update['w'].tolist()                         # both scaled to σ_min = 1
    [1.0, 1.0]
    >>> float(state.diagnostics.dominance_rate)      # of the input system
    3.0
  """
  name = 'aligned_mtl'
  _checks.check_num_tasks(num_tasks, method=name)
  _checks.check_preferences('preferences', preferences, method=name,
                            num_tasks=num_tasks)
  _checks.check_one_of(
      'scale_mode', scale_mode, SCALE_MODES, method=name,
      hint="'min' is the paper's σ_min; see mtl_optax.weightings.aligned")
  _checks.check_one_of(
      'method', method, ('eigh', 'svd'), method=name,
      hint="'eigh' decomposes the T×T Gramian (fast), 'svd' the stacked "
      'gradients (reference)')
  if method == 'eigh':
    direction_fn = gramian_direction(
        lambda k, scale, inner, extra: (
            aligned(k, preferences, scale_mode), inner),
        shared=shared, preferences=preferences, per_group=per_group,
        method=name)
  elif method == 'svd':
    if per_group is not None:
      gram_lib.check_per_group(per_group, method=name)
      raise ValueError(
          "aligned_mtl: per_group needs method='eigh' (the Gramian path); "
          "method='svd' decomposes the whole stacked matrix.")
    direction_fn = _aligned_svd_direction(shared, preferences, scale_mode)
  else:
    raise ValueError(f"method must be 'eigh' or 'svd', got {method!r}.")
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences)
