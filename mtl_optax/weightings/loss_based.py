"""Weightings from the task losses (no Gramian needed), and random weights.

- Uncertainty weighting (Kendall et al., CVPR 2018): with learned
  ``s_t = log σ_t²``, the total loss ``Σ_t ½ e^{-s_t} L_t + ½ s_t``; the
  coefficients are ``½ e^{-s_t}`` and ``∂/∂s_t = ½ (1 - e^{-s_t} L_t)``.
- DWA (Liu et al., CVPR 2019): ``w_t = T softmax(r / τ)_t`` with
  ``r_t = L_t(k-1) / L_t(k-2)``; ``w = 1`` for the first two steps.
- Geometric mean / GLS (Chennupati et al., 2019): minimise ``(Π_t L_t)^{1/T}``,
  whose gradient has coefficients ``GM / (T L_t)``.
- FAMO (Liu et al., NeurIPS 2023): ``z = softmax(ξ)``, coefficients
  ``(z_t / L_t) / Σ_s (z_s / L_s)``; ξ learns from the change of the log
  losses between steps.
- RLW (Lin et al., TMLR 2022): ``softmax`` of standard normal samples.
"""

import jax
import jax.numpy as jnp


def _positive(losses, floor=1e-12):
  return jnp.maximum(losses, floor)


def uncertainty(log_vars: jax.Array) -> jax.Array:
  """Coefficients ``½ exp(-s_t)`` for learned log-variances ``s``."""
  return 0.5 * jnp.exp(-log_vars)


def uncertainty_log_var_grad(log_vars: jax.Array, losses: jax.Array
                             ) -> jax.Array:
  """``∂/∂s`` of ``Σ ½ e^{-s_t} L_t + ½ s_t``."""
  return 0.5 * (1 - jnp.exp(-log_vars) * losses)


def dwa(previous: jax.Array, before_previous: jax.Array,
        temperature: float = 2.0) -> jax.Array:
  """DWA weights ``T softmax(L(k-1)/L(k-2) / τ)``.

  Args:
    previous: ``[T]`` losses of the previous step.
    before_previous: ``[T]`` losses of the step before.
    temperature: τ.

  Returns:
    ``[T]`` weights summing to ``T``.
  """
  t = previous.shape[0]
  ratio = _positive(previous) / _positive(before_previous)
  return t * jax.nn.softmax(ratio / temperature)


def geometric_mean(losses: jax.Array) -> jax.Array:
  """Coefficients ``GM / (T L_t)`` of ∇(Π L_t)^{1/T} (losses floored at
  1e-12)."""
  pos = _positive(losses)
  gm = jnp.exp(jnp.mean(jnp.log(pos)))
  return gm / (losses.shape[0] * pos)


def famo(logits: jax.Array, losses: jax.Array) -> jax.Array:
  """FAMO coefficients ``(z_t/L_t) / Σ_s (z_s/L_s)``, ``z = softmax(ξ)``."""
  z = jax.nn.softmax(logits)
  ratio = z / _positive(losses)
  return ratio / jnp.sum(ratio)


def famo_logits_grad(logits: jax.Array, previous_losses: jax.Array,
                     losses: jax.Array) -> jax.Array:
  """∂ξ of FAMO: the softmax Jacobian applied to the drop of the log losses
  ``log L(k-1) - log L(k)``."""
  z = jax.nn.softmax(logits)
  delta = jnp.log(_positive(previous_losses)) - jnp.log(_positive(losses))
  return z * (delta - z @ delta)


def random_weights(key: jax.Array, num_tasks: int, dtype=jnp.float32
                   ) -> jax.Array:
  """RLW: ``softmax`` of ``num_tasks`` standard normal samples.

  The samples are drawn in float32 whatever ``dtype`` (then cast), so a key
  gives the same weights with and without ``jax_enable_x64``.
  """
  draw = jax.random.normal(key, (num_tasks,), jnp.float32)
  return jax.nn.softmax(draw.astype(jnp.promote_types(dtype, jnp.float32)))
