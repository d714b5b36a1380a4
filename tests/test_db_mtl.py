"""DB-MTL (Lin et al., 2023) against the paper's rule.

The reference is a direct numpy float64 implementation on explicit gradient
vectors: the averaged log-loss gradients rescaled to the largest norm. Every
numeric test runs in float32 and float64 (inside ``jax.enable_x64``; a no-op
in CI's ``JAX_ENABLE_X64=1`` pass).
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

# ---------------------------------------------------------------------------
# DB-MTL


def np_db_mtl(grads, losses, beta, sigma, shared=None):
  """``grads [K, T, n]``; ``shared`` a boolean mask over the n entries."""
  n = grads.shape[2]
  shared = np.ones(n, bool) if shared is None else shared
  m = np.zeros(grads.shape[1:])
  out = []
  for k, (g, l) in enumerate(zip(grads, losses), start=1):
    log_grad = g / (l + 1e-8)[:, None]
    b = beta / k ** sigma
    m = b * m + (1 - b) * log_grad
    norms = np.linalg.norm(m[:, shared], axis=1)
    alpha = np.where(norms > 0, norms.max() / np.where(norms > 0, norms, 1), 0)
    d = np.where(shared, alpha @ m, log_grad.sum(0))
    out.append(d)
  return np.stack(out)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('beta,sigma', [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_db_mtl_matches_numpy(dtype, beta, sigma):
  grads, losses = _problem(3, steps=5)
  with x64(dtype):
    d, state = _run(mtl.db_mtl(beta, sigma, num_tasks=3), grads, losses,
                    dtype)
    _close(d, np_db_mtl(grads, losses, beta, sigma), dtype)
    assert int(state.inner.count) == 5


@pytest.mark.parametrize('dtype', DTYPES)
def test_db_mtl_heads_take_the_plain_log_gradients(dtype):
  grads, losses = _problem(4, n=6, steps=3)
  shared = np.array([True, True, True, True, False, False])
  with x64(dtype):
    g = jnp.asarray(grads, dtype)
    params = {'a': jnp.zeros(4, dtype), 'b': jnp.zeros(2, dtype)}
    tx = mtl.db_mtl(num_tasks=3, shared={'a': True, 'b': False})
    state = tx.init(params)
    out = []
    for k in range(3):
      d, state = tx.update({'a': g[k, :, :4], 'b': g[k, :, 4:]}, state,
                           params, losses=jnp.asarray(losses[k], dtype))
      out.append(np.concatenate([np.asarray(d['a'], np.float64),
                                 np.asarray(d['b'], np.float64)]))
    _close(np.stack(out), np_db_mtl(grads, losses, 0.9, 0.0, shared), dtype)


def test_db_mtl_balances_norms_and_ignores_loss_scales():
  grads, losses = _problem(5, steps=1)
  # β = 0: every task contributes a vector of the largest log-gradient norm.
  log_grads = grads[0] / losses[0][:, None]
  _, state = _run(mtl.db_mtl(0.0, num_tasks=3), grads, losses, 'float32')
  norms = np.linalg.norm(log_grads, axis=1)
  contributions = np.asarray(state.weights)[:, None] * log_grads
  np.testing.assert_allclose(np.linalg.norm(contributions, axis=1),
                             np.full(3, norms.max()), rtol=1e-5)
  # A task's loss scaled by s > 0 (L and g both times s): same update.
  grads2, losses2 = _problem(6, steps=4)
  scale = np.array([100.0, 1.0, 0.01])
  a, _ = _run(mtl.db_mtl(num_tasks=3), grads2, losses2, 'float32')
  b, _ = _run(mtl.db_mtl(num_tasks=3), grads2 * scale[:, None],
              losses2 * scale, 'float32')
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_db_mtl_validation_and_skip():
  with pytest.raises(ValueError, match='beta'):
    mtl.db_mtl(1.0, num_tasks=2)
  with pytest.raises(ValueError, match='beta_sigma'):
    mtl.db_mtl(0.9, -1.0, num_tasks=2)
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.db_mtl()
  tx = mtl.db_mtl(num_tasks=2)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  d, new = tx.update({'w': jnp.eye(2)}, state, params,
                     losses=jnp.array([1.0, jnp.nan]))
  assert bool(new.last_skipped)
  np.testing.assert_array_equal(d['w'], 0)
  np.testing.assert_array_equal(new.inner.ema['w'], state.inner.ema['w'])


@pytest.mark.parametrize('magnitude', [1.0, 1e30])
def test_db_mtl_diagnostics_are_those_of_the_gradients(magnitude):
  # The diagnostics' Gramian comes from the norms' pass (one read): the
  # dominance rate and the rest are those of the shared leaves' gradients
  # (not of the averages), also for gradients whose plain Gramian overflows
  # float32; the task-specific leaf does not enter.
  r = np.random.default_rng(3)
  grads = {'a': jnp.asarray(r.standard_normal((3, 300_001)) * magnitude,
                            jnp.float32),
           'b': jnp.asarray(r.standard_normal((3, 4)) * 1e3, jnp.float32)}
  mask = {'a': True, 'b': False}
  tx = mtl.db_mtl(num_tasks=3, shared=mask)
  params = jax.tree.map(lambda g: g[0], grads)
  state = tx.init(params)
  # One step to fill the averages, then the step whose diagnostics we read.
  _, state = tx.update(grads, state, params, losses=jnp.array([1., 2., 3.]))
  grads = jax.tree.map(lambda g: g[::-1], grads)
  _, state = jax.jit(lambda g, s: tx.update(
      g, s, params, losses=jnp.array([1., 2., 3.])))(grads, state)
  assert not bool(state.last_skipped)
  k_hat, _ = mtl.gramians.normalized_gramian(grads, mask)
  expected = mtl.diagnostics.from_gramian(k_hat)
  for name, got in state.diagnostics._asdict().items():
    np.testing.assert_allclose(got, getattr(expected, name), rtol=1e-5,
                               err_msg=name)


# ---------------------------------------------------------------------------
# Training by name


def test_trains_two_steps_by_name():
  result = train_two_steps('db_mtl')
  assert int(result.state.step) == 2
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()
