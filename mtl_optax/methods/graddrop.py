"""GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020): per
coordinate, keep the task gradients of one sign, chosen at random with the
sign purity::

    P = ½ (1 + Σ_t g_t / Σ_t |g_t|),
    M_t = [P > U] [g_t > 0] + [P < U] [g_t < 0],     U ~ U(0, 1),
    d = Σ_t (ℓ + (1 - ℓ) M_t) g_t                    (ℓ the leak).

Not Gramian-based: the masks act on every coordinate of the stacked shared
gradients, so the method has no coefficient form (and no Jacobian-free
one).

References:
  Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
  Gradient Sign Dropout", NeurIPS 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import Proposal
from mtl_optax.methods._core import _build
from mtl_optax.methods._core import leaves_finite


def graddrop(leak: float = 0.0, *, shared: gram_lib.SharedMask = None,
             num_tasks: int | None = None, seed: int = 0,
             track_diagnostics: bool = True) -> aggregating.Aggregator:
  """GradDrop (Chen et al., NeurIPS 2020): per coordinate, keep the task
  gradients of one sign, chosen at random with the sign purity
  ``P = ½(1 + Σ_t g_t / Σ_t |g_t|)``.

  ``M_t = [P > U] [g_t > 0] + [P < U] [g_t < 0]`` with ``U ~ U(0, 1)`` per
  coordinate, and the update ``Σ_t (ℓ + (1-ℓ) M_t) g_t`` (``ℓ`` = leak).
  Not Gramian-based: it costs a few elementwise passes over the stacked
  shared gradients. Reading: the paper can multiply the gradients by the sign
  of the layer inputs first (for batch-separated gradients); here the masks
  act on the parameter gradients directly. ``weights`` in the state are all
  ones (per-coordinate masks have no per-task coefficients).

  Args:
    leak: fraction of every gradient always kept (0: pure GradDrop).
    shared: which leaves are shared (heads get their plain gradients).
    num_tasks: ``T``, to record (ones) in ``weights``.
    seed: PRNG seed of the masks.
    track_diagnostics: also compute the Gramian for the diagnostics.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for ``leak`` outside [0, 1] or ``num_tasks < 1``.
  """
  _checks.check_num_tasks(num_tasks, method='graddrop')
  _checks.check_in_range(
      'leak', leak, 0, 1, method='graddrop',
      hint='the fraction of every gradient always kept; 0 is pure GradDrop, '
      '1 the plain sum')
  _checks.check_integer('seed', seed, method='graddrop',
                        hint='the seed of the masks\' PRNG key')
  _checks.check_bool('track_diagnostics', track_diagnostics,
                     method='graddrop')

  def direction_fn(grads, key, extra):
    t = gram_lib.num_tasks(grads)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    leaves, treedef = jax.tree.flatten(grads)
    flags = jax.tree.leaves(mask)
    key, sub = jax.random.split(key)

    def combine():
      # One uniform draw for every shared coordinate (one PRNG call compiles
      # far faster than one per leaf), sliced per leaf.
      sizes = [g[0].size for g, m in zip(leaves, flags) if m]
      uniform = jax.random.uniform(sub, (sum(sizes),), jnp.float32)
      offset = 0
      out = []
      for g, is_shared in zip(leaves, flags):
        acc = gram_lib.accumulation_dtype(g.dtype)
        x = g.astype(acc)
        task_ones = jnp.ones((t,), acc)
        if not is_shared:
          out.append(jnp.tensordot(task_ones, x, axes=1,
                                   precision=gram_lib.PRECISION
                                   ).astype(g.dtype))
          continue
        # Per coordinate, the mask keeps the positive or the negative task
        # gradients, so Σ_t (ℓ + (1-ℓ) M_t) g_t only needs their two sums.
        # Sums over the task axis are matrix-vector products: XLA:CPU's
        # reductions over a leading axis are an order of magnitude slower.
        total = jnp.tensordot(task_ones, x, axes=1,
                              precision=gram_lib.PRECISION)
        positive = jnp.tensordot(task_ones, jnp.maximum(x, 0), axes=1,
                                 precision=gram_lib.PRECISION)
        negative = total - positive
        magnitude = positive - negative
        purity = 0.5 * (1 + total / jnp.where(magnitude > 0, magnitude, 1))
        u = uniform[offset:offset + purity.size].reshape(purity.shape)
        offset += purity.size
        kept = jnp.where(purity > u, positive,
                         jnp.where(purity < u, negative, 0))
        out.append((leak * total + (1 - leak) * kept).astype(g.dtype))
      return jax.tree.unflatten(treedef, out)

    ones = jnp.ones((t,), jnp.float32)
    if track_diagnostics:
      gram_hat, _ = gram_lib.normalized_gramian(grads, mask)
      inputs_ok = leaves_finite(grads, mask, shared=False)
    else:
      gram_hat, inputs_ok = None, leaves_finite(grads)
    return Proposal(ones, gram_hat, key, inputs_ok, combine)

  return _build(direction_fn, num_tasks=num_tasks,
                preferences=None, init_inner=lambda: jax.random.PRNGKey(seed),
                track_diagnostics=track_diagnostics)
