"""DB-MTL, Dual-Balancing Multi-Task Learning (Lin et al., 2023).

Two balancings. Loss scales: each task descends ``log L_t`` instead of
``L_t``, whose gradient is ``ĝ_t = g_t / (L_t + ε)``. Gradient magnitudes:
each task keeps an exponential moving average of its log-loss gradient::

    m_t(k) = β_k m_t(k-1) + (1 - β_k) ĝ_t(k),    β_k = β / k^σ,   m(0) = 0,

and the shared update is every average rescaled to the largest norm::

    d = Σ_t α_t m_t(k),    α_t = max_s ‖m_s(k)‖ / ‖m_t(k)‖

(``α_t = 0`` where ``m_t(k) = 0``).

Readings: the paper states the EMA and the max-norm rescaling; ``β_k = β /
k^σ``, ``m(0) = 0`` (no bias correction), ``ε = 1e-8`` in ``L_t + ε`` and
the defaults ``β = 0.9``, ``σ = 0`` are those of the authors' implementation in LibMTL
(``DB_beta``, ``DB_beta_sigma``). The task-specific leaves (``shared``
False) take the plain log-loss gradients ``Σ_t ĝ_t`` (they are not
rescaled); the norms are over the shared leaves. LibMTL divides by
``‖m_t‖ + ε``; here a zero average gets ``α_t = 0`` and any other the exact
ratio, so tiny gradients are not flattened to zero. The averages ``m`` live in
the state: ``T`` copies of the parameters.

References:
  Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, "Dual-Balancing for
  Multi-Task Learning", arXiv:2308.12029, 2023.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import _losses
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import leaves_finite

EPS = 1e-8


class DbMtlState(NamedTuple):
  """DB-MTL's own state: ``ema`` holds the per-task averages ``m`` of the
  log-loss gradients (the parameters' structure with a leading ``T`` axis;
  ``()`` until ``init`` has seen the parameters), ``count`` the steps taken
  (``k - 1``)."""
  ema: Any
  count: jax.Array


def db_mtl_weights(norms: jax.Array) -> jax.Array:
  """DB-MTL's rescaling ``α_t = max_s ‖m_s‖ / ‖m_t‖`` (0 for a zero norm).

  Args:
    norms: ``[T]`` norms of the averaged log-loss gradients.

  Returns:
    ``[T]`` factors (the largest-norm task gets about 1).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> [round(x, 4) for x in weightings.db_mtl(jnp.array([2., 1.])).tolist()]
    [1.0, 2.0]
  """
  return jnp.where(norms > 0, jnp.max(norms) / jnp.where(norms > 0, norms, 1),
                   0)


def db_mtl_decay(step: jax.Array, beta: float, beta_sigma: float,
                 dtype=jnp.float32) -> jax.Array:
  """The average's decay ``β_k = β / k^σ`` at step ``k >= 1``."""
  return beta / jnp.asarray(step).astype(dtype) ** beta_sigma


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0, *,
           num_tasks: int | None = None,
           shared: gram_lib.SharedMask = None,
           track_diagnostics: bool = True) -> aggregating.Aggregator:
  """DB-MTL (Lin et al., 2023): log losses and max-norm gradient balancing.

  Each task's log-loss gradient ``g_t / (L_t + ε)`` enters an average
  ``m_t ← β_k m_t + (1 - β_k) g_t / (L_t + ε)`` (``β_k = β / k^σ``); the
  shared update is ``Σ_t α_t m_t`` with ``α_t = max_s ‖m_s‖ / ‖m_t‖``, so
  every task contributes the largest average norm. The task-specific leaves
  take ``Σ_t g_t / (L_t + ε)``. See the module docstring for the readings
  (the defaults are those of the authors' LibMTL code).

  Cost: one pass over the ``T`` gradients for the averages and their norms
  (which also computes the diagnostics' Gramian when tracked), one weighted
  sum; the state holds ``T`` copies of the parameters.

  Args:
    beta: the average's decay ``β`` in ``[0, 1)`` (0: no averaging).
    beta_sigma: ``σ >= 0``: the decay shrinks as ``β / k^σ``.
    num_tasks: ``T`` (required).
    shared: which leaves are shared.
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator`` whose update takes ``losses=``; ``inner`` state is a
    ``DbMtlState``; ``weights`` records ``α``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for ``beta`` outside ``[0, 1)``, a negative ``beta_sigma``
      (either non-finite) or ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.db_mtl(beta=0.0, num_tasks=2)
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[4., 0.], [0., 1.]])}
    >>> state = tx.init(params)
    >>> d, state = tx.update(grads, state, params, losses=jnp.array([2., 1.]))
    >>> [round(x, 4) for x in d['w'].tolist()]   # log grads (2, 0), (0, 1)
    [2.0, 2.0]
  """
  name = 'db_mtl'
  t = _require_num_tasks(name, num_tasks)
  _checks.check_in_range(
      'beta', beta, 0.0, 1.0, high_open=True, method=name,
      hint='the decay of the gradient averages; the authors use 0.9, 0 '
      'uses the current gradients only')
  _checks.check_non_negative(
      'beta_sigma', beta_sigma, method=name,
      hint='the decay shrinks as beta / k**beta_sigma; the authors use 0 '
      '(constant)')
  _checks.check_bool('track_diagnostics', track_diagnostics, method=name)

  def direction_fn(grads, inner, extra):
    losses = _losses(extra, name, gram_lib.num_tasks(grads))
    mask = gram_lib.resolve_shared_mask(shared, grads)
    inv = 1 / (losses + EPS)
    decay = db_mtl_decay(inner.count + 1, beta, beta_sigma, losses.dtype)

    def average(m, g):
      acc = gram_lib.accumulation_dtype(g.dtype)
      log_grad = g.astype(acc) * inv.astype(acc).reshape(
          (-1,) + (1,) * (g.ndim - 1))
      return (decay.astype(acc) * m.astype(acc)
              + (1 - decay.astype(acc)) * log_grad)

    # ‖m_t‖ over the shared leaves, read from the old averages and the
    # gradients (on CPU without writing the new averages, which
    # select_inner writes once, in place, when the step is kept), with a
    # running scale: tiny or huge gradients neither underflow nor overflow.
    # The diagnostics' Gramian of the gradients comes from the same read.
    if track_diagnostics:
      norms, (gram_hat, _) = gram_lib.row_norms_and_gramian_of(
          average, lambda m, g: g, (inner.ema, grads), mask)
    else:
      norms = gram_lib.row_norms_of(average, (inner.ema, grads), mask)
      gram_hat = None
    norms = norms.astype(losses.dtype)
    alpha = db_mtl_weights(norms)

    def select_inner(ok):
      # The averages written once, in place of the old ones, when the step
      # is kept (the norms above read them without storing them).
      new_ema = jax.tree.map(
          lambda m, g: jnp.where(ok, average(m, g).astype(m.dtype), m),
          inner.ema, grads)
      return DbMtlState(new_ema, jnp.where(ok, inner.count + 1, inner.count))

    def combine(new_inner):
      # Shared leaves: Σ α_t m_t; task-specific ones: Σ_t g_t / (L_t + ε).
      mixed = jax.tree.map(lambda m, g, is_shared: m if is_shared else g,
                           new_inner.ema, grads, mask)
      out = gram_lib.weighted_sum(alpha, mixed, mask, task_weights=inv)
      return jax.tree.map(lambda d, g: d.astype(g.dtype), out, grads)

    # A NaN/Inf in a shared leaf makes its task's norm non-finite: only the
    # task-specific leaves need a pass of their own.
    inputs_ok = (jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(norms))
                 & leaves_finite(grads, mask, shared=False))
    return Proposal(alpha, gram_hat, None, inputs_ok, combine,
                    select_inner=select_inner)

  built = _build(direction_fn, num_tasks=t, preferences=None,
                 init_inner=lambda: DbMtlState((), jnp.zeros((), jnp.int32)),
                 track_diagnostics=track_diagnostics)

  def init_fn(params):
    state = built.init(params)
    # zeros_like, broadcast: a sharded parameter's averages keep its
    # sharding.
    ema = jax.tree.map(
        lambda p: jnp.broadcast_to(
            jnp.zeros_like(p, dtype=gram_lib.accumulation_dtype(
                jnp.asarray(p).dtype))[None], (t,) + jnp.shape(p)),
        params)
    return state._replace(inner=DbMtlState(ema, state.inner.count))

  return aggregating.Aggregator(init_fn, built.update)
