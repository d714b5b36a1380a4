"""Exact solvers for the small quadratic programs of the Gramian methods.

Several methods solve a convex problem on the T×T Gramian ``K``: MGDA's
min-norm point of the simplex, UPGrad's and DualProj's projections onto the
dual cone, CAGrad's dual. First-order methods reach them only
approximately, and their error depends on the conditioning and on how the
tasks are ordered. This module solves them *exactly*, by active-set methods
that pivot finitely many times and end with a direct solve on the final
active set:

- ``nonnegative_quadratic``: ``min_{x ≥ 0} ½ xᵀ Q x − bᵀ x`` for a positive
  semi-definite ``Q`` with ``b`` in its range, by the Lawson–Hanson
  active-set method written on ``Q`` (Lawson & Hanson, *Solving Least Squares
  Problems*, 1974, Ch. 23): with ``Q = AᵀA`` and ``b = Aᵀy`` it is their NNLS
  ``min_{x≥0} ‖Ax − y‖``, without ever forming ``A``.
- ``min_norm_simplex``: ``min_{α ∈ Δ} αᵀ K α`` (MGDA) through the identity
  ``argmin_{x≥0} ‖Gᵀx‖² + s(1ᵀx − 1)² = α*/(1 + m*/s)`` (``m*`` the optimal
  value): for each total ``1ᵀx = σ`` the inner minimum is ``σ² m*``, and
  ``σ² m* + s(σ − 1)²`` is minimised at ``σ = 1/(1 + m*/s) > 0``, so the NNLS
  solution normalised to sum 1 is a min-norm point.

Every iteration solves one linear system on the current active set with a
Cholesky factorisation of a masked ``T×T`` matrix, inside one
``lax.while_loop``: static shapes, jittable and vmappable. The number of
iterations is bounded (``max_iters``, default ``5T + 20``; Lawson–Hanson
needs about the number of positive components plus the number of removals,
measured ≤ 2T on the property suite) and the final iterate is the solution
of the last active set's linear system, exact to the conditioning of that
system. Gradients do not flow through the loop (``lax.while_loop`` has no
reverse-mode rule); the weightings are not meant to be differentiated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class ActiveSetResult(NamedTuple):
  """Solution of an active-set solve.

  Attributes:
    x: ``[T]`` the minimiser.
    iterations: number of loop iterations (one linear solve each).
    converged: True when the optimality conditions hold to the tolerance
      (False only when ``max_iters`` ran out).
  """
  x: jax.Array
  iterations: jax.Array
  converged: jax.Array


def masked_solve(matrix: jax.Array, rhs: jax.Array, active: jax.Array
                 ) -> jax.Array:
  """Solves ``matrix[A, A] z_A = rhs[A]`` and returns ``z`` (0 off ``A``).

  The system is embedded in a ``T×T`` one with the identity on the inactive
  rows and columns, so the shapes are static; solved by Cholesky (the
  active block of a positive semi-definite matrix chosen by the active-set
  rules is positive definite). A singular block gives non-finite values,
  which the callers detect.

  Args:
    matrix: ``[T, T]`` symmetric positive semi-definite matrix.
    rhs: ``[T]`` or ``[T, M]`` right-hand side(s).
    active: ``[T]`` bool mask of the active set ``A``.

  Returns:
    ``z`` with the shape of ``rhs``, zero on the inactive rows.
  """
  both = active[:, None] & active[None, :]
  system = jnp.where(both, matrix, 0) + jnp.diag(jnp.where(active, 0, 1)
                                                 ).astype(matrix.dtype)
  mask = active if rhs.ndim == 1 else active[:, None]
  factor = jax.scipy.linalg.cho_factor(system, lower=True)
  z = jax.scipy.linalg.cho_solve(factor, jnp.where(mask, rhs, 0))
  return jnp.where(mask, z, 0)


def _default_max_iters(t: int) -> int:
  return 5 * t + 20


def _multiplier_tolerance(quad, linear, x, rtol):
  """Componentwise rounding bound of the multipliers ``b − Qx``."""
  return rtol * (jnp.abs(linear) + jnp.abs(quad) @ jnp.abs(x))


class _Carry(NamedTuple):
  x: jax.Array                # feasible iterate, 0 on the held indices
  free: jax.Array             # indices not held at their bound 0
  blocked: jax.Array          # indices not to free again until x changes
  optimal_on_free: jax.Array  # x minimises the problem restricted to free
  inverse: jax.Array          # (fast phase) inverse of the masked system
  iteration: jax.Array
  done: jax.Array


def _pivot(quad, linear, rtol, c: _Carry, solve):
  """One Lawson–Hanson iteration; ``solve(c, free, j, add)`` returns
  ``(z, inverse, singular)`` for the free set after the pivot.

  Returns:
    ``(carry, grown)``: the new carry and the index freed by this
    iteration's solve (an all-False mask when none was, or it was
    singular).
  """
  t = quad.shape[0]
  index = jnp.arange(t)
  multipliers = linear - quad @ c.x
  eligible = (~c.free & ~c.blocked &
              (multipliers > _multiplier_tolerance(quad, linear, c.x, rtol)))
  score = jnp.where(eligible, multipliers, -jnp.inf)
  j = jnp.argmax(score)
  grows = jnp.any(eligible)
  done = c.optimal_on_free & ~grows
  add = c.optimal_on_free & grows
  e_j = index == j
  free = jnp.where(add, c.free | e_j, c.free)
  z, inverse, singular = solve(c, free, j, add)
  # A freed index whose system is singular or whose solution is not
  # positive had a rounding-size multiplier: hold it again and block it.
  bad_add = add & (singular | (z[j] <= 0))
  positive = jnp.all(jnp.where(free, z > 0, True))
  # Otherwise step toward z until the first free entry reaches 0.
  shrinking = free & (z <= 0)
  ratio = jnp.where(shrinking, c.x / jnp.where(shrinking, c.x - z, 1),
                    jnp.inf)
  first = jnp.argmin(ratio)
  step = jnp.clip(ratio[first], 0, 1)
  moved = c.x + step * (z - c.x)
  moved = jnp.where((index == first) | ~free, 0, jnp.maximum(moved, 0))
  keep = bad_add | done
  grown = e_j & add & ~singular
  carry = _Carry(
      x=jnp.where(keep, c.x, jnp.where(positive, z, moved)),
      free=jnp.where(keep, c.free,
                     jnp.where(positive, free, free & (index != first))),
      blocked=jnp.where(bad_add, c.blocked | e_j,
                        jnp.where(keep, c.blocked,
                                  c.blocked & ~positive)),
      optimal_on_free=jnp.where(keep, c.optimal_on_free, positive),
      inverse=inverse,
      iteration=c.iteration + 1,
      done=done)
  return carry, grown


def nonnegative_quadratic(
    quad: jax.Array,
    linear: jax.Array,
    *,
    max_iters: int | None = None,
    rtol: float | None = None,
) -> ActiveSetResult:
  """``argmin_{x ≥ 0} ½ xᵀ Q x − bᵀ x`` by Lawson–Hanson on ``Q``.

  Starting from ``x = 0`` with every index held at its bound, each outer
  step frees the index with the largest positive multiplier ``(b − Qx)_j``
  and solves the unconstrained problem on the free set; when that solution
  has non-positive entries the iterate moves toward it as far as
  feasibility allows and the index that reaches 0 is held again. An index
  whose freed system is numerically singular or whose free solution is not
  positive (its multiplier was rounding noise) is not freed again until the
  iterate changes. Terminates when every held index ``j`` has multiplier
  ``(b − Qx)_j ≤ rtol · (|b_j| + Σ_k |Q_jk| x_k)``, the rounding bound of
  its computation.

  Two phases: a fast one keeps the inverse of the free block up to date by
  rank-one updates (``O(T²)`` a pivot); an exact one then re-solves the
  free block's system by Cholesky at every pivot, starting from where the
  fast phase stopped, unless the fast phase's answer already meets the
  optimality conditions to their rounding bound.

  Args:
    quad: ``[T, T]`` symmetric positive semi-definite ``Q``.
    linear: ``[T]`` vector ``b`` (in the range of ``Q`` for a bounded
      problem; every use in this library satisfies that).
    max_iters: iteration limit of each phase (default ``5T + 20``).
    rtol: relative optimality tolerance (default ``2 √T eps``).

  Returns:
    An ``ActiveSetResult`` (``iterations`` counts both phases).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.weightings import active_set
    >>> q = jnp.array([[2., 1.], [1., 2.]]); b = jnp.array([1., -1.])
    >>> x = active_set.nonnegative_quadratic(q, b).x      # x₂ held at 0
    >>> [round(float(v), 6) for v in x]
    [0.5, 0.0]
  """
  t = quad.shape[0]
  dtype = quad.dtype
  linear = linear.astype(dtype)
  max_iters = _default_max_iters(t) if max_iters is None else int(max_iters)
  eps = jnp.finfo(dtype).eps
  # The typical (not worst-case) rounding of a length-T dot product: a
  # worst-case bound (T eps) held indices with real multipliers (measured
  # 8% error on a near-stationary 20x10 float32 case, 5e-5 with this).
  rtol = 2 * t ** 0.5 * eps if rtol is None else rtol
  quad = 0.5 * (quad + quad.T)
  index = jnp.arange(t)
  eye = jnp.eye(t, dtype=dtype)

  def fast_solve(c: _Carry, free, j, add):
    # Bordering: the inverse of the free block grown by j. Every update is
    # a rank-one term with a scalar coefficient (0 when it does not apply),
    # so no T×T select is needed (they dominate the cost under vmap).
    column = jnp.where(c.free, quad[:, j], 0)
    v = c.inverse @ column
    schur = quad[j, j] - column @ v
    singular = schur <= 100 * t * eps * jnp.abs(quad[j, j])
    grow = add & ~singular
    w = v - (index == j)
    coefficient = jnp.where(grow, 1 / jnp.where(singular, 1, schur), 0)
    e_j = (index == j).astype(dtype)
    inverse = c.inverse + (coefficient * jnp.outer(w, w) -
                           grow.astype(dtype) * jnp.outer(e_j, e_j))
    z = inverse @ jnp.where(free, linear, 0)
    return jnp.where(free, z, 0), inverse, add & singular

  def fast_body(c: _Carry) -> _Carry:
    new, grown = _pivot(quad, linear, rtol, c, fast_solve)
    # The inverse's block is c.free plus the grown index; at most one index
    # of it is not free any more (a step's first zero, or a reverted add):
    # shrink the inverse by it, again as a rank-one update.
    left = (c.free | grown) & ~new.free
    i = jnp.argmax(left)
    col_i = new.inverse[:, i]
    pivot = new.inverse[i, i]
    remove = jnp.any(left)
    coefficient = jnp.where(remove, -1 / jnp.where(remove, pivot, 1), 0)
    e_i = (index == i).astype(dtype)
    inverse = new.inverse + (coefficient * jnp.outer(col_i, col_i) +
                             remove.astype(dtype) * jnp.outer(e_i, e_i))
    return new._replace(inverse=inverse)

  def exact_solve(c: _Carry, free, j, add):
    z = masked_solve(quad, linear, free)
    return jnp.where(jnp.isfinite(z), z, 0), c.inverse, ~jnp.all(
        jnp.isfinite(z))

  def exact_body(c: _Carry) -> _Carry:
    return _pivot(quad, linear, rtol, c, exact_solve)[0]

  def unfinished(c: _Carry):
    return ~c.done & (c.iteration < max_iters)

  zeros = jnp.zeros((t,), dtype)
  start = _Carry(zeros, jnp.zeros((t,), bool), jnp.zeros((t,), bool),
                 jnp.ones((), bool), eye, jnp.zeros((), jnp.int32),
                 jnp.zeros((), bool))
  fast = lax.while_loop(unfinished, fast_body, start)
  # The exact phase re-solves the fast phase's free set first, unless the
  # fast phase's answer already satisfies the optimality conditions to
  # their rounding bound (every multiplier, free ones included, within
  # tolerance: the rank-one updates did not drift): then it costs nothing
  # (under vmap the loop runs only while some problem is unverified).
  multipliers = linear - quad @ fast.x
  bound = _multiplier_tolerance(quad, linear, fast.x, rtol)
  verified = fast.done & jnp.all(
      jnp.where(fast.free, jnp.abs(multipliers) <= bound,
                multipliers <= bound)) & jnp.all(fast.x >= 0)
  polish_start = fast._replace(optimal_on_free=verified,
                               blocked=jnp.zeros((t,), bool),
                               iteration=jnp.zeros((), jnp.int32),
                               done=verified)
  final = lax.while_loop(unfinished, exact_body, polish_start)
  return ActiveSetResult(final.x, fast.iteration + final.iteration,
                         final.done)


def min_norm_simplex(gram: jax.Array, *, max_iters: int | None = None
                     ) -> ActiveSetResult:
  """The exact min-norm point of the convex hull: ``argmin_{α∈Δ} αᵀ K α``.

  Solved as the non-negative problem ``min_{x≥0} xᵀKx + s(1ᵀx − 1)²`` (see
  the module docstring), whose solution normalised to sum 1 is a minimiser.
  ``s`` is the smallest positive squared gradient norm: the rank-one term
  ``s 11ᵀ`` then perturbs no entry of ``K`` by more than the rounding error
  ``K`` already has (``|K_ij| ≤ √(K_ii K_jj)``), and ``1ᵀx = 1/(1 + m*/s)``
  stays in ``[½, 1]`` because ``m* ≤ min_i K_ii``. When several α give the same point ``Gᵀα`` (e.g.
  duplicated tasks) one of them is returned; the point is unique.

  Args:
    gram: ``[T, T]`` Gramian.
    max_iters: iteration limit of the active-set solver.

  Returns:
    An ``ActiveSetResult`` whose ``x`` is α on the simplex.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  diag = jnp.diag(gram)
  positive = diag > 0
  low = jnp.min(jnp.where(positive, diag, jnp.inf))
  s = jnp.where(jnp.any(positive), low, 1).astype(dtype)
  ones = jnp.ones((t,), dtype)
  result = nonnegative_quadratic(gram + s * jnp.outer(ones, ones), s * ones,
                                 max_iters=max_iters)
  total = jnp.sum(result.x)
  alpha = jnp.where(total > 0, result.x / jnp.where(total > 0, total, 1),
                    ones / t)
  return result._replace(x=alpha)
