"""Uncertainty weighting (Kendall et al., CVPR 2018): learned task
log-variances ``s_t = log σ_t²`` in the total loss::

    Σ_t ½ e^{-s_t} L_t + ½ s_t,

so the update's coefficients are ``c_t = ½ e^{-s_t}`` and ``s`` descends
``∂/∂s_t = ½ (1 - e^{-s_t} L_t)`` (its minimum is at ``e^{s_t} = L_t``).

References:
  Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
  Losses for Scene Geometry and Semantics", CVPR 2018.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _inner_step
from mtl_optax.methods._core import _loss_aggregator
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import state_dtype


def uncertainty(log_vars: jax.Array) -> jax.Array:
  """Coefficients ``½ exp(-s_t)`` for learned log-variances ``s``."""
  return 0.5 * jnp.exp(-log_vars)


def uncertainty_log_var_grad(log_vars: jax.Array, losses: jax.Array
                             ) -> jax.Array:
  """``∂/∂s`` of ``Σ ½ e^{-s_t} L_t + ½ s_t``."""
  return 0.5 * (1 - jnp.exp(-log_vars) * losses)


def uncertainty_weighting(
    *, num_tasks: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    shared: gram_lib.SharedMask = None, track_diagnostics: bool = True,
) -> aggregating.Aggregator:
  """Uncertainty weighting (Kendall et al., CVPR 2018).

  Minimises ``Σ_t ½ e^{-s_t} L_t + ½ s_t`` over learned log-variances
  ``s = log σ²`` (initialised at 0): the update is ``Σ_t ½ e^{-s_t} g_t`` and
  ``s`` takes one step of ``optimizer`` on ``½(1 - e^{-s_t} L_t)`` per call.

  Args:
    num_tasks: ``T`` (required).
    optimizer: inner optimizer of ``s``; default ``optax.adam(1e-3)``.
    shared: which leaves are shared (only matters for diagnostics).
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``; ``inner`` state is ``(log_vars, optimizer_state)``.

  Raises:
    TypeError: without ``num_tasks``, for an ``optimizer`` that is not an
      Optax transformation, or for arguments of the wrong type.
    ValueError: for ``num_tasks < 1``.
  """
  _checks.check_transformation(
      'optimizer', optimizer, method='uncertainty_weighting',
      hint='the inner optimizer of the log-variances, e.g. optax.adam(1e-3)')
  optimizer = optimizer or optax.adam(1e-3)
  t = _require_num_tasks('uncertainty_weighting', num_tasks)

  def coefficients(losses, gram_hat, scale, inner):
    log_vars, opt_state = inner
    c = uncertainty(log_vars)
    grad = uncertainty_log_var_grad(log_vars, losses)
    return c, _inner_step(optimizer, grad, log_vars, opt_state)

  def init():
    log_vars = jnp.zeros((t,), state_dtype())
    return log_vars, optimizer.init(log_vars)

  return _loss_aggregator('uncertainty_weighting', coefficients, init,
                          num_tasks=t, shared=shared,
                          track_diagnostics=track_diagnostics)
