"""ExcessMTL, robust multi-task learning with excess risks (He et al., ICML
2024).

The task weights follow each task's estimated EXCESS risk (its distance to
its own optimum, not its loss): a task that is far from converged gains
weight, one at its noise floor does not. The excess risk of task ``k`` is
estimated by a second-order expansion around its optimum,
``ℓ_k(θ) − ℓ_k(θ_k*) ≈ ½ g_kᵀ H_k⁻¹ g_k``, with the Hessian replaced by
AdaGrad's diagonal proxy ``H_k ≈ diag(√(Σ_{s≤k} g_k,s²))``. Per step::

    G_k  ←  G_k + g_k ∘ g_k                           (each task k)
    e_k  =  Σ_p g_k,p² / √(G_k,p + ε)                 (excess-risk estimate)
    step 1:   e_k⁰ = e_k, the weights stay 1
    later:    w_k ← w_k · exp(η · e_k / e_k⁰),  w ← T · w / Σ_s w_s
    d    =  Σ_k w_k g_k.

Readings:

* The ``½`` of the expansion and the scale of ``e`` cancel in the
  normalisation by the first step's ``e_k⁰``, which puts tasks of different
  scales on the same footing; ``ε = 1e-7`` sits inside the square root
  (as in the authors' code). A task whose first estimate is 0 (a zero
  gradient at step 1) gets a ratio of 0 (its weight is not pushed up).
* The multiplicative (exponentiated-gradient) update is kept in log space
  (``log w``, normalised with a softmax), the same weights without the
  overflow of ``exp``.
* ``η`` (``robust_step_size``) defaults to ``1e-2``, the authors' and
  LibMTL's default.
* The accumulators cover the shared leaves; the task-specific leaves get
  ``Σ_k w_k g_k`` too (the method re-weights the losses).

Memory: the state holds the accumulators ``G``, one ``[T, ...]`` array per
shared leaf (``T`` times the shared parameters), so ``init`` needs the
parameters: ExcessMTL runs at the parameter level only.

References:
  He, Zhou, Zhao, Ye, "Robust Multi-Task Learning with Excess Risks",
  ICML 2024.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype

EPS = 1e-7


class ExcessMTLState(NamedTuple):
  """ExcessMTL's own state (the aggregator state's ``inner``).

  Attributes:
    sum_squares: ``G``, the accumulated squared per-task gradients of the
      shared leaves (the stacked gradients' structure, ``(T, ...)``; the
      task-specific leaves hold ``(T,)`` zeros, unused).
    initial: ``[T]`` the first step's estimates ``e⁰``.
    log_weights: ``[T]`` ``log w`` (up to a constant).
    count: the number of steps taken.
  """
  sum_squares: Any
  initial: jax.Array
  log_weights: jax.Array
  count: jax.Array


def excess_mtl_weights(log_weights: jax.Array, excess: jax.Array,
                       initial: jax.Array,
                       robust_step_size: float = 1e-2
                       ) -> tuple[jax.Array, jax.Array]:
  """One ExcessMTL weight step from the excess-risk estimates.

  ``log w ← log w + η e / e⁰`` (0 where ``e⁰ = 0``), and the weights
  ``w = T · softmax(log w)``.

  Args:
    log_weights: ``[T]`` current ``log w``.
    excess: ``[T]`` the estimates ``e_k = Σ g² / √(G + ε)``.
    initial: ``[T]`` the first step's estimates ``e⁰``.
    robust_step_size: ``η``.

  Returns:
    ``(weights, new_log_weights)``; the weights sum to ``T``.

  Example:
    >>> import jax.numpy as jnp
    >>> w, _ = excess_mtl_weights(jnp.zeros(2), jnp.array([2., 1.]),
    ...                           jnp.array([1., 1.]), robust_step_size=1.)
    >>> [round(float(x), 4) for x in w]
    [1.4621, 0.5379]
  """
  t = log_weights.shape[0]
  ratio = jnp.where(initial > 0, excess / jnp.where(initial > 0, initial, 1),
                    0)
  new = log_weights + robust_step_size * ratio
  new = new - jnp.max(new)
  return t * jax.nn.softmax(new), new


def excess_mtl(*, robust_step_size: float = 1e-2,
               num_tasks: int | None = None,
               shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
  """ExcessMTL (He et al., ICML 2024): task weights from estimated excess
  risks, with AdaGrad's diagonal curvature proxy.

  Per step, ``G_k ← G_k + g_k²``, ``e_k = Σ g_k² / √(G_k + ε)``; the first
  step records ``e⁰`` and keeps the weights at 1, later steps take
  ``w_k ← w_k exp(η e_k / e_k⁰)``, renormalised to sum to ``T``; the update
  is ``Σ_k w_k g_k``. The state holds ``G`` (``T×`` the shared parameters),
  so ``init`` needs the parameters. Readings: see the module docstring.

  Args:
    robust_step_size: ``η``, the step size of the exponentiated update
      (> 0).
    num_tasks: ``T`` (required: the weights live in the state).
    shared: which leaves are shared (accumulated and estimated); the others
      are weighted by the same ``w``.

  Returns:
    An ``Aggregator``; its ``inner`` state is an ``ExcessMTLState`` and
    ``weights`` records ``w``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type;
      at ``init`` without parameters.
    ValueError: for a non-positive or non-finite ``robust_step_size``, or
      ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.excess_mtl(num_tasks=2)
    >>> params = {'w': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[1., 0.], [0., 3.]])}
    >>> d, state = tx.update(grads, state, params)
    >>> d['w'].tolist()
    [1.0, 3.0]
  """
  method = 'excess_mtl'
  t = _require_num_tasks(method, num_tasks)
  _checks.check_positive(
      'robust_step_size', robust_step_size, method=method,
      hint='the step size of the exponentiated weight update; the authors '
      'use 1e-2')

  def direction_fn(grads, inner, extra):
    del extra
    mask = gram_lib.resolve_shared_mask(shared, grads)
    dtype = inner.log_weights.dtype

    def accumulate(s, g):
      return s + jnp.square(g.astype(s.dtype))

    def term(g, s):
      sq = jnp.square(g.astype(s.dtype))
      return sq / jnp.sqrt(s + sq + EPS)

    # Σ g² / √(s + g² + ε) per task over the shared leaves, read from the
    # old sums and the gradients (on CPU without writing the new sums, which
    # select_inner writes once, in place, when the step is kept).
    excess = gram_lib.row_sums_of(term, (grads, inner.sum_squares),
                                  mask).astype(dtype)
    first = inner.count == 0
    initial = jnp.where(first, excess, inner.initial)
    stepped_w, stepped_log = excess_mtl_weights(
        inner.log_weights, excess, initial, robust_step_size)
    log_weights = jnp.where(first, inner.log_weights, stepped_log)
    weights = jnp.where(first, jnp.ones((t,), dtype), stepped_w)

    def select_inner(ok):
      sums = jax.tree.map(
          lambda s, g, m: jnp.where(ok, accumulate(s, g), s) if m else s,
          inner.sum_squares, grads, mask)
      keep = lambda new, old: jnp.where(ok, new.astype(old.dtype), old)
      return ExcessMTLState(sums, keep(initial, inner.initial),
                            keep(log_weights, inner.log_weights),
                            keep(inner.count + 1, inner.count))

    return Proposal(
        coefficients=weights, gram_hat=None, inner=None,
        # A NaN/Inf in a shared leaf makes its task's excess NaN (∞/∞):
        # only the task-specific leaves need a pass of their own.
        inputs_ok=(leaves_finite(grads, mask, shared=False)
                   & jnp.all(jnp.isfinite(excess))),
        combine=lambda _: gram_lib.weighted_sum(weights, grads, mask,
                                                task_weights=weights),
        select_inner=select_inner)

  built = _build(direction_fn, num_tasks=t, preferences=None,
                 init_inner=tuple, track_diagnostics=False)

  def init_fn(params):
    if params is None:
      raise TypeError(
          'excess_mtl: init needs the parameters (tx.init(params)), not '
          'None: the state accumulates each task\'s squared gradients, with '
          'the parameters\' shapes. ExcessMTL runs at the parameter level '
          'only (not on a representation\'s gradients).')
    state = built.init(params)
    mask = gram_lib.resolve_shared_mask(shared, params)

    def zeros(p, is_shared):
      acc = gram_lib.accumulation_dtype(jnp.asarray(p).dtype)
      if not is_shared:
        return jnp.zeros((t,), acc)
      # zeros_like, broadcast: a sharded parameter's sums keep its sharding.
      return jnp.broadcast_to(jnp.zeros_like(p, dtype=acc)[None],
                              (t,) + jnp.shape(p))

    sums = jax.tree.map(zeros, params, mask)
    dtype = state_dtype()
    return state._replace(
        weights=jnp.ones((t,), dtype),
        inner=ExcessMTLState(sums, jnp.zeros((t,), dtype),
                             jnp.zeros((t,), dtype),
                             jnp.zeros((), jnp.int32)))

  return aggregating.Aggregator(init_fn, built.update)
