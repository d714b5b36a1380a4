"""ConFIG (Liu et al., ICLR 2025): conflict-free updates.

The direction has equal cosine with every task gradient: with unit gradients
``u_t = g_t/‖g_t‖`` as the rows of ``U``, ``ê ∝ U⁺ 1`` (pseudo-inverse), and
its length is the sum of the task gradients' projections on it:
``d = (Σ_t <g_t, ê>) ê``. So every task improves (``<d, g_t> > 0``) whenever
the tasks' unit gradients are linearly independent.

In Gramian form: ``K_u = D⁻¹ K D⁻¹`` (``D = diag ‖g_t‖``), ``β = K_u⁺ 1``,
``b = D⁻¹ β`` (so ``U⁺1 = Σ b_t g_t``) and ``c = (1ᵀ K b / bᵀ K b) b``.
Zero gradients are left out (``b_t = 0``); a zero system gives ``c = 0``.
"""

import jax
import jax.numpy as jnp

from mtl_optax.weightings.imtl import pinv_psd


def config(gram: jax.Array) -> jax.Array:
  """ConFIG coefficients.

  Args:
    gram: ``[T, T]`` Gramian.

  Returns:
    ``[T]`` coefficients ``c`` with ``d = Σ c_t g_t``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import weightings
    >>> g = jnp.array([[1., 0.], [0., 1.]])
    >>> weightings.config(g @ g.T).tolist()
    [1.0, 1.0]
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0))
  present = norms > 0
  inv_norms = jnp.where(present, 1 / jnp.where(present, norms, 1), 0)
  unit_gram = gram * inv_norms[:, None] * inv_norms[None, :]
  beta = pinv_psd(unit_gram) @ present.astype(gram.dtype)
  b = beta * inv_norms
  k_b = gram @ b
  length2 = b @ k_b
  ok = length2 > 0
  return jnp.where(ok, jnp.sum(k_b) / jnp.where(ok, length2, 1), 0) * b
