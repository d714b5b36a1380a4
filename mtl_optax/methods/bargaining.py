"""Nash-MTL (Navon et al., ICML 2022) and FairGrad (Ban & Ji, ICML 2024):
weights ``w > 0`` with ``K w = w^(-1/α)`` (elementwise).

Nash-MTL's bargaining solution is ``K α = 1/α`` (α = 1), on the Gramian
normalised by its Frobenius norm; FairGrad's α-fair update solves
``K w = w^(-1/α)`` on the raw Gramian.

Both are the stationarity condition of a strictly convex function on
``w > 0``:

    φ(w) = ½ wᵀ K w - Σ_i h(w_i),  h(w) = log w (α = 1),
                                   h(w) = w^(1-1/α) / (1 - 1/α) (α ≠ 1),

whose gradient is ``K w - w^(-1/α)`` and Hessian ``K + (1/α) diag(w^(-1-1/α))``
(positive definite). We minimise φ by damped Newton steps with a backtracking
line search that keeps ``w > 0``, inside ``lax.while_loop``: quadratic
convergence, no cvxpy. (The reference Nash-MTL code solves the same condition
by a sequence of convex programs with cvxpy; its weights collapse to ~0 when a
solve fails on badly scaled losses. Newton on φ cannot: φ's minimiser is
unique and every iterate stays positive.)

A task with a zero gradient has no finite solution (φ decreases forever along
``e_i``); its weight is capped at ``max_weight`` (documented, finite).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import _stateless
from mtl_optax.methods._core import _stateful
from mtl_optax.methods._core import state_dtype


def _potential_terms(w, gram, alpha):
  """``(½ wᵀKw, h(w))``: the quadratic term and the elementwise barrier."""
  if alpha == 1:
    h = jnp.log(w)
  else:
    p = 1 - 1 / alpha
    h = w ** p / p
  return 0.5 * w @ gram @ w, h


def _potential(w, gram, alpha):
  quad, h = _potential_terms(w, gram, alpha)
  return quad - jnp.sum(h)


def solve_power_balance(
    gram: jax.Array,
    alpha: float = 1.0,
    init: jax.Array | None = None,
    max_iters: int = 20,
    tol: float | None = None,
    max_weight: float = 1e6,
) -> tuple[jax.Array, jax.Array]:
  """Solves ``K w = w^(-1/α)``, ``w > 0``, by damped Newton on φ.

  Args:
    gram: ``[T, T]`` Gramian.
    alpha: the fairness exponent ``α > 0`` (1 for Nash-MTL).
    init: ``[T]`` positive warm start; default all ones.
    max_iters: Newton iterations at most.
    tol: stop when the relative residual ``max_i |(Kw)_i w_i^(1/α) − 1|``
      is below this (default ``10 · T · eps`` of the dtype: Newton converges
      quadratically, so the iteration runs to the rounding level, about
      ``eps · cond(K)``, or to ``max_iters``).
    max_weight: cap on every weight (only reached for zero gradients).

  Returns:
    ``(w, iterations)``.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}.')
  w0 = jnp.ones((t,), dtype) if init is None else jnp.clip(
      jnp.asarray(init, dtype), 1e-6, max_weight)
  w0 = jnp.where(jnp.all(jnp.isfinite(w0)), w0, jnp.ones((t,), dtype))
  sym = 0.5 * (gram + gram.T)

  def newton_direction(w):
    grad = sym @ w - w ** (-1 / alpha)
    hess = sym + jnp.diag((1 / alpha) * w ** (-1 - 1 / alpha))
    step = jnp.linalg.solve(hess, grad)
    return grad, step

  tol = 10 * t * float(jnp.finfo(dtype).eps) if tol is None else tol

  def residual(w):
    return jnp.max(jnp.abs((sym @ w) * w ** (1 / alpha) - 1))

  def cond(carry):
    _, it, res = carry
    return (it < max_iters) & (res > tol)

  def body(carry):
    w, it, _ = carry
    grad, step = newton_direction(w)
    # Largest step keeping w positive (fraction to the boundary 0.99).
    ratio = jnp.where(step > 0, w / jnp.where(step > 0, step, 1), jnp.inf)
    s0 = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
    quad, h = _potential_terms(w, sym, alpha)
    f0 = quad - jnp.sum(h)
    slope = grad @ step
    # Near the solution the decrease is below the rounding error of φ (its
    # terms cancel); without this slack float32 Armijo tests reject every
    # Newton step there and the iteration stalls (errors up to ~30% for
    # α = 5). A step can only be accepted wrongly by a rounding-size amount.
    slack = 16 * jnp.finfo(dtype).eps * (jnp.abs(quad) + jnp.sum(jnp.abs(h)))

    def ls_cond(s):
      trial = jnp.clip(w - s * step, jnp.finfo(dtype).tiny, max_weight)
      return (_potential(trial, sym, alpha) > f0 - 0.25 * s * slope + slack
              ) & (s > 1e-8)

    s = lax.while_loop(ls_cond, lambda s: 0.5 * s, s0)
    new = jnp.clip(w - s * step, jnp.finfo(dtype).tiny, max_weight)
    # A non-finite step keeps the last iterate and stops (the residual is
    # then reported as 0): a nearly singular Gramian rounds to slightly
    # negative eigenvalues (measured -7e-8 in float32), where φ is not convex
    # and Newton's Hessian can turn singular.
    finite = jnp.all(jnp.isfinite(new))
    new = jnp.where(finite, new, w)
    return new, it + 1, jnp.where(finite, residual(new), 0)

  w, iters, _ = lax.while_loop(
      cond, body, (w0, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, dtype)))
  return w, iters


