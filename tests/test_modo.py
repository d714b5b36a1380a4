"""MoDo (Chen et al., NeurIPS 2023) against a direct numpy transcription of
its rule, in float32 and (under JAX_ENABLE_X64) float64; the two-batch API."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtl_optax as mtl
import reference_solvers as rs
from mtl_optax import weightings

X64 = jax.config.jax_enable_x64
RTOL = 1e-9 if X64 else 2e-4
DTYPE = jnp.float64 if X64 else jnp.float32


def _modo_np(batches, gamma, rho, third):
  t = batches[0][0].shape[0]
  lam = np.full(t, 1 / t)
  out = []
  for j1, j2, j3 in batches:
    lam = rs.project_to_simplex(lam - gamma * (j1 @ j2.T @ lam + rho * lam))
    out.append(((j3 if third else j1).T @ lam, lam.copy()))
  return out


def _grads(rng, t, p, kind):
  g = rng.normal(size=(t, p))
  if kind == 'ill':
    g = g * np.logspace(0, -3, t)[:, None]
    g[1] = g[0] * 1e-2 + 1e-5 * g[1]
  return g


def _tree(g):
  t = g.shape[0]
  return {'a': jnp.asarray(g[:, :3], DTYPE),
          'b': jnp.asarray(g[:, 3:].reshape(t, 2, 2), DTYPE)}


@pytest.mark.parametrize('kind', ['random', 'ill'])
@pytest.mark.parametrize('third', [False, True])
@pytest.mark.parametrize('gamma, rho', [(0.1, 0.1), (0.7, 0.0)])
def test_matches_the_rule_over_steps(kind, third, gamma, rho):
  rng = np.random.default_rng(0)
  t, p = 4, 7
  batches = [tuple(_grads(rng, t, p, kind) for _ in range(3))
             for _ in range(6)]
  ref = _modo_np(batches, gamma, rho, third)
  tx = mtl.modo(num_tasks=t, gamma=gamma, rho=rho)
  state = tx.init(None)
  update = jax.jit(tx.update)
  for (j1, j2, j3), (d_ref, lam_ref) in zip(batches, ref):
    kw = dict(second_grads=_tree(j2))
    if third:
      kw['third_grads'] = _tree(j3)
    d, state = update(_tree(j1), state, **kw)
    atol = RTOL * np.abs(d_ref).max()
    np.testing.assert_allclose(d['a'], d_ref[:3], rtol=RTOL, atol=atol)
    np.testing.assert_allclose(np.asarray(d['b']).ravel(), d_ref[3:],
                               rtol=RTOL, atol=atol)
    np.testing.assert_allclose(state.inner.lam, lam_ref, rtol=RTOL,
                               atol=RTOL)
    np.testing.assert_allclose(state.weights, lam_ref, rtol=RTOL, atol=RTOL)
    lam = np.asarray(state.inner.lam)
    assert (lam >= 0).all() and abs(lam.sum() - 1) < 1e-5
    assert d['a'].dtype == DTYPE


def test_cross_gramian_and_weighting():
  rng = np.random.default_rng(1)
  j1, j2 = rng.normal(size=(2, 3, 7))
  k = weightings.cross_gramian(_tree(j1), _tree(j2))
  np.testing.assert_allclose(k, j1 @ j2.T, rtol=1e-5, atol=1e-5)
  lam = weightings.modo(k, jnp.full(3, 1 / 3, k.dtype), gamma=0.2, rho=0.1)
  ref = rs.project_to_simplex(np.full(3, 1 / 3) - 0.2 * (j1 @ j2.T @ np.full(3, 1 / 3)
                                               + 0.1 / 3))
  np.testing.assert_allclose(lam, ref, atol=1e-5)


def test_same_batch_is_mgda_step_and_permutation_equivariant():
  rng = np.random.default_rng(2)
  g = rng.normal(size=(3, 7))
  perm = np.array([2, 0, 1])
  outs = []
  for order in (np.arange(3), perm):
    tx = mtl.modo(num_tasks=3, gamma=0.05)
    state = tx.init(None)
    for _ in range(3):
      d, state = tx.update(_tree(g[order]), state,
                           second_grads=_tree(g[order]))
    outs.append((d, np.asarray(state.inner.lam)))
  np.testing.assert_allclose(outs[0][1][perm], outs[1][1], rtol=1e-5)
  np.testing.assert_allclose(outs[0][0]['a'], outs[1][0]['a'], rtol=1e-5,
                             atol=1e-6)


def test_missing_or_mismatched_second_grads_is_a_clear_error():
  tx = mtl.modo(num_tasks=2)
  g = {'w': jnp.ones((2, 3))}
  with pytest.raises(ValueError, match='second_grads=grads2.*second_grads='
                     'grads'):
    tx.update(g, tx.init(None))
  with pytest.raises(ValueError, match='structure and shapes'):
    tx.update(g, tx.init(None), second_grads={'w': jnp.ones((2, 4))})


def test_passes_through_optax_chain():
  tx = optax.chain(mtl.modo(num_tasks=2), optax.sgd(0.1))
  params = {'w': jnp.zeros(3)}
  g = {'w': jnp.asarray([[1., 0, 0], [0, 1, 0]])}
  u, _ = tx.update(g, tx.init(params), params, second_grads=g)
  assert np.isfinite(u['w']).all() and np.abs(u['w']).sum() > 0


def test_zero_duplicated_and_non_finite():
  tx = mtl.modo(num_tasks=3)
  state = tx.init(None)
  for g in (np.zeros((3, 7)), np.tile(rng_row(), (3, 1))):
    d, state = tx.update(_tree(g), state, second_grads=_tree(g))
    assert np.isfinite(d['a']).all() and not bool(state.last_skipped)
  np.testing.assert_allclose(state.inner.lam, np.full(3, 1 / 3), rtol=1e-5)
  bad = np.zeros((3, 7))
  bad[0, 0] = np.nan
  before = np.asarray(state.inner.lam)
  d, state = tx.update(_tree(np.ones((3, 7))), state, second_grads=_tree(bad))
  assert bool(state.last_skipped)
  np.testing.assert_array_equal(state.inner.lam, before)
  assert (np.asarray(d['a']) == 0).all()


def rng_row():
  return np.random.default_rng(5).normal(size=(1, 7))


def test_heads_get_the_plain_sum():
  tx = mtl.modo(num_tasks=2, shared={'trunk': True, 'head': False})
  grads = {'trunk': jnp.array([[1., 0.], [0., 1.]]),
           'head': jnp.array([[3., 0.], [0., 5.]])}
  d, _ = tx.update(grads, tx.init(None), second_grads=grads)
  np.testing.assert_allclose(d['head'], [3., 5.])


@pytest.mark.parametrize('kwargs, error, needle', [
    (dict(gamma=0.0), ValueError, 'gamma'),
    (dict(gamma=float('inf')), ValueError, 'gamma'),
    (dict(rho=-0.1), ValueError, 'rho'),
    (dict(rho='x'), TypeError, 'rho'),
])
def test_bad_hyperparameters(kwargs, error, needle):
  with pytest.raises(error, match=needle):
    mtl.modo(num_tasks=2, **kwargs)


def test_needs_num_tasks_and_is_registered():
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.modo()
  assert 'modo' in mtl.available()
  assert mtl.get_aggregator('modo', num_tasks=2).init(None).inner.lam.shape \
      == (2,)


def test_training_train_says_what_the_two_batch_methods_need():
  import test_training  # pylint: disable=g-import-not-at-top
  from mtl_optax import training  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='modo: the update needs second_grads='):
    training.train(test_training._config(method='modo', num_steps=1),
                   progress=False, data_fn=test_training._data_fn())
