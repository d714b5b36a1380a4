"""PCGrad (Yu et al., NeurIPS 2020), "gradient surgery", in coefficient form.

For each task i, ``g_i`` is projected onto the normal plane of every other
task's (original) gradient ``g_j`` it conflicts with (``<g_i', g_j> < 0``),
visiting the others in a fresh random order per task; the projected gradients
are summed. Each projection ``g_i' ← g_i' - (<g_i', g_j>/‖g_j‖²) g_j`` keeps
``g_i'`` a combination of the task gradients, so we track its coefficient
vector ``a ∈ R^T`` (``g_i' = Σ_k a_k g_k``) using only the Gramian:
``<g_i', g_j> = (K a)_j``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import gramian_direction


def random_orders(key: jax.Array, num_tasks: int) -> jax.Array:
  """``[T, T]`` int array: row ``i`` is a random permutation of the tasks.

  Args:
    key: a PRNG key.
    num_tasks: ``T``.

  Returns:
    The visiting order of the other tasks for each task (task ``i`` itself is
    skipped when met in row ``i``).
  """
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)


def _surgery(gram, orders, rule):
  """Runs ``rule(a, i, j) -> a`` for each task i over its order, vectorised
  over i, and returns the ``[T, T]`` matrix of final coefficient rows."""
  t = gram.shape[0]
  eye = jnp.eye(t, dtype=gram.dtype)

  def per_task(i, order):
    def step(a, j):
      return lax.cond(j == i, lambda a: a, lambda a: rule(a, j), a), None
    a, _ = lax.scan(step, eye[i], order)
    return a

  return jax.vmap(per_task)(jnp.arange(t), orders)


def pcgrad_weights(
    gram: jax.Array,
    orders: jax.Array,
    preferences: jax.Array | None = None,
) -> jax.Array:
  """PCGrad coefficients ``c = Σ_i w_i a_i`` of the summed projected gradients.

  Args:
    gram: ``[T, T]`` Gramian.
    orders: ``[T, T]`` visiting orders (``random_orders``).
    preferences: ``[T]`` weights of the projected gradients in the sum;
      default all ones (the paper's sum).

  Returns:
    ``[T]`` coefficients. A zero gradient ``g_j`` is never projected on.
  """
  t = gram.shape[0]
  w = preference_vector(preferences, t, gram.dtype)

  def project(a, j):
    dot = gram[j] @ a
    norm2 = gram[j, j]
    conflict = (dot < 0) & (norm2 > 0)
    return a - jnp.where(conflict, dot / jnp.where(conflict, norm2, 1), 0) * \
        jax.nn.one_hot(j, t, dtype=a.dtype)

  rows = _surgery(gram, orders, project)
  return w @ rows


def _random_order_aggregator(weighting, preferences, shared, seed, num_tasks,
                             method, draw=random_orders,
                             heads_reduction='sum', per_group=None):
  """An aggregator whose weighting ``(K, draw(key, T), preferences) -> c``
  needs fresh random draws (visiting orders) every step, from a PRNG key in
  the state."""
  _checks.check_num_tasks(num_tasks, method=method)
  _checks.check_preferences('preferences', preferences, method=method,
                            num_tasks=num_tasks)
  _checks.check_integer('seed', seed, method=method,
                        hint='the seed of the PRNG key in the state')

  def coefficients(k, scale, key, extra):
    key, sub = jax.random.split(key)
    return weighting(k, draw(sub, k.shape[0]), preferences), key

  direction_fn = gramian_direction(coefficients, shared=shared,
                                   preferences=preferences,
                                   heads_reduction=heads_reduction,
                                   per_group=per_group,
                                   shared_key_state=True, method=method)
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences,
                init_inner=lambda: jax.random.PRNGKey(seed))


def pcgrad(
    preferences: jax.Array | None = None,
    *,
    shared: gram_lib.SharedMask = None,
    per_group: gram_lib.PerGroup = None,
    seed: int = 0,
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """PCGrad (Yu et al., NeurIPS 2020): project away conflicting components.

  Each task gradient is projected onto the normal plane of every other task
  gradient it conflicts with, in a fresh random order per task and step (PRNG
  key in the state), and the results are summed; computed in coefficient form
  from the Gramian (``mtl_optax.weightings.pcgrad``).

  Args:
    preferences: ``[T]`` weights of the projected gradients in the sum (and of
      the task-specific leaves); default all ones.
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the projections on each group's Gramian (per layer, as in the
      paper's per-layer reading), each group's leaves combined with its
      coefficients (see ``mtl_optax.methods.gramian_direction``). The groups
      share the PRNG key: the same visiting orders in every group.
    seed: seed of the PRNG key in the state.
    num_tasks: ``T``, to record the coefficients in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type (e.g. a float ``seed``).
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries) or ``num_tasks < 1``.
  """
  return _random_order_aggregator(pcgrad_weights, preferences, shared,
                                  seed, num_tasks, 'pcgrad',
                                  per_group=per_group)