def nash_mtl_weights(
    gram: jax.Array,
    init: jax.Array | None = None,
    max_iters: int = 20,
) -> jax.Array:
  """Nash-MTL weights: ``K̃ α = 1/α`` with ``K̃ = K / ‖K‖_F``.

  Args:
    gram: ``[T, T]`` Gramian.
    init: warm start (the previous step's α).
    max_iters: Newton iterations at most (``optim_niter``).

  Returns:
    ``[T]`` weights α (the update is ``Σ α_t g_t``; the max-norm clipping of
    the paper's code is applied by the aggregator).
  """
  norm = jnp.linalg.norm(gram)
  normalized = gram / jnp.where(norm > 0, norm, 1)
  alpha, _ = solve_power_balance(normalized, 1.0, init, max_iters)
  return jnp.where(norm > 0, alpha, jnp.zeros_like(alpha))


def fairgrad_weights(gram: jax.Array, alpha: float = 1.0,
                     max_iters: int = 50) -> jax.Array:
  """FairGrad weights: ``K w = w^(-1/α)`` on the Gramian as given.

  Args:
    gram: ``[T, T]`` Gramian.
    alpha: fairness exponent (1: proportional fairness; → ∞: max-min).
    max_iters: Newton iterations at most.

  Returns:
    ``[T]`` weights (zeros for a zero Gramian).
  """
  w, _ = solve_power_balance(gram, alpha, None, max_iters)
  return jnp.where(jnp.any(gram != 0), w, jnp.zeros_like(w))


def nash_mtl(max_norm: float = 1.0, update_weights_every: int = 1,
             optim_niter: int = 20, *, num_tasks: int | None = None,
             shared: gram_lib.SharedMask = None,
             per_group: gram_lib.PerGroup = None) -> aggregating.Aggregator:
  """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution
  ``K̃ α = 1/α`` on ``K̃ = K/‖K‖_F``, warm-started from the previous α.

  Solved by damped Newton on ``½αᵀK̃α - Σ log α`` (its stationarity condition
  is exactly the bargaining condition), so the weights cannot collapse to ~0
  however large the losses. The weights are recomputed every
  ``update_weights_every`` steps and reused in between (state). As in the
  authors' code, the shared update's global norm is clipped to ``max_norm``
  (0 disables it).

  Args:
    max_norm: clip of the shared update's L2 norm (0: none).
    update_weights_every: recompute α every this many steps.
    optim_niter: Newton iterations at most.
    num_tasks: ``T`` (required: α lives in the state).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian with its own α (warm start) and norm clip per group,
      each group's leaves combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``); ``init`` then needs the
      parameters (``init(params)``) to find the groups.

  Returns:
    An ``Aggregator``. Its ``inner`` state is ``(alpha, step)``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a negative or non-finite ``max_norm``,
      ``update_weights_every < 1``, ``optim_niter < 1`` or ``num_tasks < 1``.
  """
  t = _require_num_tasks('nash_mtl', num_tasks)
  _checks.check_non_negative(
      'max_norm', max_norm, method='nash_mtl',
      hint='the clip of the shared update\'s L2 norm; the authors use 1.0, '
      '0 disables the clip')
  _checks.check_int_at_least(
      'update_weights_every', update_weights_every, 1, method='nash_mtl',
      hint='recompute the weights every this many steps; 1 recomputes them '
      'every step')
  _checks.check_int_at_least(
      'optim_niter', optim_niter, 1, method='nash_mtl',
      hint='Newton iterations at most, e.g. 20')

  def coefficients(k, scale, inner, extra):
    alpha, step = inner
    fresh = jax.lax.cond(
        step % update_weights_every == 0,
        lambda: nash_mtl_weights(k, alpha, optim_niter).astype(k.dtype),
        lambda: alpha.astype(k.dtype))
    c = fresh
    if max_norm > 0:
      norm = scale * jnp.sqrt(jnp.maximum(c @ k @ c, 0))
      c = c * jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1),
                        1)
    # A non-finite α makes c non-finite: _build then skips the step and keeps
    # the previous α as the warm start.
    return c, (fresh.astype(alpha.dtype), step + 1)

  return _stateful(
      coefficients,
      lambda: (jnp.ones((t,), state_dtype()), jnp.zeros((), jnp.int32)),
      num_tasks=t, shared=shared, per_group=per_group, method='nash_mtl')


def fairgrad(alpha: float = 1.0, *, shared: gram_lib.SharedMask = None,
             per_group: gram_lib.PerGroup = None,
             num_tasks: int | None = None, max_iters: int = 50
             ) -> aggregating.Aggregator:
  """FairGrad (Ban & Ji, ICML 2024): α-fair weights, ``K w = w^(-1/α)``.

  Solved by damped Newton on a strictly convex potential (see
  ``mtl_optax.weightings.solve_power_balance``). The update ``Σ w_t g_t`` scales as
  ``σ^((1-α)/(1+α))`` with the gradients' scale σ (handled exactly for any
  magnitude).

  Args:
    alpha: the fairness exponent (> 0).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
    num_tasks: ``T``, to record the weights in the state.
    max_iters: Newton iterations.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for a non-positive or non-finite ``alpha``,
      ``max_iters < 1`` or ``num_tasks < 1``.
  """
  _checks.check_num_tasks(num_tasks, method='fairgrad')
  _checks.check_positive(
      'alpha', alpha, method='fairgrad',
      hint='the fairness exponent: 1 is proportional fairness (the paper\'s '
      'default), larger values approach max-min fairness')
  _checks.check_int_at_least('max_iters', max_iters, 1, method='fairgrad',
                             hint='Newton iterations, e.g. 50')
  return _stateless(lambda k: fairgrad_weights(k, alpha, max_iters),
                    shared, num_tasks, degree=(1 - alpha) / (1 + alpha),
                    per_group=per_group, method='fairgrad')
