"""IMTL, the hybrid (Liu et al., ICLR 2021), against the paper's rule.

The reference is the paper's closed form for IMTL-G (on the differences of
the unit gradients, never the library's Gramian form) applied to the scaled
gradients ``e^{s_t} g_t``, with the loss scales' own gradient steps on
``Σ e^{s_t} L_t - s_t``. Every numeric test runs in float32 and float64
(inside ``jax.enable_x64``; a no-op in CI's ``JAX_ENABLE_X64=1`` pass).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from loss_method_harness import DTYPES, RTOL, x64
from loss_method_harness import close as _close
from loss_method_harness import problem as _problem
from loss_method_harness import run_steps as _run
from loss_method_harness import train_two_steps
import mtl_optax as mtl
from mtl_optax import weightings as W

# ---------------------------------------------------------------------------
# IMTL (hybrid)


def np_imtl_g_closed_form(g):
  """The paper's closed form: ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 -
  Σ α_{2:T}``, with ``U`` the rows ``u_1 - u_t`` and ``D`` the rows ``g_1 -
  g_t``."""
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  big_u = u[0] - u[1:]
  big_d = g[0] - g[1:]
  rest = g[0] @ big_u.T @ np.linalg.inv(big_d @ big_u.T)
  return np.concatenate([[1 - rest.sum()], rest])


def np_imtl(grads, losses, lr):
  s = np.zeros(grads.shape[1])
  out = []
  for g, l in zip(grads, losses):
    scaled = np.exp(s)[:, None] * g
    alpha = np_imtl_g_closed_form(scaled)
    out.append(alpha @ scaled)
    s = s - lr * (np.exp(s) * l - 1)
  return np.stack(out), s


@pytest.mark.parametrize('dtype', DTYPES)
def test_imtl_matches_the_papers_closed_form(dtype):
  grads, losses = _problem(7, t=3, n=5, steps=4)
  lr = 0.3
  with x64(dtype):
    d, state = _run(mtl.imtl(num_tasks=3, optimizer=optax.sgd(lr)), grads,
                    losses, dtype)
    expected, s = np_imtl(grads, losses, lr)
    _close(d, expected, dtype)
    np.testing.assert_allclose(np.asarray(state.inner.log_scales), s,
                               rtol=10 * RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize('dtype', DTYPES)
def test_imtl_equal_projections_and_heads(dtype):
  rng = np.random.default_rng(8)
  g = rng.normal(size=(3, 6))
  s = np.array([0.3, -0.5, 1.0])
  with x64(dtype):
    gram = jnp.asarray(g @ g.T, dtype)
    c = np.asarray(W.imtl(gram, jnp.asarray(s, dtype)), np.float64)
  d = c @ g
  scaled = np.exp(s)[:, None] * g
  proj = scaled @ d / np.linalg.norm(scaled, axis=1)
  np.testing.assert_allclose(proj, proj[0], rtol=100 * RTOL[dtype])
  np.testing.assert_allclose(np.sum(c * np.exp(-s)), 1, rtol=10 * RTOL[dtype])
  # Task-specific leaves: their own scaled loss, weights e^s.
  tx = mtl.imtl(num_tasks=2, optimizer=optax.sgd(1.0),
                shared={'a': True, 'b': False})
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(1)}
  state = tx.init(params)
  grads = {'a': jnp.eye(2), 'b': jnp.array([[1.0], [1.0]])}
  _, state = tx.update(grads, state, params, losses=jnp.array([2.0, 0.5]))
  s1 = np.asarray(state.inner.log_scales)
  np.testing.assert_allclose(s1, [-1.0, 0.5])             # s - (e^s L - 1)
  d, _ = tx.update(grads, state, params, losses=jnp.array([2.0, 0.5]))
  np.testing.assert_allclose(d['b'], [np.exp(s1).sum()], rtol=1e-6)


def test_imtl_validation():
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.imtl()
  with pytest.raises(TypeError, match='optimizer'):
    mtl.imtl(num_tasks=2, optimizer='adam')
  tx = mtl.imtl(num_tasks=2)
  params = {'w': jnp.zeros(2)}
  with pytest.raises(ValueError, match='losses'):
    tx.update({'w': jnp.eye(2)}, tx.init(params), params)


# ---------------------------------------------------------------------------
# Training by name


def test_trains_two_steps_by_name():
  result = train_two_steps('imtl')
  assert int(result.state.step) == 2
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()
