"""SDMGrad (Xiao et al., NeurIPS 2023) against a direct numpy transcription
of its Algorithm 1, in float32 and (under JAX_ENABLE_X64) float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
import reference_solvers as rs
from mtl_optax import weightings

X64 = jax.config.jax_enable_x64
RTOL = 1e-8 if X64 else 1e-3
DTYPE = jnp.float64 if X64 else jnp.float32


def _sdmgrad_np(batches, lamda, beta, steps, third):
  t = batches[0][0].shape[0]
  w = np.full(t, 1 / t)
  mean = np.full(t, 1 / t)
  out = []
  for j1, j2, j3 in batches:
    s2 = (np.mean(np.linalg.norm(j1, axis=1))
          * np.mean(np.linalg.norm(j2, axis=1)))
    k = j1 @ j2.T / (s2 if s2 > 0 else 1)
    for _ in range(steps):
      w = rs.project_to_simplex(w - beta * k @ (w + lamda * mean))
    c = (w + lamda * mean) / (1 + lamda)
    out.append(((j3 if third else j1).T @ c, c, w.copy()))
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
@pytest.mark.parametrize('lamda, beta, steps', [(0.3, 10.0, 20),
                                                (2.0, 0.5, 3)])
def test_matches_algorithm_over_steps(kind, third, lamda, beta, steps):
  rng = np.random.default_rng(0)
  t, p = 3, 7
  batches = [tuple(_grads(rng, t, p, kind) for _ in range(3))
             for _ in range(4)]
  ref = _sdmgrad_np(batches, lamda, beta, steps, third)
  tx = mtl.sdmgrad(num_tasks=t, lamda=lamda, step_size=beta,
                   num_steps=steps)
  state = tx.init(None)
  update = jax.jit(tx.update)
  for (j1, j2, j3), (d_ref, c_ref, w_ref) in zip(batches, ref):
    kw = dict(second_grads=_tree(j2))
    if third:
      kw['third_grads'] = _tree(j3)
    d, state = update(_tree(j1), state, **kw)
    atol = RTOL * np.abs(d_ref).max()
    np.testing.assert_allclose(d['a'], d_ref[:3], rtol=RTOL, atol=atol)
    np.testing.assert_allclose(np.asarray(d['b']).ravel(), d_ref[3:],
                               rtol=RTOL, atol=atol)
    np.testing.assert_allclose(state.weights, c_ref, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(state.inner.w, w_ref, rtol=RTOL, atol=RTOL)
    w = np.asarray(state.inner.w)
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-5
    np.testing.assert_allclose(np.sum(state.weights), 1, rtol=1e-5)


def test_limits_of_lamda():
  rng = np.random.default_rng(3)
  g = rng.normal(size=(3, 7))
  # λ large: the mean gradient.
  c, _ = weightings.sdmgrad(jnp.asarray(g @ g.T), jnp.full(3, 1 / 3),
                            lamda=1e6, step_size=0.1)
  np.testing.assert_allclose(c, np.full(3, 1 / 3), atol=1e-5)
  # λ = 0 on one batch, many steps: MGDA's min-norm point.
  k = jnp.asarray(g @ g.T / np.mean(np.linalg.norm(g, axis=1))**2)
  c, w = weightings.sdmgrad(k, jnp.full(3, 1 / 3), lamda=0.0,
                            step_size=0.05, num_steps=3000)
  ref = np.asarray(mtl.weightings.mgda(k))
  ref = ref / ref.sum()
  np.testing.assert_allclose(np.asarray(c) @ g, ref @ g, atol=1e-3)


def test_scale_invariance_of_the_normalised_product():
  rng = np.random.default_rng(4)
  g1, g2 = rng.normal(size=(2, 3, 7))
  outs = []
  for scale in (1.0, 1e3):
    tx = mtl.sdmgrad(num_tasks=3)
    _, state = tx.update(_tree(g1 * scale), tx.init(None),
                         second_grads=_tree(g2 * scale))
    outs.append(np.asarray(state.weights))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-6)


def test_missing_second_grads_is_a_clear_error():
  tx = mtl.sdmgrad(num_tasks=2)
  with pytest.raises(ValueError, match='sdmgrad: the update needs '
                     'second_grads='):
    tx.update({'w': jnp.ones((2, 3))}, tx.init(None))


def test_zero_duplicated_and_non_finite():
  tx = mtl.sdmgrad(num_tasks=3)
  state = tx.init(None)
  row = np.random.default_rng(5).normal(size=(1, 7))
  for g in (np.zeros((3, 7)), np.tile(row, (3, 1))):
    d, state = tx.update(_tree(g), state, second_grads=_tree(g))
    assert np.isfinite(d['a']).all() and not bool(state.last_skipped)
  np.testing.assert_allclose(state.weights, np.full(3, 1 / 3), rtol=1e-5)
  bad = np.ones((3, 7))
  bad[1, 2] = np.inf
  d, state = tx.update(_tree(bad), state, second_grads=_tree(np.ones((3, 7))))
  assert bool(state.last_skipped) and (np.asarray(d['a']) == 0).all()


@pytest.mark.parametrize('kwargs, error, needle', [
    (dict(lamda=-0.1), ValueError, 'lamda'),
    (dict(step_size=0.0), ValueError, 'step_size'),
    (dict(step_size=float('nan')), ValueError, 'step_size'),
    (dict(num_steps=0), ValueError, 'num_steps'),
    (dict(num_steps=2.5), TypeError, 'num_steps'),
])
def test_bad_hyperparameters(kwargs, error, needle):
  with pytest.raises(error, match=needle):
    mtl.sdmgrad(num_tasks=2, **kwargs)


def test_needs_num_tasks_and_is_registered():
  with pytest.raises(TypeError, match='num_tasks'):
    mtl.sdmgrad()
  assert 'sdmgrad' in mtl.available()
