"""SDMGrad, stochastic direction-oriented multi-objective gradient descent
(Xiao, Ban, Ji, NeurIPS 2023).

The direction is pulled towards the mean gradient ``g₀ = Jᵀ 1/T``: the
weights ``w`` (on the simplex) minimise ``½ ‖Jᵀ w + λ g₀‖²``, whose gradient
``J (Jᵀ w + λ g₀)`` is estimated without bias with two independent batches,
``J₁ J₂ᵀ (w + λ 1/T)``. Per step (Algorithm 1 of the paper), ``S``
projected-gradient steps from the previous ``w``::

    w  ←  Π_Δ(w − β K̂₁₂ (w + λ 1/T))          (S times)
    d  =  J₃ᵀ (w + λ 1/T) / (1 + λ),

with ``K̂₁₂ = J₁ J₂ᵀ / s²``. ``λ`` (``lamda``) sets how close the direction
stays to the mean gradient (``λ → ∞``: the mean; ``λ = 0``: MGDA).

The extra batches (API): as ``mtl.modo``, ``update(grads, state, params,
second_grads=grads2[, third_grads=grads3])``; ``optax.chain`` passes them
through. ``second_grads`` is required (one more per-task backward pass per
step); without ``third_grads`` the direction is taken on ``grads``.
``second_grads=grads`` gives the authors' single-batch practical variant.

Readings:

* ``s²`` normalises the product as the authors' code normalises the
  Gramian (by the squared mean task-gradient norm): here
  ``s² = mean_t ‖g¹_t‖ · mean_t ‖g²_t‖`` (the same for one batch), so that
  ``β`` does not depend on the gradients' scale; ``s = 1`` when a batch's
  gradients are all zero.
* Defaults: ``β = 10`` and ``S = 20`` inner steps (the authors' code), and
  ``λ = 0.3`` (their choice for the Cityscapes/NYU-v2 experiments). The
  authors' code adds momentum 0.5 to the inner steps; the paper's plain
  projected steps are used here.
* ``w`` is warm-started from the previous step (state), from ``1/T``.
* The products cover the shared leaves; task-specific leaves receive the
  plain sum of the direction batch's gradients.

References:
  Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and
  Provable Stochastic Algorithms", NeurIPS 2023.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods.modo import cross_gramian
from mtl_optax.methods.modo import extra_batch
from mtl_optax.methods.moco import project_to_simplex


class SdmgradState(NamedTuple):
  """SDMGrad's own state: ``w`` the ``[T]`` simplex weights (warm start),
  ``count`` the steps taken."""
  w: jax.Array
  count: jax.Array


def sdmgrad_weights(cross: jax.Array, w: jax.Array, lamda: float = 0.3,
                    step_size: float = 10.0, num_steps: int = 20
                    ) -> tuple[jax.Array, jax.Array]:
  """SDMGrad's inner loop and the direction's coefficients.

  Args:
    cross: ``[T, T]`` normalised ``K̂₁₂ = J₁ J₂ᵀ / s²``.
    w: ``[T]`` the starting weights (on the simplex).
    lamda: ``λ``, the pull towards the mean gradient.
    step_size: ``β``.
    num_steps: ``S``.

  Returns:
    ``(coefficients, w)``: ``(w + λ/T) / (1 + λ)`` (they sum to 1) and the
    new simplex weights.

  Example:
    >>> import jax.numpy as jnp
    >>> c, w = sdmgrad_weights(jnp.eye(2), jnp.array([.5, .5]), lamda=0.)
    >>> [round(float(x), 4) for x in c]
    [0.5, 0.5]
  """
  t = w.shape[0]
  mean = jnp.full((t,), 1 / t, w.dtype)

  def step(w, _):
    return project_to_simplex(w - step_size * cross @ (w + lamda * mean)), None

  w, _ = lax.scan(step, w, None, length=num_steps)
  return (w + lamda * mean) / (1 + lamda), w


def _mean_norm(stacked, mask, dtype):
  t = gram_lib.num_tasks(stacked)
  sq = jnp.zeros((t,), dtype)
  for g, m in zip(jax.tree.leaves(stacked), jax.tree.leaves(mask)):
    if m:
      sq = sq + jnp.sum(jnp.square(g.astype(dtype)),
                        axis=tuple(range(1, g.ndim)))
  return jnp.mean(jnp.sqrt(sq))


def sdmgrad(*, lamda: float = 0.3, step_size: float = 10.0,
            num_steps: int = 20, num_tasks: int | None = None,
            shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
  """SDMGrad (Xiao et al., NeurIPS 2023): the direction closest to the mean
  gradient's, by projected-gradient steps on the product of two independent
  batches' gradients.

  ``S`` steps ``w ← Π_Δ(w − β K̂₁₂ (w + λ/T))``, then
  ``d = J₃ᵀ (w + λ/T) / (1 + λ)`` (``J₁`` without a third batch). Call it
  with the second batch's stacked gradients::

      losses, grads = mtl.value_and_jacobian(loss_fn)(params, batch1)
      _, grads2 = mtl.value_and_jacobian(loss_fn)(params, batch2)
      updates, opt_state = tx.update(grads, opt_state, params,
                                     second_grads=grads2)

  One more per-task backward pass per step. Readings: see the module
  docstring.

  Args:
    lamda: ``λ`` (≥ 0), the pull towards the mean gradient.
    step_size: ``β`` (> 0), the inner step size on the normalised product.
    num_steps: ``S`` (≥ 1), inner steps per update.
    num_tasks: ``T`` (required: ``w`` lives in the state).
    shared: which leaves are shared.

  Returns:
    An ``Aggregator`` whose ``update`` requires ``second_grads=`` and takes
    ``third_grads=``; its ``inner`` state is an ``SdmgradState`` and
    ``weights`` records the direction's coefficients.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a negative ``lamda``, a non-positive ``step_size``
      (either non-finite), ``num_steps < 1`` or ``num_tasks < 1``; at
      ``update`` without ``second_grads`` or with gradients of another
      structure.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.sdmgrad(num_tasks=2, lamda=1.0)
    >>> g = {'w': jnp.array([[1., 0.], [0., 1.]])}
    >>> d, state = tx.update(g, tx.init(None), second_grads=g)
    >>> [round(x, 4) for x in d['w'].tolist()]
    [0.5, 0.5]
  """
  method = 'sdmgrad'
  t = _require_num_tasks(method, num_tasks)
  _checks.check_non_negative(
      'lamda', lamda, method=method,
      hint='the pull towards the mean gradient; the authors use 0.3 '
      '(0 is MGDA, large values the mean gradient)')
  _checks.check_positive(
      'step_size', step_size, method=method,
      hint='the inner step size on the normalised product; the authors use '
      '10')
  _checks.check_int_at_least(
      'num_steps', num_steps, 1, method=method,
      hint='inner projected-gradient steps per update; the authors use 20')

  def direction_fn(grads, inner, extra):
    second = extra_batch(extra, 'second_grads', grads, method, required=True)
    third = extra_batch(extra, 'third_grads', grads, method, required=False)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    cross = cross_gramian(grads, second, mask)
    dtype = cross.dtype
    s2 = _mean_norm(grads, mask, dtype) * _mean_norm(second, mask, dtype)
    cross = cross / jnp.where(s2 > 0, s2, 1)
    c, w = sdmgrad_weights(cross, inner.w.astype(dtype), lamda, step_size,
                           num_steps)
    target = grads if third is None else third
    # A NaN/Inf in a shared leaf of either batch makes J₁J₂ᵀ non-finite:
    # only their task-specific leaves need a pass of their own.
    ok = (jnp.all(jnp.isfinite(cross)) & leaves_finite(grads, mask, shared=False)
          & leaves_finite(second, mask, shared=False))
    if third is not None:     # (else the target is grads, checked)
      ok &= leaves_finite(third)
    return Proposal(
        coefficients=c, gram_hat=None,
        inner=SdmgradState(w, inner.count + 1), inputs_ok=ok,
        combine=lambda: gram_lib.weighted_sum(
            c, target, mask, task_weights=jnp.ones((t,), c.dtype)))

  return _build(
      direction_fn, num_tasks=t, preferences=None,
      init_inner=lambda: SdmgradState(jnp.full((t,), 1 / t, state_dtype()),
                                      jnp.zeros((), jnp.int32)),
      track_diagnostics=False)
