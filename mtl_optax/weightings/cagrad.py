"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

With the average gradient ``g0 = (1/T) Σ g_t``, CAGrad maximises the worst
task improvement in a ball around ``g0``. Its dual over the simplex is

    min_{w ∈ Δ}  wᵀ K 1/T + c ‖g0‖ ‖G w‖,   ‖G w‖ = √(wᵀ K w),

and the update is ``d = g0 + (c ‖g0‖ / ‖G w‖) G w``, optionally rescaled:
``rescale=0`` none, ``1`` by ``1/(1 + c²)``, ``2`` by ``1/(1 + c)`` (as the
authors' code). The dual is solved in JAX by accelerated projected gradient
descent (FISTA) on the simplex (``optax.projections.projection_simplex``) with backtracking.

Convention: ``g0`` is the *mean* gradient, as in the paper; multiply by T (or
use a T× larger learning rate) to compare with sum-based methods.
"""

import jax
import jax.numpy as jnp
from jax import lax
from optax import projections


def _dual_objective(w, gram, b, radius):
  return w @ b + radius * jnp.sqrt(jnp.maximum(w @ gram @ w, 0) + 1e-20)


def solve_cagrad_dual(gram: jax.Array, c: float = 0.4, max_iters: int = 100
                      ) -> jax.Array:
  """``argmin_{w∈Δ} wᵀK1/T + c‖g0‖√(wᵀKw)`` by accelerated projected
  gradient descent (FISTA with backtracking and restarts).

  Args:
    gram: ``[T, T]`` Gramian.
    c: the radius factor of the ball around ``g0``.
    max_iters: iterations (each one gradient and a few objective values).

  Returns:
    ``[T]`` weights on the simplex.
  """
  t = gram.shape[0]
  dtype = gram.dtype
  b = gram @ jnp.full((t,), 1 / t, dtype)
  g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(gram), 0))
  radius = c * g0_norm
  objective = lambda w: _dual_objective(w, gram, b, radius)
  value_and_grad = jax.value_and_grad(objective)
  scale = jnp.maximum(jnp.max(jnp.abs(jnp.diag(gram))), jnp.finfo(dtype).tiny)

  def body(_, carry):
    # Accelerated projected gradient (FISTA) with a backtracked step and a
    # restart whenever a step goes uphill: plain projected gradient needs
    # ~1000 iterations when T exceeds the rank of the gradients.
    w, w_prev, theta, step = carry
    theta_next = 0.5 * (1 + jnp.sqrt(1 + 4 * theta**2))
    y = w + ((theta - 1) / theta_next) * (w - w_prev)
    f, g = value_and_grad(y)

    def trial(s):
      return projections.projection_simplex(y - s * g)

    def not_enough(s):
      new = trial(s)
      diff = new - y
      return (objective(new) > f + g @ diff + (diff @ diff) / (2 * s)) & (
          s > 1e-12 / scale)

    s = lax.while_loop(not_enough, lambda s: 0.5 * s, step)
    new = trial(s)
    uphill = objective(new) > objective(w)
    return (jnp.where(uphill, w, new), w,
            jnp.where(uphill, jnp.ones_like(theta), theta_next),
            jnp.minimum(1.5 * s, 1e6 / scale))

  w0 = jnp.full((t,), 1 / t, dtype)
  w, _, _, _ = lax.fori_loop(
      0, max_iters, body, (w0, w0, jnp.ones((), dtype), 1.0 / scale))
  return w


def cagrad(gram: jax.Array, c: float = 0.4, rescale: int = 1,
           max_iters: int = 100) -> jax.Array:
  """CAGrad coefficients: ``d = Σ_t coef_t g_t``.

  Args:
    gram: ``[T, T]`` Gramian.
    c: the ball's radius factor (0.4-0.5 in the paper; 0 gives the mean).
    rescale: 0, 1 (``/(1+c²)``) or 2 (``/(1+c)``).
    max_iters: iterations of the dual solver.

  Returns:
    ``[T]`` coefficients.
  """
  if rescale not in (0, 1, 2):
    raise ValueError(f'rescale must be 0, 1 or 2, got {rescale!r}.')
  t = gram.shape[0]
  dtype = gram.dtype
  w = solve_cagrad_dual(gram, c, max_iters)
  g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(gram), 0))
  gw_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0))
  lam = jnp.where(gw_norm > 0, c * g0_norm / jnp.where(gw_norm > 0, gw_norm, 1),
                  0)
  coef = jnp.full((t,), 1 / t, dtype) + lam * w
  if rescale == 1:
    coef = coef / (1 + c**2)
  elif rescale == 2:
    coef = coef / (1 + c)
  return coef
