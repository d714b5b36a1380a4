"""ConFIG, Conflict-Free Inverse Gradients (Liu et al., ICLR 2025).

The direction has equal cosine with every task gradient: with unit gradients
``u_t = g_t/‖g_t‖`` as the rows of ``U``, ``ê ∝ U⁺ 1`` (pseudo-inverse), and
its length is the sum of the task gradients' projections on it:
``d = (Σ_t <g_t, ê>) ê``. So every task improves (``<d, g_t> > 0``) whenever
the tasks' unit gradients are linearly independent.

In Gramian form: ``K_u = D⁻¹ K D⁻¹`` (``D = diag ‖g_t‖``), ``β = K_u⁺ 1``,
``b = D⁻¹ β`` (so ``e = U⁺1 = Σ_t β_t u_t = Σ_t b_t g_t``, ``‖e‖² = βᵀ K_u
β = bᵀ K b``) and ``c = (1ᵀ K b / bᵀ K b) b``. ``K_u⁺`` truncates
eigenvalues ``λ ≤ λ_max T eps`` as Aligned-MTL does. Zero gradients are left
out (``b_t = 0``); a zero system gives ``c = 0``.

Cancelling unit gradients. ``e = 0`` exactly when the unit gradients sum to
zero (``Σ_t u_t = 0``: ``1`` is in the null space of ``K_u``), e.g. tasks
whose gradients are all parallel or antiparallel to one vector with as many
unit gradients each way. Then no direction improves every task, the
equal-cosine direction is 0/0, and **the coefficients are all zeros** (a zero
update). In floating point ``e`` is then rounding noise, which would give a
gradient-sized update in an arbitrary direction (the length is the sum of the
gradients' projections on ``e/‖e‖``, whatever ``‖e‖``; TorchJD's ConFIG,
which normalises ``pinv(U) 1`` with a 1e-12 floor, returns such an update),
so ``e`` counts as zero below its rounding error: the part of ``1`` outside the kept eigenspace
(``‖(I - P) 1‖``, P the projector on it) leaks into ``e`` through rounding
errors of ``K_u`` of about ``eps λ_max``, at most
``eps λ_max ‖(I - P) 1‖ / λ_min^{3/2}`` to first order (``λ_min`` the smallest
kept eigenvalue), and the coefficients are zeros when
``‖e‖ ≤ 5 √T eps λ_max ‖(I - P) 1‖ / λ_min^{3/2}``. When no eigenvalue is
truncated (linearly independent unit gradients, not near-dependent to
rounding precision) ``(I - P) 1 = 0`` and the guard never applies; it is
relative (``K_u`` does not depend on the gradients' scale), so
``d(σG) = σ d(G)`` still holds.

Names: the factory is ``mtl_optax.conflict_free`` (registered as
``'conflict_free'``) and the weighting ``mtl_optax.weightings.conflict_free``.
Their former name ``config`` (``mtl_optax.config``,
``mtl_optax.weightings.config``, ``get_aggregator('config')``) still works
but is deprecated: it read as a configuration next to ``training.Config``
and the training configs.

References:
  Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics
  Informed Neural Networks", ICLR 2025.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import kept_spectrum
from mtl_optax.methods._core import _stateless

# Multiplies √T times the first-order rounding bound on ‖e‖ (see the module
# docstring). Measured on ~10⁴ Gramians of exactly cancelling unit gradients
# (T = 2..64: antiparallel pairs, simplices, rank one, random; random norms
# and embeddings; float32 and float64) ‖e‖ reached 1.9 √T times the bound at
# most (99% below 1.05 √T); on non-cancelling random gradients (independent,
# rank-deficient, conflicting) it stayed above 15 √T times it.
_NOISE_FACTOR = 5.0


def conflict_free_weights(gram: jax.Array) -> jax.Array:
  """ConFIG coefficients.

  Args:
    gram: ``[T, T]`` Gramian.

  Returns:
    ``[T]`` coefficients ``c`` with ``d = Σ c_t g_t``; all zeros for a zero
    Gramian and when the unit gradients cancel (``Σ_t u_t = 0`` to rounding
    precision: no direction improves every task; see the module docstring).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[1., 0.], [0., 1.]])
    >>> weightings.conflict_free(g @ g.T).tolist()
    [1.0, 1.0]
  """
  t = gram.shape[0]
  dtype = gram.dtype
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  present = norms > 0
  inv_norms = jnp.where(present, 1 / jnp.where(present, norms, 1), 0)
  unit_gram = gram * inv_norms[:, None] * inv_norms[None, :]
  squared, vectors = jnp.linalg.eigh(0.5 * (unit_gram + unit_gram.T))
  keep, _ = kept_spectrum(squared)
  safe = jnp.where(keep, squared, 1)
  ones = vectors.T @ present.astype(dtype)      # 1 in the eigenbasis
  beta = vectors @ jnp.where(keep, ones / safe, 0)
  b = beta * inv_norms
  # ‖e‖² = 1ᵀ K_u⁺ 1 from the spectrum (no cancellation), and the bound on
  # its rounding noise from the part of 1 outside the kept eigenspace.
  e_norm2 = jnp.sum(jnp.where(keep, ones * ones / safe, 0))
  # The length Σ_t <g_t, e> = Σ_t ‖g_t‖ (K_u β)_t = nᵀ P 1 (P the projector
  # on the kept eigenspace), and ‖e‖² above: both from the spectrum. (bᵀKb
  # and 1ᵀKb would multiply K into K⁺: errors ~ cond² eps instead of
  # cond eps, measured 1e-4 in float64 on a 9×11 matrix of condition 1e6.)
  projected_ones = vectors @ jnp.where(keep, ones, 0)
  length = norms @ projected_ones
  outside = jnp.sqrt(jnp.sum(jnp.where(keep, 0, ones * ones)))
  smallest = jnp.min(jnp.where(keep, squared, jnp.inf))
  noise = (_NOISE_FACTOR * jnp.sqrt(jnp.asarray(t, dtype))
           * jnp.finfo(dtype).eps * jnp.max(squared) * outside
           / jnp.where(jnp.isfinite(smallest), smallest, 1) ** 1.5)
  ok = (e_norm2 > 0) & (e_norm2 > noise * noise)
  return jnp.where(ok, length / jnp.where(ok, e_norm2, 1), 0) * b


def conflict_free(*, shared: gram_lib.SharedMask = None,
                  per_group: gram_lib.PerGroup = None,
                  num_tasks: int | None = None) -> aggregating.Aggregator:
  """ConFIG (Liu et al., ICLR 2025): the direction with equal cosine to every
  task gradient (``U⁺ 1`` of the unit gradients), as long as the sum of the
  task gradients' projections on it.

  When the unit gradients cancel (``Σ_t u_t = 0``, e.g. gradients all
  parallel or antiparallel to one vector, as many unit gradients each way),
  ``U⁺ 1 = 0``: no direction improves every task and the shared update is
  zero (the coefficients, recorded in ``weights``, are zeros; the step is not
  counted as skipped). Rounding noise in that direction is recognised as such
  (see ``mtl_optax.weightings.conflict_free``), so it never turns into a
  gradient-sized update.

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
  _checks.check_num_tasks(num_tasks, method='conflict_free')
  return _stateless(conflict_free_weights, shared, num_tasks,
                    per_group=per_group, method='conflict_free')


def _deprecated_alias(function, old: str, new: str):
  """``function`` under its former name ``old``: warns, then calls it."""

  @functools.wraps(function)
  def alias(*args, **kwargs):
    warnings.warn(
        f'{old} is deprecated: use {new} (ConFIG), the same function under '
        'its new name.', DeprecationWarning, stacklevel=2)
    return function(*args, **kwargs)

  alias.__name__ = alias.__qualname__ = old.rpartition('.')[2]
  alias.__doc__ = f'Deprecated alias of ``{new}``, ConFIG\'s former name.'
  return alias


config = _deprecated_alias(conflict_free, 'mtl_optax.config',
                           'mtl_optax.conflict_free')
config_weights = _deprecated_alias(conflict_free_weights,
                                   'mtl_optax.weightings.config',
                                   'mtl_optax.weightings.conflict_free')
