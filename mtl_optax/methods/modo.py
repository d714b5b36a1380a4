"""MoDo, multi-objective gradient descent with double sampling (Chen,
Fernando, Ying, Chen, NeurIPS 2023).

MGDA's weights computed on one batch are biased. MoDo samples independent
batches and takes one projected-gradient step of the weights per iteration
on the product of two of them, ``J₁ J₂ᵀ`` (an unbiased estimate of the
Gramian)::

    λ  ←  Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ))
    d  =  J₃ᵀ λ,

with ``J_b`` the ``[T, P]`` stacked per-task gradients of batch ``b``,
``Π_Δ`` the Euclidean projection onto the simplex and ``λ`` starting at
``1/T``.

The extra batches (API). The update takes them as keyword arguments, which
``optax.chain`` passes through (``GradientTransformationExtraArgs``)::

    tx.update(grads, state, params, second_grads=grads2)               # J₁, J₂
    tx.update(grads, state, params, second_grads=g2, third_grads=g3)   # + J₃

``second_grads`` (required) are the stacked per-task gradients of an
independent batch: a second ``mtl.value_and_jacobian`` call, one more
per-task backward pass per step (twice the Jacobian cost; three times with
``third_grads``). ``third_grads`` (optional) gives the direction's batch;
without it the direction is ``J₁ᵀ λ`` (reading: the paper's analysis uses a
third batch, which keeps the direction independent of ``λ``'s update; with
two the bias is of second order). ``second_grads=grads`` runs MoDo on a
single batch: it is then MoCo without tracking (a biased estimate), allowed
but only when asked for explicitly.

Readings: ``γ`` and ``ρ`` default to 0.1 (the authors' port in LibMTL);
the step sizes are constant, as in the paper's analysis. ``J₁ J₂ᵀ`` is not
normalised, so ``γ`` depends on the gradients' scale. The products cover the
shared leaves; task-specific leaves receive the plain sum of the direction
batch's gradients.

References:
  Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective
  Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS
  2023.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import leaves_finite
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods.moco import project_to_simplex

PyTree = Any


class ModoState(NamedTuple):
  """MoDo's own state: ``lam`` the ``[T]`` simplex weights, ``count`` the
  steps taken."""
  lam: jax.Array
  count: jax.Array


def extra_batch(extra: dict[str, Any], key: str, grads: PyTree, method: str,
                *, required: bool) -> PyTree | None:
  """The stacked gradients of another batch passed as ``update(...,
  key=...)``, checked against ``grads`` (same structure and shapes).

  Raises:
    ValueError: when required and missing, or when the structure or shapes
      differ, naming the fix.
  """
  other = extra.get(key)
  if other is None:
    if not required:
      return None
    raise ValueError(
        f'{method}: the update needs {key}=, the stacked per-task gradients '
        'of an independent batch (a second mtl.value_and_jacobian call on '
        f'another batch): tx.update(grads, state, params, {key}=grads2), '
        f'which optax.chain passes through. Pass {key}=grads to use the '
        'same batch (a biased estimate).')
  g_leaves, g_def = jax.tree.flatten(grads)
  o_leaves, o_def = jax.tree.flatten(other)
  if g_def != o_def or any(jnp.shape(a) != jnp.shape(b)
                           for a, b in zip(g_leaves, o_leaves)):
    raise ValueError(
        f'{method}: {key} must have the structure and shapes of the stacked '
        f'gradients {gram_lib.describe_shapes(grads)}; got '
        f'{gram_lib.describe_shapes(other)}.')
  return other


def cross_gramian(first: PyTree, second: PyTree,
                  mask: PyTree | None = None) -> jax.Array:
  """``K₁₂[i, j] = <g¹_i, g²_j>`` over the shared leaves (``J₁ J₂ᵀ``).

  Accumulates in float32 or wider (float64 for float64 inputs).

  Example:
    >>> import jax.numpy as jnp
    >>> a = {'w': jnp.array([[1., 0.], [0., 1.]])}
    >>> b = {'w': jnp.array([[2., 1.], [0., 3.]])}
    >>> cross_gramian(a, b).tolist()
    [[2.0, 0.0], [1.0, 3.0]]
  """
  t = gram_lib.num_tasks(first)
  flags = (jax.tree.leaves(mask) if mask is not None
           else [True] * len(jax.tree.leaves(first)))
  out = None
  for a, b, m in zip(jax.tree.leaves(first), jax.tree.leaves(second), flags):
    if not m:
      continue
    acc = jnp.promote_types(gram_lib.accumulation_dtype(a.dtype),
                            gram_lib.accumulation_dtype(b.dtype))
    # A contraction over the parameter axes (no reshape: a sharded leaf
    # keeps its sharding; the [T, T] result replicated).
    if a.size == 0:
      continue
    if not gram_lib._distributed(a):   # pylint: disable=protected-access
      # Column chunks on CPU (the fast form there), one product elsewhere.
      k = gram_lib.leaf_cross_gramian(a, b, acc)
      out = k if out is None else out + k.astype(out.dtype)
      continue
    axes = tuple(range(1, a.ndim))
    sharding = gram_lib.explicit_sharding(a)
    out_sharding = (None if sharding is None else NamedSharding(
        sharding.mesh, PartitionSpec()))
    k = lax.dot_general(a.astype(acc), b.astype(acc),
                        ((axes, axes), ((), ())),
                        precision=lax.Precision.HIGHEST,
                        preferred_element_type=acc, out_sharding=out_sharding)
    out = k if out is None else out + k.astype(out.dtype)
  if out is None:
    return jnp.zeros((t, t), state_dtype())
  return out


def modo_weights(cross: jax.Array, lam: jax.Array, gamma: float = 0.1,
                 rho: float = 0.1) -> jax.Array:
  """One MoDo weight step ``Π_Δ(λ − γ (K₁₂ λ + ρ λ))``.

  Args:
    cross: ``[T, T]`` ``J₁ J₂ᵀ`` (``cross_gramian``).
    lam: ``[T]`` current weights.
    gamma: step size.
    rho: ``ℓ2`` regularisation.

  Returns:
    The new ``[T]`` weights, on the simplex.

  Example:
    >>> import jax.numpy as jnp
    >>> lam = modo_weights(jnp.array([[2., 0.], [0., 0.]]),
    ...                    jnp.array([.5, .5]), gamma=0.5, rho=0.)
    >>> [round(float(x), 4) for x in lam]
    [0.25, 0.75]
  """
  return project_to_simplex(lam - gamma * (cross @ lam + rho * lam))


def modo(*, gamma: float = 0.1, rho: float = 0.1,
         num_tasks: int | None = None,
         shared: gram_lib.SharedMask = None) -> aggregating.Aggregator:
  """MoDo (Chen et al., NeurIPS 2023): MGDA weights by projected-gradient
  steps on the product of two independent batches' gradients.

  ``λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ))``, ``d = J₃ᵀ λ`` (``J₁ᵀ λ`` without a
  third batch). Call it with the second batch's stacked gradients::

      losses, grads = mtl.value_and_jacobian(loss_fn)(params, batch1)
      _, grads2 = mtl.value_and_jacobian(loss_fn)(params, batch2)
      updates, opt_state = tx.update(grads, opt_state, params,
                                     second_grads=grads2)

  (``tx = optax.chain(mtl.modo(num_tasks=T), optax.sgd(lr))``: the chain
  passes ``second_grads`` through.) The cost is one more per-task backward
  pass per step. See the module docstring for the readings.

  Args:
    gamma: ``γ``, the step size of ``λ`` (> 0).
    rho: ``ρ``, the ``ℓ2`` regularisation of ``λ`` (≥ 0).
    num_tasks: ``T`` (required: ``λ`` lives in the state).
    shared: which leaves are shared.

  Returns:
    An ``Aggregator`` whose ``update`` requires ``second_grads=`` and takes
    ``third_grads=``; its ``inner`` state is a ``ModoState``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for a non-positive ``gamma``, a negative ``rho`` (either
      non-finite) or ``num_tasks < 1``; at ``update`` without
      ``second_grads`` or with gradients of another structure.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> tx = mtl.modo(num_tasks=2, gamma=0.5, rho=0.)
    >>> g1 = {'w': jnp.array([[1., 0.], [0., 1.]])}
    >>> g2 = {'w': jnp.array([[2., 0.], [0., 0.]])}
    >>> d, state = tx.update(g1, tx.init(None), second_grads=g2)
    >>> d['w'].tolist()
    [0.25, 0.75]
  """
  method = 'modo'
  t = _require_num_tasks(method, num_tasks)
  _checks.check_positive(
      'gamma', gamma, method=method,
      hint='the step size of the task weights; the authors use 0.1')
  _checks.check_non_negative(
      'rho', rho, method=method,
      hint='the l2 regularisation of the task weights; the authors use 0.1')

  def direction_fn(grads, inner, extra):
    second = extra_batch(extra, 'second_grads', grads, method, required=True)
    third = extra_batch(extra, 'third_grads', grads, method, required=False)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    cross = cross_gramian(grads, second, mask)
    lam = modo_weights(cross, inner.lam.astype(cross.dtype), gamma, rho)
    target = grads if third is None else third
    # A NaN/Inf in a shared leaf of either batch makes J₁J₂ᵀ non-finite:
    # only their task-specific leaves need a pass of their own.
    ok = (jnp.all(jnp.isfinite(cross)) & leaves_finite(grads, mask, shared=False)
          & leaves_finite(second, mask, shared=False))
    if third is not None:     # (else the target is grads, checked)
      ok &= leaves_finite(third)
    return Proposal(
        coefficients=lam, gram_hat=None,
        inner=ModoState(lam, inner.count + 1), inputs_ok=ok,
        combine=lambda: gram_lib.weighted_sum(
            lam, target, mask, task_weights=jnp.ones((t,), lam.dtype)))

  built = _build(
      direction_fn, num_tasks=t, preferences=None,
      init_inner=lambda: ModoState(jnp.full((t,), 1 / t, state_dtype()),
                                   jnp.zeros((), jnp.int32)),
      track_diagnostics=False)

  def init_fn(params):
    state = built.init(params)
    return state._replace(weights=state.inner.lam)

  return aggregating.Aggregator(init_fn, built.update)
