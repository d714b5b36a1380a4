"""Dynamic Weight Average (Liu et al., CVPR 2019): weights from the rate at
which each loss falls::

    r_t = L_t(k-1) / L_t(k-2),     w_t = T softmax(r / τ)_t,

``w = 1`` until two steps have been seen. A loss that falls slowly gets a
larger weight.

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _loss_aggregator
from mtl_optax.methods._core import _positive
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import state_dtype


def dwa_weights(previous: jax.Array, before_previous: jax.Array,
                temperature: float = 2.0) -> jax.Array:
  """DWA weights ``T softmax(L(k-1)/L(k-2) / τ)``.

  Args:
    previous: ``[T]`` losses of the previous step.
    before_previous: ``[T]`` losses of the step before.
    temperature: τ.

  Returns:
    ``[T]`` weights summing to ``T``.
  """
  t = previous.shape[0]
  ratio = _positive(previous) / _positive(before_previous)
  return t * jax.nn.softmax(ratio / temperature)


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
                  dwa_weights(history[0], history[1], temperature),
                  jnp.ones((t,), state_dtype()))
    history = jnp.stack([losses, history[0]])
    return w, (history, jnp.minimum(count + 1, 2))

  return _loss_aggregator(
      'dwa', coefficients,
      lambda: (jnp.ones((2, t), state_dtype()), jnp.zeros((), jnp.int32)),
      num_tasks=t, shared=shared, track_diagnostics=track_diagnostics)
