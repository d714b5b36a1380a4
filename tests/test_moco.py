"""MoCo (Fernando et al., ICLR 2023) against a direct numpy transcription of
its Algorithm 1, in float32 and (under JAX_ENABLE_X64) float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
import reference_solvers as rs
from mtl_optax import weightings

X64 = jax.config.jax_enable_x64
RTOL = 1e-9 if X64 else 2e-4


def _moco_np(grads_seq, beta, beta_decay, gamma, gamma_decay, rho):
  t, p = grads_seq[0].shape
  y = np.zeros((t, p))
  lam = np.full(t, 1 / t)
  out = []
  for k, g in enumerate(grads_seq, start=1):
    y = y - beta / k**beta_decay * (y - g)
    lam = rs.project_to_simplex(lam - gamma / k**gamma_decay * (y @ y.T + rho * np.eye(t))
                      @ lam)
    out.append((y.T @ lam, lam.copy(), y.copy()))
  return out


def _grads(rng, t, p, kind):
  g = rng.normal(size=(t, p))
  if kind == 'ill':
    g = g * np.logspace(0, -3, t)[:, None]
    g[1] = g[0] * 1e-2 + 1e-5 * g[1]
  return g


@pytest.mark.parametrize('kind', ['random', 'ill'])
@pytest.mark.parametrize('hp', [
    dict(beta=0.5, beta_decay=0.5, gamma=0.1, gamma_decay=0.5, rho=0.0),
    dict(beta=0.9, beta_decay=0.0, gamma=1.0, gamma_decay=0.0, rho=0.3),
])
def test_matches_algorithm_over_steps(kind, hp):
  rng = np.random.default_rng(0)
  t, p = 4, 7
  seq = [_grads(rng, t, p, kind) for _ in range(6)]
  ref = _moco_np(seq, **hp)
  dtype = jnp.float64 if X64 else jnp.float32
  params = {'a': jnp.zeros((3,), dtype), 'b': jnp.zeros((2, 2), dtype)}
  tx = mtl.moco(num_tasks=t, **hp)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g, (d_ref, lam_ref, y_ref) in zip(seq, ref):
    grads = {'a': jnp.asarray(g[:, :3], dtype),
             'b': jnp.asarray(g[:, 3:].reshape(t, 2, 2), dtype)}
    d, state = update(grads, state, params)
    scale = np.abs(d_ref).max() + 1e-30
    np.testing.assert_allclose(d['a'], d_ref[:3], rtol=RTOL,
                               atol=RTOL * scale)
    np.testing.assert_allclose(np.asarray(d['b']).ravel(), d_ref[3:],
                               rtol=RTOL, atol=RTOL * scale)
    inner = state.inner
    np.testing.assert_allclose(inner.lam, lam_ref, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(state.weights, lam_ref, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(inner.tracked['a'], y_ref[:, :3], rtol=RTOL,
                               atol=RTOL * np.abs(y_ref).max())
    assert d['a'].dtype == dtype
  assert int(state.inner.count) == 6


def test_lambda_stays_on_the_simplex():
  rng = np.random.default_rng(1)
  tx = mtl.moco(num_tasks=5, gamma=10.0, gamma_decay=0.0)
  params = {'w': jnp.zeros(6)}
  state = tx.init(params)
  for _ in range(8):
    grads = {'w': jnp.asarray(rng.normal(size=(5, 6)) * 10)}
    _, state = tx.update(grads, state, params)
    lam = np.asarray(state.inner.lam)
    assert (lam >= 0).all()
    np.testing.assert_allclose(lam.sum(), 1, rtol=1e-5)


@pytest.mark.parametrize('t', [1, 2, 3, 6])
def test_project_to_simplex_matches_bisection(t):
  rng = np.random.default_rng(t)
  for _ in range(20):
    v = rng.normal(size=t) * rng.choice([0.01, 1, 100])
    got = np.asarray(weightings.project_to_simplex(jnp.asarray(v)))
    np.testing.assert_allclose(got, rs.project_to_simplex(v), atol=1e-5 * max(
        1, np.abs(v).max()))
  ok = jnp.array([0.2, 0.3, 0.5])
  np.testing.assert_allclose(weightings.project_to_simplex(ok), ok, atol=1e-7)


def test_weighting_is_permutation_equivariant():
  rng = np.random.default_rng(3)
  g = rng.normal(size=(4, 5))
  k = jnp.asarray(g @ g.T)
  lam = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  perm = np.array([2, 0, 3, 1])
  a = weightings.moco(k, lam, gamma=0.05, rho=0.1)
  b = weightings.moco(k[perm][:, perm], lam[perm], gamma=0.05, rho=0.1)
  np.testing.assert_allclose(np.asarray(a)[perm], b, rtol=1e-5, atol=1e-7)


def test_zero_and_duplicated_gradients_are_finite():
  params = {'w': jnp.zeros(3)}
  tx = mtl.moco(num_tasks=3)
  state = tx.init(params)
  for g in (np.zeros((3, 3)), np.array([[1., 2, 3], [1, 2, 3], [1, 2, 3]])):
    d, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    assert np.isfinite(d['w']).all()
    assert not bool(state.last_skipped)
  # Duplicated gradients: the weights stay symmetric (uniform).
  np.testing.assert_allclose(state.inner.lam, np.full(3, 1 / 3), rtol=1e-5)


def test_non_finite_step_is_skipped_and_state_kept():
  params = {'w': jnp.zeros(2)}
  tx = mtl.moco(num_tasks=2)
  state = tx.init(params)
  _, state = tx.update({'w': jnp.array([[1., 0.], [0., 2.]])}, state, params)
  before = state.inner
  d, state = tx.update({'w': jnp.array([[np.nan, 0.], [0., 2.]])}, state,
                       params)
  assert bool(state.last_skipped)
  assert (np.asarray(d['w']) == 0).all()
  np.testing.assert_array_equal(state.inner.tracked['w'], before.tracked['w'])
  np.testing.assert_array_equal(state.inner.lam, before.lam)


def test_heads_get_the_plain_sum():
  params = {'trunk': jnp.zeros(2), 'head': jnp.zeros(2)}
  tx = mtl.moco(num_tasks=2, shared={'trunk': True, 'head': False})
  state = tx.init(params)
  grads = {'trunk': jnp.array([[1., 0.], [0., 1.]]),
           'head': jnp.array([[3., 0.], [0., 5.]])}
  d, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(d['head'], [3., 5.])
  np.testing.assert_allclose(d['trunk'], [0.25, 0.25], rtol=1e-6)


@pytest.mark.parametrize('kwargs, error, needle', [
    (dict(beta=0.0), ValueError, 'beta'),
    (dict(beta=1.5), ValueError, 'beta'),
    (dict(gamma=0.0), ValueError, 'gamma'),
    (dict(gamma=float('nan')), ValueError, 'gamma'),
    (dict(rho=-1.0), ValueError, 'rho'),
    (dict(beta_decay=-0.1), ValueError, 'beta_decay'),
    (dict(gamma_decay='x'), TypeError, 'gamma_decay'),
])
def test_bad_hyperparameters(kwargs, error, needle):
  with pytest.raises(error, match=needle):
    mtl.moco(num_tasks=2, **kwargs)


def test_needs_num_tasks_and_params():
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.moco()
  with pytest.raises(TypeError, match='parameter level'):
    mtl.moco(num_tasks=2).init(None)


def test_registered():
  assert 'moco' in mtl.available()
  tx = mtl.get_aggregator('moco', num_tasks=2)
  assert tx.init({'w': jnp.zeros(1)}).inner.lam.shape == (2,)


def test_trains_with_training_train():
  import test_training  # pylint: disable=g-import-not-at-top
  from mtl_optax import training  # pylint: disable=g-import-not-at-top
  config = test_training._config(method='moco', num_steps=2,
                                 log_every_steps=1)
  result = training.train(config, progress=False,
                          data_fn=test_training._data_fn())
  weights = result.history['weights']
  assert weights.shape == (2, 2)
  assert np.isfinite(result.history['losses']).all()
  np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)


def test_zero_size_leaf_and_bf16():
  for dtype in (jnp.float32, jnp.bfloat16):
    params = {'w': jnp.zeros(3, dtype), 'empty': jnp.zeros((0,), dtype)}
    tx = mtl.moco(num_tasks=2)
    state = tx.init(params)
    grads = {'w': jnp.asarray([[1., 2, 3], [-1, 0, 1]], dtype),
             'empty': jnp.zeros((2, 0), dtype)}
    d, state = jax.jit(tx.update)(grads, state, params)
    assert d['empty'].shape == (0,) and d['w'].dtype == dtype
    assert np.isfinite(np.asarray(d['w'], np.float32)).all()
    assert not bool(state.last_skipped)
