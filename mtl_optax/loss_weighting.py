"""Loss-based weighting methods as Optax aggregators.

These weight the task losses, so the update is ``Σ_t c_t g_t`` on every leaf
(shared and task-specific alike: scaling a loss scales its head's gradient
too). They need the task losses each step::

    updates, state = tx.update(grads, state, params, losses=losses)

Learnable parts (log-variances, GradNorm weights, FAMO logits) live in the
aggregator's state with their own inner Optax optimizer, so the model is
untouched. Each keeps one value per task: ``num_tasks`` is required.
The Gramian is still computed for the diagnostics unless
``track_diagnostics=False`` (GradNorm always needs the gradient norms).
Non-finite losses skip the step like non-finite gradients do, and a skipped
step leaves the learned weights, loss history and inner optimizer state as
they were.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype
from mtl_optax.baselines import _require_num_tasks
from mtl_optax.weightings import loss_based


def _losses(extra, name, t):
  losses = extra.get('losses')
  if losses is None:
    raise ValueError(
        f'{name} weights the task losses: pass them to the update, e.g. '
        'tx.update(grads, state, params, losses=losses).')
  losses = jnp.asarray(losses)
  losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
  if losses.shape != (t,):
    raise ValueError(f'`losses` has shape {losses.shape}; expected ({t},).')
  return losses


def _loss_aggregator(name, coefficients_fn, init_inner, *, num_tasks, shared,
                     track_diagnostics, needs_gramian=False, stateful=True):
  """``coefficients_fn(losses, gram_hat, scale, inner) -> (c, inner)``."""
  t = _checks.check_num_tasks(num_tasks, method=name, required=stateful)
  _checks.check_bool('track_diagnostics', track_diagnostics, method=name)
  with_gramian = track_diagnostics or needs_gramian

  def direction_fn(grads, inner, extra):
    losses = _losses(extra, name, gram_lib.num_tasks(grads))
    mask = gram_lib.resolve_shared_mask(shared, grads)
    gram_hat, scale = (gram_lib.normalized_gramian(grads, mask)
                       if with_gramian else (None, None))
    c, inner = coefficients_fn(losses, gram_hat, scale, inner)
    # Non-finite losses skip the step, which leaves the state as it was: a
    # NaN loss must not enter the loss history or the learned weights.
    inputs_ok = jnp.all(jnp.isfinite(losses)) & (
        leaves_finite(grads, mask, shared=False) if with_gramian
        else leaves_finite(grads))
    return Proposal(c, gram_hat, inner, inputs_ok,
                    lambda: gram_lib.weighted_sum(c, grads, mask, c))

  return _build(direction_fn, num_tasks=t, preferences=None,
                init_inner=init_inner, track_diagnostics=track_diagnostics)


def _inner_step(optimizer, grad, value, opt_state):
  updates, opt_state = optimizer.update(grad, opt_state, value)
  return optax.apply_updates(value, updates), opt_state


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
    c = loss_based.uncertainty(log_vars)
    grad = loss_based.uncertainty_log_var_grad(log_vars, losses)
    return c, _inner_step(optimizer, grad, log_vars, opt_state)

  def init():
    log_vars = jnp.zeros((t,), state_dtype())
    return log_vars, optimizer.init(log_vars)

  return _loss_aggregator('uncertainty_weighting', coefficients, init,
                          num_tasks=t, shared=shared,
                          track_diagnostics=track_diagnostics)


def dwa(temperature: float = 2.0, *, num_tasks: int | None = None,
        shared: gram_lib.SharedMask = None, track_diagnostics: bool = True
        ) -> aggregating.Aggregator:
  """Dynamic Weight Average (Liu et al., CVPR 2019).

  ``w_t = T softmax(r/τ)_t`` with ``r_t = L_t(k-1) / L_t(k-2)``; ``w = 1``
  until two steps have been seen. Reading: the paper uses epoch-average
  losses; this uses the losses passed at the previous two calls (average
  them yourself and call less often for the epoch version).

  Args:
    temperature: τ.
    num_tasks: ``T`` (required).
    shared: which leaves are shared (only matters for diagnostics).
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``; ``inner`` state is ``(history [2, T], count)``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a non-positive or non-finite ``temperature`` or
      ``num_tasks < 1``.
  """
  t = _require_num_tasks('dwa', num_tasks)
  _checks.check_positive(
      'temperature', temperature, method='dwa',
      hint='the softmax temperature τ; the paper uses 2, larger is more '
      'uniform')

  def coefficients(losses, gram_hat, scale, inner):
    history, count = inner
    w = jnp.where(count >= 2,
                  loss_based.dwa(history[0], history[1], temperature),
                  jnp.ones((t,), state_dtype()))
    history = jnp.stack([losses, history[0]])
    return w, (history, jnp.minimum(count + 1, 2))

  return _loss_aggregator(
      'dwa', coefficients,
      lambda: (jnp.ones((2, t), state_dtype()), jnp.zeros((), jnp.int32)),
      num_tasks=t, shared=shared, track_diagnostics=track_diagnostics)


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
    grad = loss_based.famo_logits_grad(logits, previous, losses)
    stepped, stepped_state = _inner_step(optimizer, grad, logits, opt_state)
    first = count == 0
    logits = jnp.where(first, logits, stepped)
    opt_state = jax.tree.map(lambda a, b: jnp.where(first, a, b), opt_state,
                             stepped_state)
    c = loss_based.famo(logits, losses)
    return c, (logits, losses, count + 1, opt_state)

  def init():
    logits = jnp.zeros((t,), state_dtype())
    return logits, jnp.ones((t,), state_dtype()), jnp.zeros((), jnp.int32), \
        optimizer.init(logits)

  return _loss_aggregator('famo', coefficients, init, num_tasks=t,
                          shared=shared, track_diagnostics=track_diagnostics)


def geometric_mean(*, num_tasks: int | None = None,
                   shared: gram_lib.SharedMask = None,
                   track_diagnostics: bool = True) -> aggregating.Aggregator:
  """Geometric loss strategy (GLS, Chennupati et al., CVPR-W 2019): descend
  ``(Π_t L_t)^{1/T}``, i.e. coefficients ``GM / (T L_t)``.

  Args:
    num_tasks: ``T``, to record the weights in the state (optional).
    shared: which leaves are shared (only matters for diagnostics).
    track_diagnostics: compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError, ValueError: if ``num_tasks`` is not None or an integer >= 1.
  """
  return _loss_aggregator(
      'geometric_mean',
      lambda losses, k, s, inner: (loss_based.geometric_mean(losses), inner),
      tuple, num_tasks=num_tasks, shared=shared,
      track_diagnostics=track_diagnostics, stateful=False)


__all__ = ['dwa', 'famo', 'geometric_mean', 'gradnorm',
           'uncertainty_weighting']
