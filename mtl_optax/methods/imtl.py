"""IMTL-G (Liu et al., ICLR 2021), the gradient part of Impartial MTL.

The update ``d = Σ_t c_t g_t`` with ``Σ_t c_t = 1`` has equal projections on
every unit task gradient ``u_t = g_t/‖g_t‖``: ``<d, u_t>`` is the same for all
t. Since ``<d, u_t> = (K c)_t / ‖g_t‖``, this is ``K c ∝ n`` with
``n = √diag(K)``, i.e. ``c ∝ K⁺ n`` (the paper's closed form, Eq. 9, written
with the Gramian), normalised to sum 1.

``K⁺`` is the pseudo-inverse with Aligned-MTL's truncation (``λ ≤ λ_max T
eps`` dropped), so duplicated tasks and zero gradients give finite weights: a
zero gradient has ``n_t = 0`` and gets weight 0. If the unnormalised weights
sum to 0 (no direction has equal positive projections), uniform weights
``1/T`` are returned.
"""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import kept_spectrum
from mtl_optax.methods._core import _stateless


def pinv_psd(gram: jax.Array) -> jax.Array:
  """Pseudo-inverse of a PSD Gramian, truncating ``λ ≤ λ_max · T · eps``."""
  squared, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
  keep, _ = kept_spectrum(squared)
  inv = jnp.where(keep, 1 / jnp.where(keep, squared, 1), 0)
  return (vectors * inv) @ vectors.T


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G coefficients ``c = K⁺ n / 1ᵀK⁺ n``, ``n = √diag K``.

  Args:
    gram: ``[T, T]`` Gramian.

  Returns:
    ``[T]`` coefficients summing to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[2., 0.], [0., 1.]])
    >>> [round(x, 4) for x in weightings.imtl_g(g @ g.T).tolist()]
    [0.3333, 0.6667]
  """
  t = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  # A zero gradient's weight is exactly 0 (float32 eigenvectors leak a
  # rounding-size weight onto it otherwise).
  raw = jnp.where(norms > 0, pinv_psd(gram) @ norms, 0)
  total = jnp.sum(raw)
  ok = jnp.abs(total) > jnp.finfo(gram.dtype).eps * jnp.sum(jnp.abs(raw))
  return jnp.where(ok, raw / jnp.where(ok, total, 1),
                   jnp.full((t,), 1 / t, gram.dtype))


def imtl_g(*, shared: gram_lib.SharedMask = None,
           per_group: gram_lib.PerGroup = None,
           num_tasks: int | None = None) -> aggregating.Aggregator:
  """IMTL-G (Liu et al., ICLR 2021): equal projections on every unit task
  gradient, ``c ∝ K⁺ √diag K`` normalised to sum 1.

  Finite for zero gradients (weight 0) and duplicated tasks (pseudo-inverse).
  Cost: one Gramian, one ``eigh`` of T×T, one weighted sum.

  Args:
    shared: which leaves are shared.
    per_group: ``None`` (one Gramian), ``'leaf'`` or ``key_path -> group
      id``: the weighting on each group's Gramian, each group's leaves
      combined with its coefficients (see
      ``mtl_optax.methods.gramian_direction``).
    num_tasks: ``T``, to record the weights in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError, ValueError: if ``num_tasks`` is not None or an integer >= 1.
  """
  _checks.check_num_tasks(num_tasks, method='imtl_g')
  return _stateless(imtl_g_weights, shared, num_tasks,
                    per_group=per_group, method='imtl_g')
