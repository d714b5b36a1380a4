"""Gradient Vaccine (Wang et al., ICLR 2021), in coefficient form.

For each task i and each other task j (random order), with ``φ_ij`` the
cosine between the running ``g_i'`` and ``g_j`` and ``φ̂_ij`` its EMA target:
if ``φ_ij < φ̂_ij``,

    g_i' ← g_i' + ‖g_i'‖ (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (‖g_j‖ √(1-φ̂²)) · g_j,

which sets the cosine of ``g_i'`` with ``g_j`` to ``φ̂_ij``; then
``φ̂_ij ← (1-β) φ̂_ij + β φ_ij`` (with the ``φ_ij`` measured before the
change). The result is ``Σ_i w_i g_i'``. Targets start at 0, where the rule
is PCGrad's.

Reading: the paper applies the rule per parameter group (layer); this is the
whole-shared-parameter version, where one Gramian describes all groups.
"""

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector
from mtl_optax.methods._core import _require_num_tasks
from mtl_optax.methods._core import _stateful
from mtl_optax.methods._core import state_dtype
from mtl_optax.methods.pcgrad import random_orders


def gradvac_weights(
    gram: jax.Array,
    targets: jax.Array,
    orders: jax.Array,
    beta: float = 0.5,
    preferences: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """GradVac coefficients and the new EMA targets.

  Args:
    gram: ``[T, T]`` Gramian.
    targets: ``[T, T]`` EMA cosine targets ``φ̂`` (zeros initially).
    orders: ``[T, T]`` visiting orders (``random_orders``).
    beta: EMA rate.
    preferences: ``[T]`` weights of the sum; default ones.

  Returns:
    ``(coefficients, new_targets)``.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  eye = jnp.eye(t, dtype=dtype)
  w = preference_vector(preferences, t, dtype)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))

  def per_task(i, order, target_row):
    def step(a, j):
      k_a = gram @ a
      gi_norm = jnp.sqrt(jnp.maximum(a @ k_a, 0))
      denom = gi_norm * norms[j]
      phi = jnp.where(denom > 0, k_a[j] / jnp.where(denom > 0, denom, 1), 0)
      phi = jnp.clip(phi, -1, 1)
      goal = jnp.clip(target_row[j], -1 + 1e-6, 1 - 1e-6)
      root_goal = jnp.sqrt(1 - goal**2)
      coef = gi_norm * (goal * jnp.sqrt(1 - phi**2) - phi * root_goal) / (
          jnp.where(norms[j] > 0, norms[j], 1) * root_goal)
      active = (j != i) & (phi < goal) & (denom > 0)
      a = a + jnp.where(active, coef, 0) * eye[j]
      return a, jnp.where(j != i, phi, target_row[j])

    a, phis = lax.scan(step, eye[i], order)
    measured = jnp.zeros((t,), dtype).at[order].set(phis)
    new_row = jnp.where(jnp.arange(t) == i, target_row,
                        (1 - beta) * target_row + beta * measured)
    return a, new_row

  rows, new_targets = jax.vmap(per_task)(jnp.arange(t), orders, targets)
  return w @ rows, new_targets


def gradvac(beta: float = 0.5, preferences: jax.Array | None = None, *,
            num_tasks: int | None = None, shared: gram_lib.SharedMask = None,
            per_group: gram_lib.PerGroup = None,
            seed: int = 0) -> aggregating.Aggregator:
  """Gradient Vaccine (Wang et al., ICLR 2021): raise each pair's cosine to
  its EMA target (``β`` the EMA rate), random order per task and step.

  Args:
    beta: EMA rate of the cosine targets.
    preferences: ``[T]`` weights of the sum (default ones).
    num_tasks: ``T`` (required: the ``T×T`` targets live in the state).
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian with its own cosine targets and key (GradVac's paper
      applies it per layer) per group,
      each group's leaves combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``); ``init`` then needs the
      parameters (``init(params)``) to find the groups.
    seed: PRNG seed for the visiting orders.

  Returns:
    An ``Aggregator``. Its ``inner`` state is ``(key, targets)``.

  Raises:
    TypeError: without ``num_tasks``, or for arguments of the wrong type.
    ValueError: for ``beta`` outside [0, 1], invalid ``preferences`` (1-D,
      finite, non-negative, not all zero, ``num_tasks`` entries) or
      ``num_tasks < 1``.
  """
  t = _require_num_tasks('gradvac', num_tasks)
  _checks.check_in_range(
      'beta', beta, 0, 1, method='gradvac',
      hint='the EMA rate of the cosine targets; the paper uses 0.01-0.5, 0 '
      'keeps the targets at 0, which is PCGrad')
  _checks.check_preferences('preferences', preferences, method='gradvac',
                            num_tasks=t)
  _checks.check_integer('seed', seed, method='gradvac',
                        hint='the seed of the PRNG key in the state')

  def coefficients(k, scale, inner, extra):
    key, targets = inner
    key, sub = jax.random.split(key)
    orders = random_orders(sub, t)
    c, new_targets = gradvac_weights(k, targets.astype(k.dtype), orders,
                                      beta, preferences)
    return c, (key, new_targets.astype(targets.dtype))

  return _stateful(
      coefficients,
      lambda: (jax.random.PRNGKey(seed), jnp.zeros((t, t), state_dtype())),
      num_tasks=t, shared=shared, per_group=per_group, method='gradvac',
      preferences=preferences)
