"""Linear scalarization (uniform scaling): a fixed weighted sum of the task
gradients::

    d = Σ_t w_t g_t = ∇_θ (w · L),

the gradient of the weighted sum of the losses (``w = 1``: their sum). The
baseline every paper compares against; its coefficients need no Gramian, so
with ``track_diagnostics=False`` the step is one weighted sum.
"""

from __future__ import annotations

import jax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import gramian_direction


def linear(gram: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Coefficients of the fixed weighted sum ``Σ_t w_t g_t``.

  Args:
    gram: ``[T, T]`` Gramian (only its size is used).
    weights: ``[T]`` task weights; default all ones (the sum of the losses).

  Returns:
    ``[T]`` coefficients, equal to ``weights``.
  """
  return preference_vector(weights, gram.shape[0], gram.dtype)


def linear_scalarization(
    weights: jax.Array | None = None,
    *,
    shared: gram_lib.SharedMask = None,
    num_tasks: int | None = None,
    track_diagnostics: bool = True,
) -> aggregating.Aggregator:
  """The uniform-scaling baseline: ``Σ_t w_t g_t``, the gradient of ``w·L``.

  Args:
    weights: ``[T]`` task weights; default all ones (the sum of the losses).
    shared: which leaves are shared (only matters for diagnostics here).
    num_tasks: ``T``, to record the weights in the state.
    track_diagnostics: compute the Gramian for the diagnostics. With False the
      aggregator is a plain weighted sum, the cheapest possible step.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: if ``weights`` is not a 1-D, finite, not all-zero vector
      (negative weights are allowed: they ascend those losses) or disagrees
      with ``num_tasks``, or ``num_tasks < 1``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, mtl_optax as mtl
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[1., 0.], [0., 2.]])}   # two tasks
    >>> tx = optax.chain(mtl.linear_scalarization(), optax.sgd(0.1))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['w'].tolist()
    [-0.10000000149011612, -0.20000000298023224]
  """
  method = 'linear_scalarization'
  _checks.check_num_tasks(num_tasks, method=method)
  # Any sign: a plain weighted sum may ascend a loss on purpose.
  _checks.check_preferences('weights', weights, method=method,
                            num_tasks=num_tasks, non_negative=False)
  _checks.check_bool('track_diagnostics', track_diagnostics, method=method)

  if track_diagnostics:
    direction_fn = gramian_direction(
        lambda k, scale, inner, extra: (linear(k, weights), inner),
        shared=shared, preferences=weights)
  else:
    def direction_fn(grads, inner, extra):
      t = gram_lib.num_tasks(grads)
      c = preference_vector(weights, t)
      # inputs_ok=None: the sum of every leaf certifies them (one pass).
      return Proposal(c, None, inner, None,
                      lambda: gram_lib.combine(c, grads))

  return _build(direction_fn, num_tasks=num_tasks, preferences=weights,
                track_diagnostics=track_diagnostics)
