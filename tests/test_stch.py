"""STCH (Lin et al., ICML 2024) against the paper's rule.

The references are direct numpy float64 implementations on explicit
gradient vectors of the smoothed Tchebycheff gradient with a running ideal
point and, independently, autodiff of the scalarization on a toy problem.
Every numeric test runs in float32 and float64 (inside ``jax.enable_x64``; a
no-op in CI's ``JAX_ENABLE_X64=1`` pass).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_method_harness import DTYPES, x64
from loss_method_harness import close as _close
from loss_method_harness import problem as _problem
from loss_method_harness import run_steps as _run
from loss_method_harness import train_two_steps
import mtl_optax as mtl
from mtl_optax import weightings as W

# ---------------------------------------------------------------------------
# STCH


def np_stch(grads, losses, mu, w=None, ideal=None):
  t = grads.shape[1]
  w = np.ones(t) if w is None else np.asarray(w, float)
  z = None
  out = []
  for g, l in zip(grads, losses):
    if ideal is not None:
      z = np.asarray(ideal, float)
    else:
      z = l.copy() if z is None else np.minimum(z, l)
    a = w * (l - z) / mu
    e = np.exp(a - a.max())
    c = w * e / e.sum()
    out.append(c @ g)
  return np.stack(out)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('mu', [0.1, 1.0, 10.0])
def test_stch_matches_numpy(dtype, mu):
  grads, losses = _problem(0)
  with x64(dtype):
    d, state = _run(mtl.stch(mu, num_tasks=3), grads, losses, dtype)
    _close(d, np_stch(grads, losses, mu), dtype)
    np.testing.assert_allclose(np.asarray(state.inner.ideal),
                               losses.min(0), rtol=1e-6)
    w, z = np.array([0.2, 0.5, 0.3]), np.array([0.1, 0.0, 0.05])
    d, _ = _run(mtl.stch(mu, num_tasks=3, preferences=w, ideal_point=z),
                grads, losses, dtype)
    _close(d, np_stch(grads, losses, mu, w, z), dtype)


@pytest.mark.parametrize('dtype', DTYPES)
def test_stch_is_the_gradient_of_the_smoothed_tchebycheff(dtype):
  """Autodiff of ``μ log Σ exp(w(L(θ) - z*)/μ)`` on quadratic losses."""
  with x64(dtype):
    rng = np.random.default_rng(1)
    centers = jnp.asarray(rng.normal(size=(3, 4)), dtype)
    theta = jnp.asarray(rng.normal(size=4), dtype)
    w = jnp.asarray([0.5, 1.0, 2.0], dtype)
    z = jnp.asarray([0.1, 0.2, 0.0], dtype)
    mu = 0.3

    def losses_fn(p):
      return jnp.sum((p[None] - centers) ** 2, axis=1)

    def scalarized(p):
      return mu * jax.nn.logsumexp(w * (losses_fn(p) - z) / mu)

    jac = jax.jacobian(losses_fn)(theta)
    tx = mtl.stch(mu, num_tasks=3, preferences=w, ideal_point=z)
    params = {'w': theta}
    d, _ = tx.update({'w': jac}, tx.init(params), params,
                     losses=losses_fn(theta))
    _close(np.asarray(d['w'], np.float64),
           np.asarray(jax.grad(scalarized)(theta), np.float64), dtype)


def test_stch_limits_and_first_step():
  losses = jnp.array([3.0, 1.0, 2.0])
  ideal = jnp.zeros(3)
  # μ → 0: the Tchebycheff max (all weight on the task furthest from z*).
  np.testing.assert_allclose(W.stch(losses, ideal, 1e-3), [1, 0, 0],
                             atol=1e-6)
  # μ → ∞: the w-weighted mean.
  np.testing.assert_allclose(W.stch(losses, ideal, 1e6), np.full(3, 1 / 3),
                             rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(W.stch(losses, ideal, 0.7)), 1,
                             rtol=1e-6)
  # The first call has L = z*: uniform weights.
  grads, l = _problem(2, steps=1)
  d, state = _run(mtl.stch(0.01, num_tasks=3), grads, l, 'float32')
  np.testing.assert_allclose(np.asarray(state.weights), np.full(3, 1 / 3),
                             rtol=1e-6)


def test_stch_validation():
  with pytest.raises(ValueError, match='mu'):
    mtl.stch(0.0, num_tasks=2)
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.stch()
  with pytest.raises(ValueError, match='ideal_point'):
    mtl.stch(num_tasks=2, ideal_point=jnp.zeros(3))
  with pytest.raises(ValueError, match='ideal_point'):
    mtl.stch(num_tasks=2, ideal_point=jnp.array([0.0, jnp.nan]))
  with pytest.raises(ValueError, match='preferences'):
    mtl.stch(num_tasks=2, preferences=jnp.array([1.0, -1.0]))
  tx = mtl.stch(num_tasks=2)
  params = {'w': jnp.zeros(2)}
  with pytest.raises(ValueError, match='losses'):
    tx.update({'w': jnp.eye(2)}, tx.init(params), params)


# ---------------------------------------------------------------------------
# Training by name


def test_trains_two_steps_by_name():
  result = train_two_steps('stch')
  assert int(result.state.step) == 2
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()
