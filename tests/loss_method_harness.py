"""Shared helpers of the loss-based methods' tests (STCH, DB-MTL, IMTL).

Every numeric test runs in float32 and float64 (inside ``jax.enable_x64``; a
no-op in CI's ``JAX_ENABLE_X64=1`` pass); the references are float64 numpy.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ('float32', 'float64')
RTOL = {'float32': 2e-5, 'float64': 1e-11}


def x64(dtype):
  """``jax.enable_x64`` for float64, nothing for float32."""
  return jax.enable_x64(True) if dtype == 'float64' else \
      contextlib.nullcontext()


def problem(seed, t=3, n=5, steps=4):
  """``steps`` random ``[t, n]`` gradients and ``[t]`` positive losses."""
  rng = np.random.default_rng(seed)
  grads = rng.normal(size=(steps, t, n))
  losses = rng.uniform(0.2, 3.0, size=(steps, t))
  return grads, losses


def run_steps(tx, grads, losses, dtype):
  """The directions (float64 numpy) and final state of ``tx`` over the
  steps, on one leaf ``'w'`` holding all the parameters."""
  g = jnp.asarray(grads, dtype)
  params = {'w': jnp.zeros(g.shape[2:], dtype)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for k in range(g.shape[0]):
    d, state = update({'w': g[k]}, state, params,
                      losses=jnp.asarray(losses[k], dtype))
    assert d['w'].dtype == jnp.dtype(dtype)
    out.append(np.asarray(d['w'], np.float64))
  return np.stack(out), state


def close(actual, expected, dtype):
  """``actual`` equals ``expected`` to the dtype's tolerance, relative to
  the largest entry of ``expected``."""
  scale = max(np.abs(expected).max(), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=0,
                             atol=RTOL[dtype] * 10 * scale)


def train_two_steps(method: str):
  """Two parameter-level steps of ``training.train`` with ``method`` by name,
  on the LeNet/MultiMNIST data of ``tests/test_training.py``."""
  import test_training  # pylint: disable=g-import-not-at-top
  from mtl_optax import training  # pylint: disable=g-import-not-at-top
  config = test_training._config(method=method, level='parameter',
                                 learning_rate=1e-3, num_steps=2,
                                 log_every_steps=1, eval_every_epochs=100.0)
  return training.train(config, progress=False,
                        data_fn=test_training._data_fn())
