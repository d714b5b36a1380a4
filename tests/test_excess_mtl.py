"""ExcessMTL (He et al., ICML 2024) against a direct numpy transcription of
its rule, in float32 and (under JAX_ENABLE_X64) float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
from mtl_optax import weightings

X64 = jax.config.jax_enable_x64
RTOL = 1e-9 if X64 else 2e-4


def _excess_np(grads_seq, eta, eps=1e-7):
  t, p = grads_seq[0].shape
  g_sum = np.zeros((t, p))
  w = np.ones(t)
  e0 = None
  out = []
  for g in grads_seq:
    g_sum = g_sum + g**2
    e = np.array([g[k] / np.sqrt(g_sum[k] + eps) @ g[k] for k in range(t)])
    if e0 is None:
      e0 = e
    else:
      w = w * np.exp(eta * e / e0)
      w = w / w.sum() * t
    out.append((w @ g, w.copy(), e.copy()))
  return out


def _grads(rng, t, p, kind):
  g = rng.normal(size=(t, p))
  if kind == 'ill':
    g = g * np.logspace(0, -3, t)[:, None]
    g[1] = g[0] * 1e-2 + 1e-5 * g[1]
  return g


@pytest.mark.parametrize('kind', ['random', 'ill'])
@pytest.mark.parametrize('eta', [1e-2, 0.5])
def test_matches_the_rule_over_steps(kind, eta):
  rng = np.random.default_rng(0)
  t, p = 3, 7
  # Later batches smaller: the tasks' excess ratios differ.
  seq = [_grads(rng, t, p, kind) * np.array([1., .3, 2.])[:, None] ** s
         for s in range(6)]
  ref = _excess_np(seq, eta)
  dtype = jnp.float64 if X64 else jnp.float32
  params = {'a': jnp.zeros((3,), dtype), 'b': jnp.zeros((2, 2), dtype)}
  tx = mtl.excess_mtl(num_tasks=t, robust_step_size=eta)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g, (d_ref, w_ref, _) in zip(seq, ref):
    grads = {'a': jnp.asarray(g[:, :3], dtype),
             'b': jnp.asarray(g[:, 3:].reshape(t, 2, 2), dtype)}
    d, state = update(grads, state, params)
    scale = np.abs(d_ref).max()
    np.testing.assert_allclose(d['a'], d_ref[:3], rtol=RTOL,
                               atol=RTOL * scale)
    np.testing.assert_allclose(np.asarray(d['b']).ravel(), d_ref[3:],
                               rtol=RTOL, atol=RTOL * scale)
    np.testing.assert_allclose(state.weights, w_ref, rtol=RTOL)
    assert d['a'].dtype == dtype
  np.testing.assert_allclose(state.inner.initial, ref[0][2], rtol=RTOL)
  np.testing.assert_allclose(state.inner.sum_squares['a'],
                             sum(g[:, :3]**2 for g in seq), rtol=RTOL)


def test_weights_sum_to_t_and_favour_the_unconverged_task():
  # Task 0's gradients stay large, task 1's shrink: task 0 gains weight.
  params = {'w': jnp.zeros(4)}
  tx = mtl.excess_mtl(num_tasks=2, robust_step_size=0.5)
  state = tx.init(params)
  rng = np.random.default_rng(2)
  for s in range(8):
    g = rng.normal(size=(2, 4)) * np.array([[1.], [0.5**s]])
    _, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    w = np.asarray(state.weights)
    np.testing.assert_allclose(w.sum(), 2, rtol=1e-5)
    assert (w > 0).all()
  assert w[0] > w[1]


def test_scale_invariance_per_task():
  # Rescaling one task's gradients at every step leaves the weights alone
  # (e/e0 is invariant up to ε), as the normalisation by e0 intends.
  rng = np.random.default_rng(4)
  seq = [rng.normal(size=(2, 5)) for _ in range(5)]
  params = {'w': jnp.zeros(5)}
  runs = []
  for scale in (1.0, 100.0):
    tx = mtl.excess_mtl(num_tasks=2, robust_step_size=0.3)
    state = tx.init(params)
    for g in seq:
      g = g * np.array([[1.], [scale]])
      _, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    runs.append(np.asarray(state.weights))
  np.testing.assert_allclose(runs[0], runs[1], rtol=1e-3)


def test_weighting_function():
  w, log_w = weightings.excess_mtl(jnp.zeros(3), jnp.array([1., 2., 0.]),
                                   jnp.array([1., 1., 0.]),
                                   robust_step_size=1.0)
  expected = np.exp([1., 2., 0.])
  np.testing.assert_allclose(w, 3 * expected / expected.sum(), rtol=1e-5)
  assert float(jnp.max(log_w)) == 0.0


def test_zero_and_duplicated_gradients_are_finite():
  params = {'w': jnp.zeros(3)}
  tx = mtl.excess_mtl(num_tasks=3)
  state = tx.init(params)
  for g in (np.zeros((3, 3)), np.array([[1., 2, 3]] * 3), np.zeros((3, 3)),
            np.array([[1., 2, 3]] * 3)):
    d, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    assert np.isfinite(d['w']).all()
    assert not bool(state.last_skipped)
    assert np.isfinite(state.weights).all()


def test_non_finite_step_is_skipped_and_state_kept():
  params = {'w': jnp.zeros(2)}
  tx = mtl.excess_mtl(num_tasks=2)
  state = tx.init(params)
  _, state = tx.update({'w': jnp.array([[1., 0.], [0., 2.]])}, state, params)
  before = state.inner
  d, state = tx.update({'w': jnp.array([[np.inf, 0.], [0., 2.]])}, state,
                       params)
  assert bool(state.last_skipped)
  assert (np.asarray(d['w']) == 0).all()
  np.testing.assert_array_equal(state.inner.sum_squares['w'],
                                before.sum_squares['w'])
  assert int(state.inner.count) == 1


def test_heads_are_weighted_and_not_accumulated():
  params = {'trunk': jnp.zeros(2), 'head': jnp.zeros(2)}
  tx = mtl.excess_mtl(num_tasks=2, shared={'trunk': True, 'head': False})
  state = tx.init(params)
  assert state.inner.sum_squares['head'].shape == (2,)
  grads = {'trunk': jnp.array([[1., 0.], [0., 1.]]),
           'head': jnp.array([[3., 0.], [0., 5.]])}
  d, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(d['head'], [3., 5.])


def test_zero_size_leaf_and_bf16():
  for dtype in (jnp.float32, jnp.bfloat16):
    params = {'w': jnp.zeros(3, dtype), 'empty': jnp.zeros((0,), dtype)}
    tx = mtl.excess_mtl(num_tasks=2)
    state = tx.init(params)
    grads = {'w': jnp.asarray([[1., 2, 3], [-1, 0, 1]], dtype),
             'empty': jnp.zeros((2, 0), dtype)}
    for _ in range(2):
      d, state = jax.jit(tx.update)(grads, state, params)
    assert d['empty'].shape == (0,) and d['w'].dtype == dtype
    assert np.isfinite(np.asarray(d['w'], np.float32)).all()
    assert not bool(state.last_skipped)


@pytest.mark.parametrize('kwargs, error, needle', [
    (dict(robust_step_size=0.0), ValueError, 'robust_step_size'),
    (dict(robust_step_size=-1.0), ValueError, 'robust_step_size'),
    (dict(robust_step_size=float('inf')), ValueError, 'robust_step_size'),
    (dict(robust_step_size='big'), TypeError, 'robust_step_size'),
])
def test_bad_hyperparameters(kwargs, error, needle):
  with pytest.raises(error, match=needle):
    mtl.excess_mtl(num_tasks=2, **kwargs)


def test_needs_num_tasks_and_params():
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.excess_mtl()
  with pytest.raises(TypeError, match='parameter level'):
    mtl.excess_mtl(num_tasks=2).init(None)


def test_trains_with_training_train():
  import test_training  # pylint: disable=g-import-not-at-top
  from mtl_optax import training  # pylint: disable=g-import-not-at-top
  config = test_training._config(method='excess_mtl', num_steps=2,
                                 log_every_steps=1)
  result = training.train(config, progress=False,
                          data_fn=test_training._data_fn())
  weights = result.history['weights']
  assert weights.shape == (2, 2)
  assert np.isfinite(result.history['losses']).all()
  np.testing.assert_allclose(weights.sum(-1), 2, rtol=1e-5)
