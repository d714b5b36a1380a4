"""Linear scalarization: a fixed weighted sum of the task gradients."""

import jax
import jax.numpy as jnp


def preference_vector(preferences: jax.Array | None, num_tasks: int,
                      dtype=jnp.float32) -> jax.Array:
  """The ``[T]`` task preferences: all ones (the sum convention) by default.

  Args:
    preferences: ``None`` or anything broadcastable to ``[T]``.
    num_tasks: ``T``.
    dtype: dtype of the result.

  Returns:
    A ``[T]`` array.
  """
  if preferences is None:
    return jnp.ones((num_tasks,), dtype)
  return jnp.broadcast_to(jnp.asarray(preferences, dtype), (num_tasks,))


def linear(gram: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Coefficients of the fixed weighted sum ``Σ_t w_t g_t``.

  Args:
    gram: ``[T, T]`` Gramian (only its size is used).
    weights: ``[T]`` task weights; default all ones (the sum of the losses).

  Returns:
    ``[T]`` coefficients, equal to ``weights``.
  """
  return preference_vector(weights, gram.shape[0], gram.dtype)
