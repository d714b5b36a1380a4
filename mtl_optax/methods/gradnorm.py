"""GradNorm (Chen et al., ICML 2018): learned weights ``w`` that balance the
weighted gradient norms. With ``G_t = w_t ‖g_t‖``, its mean ``Ḡ`` and the
relative inverse training rates ``r_t = (L_t / L_t(0)) / mean_s (L_s /
L_s(0))``, ``w`` descends::

    Σ_t | G_t - Ḡ r_t^α |       (the target Ḡ r_t^α held constant),

then is renormalised to ``Σ_t w_t = T``; the update is ``Σ_t w_t g_t``. The
norms are ``√diag K`` of the shared Gramian, so no extra backward pass is
needed (the paper uses the last shared layer; here all shared leaves).

References:
  Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing
  in Deep Multitask Networks", ICML 2018.
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


def gradnorm(alpha: float = 1.5, *, num_tasks: int | None = None,
             optimizer: optax.GradientTransformation | None = None,
             shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
  """GradNorm (Chen et al., ICML 2018).

  Learned weights ``w`` (initialised to 1) balance the weighted gradient
  norms ``G_t = w_t ‖g_t‖`` toward ``Ḡ r_t^α``, with ``r_t`` the relative
  inverse training rate ``(L_t/L_t(0)) / mean``. The norms are ``√diag K``
  of the shared Gramian (no extra backward pass; the paper uses the last
  shared layer, here all shared leaves). Each call: update with the current
  ``w``, then one ``optimizer`` step on ``Σ_t |G_t - Ḡ r_t^α|`` (target held
  constant) and renormalisation to ``Σ w = T``.

  Args:
    alpha: the asymmetry α.
    num_tasks: ``T`` (required).
    optimizer: inner optimizer of ``w``; default ``optax.adam(1e-3)``.
    shared: which leaves are shared.

  Returns:
    An ``Aggregator``; ``inner`` state is ``(w, initial_losses, count,
    optimizer_state)``.

  Raises:
    TypeError: without ``num_tasks``, for an ``optimizer`` that is not an
      Optax transformation, or for arguments of the wrong type.
    ValueError: for a negative or non-finite ``alpha`` or ``num_tasks < 1``.
  """
  _checks.check_non_negative(
      'alpha', alpha, method='gradnorm',
      hint='the asymmetry α; the paper uses 0.12-3 (1.5 by default), 0 '
      'pulls all weighted norms to their mean')
  _checks.check_transformation(
      'optimizer', optimizer, method='gradnorm',
      hint='the inner optimizer of the weights, e.g. optax.adam(1e-3)')
  optimizer = optimizer or optax.adam(1e-3)
  t = _require_num_tasks('gradnorm', num_tasks)

  def coefficients(losses, gram_hat, scale, inner):
    w, initial, count, opt_state = inner
    initial = jnp.where(count == 0, losses, initial)
    norms = scale * jnp.sqrt(jnp.maximum(jnp.diag(gram_hat), 0))

    def balance_loss(w):
      weighted = w * norms
      rate = losses / jnp.maximum(initial, 1e-12)
      rate = rate / jnp.maximum(jnp.mean(rate), 1e-12)
      target = jax.lax.stop_gradient(jnp.mean(weighted) * rate ** alpha)
      return jnp.sum(jnp.abs(weighted - target))

    grad = jax.grad(balance_loss)(w)
    new_w, opt_state = _inner_step(optimizer, grad, w, opt_state)
    new_w = jnp.maximum(new_w, 1e-6)
    new_w = t * new_w / jnp.sum(new_w)
    return w, (new_w, initial, count + 1, opt_state)

  def init():
    w = jnp.ones((t,), state_dtype())
    return w, jnp.ones((t,), state_dtype()), jnp.zeros((), jnp.int32), \
        optimizer.init(w)

  return _loss_aggregator('gradnorm', coefficients, init, num_tasks=t,
                          shared=shared, track_diagnostics=True,
                          needs_gramian=True)
