"""FAMO, fast adaptive multitask optimisation (Liu et al., NeurIPS 2023):
task logits ``ξ`` with ``z = softmax(ξ)``; the update descends
``Σ_t z_t log L_t``, normalised::

    c_t = (z_t / L_t) / Σ_s (z_s / L_s),     d = Σ_t c_t g_t,

and ``ξ`` takes an Adam step (weight decay ``γ``) on the softmax Jacobian
applied to the drop of the log losses ``δ = log L(k-1) - log L(k)``:
``∂ξ = z ∘ (δ - zᵀδ)``.

References:
  Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
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
from mtl_optax.methods._core import _positive
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import state_dtype


def famo_weights(logits: jax.Array, losses: jax.Array) -> jax.Array:
  """FAMO coefficients ``(z_t/L_t) / Σ_s (z_s/L_s)``, ``z = softmax(ξ)``."""
  z = jax.nn.softmax(logits)
  ratio = z / _positive(losses)
  return ratio / jnp.sum(ratio)


def famo_logits_grad(logits: jax.Array, previous_losses: jax.Array,
                     losses: jax.Array) -> jax.Array:
  """∂ξ of FAMO: the softmax Jacobian applied to the drop of the log losses
  ``log L(k-1) - log L(k)``."""
  z = jax.nn.softmax(logits)
  delta = jnp.log(_positive(previous_losses)) - jnp.log(_positive(losses))
  return z * (delta - z @ delta)


def famo(learning_rate: float = 0.025, gamma: float = 1e-3, *,
         num_tasks: int | None = None, shared: gram_lib.SharedMask = None,
         track_diagnostics: bool = True) -> aggregating.Aggregator:
  """FAMO (Liu et al., NeurIPS 2023): fast adaptive multitask optimisation.

  Weights ``z = softmax(ξ)``; the update is ``Σ_t c_t g_t`` with
  ``c_t = (z_t/L_t) / Σ_s (z_s/L_s)`` (the gradient of ``Σ z_t log L_t``,
  normalised). ``ξ`` takes an Adam step (``learning_rate``, weight decay
  ``gamma``: the paper's defaults) on the softmax Jacobian applied to the
  drop of the log losses. Reading: the paper measures that drop on the same
  batch after the step; here it is measured between consecutive calls, so
  the ξ update lags one step and needs no extra forward pass.

  Args:
    learning_rate: step size of ξ.
    gamma: weight decay of ξ.
    num_tasks: ``T`` (required).
    shared: which leaves are shared (only matters for diagnostics).
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``; ``inner`` state is ``(logits, previous_losses, count,
    optimizer_state)``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a non-positive ``learning_rate``, a negative ``gamma``
      (either non-finite) or ``num_tasks < 1``.
  """
  t = _require_num_tasks('famo', num_tasks)
  _checks.check_positive(
      'learning_rate', learning_rate, method='famo',
      hint='the step size of the task logits; the paper uses 0.025')
  _checks.check_non_negative(
      'gamma', gamma, method='famo',
      hint='the weight decay of the task logits; the paper uses 1e-3')
  optimizer = optax.adamw(learning_rate, weight_decay=gamma)

  def coefficients(losses, gram_hat, scale, inner):
    logits, previous, count, opt_state = inner
    grad = famo_logits_grad(logits, previous, losses)
    stepped, stepped_state = _inner_step(optimizer, grad, logits, opt_state)
    first = count == 0
    logits = jnp.where(first, logits, stepped)
    opt_state = jax.tree.map(lambda a, b: jnp.where(first, a, b), opt_state,
                             stepped_state)
    c = famo_weights(logits, losses)
    return c, (logits, losses, count + 1, opt_state)

  def init():
    logits = jnp.zeros((t,), state_dtype())
    return logits, jnp.ones((t,), state_dtype()), jnp.zeros((), jnp.int32), \
        optimizer.init(logits)

  return _loss_aggregator('famo', coefficients, init, num_tasks=t,
                          shared=shared, track_diagnostics=track_diagnostics)
