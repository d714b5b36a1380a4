"""IMTL (Liu et al., ICLR 2021), the hybrid of the paper's Algorithm 1:
IMTL-L's learned loss scales with IMTL-G (``mtl_optax.methods.imtl``).

Each task's loss becomes ``e^{s_t} L_t - s_t`` (IMTL-L). The scaled losses'
gradients ``e^{s_t} g_t`` go through IMTL-G for the shared parameters, so
the shared update is::

    Σ_t α_t e^{s_t} g_t,    α = imtl_g(D K D),  D = diag e^s,

(``α`` sums to 1; IMTL-G's unit gradients do not depend on ``s``, only the
step's length does); the task-specific parameters descend their own scaled
loss (weights ``e^s``), and ``s`` descends ``Σ_t e^{s_t} L_t - s_t``:
``∂/∂s_t = e^{s_t} L_t - 1`` (minimum at ``e^{s_t} L_t = 1``: the scaled
losses are balanced at 1).

References:
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
  Multi-task Learning", ICLR 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import _inner_step
from mtl_optax.methods._core import _losses
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods.imtl import imtl_g_weights


class ImtlState(NamedTuple):
  """IMTL's own state: the ``[T]`` log loss scales ``s`` (initialised at 0)
  and the state of their inner optimizer."""
  log_scales: jax.Array
  optimizer_state: optax.OptState


def imtl_weights(gram: jax.Array, log_scales: jax.Array) -> jax.Array:
  """IMTL (hybrid) coefficients on the raw gradients: ``c_t = α_t e^{s_t}``
  with ``α`` the IMTL-G weights of the scaled losses' Gramian ``D K D``,
  ``D = diag e^s``.

  Args:
    gram: ``[T, T]`` Gramian of the raw task gradients.
    log_scales: ``[T]`` log loss scales ``s``.

  Returns:
    ``[T]`` coefficients (``Σ_t c_t e^{-s_t} = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[2., 0.], [0., 1.]])
    >>> c = weightings.imtl(g @ g.T, jnp.log(jnp.array([1., 2.])))
    >>> [round(x, 4) for x in c.tolist()]
    [0.5, 1.0]
  """
  scales = jnp.exp(log_scales).astype(gram.dtype)
  scaled = scales[:, None] * gram * scales[None, :]
  return imtl_g_weights(scaled) * scales


def imtl_log_scales_grad(log_scales: jax.Array, losses: jax.Array
                         ) -> jax.Array:
  """``∂/∂s`` of IMTL-L's ``Σ_t e^{s_t} L_t - s_t``: ``e^{s_t} L_t - 1``."""
  return jnp.exp(log_scales) * losses - 1


def imtl(*, num_tasks: int | None = None,
         optimizer: optax.GradientTransformation | None = None,
         shared: gram_lib.SharedMask = None,
         track_diagnostics: bool = True) -> aggregating.Aggregator:
  """IMTL (Liu et al., ICLR 2021), the hybrid: IMTL-L's learned loss scales
  with IMTL-G on the scaled losses' gradients.

  Each call: the shared leaves get ``Σ_t α_t e^{s_t} g_t`` (``α`` the IMTL-G
  weights of the gradients ``e^{s_t} g_t``), the task-specific leaves
  ``Σ_t e^{s_t} g_t`` (their own scaled loss), then ``s`` (initialised at 0)
  takes one ``optimizer`` step on ``e^{s_t} L_t - 1``, the gradient of
  ``Σ_t e^{s_t} L_t - s_t``. Reading: the paper updates ``s`` with the
  network's optimizer; here it has its own (as ``uncertainty_weighting``'s
  log-variances), default ``optax.adam(1e-3)``.

  Cost: one Gramian, one ``eigh`` of T×T, one weighted sum.

  Args:
    num_tasks: ``T`` (required).
    optimizer: inner optimizer of ``s``; default ``optax.adam(1e-3)``.
    shared: which leaves are shared (IMTL-G applies to them).
    track_diagnostics: compute the diagnostics from the Gramian.

  Returns:
    An ``Aggregator`` whose update takes ``losses=``; ``inner`` state is an
    ``ImtlState``.

  Raises:
    TypeError: without ``num_tasks``, for an ``optimizer`` that is not an
      Optax transformation, or for arguments of the wrong type.
    ValueError: for ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, optax, mtl_optax as mtl
    >>> tx = mtl.imtl(num_tasks=2, optimizer=optax.sgd(0.5))
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[2., 0.], [0., 1.]])}
    >>> state = tx.init(params)
    >>> d, state = tx.update(grads, state, params, losses=jnp.array([3., 1.]))
    >>> [round(x, 4) for x in d['w'].tolist()]   # s = 0: IMTL-G
    [0.6667, 0.6667]
    >>> state.inner.log_scales.tolist()          # s - 0.5 (L - 1)
    [-1.0, 0.0]
  """
  name = 'imtl'
  _checks.check_transformation(
      'optimizer', optimizer, method=name,
      hint='the inner optimizer of the log loss scales, e.g. '
      'optax.adam(1e-3)')
  optimizer = optimizer or optax.adam(1e-3)
  t = _require_num_tasks(name, num_tasks)
  _checks.check_bool('track_diagnostics', track_diagnostics, method=name)

  def direction_fn(grads, inner, extra):
    losses = _losses(extra, name, gram_lib.num_tasks(grads))
    mask = gram_lib.resolve_shared_mask(shared, grads)
    gram_hat, _ = gram_lib.normalized_gramian(grads, mask)
    log_scales = inner.log_scales
    c = imtl_weights(gram_hat, log_scales).astype(losses.dtype)
    heads = jnp.exp(log_scales).astype(losses.dtype)
    grad = imtl_log_scales_grad(log_scales, losses)
    log_scales, opt_state = _inner_step(optimizer, grad, log_scales,
                                        inner.optimizer_state)
    inputs_ok = jnp.all(jnp.isfinite(losses)) & leaves_finite(
        grads, mask, shared=False)
    return Proposal(
        c, gram_hat, ImtlState(log_scales, opt_state), inputs_ok,
        lambda: gram_lib.weighted_sum(c, grads, mask, task_weights=heads))

  def init():
    log_scales = jnp.zeros((t,), state_dtype())
    return ImtlState(log_scales, optimizer.init(log_scales))

  return _build(direction_fn, num_tasks=t, preferences=None,
                init_inner=init, track_diagnostics=track_diagnostics)
