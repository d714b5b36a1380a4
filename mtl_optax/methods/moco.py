"""MoCo, multi-objective gradient correction (Fernando et al., ICLR 2023).

Stochastic MGDA is biased: the min-norm weights of one batch's gradients are
not those of the expected gradients. MoCo tracks each task's gradient with a
momentum sequence and takes a single projected-gradient step of the MGDA
problem per iteration instead of solving it (Algorithm 1 of the paper)::

    y_i  ←  y_i − β_k (y_i − g_i)                        (each task i)
    λ    ←  Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ)
    d    =  Yᵀ λ,

with ``Y = [y_1; …; y_T]``, ``Π_Δ`` the Euclidean projection onto the
simplex, step sizes ``β_k = β / k^{β_σ}`` and ``γ_k = γ / k^{γ_σ}``
(``k = 1, 2, …``; the paper's convergence analysis uses decaying steps),
``y_i`` starting at 0 and ``λ`` at ``1/T``. ``λ`` is updated with the NEW
``Y``, and the update uses the new ``λ``.

Readings:

* The defaults (``β = 0.5``, ``β_σ = 0.5``, ``γ = 0.1``, ``γ_σ = 0.5``,
  ``ρ = 0``) are those the authors' code uses (as listed by LibMTL).
* ``Π_Δ`` is the paper's Euclidean projection onto the simplex. LibMTL's port
  uses a softmax in its place and first rescales every task gradient to norm
  ``L_i`` (the task loss); neither is in the paper's Algorithm 1, and neither
  is done here (normalise the losses or gradients upstream for that).
* The paper's optional projection of ``y_i`` onto a bounded set (for the
  analysis) is omitted.
* The tracking and the Gramian ``Y Yᵀ`` cover the shared leaves; the
  task-specific leaves (``shared``) receive the plain sum of the current
  gradients, as in the other methods.

Memory: the state holds the tracked ``Y``, one copy of the stacked ``[T, P]``
gradients (``T`` times the parameters), in the parameters' dtypes. Because
its shapes are the parameters', ``init`` needs the parameters (not None): MoCo
runs at the parameter level only, not on a representation's gradients.

References:
  Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias
  in Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.
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


class MoCoState(NamedTuple):
  """MoCo's own state (the aggregator state's ``inner``).

  Attributes:
    tracked: ``Y``, the momentum-tracked per-task gradients: a pytree with
      the stacked gradients' structure and shapes ``(T, ...)``.
    lam: ``[T]`` the simplex weights ``λ``.
    count: the number of steps taken (``k - 1`` at step ``k``).
  """
  tracked: Any
  lam: jax.Array
  count: jax.Array


def project_to_simplex(v: jax.Array) -> jax.Array:
  """The Euclidean projection of ``v`` onto the probability simplex.

  ``argmin_{λ ≥ 0, Σλ = 1} ‖λ − v‖``, by the sort-and-threshold rule:
  ``λ = max(v − τ, 0)`` with ``τ`` the threshold that makes it sum to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> project_to_simplex(jnp.array([2., 0.])).tolist()
    [1.0, 0.0]
  """
  v = jnp.asarray(v)
  t = v.shape[-1]
  u = jnp.sort(v)[::-1]
  cumulative = jnp.cumsum(u) - 1
  ranks = jnp.arange(1, t + 1, dtype=v.dtype)
  positive = u - cumulative / ranks > 0
  # The last rank where it is positive (rank 1 always is).
  rho = jnp.max(jnp.where(positive, jnp.arange(t), 0))
  tau = cumulative[rho] / (rho + 1).astype(v.dtype)
  return jnp.maximum(v - tau, 0)


def moco_weights(gram: jax.Array, lam: jax.Array, gamma: float = 0.1,
                 rho: float = 0.0) -> jax.Array:
  """One MoCo weight step ``Π_Δ(λ − γ (K + ρ I) λ)``.

  Args:
    gram: ``[T, T]`` Gramian ``Y Yᵀ`` of the tracked gradients.
    lam: ``[T]`` current weights (on the simplex).
    gamma: the step size (``γ_k``, already decayed).
    rho: the ``ℓ2`` regularisation of ``λ``.

  Returns:
    The new ``[T]`` weights, on the simplex.

  Example:
    >>> import jax.numpy as jnp
    >>> lam = moco_weights(jnp.array([[4., 0.], [0., 1.]]),
    ...                    jnp.array([.5, .5]), gamma=0.1)
    >>> [round(float(x), 4) for x in lam]
    [0.425, 0.575]
  """
  t = gram.shape[0]
  step = (gram + rho * jnp.eye(t, dtype=gram.dtype)) @ lam
  return project_to_simplex(lam - gamma * step)


def moco(*, beta: float = 0.5, beta_decay: float = 0.5, gamma: float = 0.1,
         gamma_decay: float = 0.5, rho: float = 0.0,
         num_tasks: int | None = None,
         shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
  """MoCo (Fernando et al., ICLR 2023): MGDA with momentum-tracked task
  gradients and one projected-gradient step on the weights per iteration.

  At step ``k`` (from 1), with ``β_k = β / k^{β_σ}``, ``γ_k = γ / k^{γ_σ}``::

      y_i ← y_i − β_k (y_i − g_i),   λ ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ),
      d = Yᵀ λ.

  ``Y`` starts at 0 and ``λ`` at ``1/T``. The state holds ``Y``, a copy of
  the stacked gradients (``T×`` the parameters' memory); ``init`` needs the
  parameters, so MoCo runs at the parameter level only. Reading and
  differences to LibMTL's port: see the module docstring.

  Args:
    beta: ``β``, the tracking rate (in (0, 1]).
    beta_decay: ``β_σ``, the decay exponent of the tracking rate (≥ 0).
    gamma: ``γ``, the step size of ``λ`` (> 0).
    gamma_decay: ``γ_σ``, the decay exponent of ``γ`` (≥ 0).
    rho: ``ρ``, the ``ℓ2`` regularisation of ``λ`` (≥ 0).
    num_tasks: ``T`` (required: ``λ`` lives in the state).
    shared: which leaves are shared (tracked and weighted by ``λ``); the
      others receive the plain sum of the current gradients.

  Returns:
    An ``Aggregator``; its ``inner`` state is a ``MoCoState``
    ``(tracked, lam, count)`` and ``weights`` records ``λ``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type;
      at ``init`` without parameters.
    ValueError: for ``beta`` outside (0, 1], a non-positive ``gamma``,
      negative ``beta_decay``, ``gamma_decay`` or ``rho`` (any non-finite),
      or ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.moco(num_tasks=2)
    >>> params = {'w': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[1., 0.], [0., 1.]])}
    >>> d, state = tx.update(grads, state, params)
    >>> d['w'].tolist()
    [0.25, 0.25]
  """
  method = 'moco'
  t = _require_num_tasks(method, num_tasks)
  _checks.check_in_range(
      'beta', beta, 0, 1, method=method, low_open=True,
      hint='the tracking rate of the task gradients; the authors use 0.5')
  _checks.check_non_negative(
      'beta_decay', beta_decay, method=method,
      hint='beta_k = beta / k**beta_decay; the authors use 0.5, 0 keeps it '
      'constant')
  _checks.check_positive(
      'gamma', gamma, method=method,
      hint='the step size of the task weights; the authors use 0.1')
  _checks.check_non_negative(
      'gamma_decay', gamma_decay, method=method,
      hint='gamma_k = gamma / k**gamma_decay; the authors use 0.5, 0 keeps '
      'it constant')
  _checks.check_non_negative(
      'rho', rho, method=method,
      hint='the l2 regularisation of the task weights; the authors use 0')

  def direction_fn(grads, inner, extra):
    del extra
    mask = gram_lib.resolve_shared_mask(shared, grads)
    k = (inner.count + 1).astype(inner.lam.dtype)
    beta_k = beta / k ** beta_decay
    gamma_k = gamma / k ** gamma_decay

    def track(y, g):
      acc = gram_lib.accumulation_dtype(g.dtype)
      new = y.astype(acc) - beta_k.astype(acc) * (y.astype(acc) - g.astype(acc))
      return new.astype(y.dtype)

    # The Gramian of Y_k = Y - β_k (Y - G), read from Y and G (on CPU
    # without writing Y_k); Y_k itself is written once, in place of Y, when
    # the step is kept (select_inner).
    gram = gram_lib.gramian_of(track, (inner.tracked, grads), mask)
    lam = moco_weights(gram, inner.lam.astype(gram.dtype),
                       gamma_k.astype(gram.dtype), rho)

    def select_inner(ok):
      tracked = jax.tree.map(
          lambda y, g, m: jnp.where(ok, track(y, g), y) if m else y,
          inner.tracked, grads, mask)
      return MoCoState(tracked,
                       jnp.where(ok, lam.astype(inner.lam.dtype), inner.lam),
                       jnp.where(ok, inner.count + 1, inner.count))

    def combine(new_inner):
      mixed = jax.tree.map(lambda y, g, m: y if m else g, new_inner.tracked,
                           grads, mask)
      # In the gradients' dtypes (the tracked copy has the parameters').
      return jax.tree.map(
          lambda d, g: d.astype(g.dtype),
          gram_lib.weighted_sum(lam, mixed, mask,
                                task_weights=jnp.ones((t,), lam.dtype)),
          grads)

    return Proposal(
        coefficients=lam, gram_hat=None, inner=None,
        # A NaN/Inf in a shared leaf makes the Gramian of Y_k non-finite:
        # only the task-specific leaves need a pass of their own.
        inputs_ok=(leaves_finite(grads, mask, shared=False)
                   & jnp.all(jnp.isfinite(gram))), combine=combine,
        select_inner=select_inner)

  built = _build(direction_fn, num_tasks=t, preferences=None,
                 init_inner=tuple, track_diagnostics=False)

  def init_fn(params):
    if params is None:
      raise TypeError(
          'moco: init needs the parameters (tx.init(params)), not None: the '
          'state tracks one gradient per task, with the parameters\' shapes. '
          'MoCo runs at the parameter level only (not on a representation\'s '
          'gradients); use another method there, e.g. mgda.')
    state = built.init(params)
    # zeros_like, broadcast: a sharded parameter's copies keep its sharding.
    tracked = jax.tree.map(
        lambda p: jnp.broadcast_to(jnp.zeros_like(p)[None],
                                   (t,) + jnp.shape(p)), params)
    lam = jnp.full((t,), 1 / t, state_dtype())
    return state._replace(
        weights=lam,
        inner=MoCoState(tracked, lam, jnp.zeros((), jnp.int32)))

  return aggregating.Aggregator(init_fn, built.update)
