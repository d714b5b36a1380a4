"""ConFIG (Liu et al., ICLR 2025): conflict-free updates.

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
"""

import jax
import jax.numpy as jnp

from mtl_optax.methods.aligned_mtl import kept_spectrum

# Multiplies √T times the first-order rounding bound on ‖e‖ (see the module
# docstring). Measured on ~10⁴ Gramians of exactly cancelling unit gradients
# (T = 2..64: antiparallel pairs, simplices, rank one, random; random norms
# and embeddings; float32 and float64) ‖e‖ reached 1.9 √T times the bound at
# most (99% below 1.05 √T); on non-cancelling random gradients (independent,
# rank-deficient, conflicting) it stayed above 15 √T times it.
_NOISE_FACTOR = 5.0


def config(gram: jax.Array) -> jax.Array:
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
    >>> weightings.config(g @ g.T).tolist()
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
