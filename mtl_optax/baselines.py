"""The baselines the papers compare against, as Optax aggregators.

Gramian-based (coefficients from the T×T Gramian of the shared leaves, the
same engine as ``aligned_mtl``): ``imtl_g``, ``cagrad``, ``nash_mtl``,
``upgrad``, ``dualproj``, ``gradvac``, ``fairgrad``, ``config``,
``random_weighting`` and the wrapper ``ema_weighting``. Not expressible from
the Gramian: ``graddrop`` (per-coordinate masks). The loss-based ones live in
``mtl_optax.loss_weighting``.

Every factory shares the behaviour documented in ``mtl_optax.aggregators``
(``shared`` masks, task-specific leaves summed with the preferences, NaN/Inf
steps skipped, diagnostics in the state). A skipped step also leaves the
method's own state (PRNG key, EMA, warm start, step counter) as it was.
Methods whose state holds one value per task need ``num_tasks`` (``init``
only sees the parameters).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax import weightings
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods._core import gramian_direction
from mtl_optax.weightings.loss_based import random_weights


def _require_num_tasks(name: str, num_tasks: int | None) -> int:
  return _checks.check_num_tasks(num_tasks, method=name, required=True)


def _stateless(weighting, shared, num_tasks, preferences=None, degree=1):
  direction_fn = gramian_direction(
      lambda k, scale, inner, extra: (weighting(k), inner),
      shared=shared, preferences=preferences, scale_degree=degree)
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences)


def imtl_g(*, shared: gram_lib.SharedMask = None,
           num_tasks: int | None = None) -> aggregating.Aggregator:
  """IMTL-G (Liu et al., ICLR 2021): equal projections on every unit task
  gradient, ``c ∝ K⁺ √diag K`` normalised to sum 1.

  Finite for zero gradients (weight 0) and duplicated tasks (pseudo-inverse).
  Cost: one Gramian, one ``eigh`` of T×T, one weighted sum.

  Args:
    shared: which leaves are shared.
    num_tasks: ``T``, to record the weights in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError, ValueError: if ``num_tasks`` is not None or an integer >= 1.
  """
  _checks.check_num_tasks(num_tasks, method='imtl_g')
  return _stateless(weightings.imtl_g, shared, num_tasks)


def cagrad(c: float = 0.4, rescale: int = 1, *,
           shared: gram_lib.SharedMask = None,
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
  return _stateless(lambda k: weightings.cagrad(k, c, rescale, max_iters),
                    shared, num_tasks)


def _dual_cone_aggregator(method, weighting, preferences, shared, num_tasks,
                          max_iters):
  """UPGrad or DualProj (``weighting(K, preferences, max_iters)``), after
  checking the arguments they share."""
  _checks.check_num_tasks(num_tasks, method=method)
  _checks.check_preferences('preferences', preferences, method=method,
                            num_tasks=num_tasks)
  _checks.check_int_at_least(
      'max_iters', max_iters, 1, method=method, allow_none=True,
      hint='the solver\'s iteration limit; None for the default 5T + 20')
  return _stateless(lambda k: weighting(k, preferences, max_iters),
                    shared, num_tasks, preferences)


def upgrad(preferences: jax.Array | None = None, *,
           shared: gram_lib.SharedMask = None,
           num_tasks: int | None = None, max_iters: int | None = None
           ) -> aggregating.Aggregator:
  """UPGrad (Quinton & Rey, 2024): every task gradient projected onto the dual
  cone of the task gradients, then summed with the preferences (default ones;
  the authors' library uses 1/T). Conflicts with no task.

  Args:
    preferences: ``[T]`` weights of the projections (and of the heads).
    shared: which leaves are shared.
    num_tasks: ``T``, to record the weights in the state.
    max_iters: iteration limit of the exact active-set solver of each
      projection (default ``5T + 20``).

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries), ``max_iters < 1`` or
      ``num_tasks < 1``.
  """
  return _dual_cone_aggregator('upgrad', weightings.upgrad, preferences,
                               shared, num_tasks, max_iters)


def dualproj(preferences: jax.Array | None = None, *,
             shared: gram_lib.SharedMask = None,
             num_tasks: int | None = None, max_iters: int | None = None
             ) -> aggregating.Aggregator:
  """DualProj (Quinton & Rey, 2024): the preference-weighted sum projected onto
  the dual cone of the task gradients. Conflicts with no task.

  Args:
    preferences: ``[T]`` weights of the sum (default ones).
    shared: which leaves are shared.
    num_tasks: ``T``, to record the weights in the state.
    max_iters: iteration limit of the exact active-set solver (default
      ``5T + 20``).

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries), ``max_iters < 1`` or
      ``num_tasks < 1``.
  """
  return _dual_cone_aggregator('dualproj', weightings.dualproj, preferences,
                               shared, num_tasks, max_iters)


def config(*, shared: gram_lib.SharedMask = None,
           num_tasks: int | None = None) -> aggregating.Aggregator:
  """ConFIG (Liu et al., ICLR 2025): the direction with equal cosine to every
  task gradient (``U⁺ 1`` of the unit gradients), as long as the sum of the
  task gradients' projections on it.

  When the unit gradients cancel (``Σ_t u_t = 0``, e.g. gradients all
  parallel or antiparallel to one vector, as many unit gradients each way),
  ``U⁺ 1 = 0``: no direction improves every task and the shared update is
  zero (the coefficients, recorded in ``weights``, are zeros; the step is not
  counted as skipped). Rounding noise in that direction is recognised as such
  (see ``mtl_optax.weightings.config``), so it never turns into a
  gradient-sized update.

  Args:
    shared: which leaves are shared.
    num_tasks: ``T``, to record the weights in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError, ValueError: if ``num_tasks`` is not None or an integer >= 1.
  """
  _checks.check_num_tasks(num_tasks, method='config')
  return _stateless(weightings.config, shared, num_tasks)


def fairgrad(alpha: float = 1.0, *, shared: gram_lib.SharedMask = None,
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
  return _stateless(lambda k: weightings.fairgrad(k, alpha, max_iters),
                    shared, num_tasks, degree=(1 - alpha) / (1 + alpha))


def nash_mtl(max_norm: float = 1.0, update_weights_every: int = 1,
             optim_niter: int = 20, *, num_tasks: int | None = None,
             shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
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
        lambda: weightings.nash_mtl(k, alpha, optim_niter).astype(k.dtype),
        lambda: alpha.astype(k.dtype))
    c = fresh
    if max_norm > 0:
      norm = scale * jnp.sqrt(jnp.maximum(c @ k @ c, 0))
      c = c * jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1),
                        1)
    # A non-finite α makes c non-finite: _build then skips the step and keeps
    # the previous α as the warm start.
    return c, (fresh.astype(alpha.dtype), step + 1)

  direction_fn = gramian_direction(coefficients, shared=shared)
  return _build(direction_fn, num_tasks=t, preferences=None,
                init_inner=lambda: (jnp.ones((t,), state_dtype()),
                                    jnp.zeros((), jnp.int32)))


def gradvac(beta: float = 0.5, preferences: jax.Array | None = None, *,
            num_tasks: int | None = None, shared: gram_lib.SharedMask = None,
            seed: int = 0) -> aggregating.Aggregator:
  """Gradient Vaccine (Wang et al., ICLR 2021): raise each pair's cosine to
  its EMA target (``β`` the EMA rate), random order per task and step.

  Args:
    beta: EMA rate of the cosine targets.
    preferences: ``[T]`` weights of the sum (default ones).
    num_tasks: ``T`` (required: the ``T×T`` targets live in the state).
    shared: which leaves are shared.
    seed: PRNG seed for the visiting orders.

  Returns:
    An ``Aggregator``. Its ``inner`` state is ``(key, targets)``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for ``beta`` outside [0, 1], invalid ``preferences`` (1-D,
      finite, non-negative, not all zero, ``num_tasks`` entries) or
      ``num_tasks < 1``.
  """
  t = _require_num_tasks('gradvac', num_tasks)
  _checks.check_in_range(
      'beta', beta, 0, 1, method='gradvac',
      hint='the EMA rate of the cosine targets; the paper uses 0.01-0.5, 0 '
      'keeps the targets at 0, which is PCGrad')
  _checks.check_preferences('preferences', preferences, method='gradvac',
                            num_tasks=t)
  _checks.check_integer('seed', seed, method='gradvac',
                        hint='the seed of the PRNG key in the state')

  def coefficients(k, scale, inner, extra):
    key, targets = inner
    key, sub = jax.random.split(key)
    orders = weightings.random_orders(sub, t)
    c, new_targets = weightings.gradvac(k, targets.astype(k.dtype), orders,
                                         beta, preferences)
    return c, (key, new_targets.astype(targets.dtype))

  direction_fn = gramian_direction(coefficients, shared=shared,
                                   preferences=preferences)
  return _build(direction_fn, num_tasks=t, preferences=preferences,
                init_inner=lambda: (jax.random.PRNGKey(seed),
                                    jnp.zeros((t, t), state_dtype())))


def random_weighting(*, shared: gram_lib.SharedMask = None,
                     num_tasks: int | None = None, seed: int = 0,
                     track_diagnostics: bool = True
                     ) -> aggregating.Aggregator:
  """RLW (Lin et al., TMLR 2022): weights ``softmax(z)``, ``z ~ N(0, I)``
  drawn afresh each step (PRNG key in the state); heads use the same weights.

  Args:
    shared: which leaves are shared (only matters for diagnostics).
    num_tasks: ``T``, to record the weights in the state.
    seed: PRNG seed.
    track_diagnostics: compute the Gramian for the diagnostics. With False
      the step is one weighted sum (the weights do not need the Gramian):
      3.6× cheaper at T = 40, P = 10⁷ on CPU.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for a non-integer ``seed`` or ``num_tasks``, or a non-bool
      ``track_diagnostics``.
    ValueError: for ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> agg = mtl.random_weighting(seed=0, track_diagnostics=False)
    >>> grads = {'w': jnp.eye(3)}
    >>> u, state = agg.update(grads, agg.init({'w': jnp.zeros(3)}))
    >>> round(float(u['w'].sum()), 6)   # softmax weights sum to one
    1.0
  """
  method = 'random_weighting'
  _checks.check_num_tasks(num_tasks, method=method)
  _checks.check_integer('seed', seed, method=method,
                        hint='the seed of the PRNG key in the state')
  _checks.check_bool('track_diagnostics', track_diagnostics, method=method)

  if track_diagnostics:
    def coefficients(k, scale, key, extra):
      key, sub = jax.random.split(key)
      return random_weights(sub, k.shape[0], k.dtype), key

    direction_fn = gramian_direction(coefficients, shared=shared,
                                     heads_follow_coefficients=True)
  else:
    def direction_fn(grads, key, extra):
      key, sub = jax.random.split(key)
      dtype = gram_lib.accumulation_dtype(
          jnp.result_type(*jax.tree.leaves(grads)))
      c = random_weights(sub, gram_lib.num_tasks(grads), dtype)
      # inputs_ok=None: the sum of every leaf certifies them (one pass).
      return Proposal(c, None, key, None,
                      lambda: gram_lib.combine(c, grads))

  return _build(direction_fn, num_tasks=num_tasks, preferences=None,
                init_inner=lambda: jax.random.PRNGKey(seed),
                track_diagnostics=track_diagnostics)


def ema_weighting(weighting: Callable[[jax.Array], jax.Array],
                  beta: float = 0.9, *, num_tasks: int | None = None,
                  shared: gram_lib.SharedMask = None
                  ) -> aggregating.Aggregator:
  """Smooths any weighting's coefficients over steps (as CR-MOGM does):
  ``c_k = β c_{k-1} + (1-β) ĉ_k``, starting from ``c_1 = ĉ_1``.

  Args:
    weighting: a scale-equivariant weighting ``K -> c``, e.g.
      ``mtl.weightings.mgda`` or ``functools.partial(mtl.weightings.aligned,
      preferences=w)``.
    beta: the EMA factor in [0, 1).
    num_tasks: ``T`` (required: the running coefficients live in the state).
    shared: which leaves are shared.

  Returns:
    An ``Aggregator``. Its ``inner`` state is ``(running_c, step)``.

  Raises:
    TypeError: without ``num_tasks``, for a ``weighting`` that is not
      callable, or for arguments of the wrong type.
    ValueError: for ``beta`` outside [0, 1) or ``num_tasks < 1``.
  """
  _checks.check_callable(
      'weighting', weighting, method='ema_weighting',
      hint='a function K -> c such as mtl.weightings.mgda')
  t = _require_num_tasks('ema_weighting', num_tasks)
  _checks.check_in_range(
      'beta', beta, 0, 1, method='ema_weighting', high_open=True,
      hint='the EMA factor, e.g. 0.9; 0 disables the smoothing, 1 would '
      'never update')

  def coefficients(k, scale, inner, extra):
    running, step = inner
    new = weighting(k).astype(k.dtype)
    c = jnp.where(step == 0, new, beta * running.astype(k.dtype) +
                  (1 - beta) * new)
    return c, (c.astype(running.dtype), step + 1)

  direction_fn = gramian_direction(coefficients, shared=shared)
  return _build(direction_fn, num_tasks=t, preferences=None,
                init_inner=lambda: (jnp.zeros((t,), state_dtype()),
                                    jnp.zeros((), jnp.int32)))


def graddrop(leak: float = 0.0, *, shared: gram_lib.SharedMask = None,
             num_tasks: int | None = None, seed: int = 0,
             track_diagnostics: bool = True) -> aggregating.Aggregator:
  """GradDrop (Chen et al., NeurIPS 2020): per coordinate, keep the task
  gradients of one sign, chosen at random with the sign purity
  ``P = ½(1 + Σ_t g_t / Σ_t |g_t|)``.

  ``M_t = [P > U] [g_t > 0] + [P < U] [g_t < 0]`` with ``U ~ U(0, 1)`` per
  coordinate, and the update ``Σ_t (ℓ + (1-ℓ) M_t) g_t`` (``ℓ`` = leak).
  Not Gramian-based: it costs a few elementwise passes over the stacked
  shared gradients. Reading: the paper can multiply the gradients by the sign
  of the layer inputs first (for batch-separated gradients); here the masks
  act on the parameter gradients directly. ``weights`` in the state are all
  ones (per-coordinate masks have no per-task coefficients).

  Args:
    leak: fraction of every gradient always kept (0: pure GradDrop).
    shared: which leaves are shared (heads get their plain gradients).
    num_tasks: ``T``, to record (ones) in ``weights``.
    seed: PRNG seed of the masks.
    track_diagnostics: also compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for ``leak`` outside [0, 1] or ``num_tasks < 1``.
  """
  _checks.check_num_tasks(num_tasks, method='graddrop')
  _checks.check_in_range(
      'leak', leak, 0, 1, method='graddrop',
      hint='the fraction of every gradient always kept; 0 is pure GradDrop, '
      '1 the plain sum')
  _checks.check_integer('seed', seed, method='graddrop',
                        hint='the seed of the masks\' PRNG key')
  _checks.check_bool('track_diagnostics', track_diagnostics,
                     method='graddrop')

  def direction_fn(grads, key, extra):
    t = gram_lib.num_tasks(grads)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    leaves, treedef = jax.tree.flatten(grads)
    flags = jax.tree.leaves(mask)
    key, sub = jax.random.split(key)

    def combine():
      # One uniform draw for every shared coordinate (one PRNG call compiles
      # far faster than one per leaf), sliced per leaf.
      sizes = [g[0].size for g, m in zip(leaves, flags) if m]
      uniform = jax.random.uniform(sub, (sum(sizes),), jnp.float32)
      offset = 0
      out = []
      for g, is_shared in zip(leaves, flags):
        acc = gram_lib.accumulation_dtype(g.dtype)
        x = g.astype(acc)
        task_ones = jnp.ones((t,), acc)
        if not is_shared:
          out.append(jnp.tensordot(task_ones, x, axes=1,
                                   precision=gram_lib.PRECISION
                                   ).astype(g.dtype))
          continue
        # Per coordinate, the mask keeps the positive or the negative task
        # gradients, so Σ_t (ℓ + (1-ℓ) M_t) g_t only needs their two sums.
        # Sums over the task axis are matrix-vector products: XLA:CPU's
        # reductions over a leading axis are an order of magnitude slower.
        total = jnp.tensordot(task_ones, x, axes=1,
                              precision=gram_lib.PRECISION)
        positive = jnp.tensordot(task_ones, jnp.maximum(x, 0), axes=1,
                                 precision=gram_lib.PRECISION)
        negative = total - positive
        magnitude = positive - negative
        purity = 0.5 * (1 + total / jnp.where(magnitude > 0, magnitude, 1))
        u = uniform[offset:offset + purity.size].reshape(purity.shape)
        offset += purity.size
        kept = jnp.where(purity > u, positive,
                         jnp.where(purity < u, negative, 0))
        out.append((leak * total + (1 - leak) * kept).astype(g.dtype))
      return jax.tree.unflatten(treedef, out)

    ones = jnp.ones((t,), jnp.float32)
    if track_diagnostics:
      gram_hat, _ = gram_lib.normalized_gramian(grads, mask)
      inputs_ok = leaves_finite(grads, mask, shared=False)
    else:
      gram_hat, inputs_ok = None, leaves_finite(grads)
    return Proposal(ones, gram_hat, key, inputs_ok, combine)

  return _build(direction_fn, num_tasks=num_tasks,
                preferences=None, init_inner=lambda: jax.random.PRNGKey(seed),
                track_diagnostics=track_diagnostics)


__all__ = [
    'cagrad',
    'config',
    'dualproj',
    'ema_weighting',
    'fairgrad',
    'graddrop',
    'gradvac',
    'imtl_g',
    'nash_mtl',
    'random_weighting',
    'upgrad',
]
