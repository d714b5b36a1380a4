"""Linear scalarization: a fixed weighted sum of the task gradients."""

import jax
import jax.numpy as jnp


def linear(gram: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Coefficients of the fixed weighted sum ``Σ_t w_t g_t``.

  Args:
    gram: ``[T, T]`` Gramian (only its size is used).
    weights: ``[T]`` task weights; default all ones (the sum of the losses).

  Returns:
    ``[T]`` coefficients, equal to ``weights``.
  """
  t = gram.shape[0]
  if weights is None:
    return jnp.ones((t,), gram.dtype)
  return jnp.broadcast_to(jnp.asarray(weights, gram.dtype), (t,))
