"""Geometric loss strategy (GLS, Chennupati et al., CVPR-W 2019): descend the
geometric mean of the losses::

    GM = (Π_t L_t)^{1/T},     ∇GM = Σ_t (GM / (T L_t)) ∇L_t,

i.e. coefficients ``c_t = GM / (T L_t)`` (losses floored at 1e-12). No
state.

References:
  Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
  Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _loss_aggregator
from mtl_optax.methods._core import _positive


def geometric_mean_weights(losses: jax.Array) -> jax.Array:
  """Coefficients ``GM / (T L_t)`` of ∇(Π L_t)^{1/T} (losses floored at
  1e-12)."""
  pos = _positive(losses)
  gm = jnp.exp(jnp.mean(jnp.log(pos)))
  return gm / (losses.shape[0] * pos)


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
      lambda losses, k, s, inner: (geometric_mean_weights(losses), inner),
      tuple, num_tasks=num_tasks, shared=shared,
      track_diagnostics=track_diagnostics, stateful=False)
