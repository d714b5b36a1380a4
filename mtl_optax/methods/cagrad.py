"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

With the average gradient ``g0 = (1/T) Σ g_t``, CAGrad's update maximises the
worst task improvement in a ball around ``g0``:

    max_d  min_t <g_t, d>   s.t.  ‖d − g0‖ ≤ r,   r = c ‖g0‖.

The paper solves its dual over the simplex,
``min_{w∈Δ} wᵀ K 1/T + r √(wᵀ K w)``, and returns
``d = g0 + (r / ‖G w‖) G w``, optionally rescaled: ``rescale=0`` none, ``1``
by ``1/(1 + c²)``, ``2`` by ``1/(1 + c)`` (as the authors' code).

We solve the primal exactly instead, by a homotopy in the level ``τ``: the
point of ``H_τ = {d : <g_t, d> ≥ τ for all t}`` closest to ``g0`` is
``d(τ) = g0 + Gᵀλ(τ)`` with ``λ(τ) = argmin_{λ≥0} ½ λᵀKλ − λᵀ(τ1 − K u)``
(``u = 1/T``), and the optimum is the largest ``τ`` with
``‖d(τ) − g0‖ = r``. On a fixed active set ``A`` (``λ_A > 0``, constraints
tight) ``λ_A(τ) = τ K_AA⁻¹ 1 − K_AA⁻¹ (Ku)_A`` is affine and
``‖Gᵀλ‖² = λᵀKλ`` a quadratic in ``τ``, so the method walks from
``τ = min_t <g_t, g0>`` (``λ = 0``) through the breakpoints where a
multiplier reaches 0 or a constraint becomes tight, and ends with the
closed-form root of that quadratic: finitely many pivots, one linear solve
each, exact to the conditioning of the final active set. Its ``λ``
normalised to sum 1 is the dual's ``w`` and ``λ = r w/‖Gw‖``: the paper's
update.

Pareto-stationary inputs (0 in the convex hull) bound ``τ`` by 0: when the
ball reaches ``H_0`` (``c`` large enough, always for ``c ≥ 1``) every
point of ``H_0`` in the ball is optimal and the paper's formula is 0/0; we
return the optimal point closest to ``g0``, the projection of ``g0`` on the
dual cone ``H_0`` (0 when ``g0`` is a conflict-free combination's negative,
e.g. two opposite gradients). It conflicts with no task.

Convention: ``g0`` is the *mean* gradient, as in the paper; multiply by T (or
use a T× larger learning rate) to compare with sum-based methods.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import active_set
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _stateless

RESCALES = (0, 1, 2)


class CAGradSolution(NamedTuple):
  """The exact solution of CAGrad's problem.

  Attributes:
    coefficients: ``[T]`` coefficients of ``d = g0 + Gᵀλ`` before rescaling,
      i.e. ``1/T + λ``.
    multipliers: ``[T]`` λ ≥ 0 (``λ/Σλ`` is the dual's ``w``).
    level: the optimal worst improvement ``τ* = min_t <g_t, d>``.
    iterations: pivots taken (one linear solve each).
    converged: False only when the iteration limit ran out.
  """
  coefficients: jax.Array
  multipliers: jax.Array
  level: jax.Array
  iterations: jax.Array
  converged: jax.Array


def solve_cagrad(gram: jax.Array, c: float = 0.4,
                 max_iters: int | None = None) -> CAGradSolution:
  """CAGrad's problem solved exactly by the homotopy of the module docstring.

  Args:
    gram: ``[T, T]`` Gramian.
    c: the radius factor of the ball around ``g0`` (``r = c‖g0‖``).
    max_iters: pivot limit (default ``5T + 20``).

  Returns:
    A ``CAGradSolution``.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  max_iters = 5 * t + 20 if max_iters is None else int(max_iters)
  eps = jnp.finfo(dtype).eps
  tol = 100 * t * eps
  gram = 0.5 * (gram + gram.T)
  u = jnp.full((t,), 1 / t, dtype)
  b = gram @ u                                    # <g_t, g0>
  radius2 = (c * c) * jnp.maximum(u @ b, 0)       # r² = c²‖g0‖²
  index = jnp.arange(t)
  ones = jnp.ones((t,), dtype)

  class Carry(NamedTuple):
    level: jax.Array
    active: jax.Array
    lam: jax.Array
    iteration: jax.Array
    done: jax.Array
    stationary: jax.Array   # stopped at the level bound of a stationary point

  def body(carry: Carry) -> Carry:
    level, active = carry.level, carry.active
    pq = active_set.masked_solve(gram, jnp.stack([ones, b], axis=1), active)
    p, q = pq[:, 0], pq[:, 1]
    # λ_A(τ) = τ p − q;  ‖Gᵀλ(τ)‖² = a τ² − 2 β τ + γ.
    a, beta, gamma = jnp.sum(p), jnp.sum(q), q @ b
    disc = beta * beta - a * (gamma - radius2)
    has_root = (a > 0) & (disc >= 0)
    # The larger root, in the form without cancellation: (β + √D)/a when
    # β ≥ 0, else (γ − r²)/(β − √D) (the product of the roots is (γ−r²)/a).
    sqrt_disc = jnp.sqrt(jnp.maximum(disc, 0))
    plus = (beta + sqrt_disc) / jnp.where(a > 0, a, 1)
    minus_den = beta - sqrt_disc
    alternative = (gamma - radius2) / jnp.where(minus_den < 0, minus_den, -1)
    root = jnp.where(has_root, jnp.where(beta >= 0, plus, alternative),
                     jnp.inf)
    # A is empty (λ = 0) and r = 0: the centre itself.
    root = jnp.where(~jnp.any(active) & (radius2 <= 0), level, root)
    root = jnp.maximum(root, level)
    # Breakpoints: a multiplier reaches 0, or a constraint becomes tight.
    p_scale = jnp.max(jnp.abs(p))
    leaving = active & (p < -tol * p_scale)
    leave_at = jnp.where(leaving, q / jnp.where(leaving, p, 1), jnp.inf)
    kp, kq = gram @ p, gram @ q
    slope = kp - 1                                # d slack_j / dτ
    offset = b - kq
    entering = ~active & (slope < -tol)
    enter_at = jnp.where(entering, -offset / jnp.where(entering, slope, 1),
                         jnp.inf)
    leave_at = jnp.maximum(leave_at, level)
    enter_at = jnp.maximum(enter_at, level)
    first_leave, first_enter = jnp.argmin(leave_at), jnp.argmin(enter_at)
    next_event = jnp.minimum(leave_at[first_leave], enter_at[first_enter])
    # (No root and no event, both +inf, is not a finish at τ = inf.)
    finish = (root <= next_event) & jnp.isfinite(root)
    stuck = ~finish & ~jnp.isfinite(next_event)   # no root and no event
    new_level = jnp.where(finish, root, next_event)
    lam = jnp.where(active, new_level * p - q, 0)
    lam = jnp.maximum(lam, 0)
    # Pivot.
    is_leave = leave_at[first_leave] <= enter_at[first_enter]
    j = jnp.where(is_leave, first_leave, first_enter)
    e_j = index == j
    grown = active | e_j
    # An entering constraint dependent on the active ones (Schur complement
    # ≈ 0): g_j = Σ μ_i g_i. Swap it for the first i whose λ_i/μ_i is
    # smallest among μ_i > 0 (d unchanged); with no μ_i > 0 the level cannot
    # rise any further (Pareto-stationary): stop at the current point.
    mu = active_set.masked_solve(gram, gram[:, j], active)
    schur = gram[j, j] - gram[j] @ mu
    dependent = ~finish & ~is_leave & (
        schur <= tol * jnp.maximum(gram[j, j], eps))
    donors = active & (mu > tol * jnp.maximum(jnp.max(jnp.abs(mu)), eps))
    ratio = jnp.where(donors, lam / jnp.where(donors, mu, 1), jnp.inf)
    i = jnp.argmin(ratio)
    theta = ratio[i]
    # The swap keeps d only as far as g_j = Σ μ_i g_i holds: it moves d by
    # θ √schur. Near a stationary point μ (from a nearly singular K_AA) is
    # rounding-dominated and θ large; a swap that would move d by more than
    # rounding is a stop at the level bound instead.
    moved2 = theta * theta * jnp.maximum(schur, 0)
    size2 = lam @ (gram @ lam) + u @ b
    can_swap = jnp.any(donors) & (moved2 <= tol * size2)
    swapped_lam = jnp.maximum(jnp.where(active, lam - theta * mu, 0), 0
                              ) + theta * e_j
    swapped_active = (active & (index != i)) | e_j
    new_active = jnp.where(is_leave, active & ~e_j, grown)
    new_active = jnp.where(dependent, swapped_active, new_active)
    lam = jnp.where(dependent & can_swap, swapped_lam, lam)
    limit = dependent & ~can_swap
    # Stuck with the level at 0 (within rounding) is the level bound of a
    # Pareto-stationary point too (what rounding makes of a dependent
    # constraint that did not show as one): answered as `limit` is.
    at_bound = stuck & (level >= -tol)
    done = finish | stuck | limit
    new_active = jnp.where(done, active, new_active)
    # Stuck (no root, no breakpoint: only through rounding): stay put.
    lam = jnp.where(stuck, jnp.where(active, level * p - q, 0).clip(0), lam)
    new_level = jnp.where(stuck, level, new_level)
    return Carry(new_level, new_active, lam, carry.iteration + 1, done,
                 limit | at_bound)

  start = Carry(jnp.min(b), jnp.zeros((t,), bool), jnp.zeros((t,), dtype),
                jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                jnp.zeros((), bool))
  final = lax.while_loop(
      lambda carry: ~carry.done & (carry.iteration < max_iters), body, start)

  # At the level bound of a Pareto-stationary point (τ* = 0) the answer is
  # the projection of g0 on the dual cone H_0: solve it directly (exact
  # NNLS, independent of the order in which the homotopy met the
  # constraints, which near-dependent constraints make rounding-sensitive).
  def project_centre():
    return active_set.nonnegative_quadratic(gram, -b,
                                            max_iters=max_iters).x

  lam = lax.cond(final.stationary, project_centre, lambda: final.lam)
  level = jnp.where(final.stationary, jnp.zeros((), dtype), final.level)
  return CAGradSolution(u + lam, lam, level, final.iteration, final.done)


def solve_cagrad_dual(gram: jax.Array, c: float = 0.4,
                      max_iters: int | None = None) -> jax.Array:
  """The dual's weights ``argmin_{w∈Δ} wᵀK1/T + c‖g0‖√(wᵀKw)``.

  ``w = λ/Σλ`` from ``solve_cagrad`` (uniform when ``λ = 0``, i.e. ``c = 0``
  or a mean gradient that already conflicts with no task... and ``c = 0``).

  Args:
    gram: ``[T, T]`` Gramian.
    c: the radius factor of the ball around ``g0``.
    max_iters: pivot limit.

  Returns:
    ``[T]`` weights on the simplex.
  """
  t = gram.shape[0]
  lam = solve_cagrad(gram, c, max_iters).multipliers
  total = jnp.sum(lam)
  return jnp.where(total > 0, lam / jnp.where(total > 0, total, 1),
                   jnp.full((t,), 1 / t, gram.dtype))


def cagrad_weights(gram: jax.Array, c: float = 0.4, rescale: int = 1,
                   max_iters: int | None = None) -> jax.Array:
  """CAGrad coefficients: ``d = Σ_t coef_t g_t``.

  Args:
    gram: ``[T, T]`` Gramian.
    c: the ball's radius factor (0.4-0.5 in the paper; 0 gives the mean).
    rescale: 0, 1 (``/(1+c²)``) or 2 (``/(1+c)``).
    max_iters: pivot limit of the exact solver (default ``5T + 20``).

  Returns:
    ``[T]`` coefficients.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[1., 0.], [-2., 0.]])      # Pareto-stationary
    >>> weightings.cagrad(g @ g.T, c=2.0, rescale=0) @ g   # conflicts with none
    Array([0., 0.], dtype=float32)
  """
  if rescale not in RESCALES:
    raise ValueError(
        f'cagrad: rescale must be 0 (none), 1 (divide by 1 + c², the '
        f'default) or 2 (divide by 1 + c), got {rescale!r}.')
  coef = solve_cagrad(gram, c, max_iters).coefficients
  if rescale == 1:
    coef = coef / (1 + c**2)
  elif rescale == 2:
    coef = coef / (1 + c)
  return coef


def cagrad(c: float = 0.4, rescale: int = 1, *,
           shared: gram_lib.SharedMask = None,
           per_group: gram_lib.PerGroup = None,
           num_tasks: int | None = None,
           max_iters: int | None = None) -> aggregating.Aggregator:
  """CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

  The update maximises the worst task improvement ``min_t <g_t, d>`` over the
  ball ``‖d − g0‖ ≤ c‖g0‖`` around the mean gradient ``g0``; where the dual
  is non-degenerate that is the paper's ``d = g0 + (c‖g0‖/‖G w‖) G w``.
  Solved exactly by a homotopy on the Gramian
  (``mtl_optax.weightings.cagrad``); on Pareto-stationary inputs whose ball
  reaches the dual cone (always for ``c ≥ 1``) the optimal point closest to
  ``g0`` is returned, which conflicts with no task. ``rescale`` 0 | 1
  (``/(1+c²)``, default) | 2 (``/(1+c)``). Note ``g0`` is a *mean*, as in
  the paper.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> grads = {'w': jnp.array([[1., 0.], [-2., 0.]])}   # Pareto-stationary
    >>> tx = mtl.cagrad(c=2.0, rescale=0)
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> (grads['w'] @ d['w']).tolist()                   # conflicts with none
    [0.0, 0.0]

  Args:
    c: the radius factor (0.4 default; the paper uses 0.4-0.5).
    rescale: 0, 1 or 2.
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
    num_tasks: ``T``, to record the weights in the state.
    max_iters: pivot limit of the exact solver (default ``5T + 20``).

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for a negative or non-finite ``c``, ``rescale`` not 0, 1 or
      2, ``max_iters < 1`` or ``num_tasks < 1``.
  """
  _checks.check_num_tasks(num_tasks, method='cagrad')
  _checks.check_non_negative(
      'c', c, method='cagrad',
      hint='the radius factor of the ball around the mean gradient; the '
      'paper uses 0.4-0.5, 0 gives the mean gradient')
  _checks.check_one_of(
      'rescale', rescale, (0, 1, 2), method='cagrad',
      hint='0: no rescaling, 1: divide by 1+c² (default), 2: by 1+c')
  _checks.check_int_at_least(
      'max_iters', max_iters, 1, method='cagrad', allow_none=True,
      hint='the pivot limit of the exact solver; None (default) is 5T + 20')
  return _stateless(lambda k: cagrad_weights(k, c, rescale, max_iters),
                    shared, num_tasks, per_group=per_group,
                    method='cagrad')
