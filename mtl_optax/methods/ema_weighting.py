"""Smoothed coefficients, as CR-MOGM does (Zhou et al., NeurIPS 2022): any
weighting ``K -> ĉ`` whose coefficients are averaged over steps::

    c_1 = ĉ_1,     c_k = β c_{k-1} + (1 - β) ĉ_k,     d_k = Σ_t c_{k,t} g_t.

With MGDA's weighting (the one ``registry.for_tasks`` passes by default)
this is the smoothed MGDA that CR-MOGM analyses.

References:
  Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient
  Manipulation and Beyond", NeurIPS 2022.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import _stateful
from mtl_optax.methods._core import state_dtype


def ema_weighting(weighting: Callable[[jax.Array], jax.Array],
                  beta: float = 0.9, *, num_tasks: int | None = None,
                  shared: gram_lib.SharedMask = None,
                  per_group: gram_lib.PerGroup = None
                  ) -> aggregating.Aggregator:
  """Smooths any weighting's coefficients over steps (as CR-MOGM does):
  ``c_k = β c_{k-1} + (1-β) ĉ_k``, starting from ``c_1 = ĉ_1``.

  Args:
    weighting: a scale-equivariant weighting ``K -> c``, e.g.
      ``mtl.weightings.mgda`` or ``functools.partial(mtl.weightings.aligned,
      preferences=w)``.
    beta: the EMA factor in [0, 1).
    num_tasks: ``T`` (required: the running coefficients live in the state).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian with its own running coefficients per group,
      each group's leaves combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``); ``init`` then needs the
      parameters (``init(params)``) to find the groups.

  Returns:
    An ``Aggregator``. Its ``inner`` state is ``(running_c, step)``.

  Raises:
    TypeError: without ``num_tasks``, for a ``weighting`` that is not
      callable, or for arguments of the wrong type.
    ValueError: for ``beta`` outside [0, 1) or ``num_tasks < 1``.
  """
  _checks.check_callable(
      'weighting', weighting, method='ema_weighting',
      hint='a function K -> c such as mtl.weightings.mgda')
  t = _require_num_tasks('ema_weighting', num_tasks)
  _checks.check_in_range(
      'beta', beta, 0, 1, method='ema_weighting', high_open=True,
      hint='the EMA factor, e.g. 0.9; 0 disables the smoothing, 1 would '
      'never update')

  def coefficients(k, scale, inner, extra):
    running, step = inner
    new = weighting(k).astype(k.dtype)
    c = jnp.where(step == 0, new, beta * running.astype(k.dtype) +
                  (1 - beta) * new)
    return c, (c.astype(running.dtype), step + 1)

  return _stateful(
      coefficients,
      lambda: (jnp.zeros((t,), state_dtype()), jnp.zeros((), jnp.int32)),
      num_tasks=t, shared=shared, per_group=per_group, method='ema_weighting')
