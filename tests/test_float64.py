"""float64 end to end, and zero-size leaves, for every registered aggregator.

x64 is a global JAX flag: these tests turn it on only inside
``jax.enable_x64(True)`` (a context manager, thread-local), so they do not
leak into other tests; under ``JAX_ENABLE_X64=1`` (the CI's float64 pass) the
context is a no-op. float64 inputs must give float64 results (Gramian,
coefficients, update, diagnostics) that agree with numpy's float64 to
~1e-13, far below float32's 1e-7: a silent float32 step would fail them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
from mtl_optax import registry

NAMES = mtl.available()
# The issue's reproducer (T = 2) and a third task, for the solvers' T > 2
# paths.
J2 = np.array([[-4., 1., 1.], [6., 1., 1.]])
J3 = np.array([[-4., 1., 1.], [6., 1., 1.], [1., -2., 3.]])
# float64 values no float32 can hold: float32 rounding shows at ~1e-8.
RNG = np.random.default_rng(0)
G64 = RNG.standard_normal((3, 257)) * np.exp(RNG.standard_normal((3, 1)))


def x64():
  return jax.enable_x64(True)


def _extra(name, t, dtype):
  if name in registry.NEEDS_LOSSES:
    return {'losses': jnp.arange(1., t + 1., dtype=dtype)}
  return {}


def _dtypes(tree):
  return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)


def _run(name, grads, steps=2):
  """``steps`` jitted updates of ``name``; returns the updates and states."""
  t = mtl.num_tasks(grads)
  tx = registry.for_tasks(name, num_tasks=t)
  dtype = jax.tree.leaves(grads)[0].dtype
  extra = _extra(name, t, dtype)
  update = jax.jit(lambda g, s, e: tx.update(g, s, None, **e))
  states = [tx.init(None)]
  updates = []
  for _ in range(steps):
    u, s = update(grads, states[-1], extra)
    updates.append(u)
    states.append(s)
  return updates, states


def _with_empty(dtype):
  """``J3`` plus zero-size leaves (``[T, 0]`` and ``[T, 2, 0]``)."""
  return {'w': jnp.asarray(J3, dtype), 'empty': jnp.zeros((3, 0), dtype),
          'empty3': jnp.zeros((3, 2, 0), dtype)}


@functools.lru_cache(maxsize=None)
def _updates_with_empty(name, dtype):
  """Two steps of ``name`` on ``_with_empty(dtype)`` (float64 under x64;
  float32 with whatever x64 setting the session has), cached: each costs
  one compilation per method."""
  if dtype == 'float64':
    with x64():
      return _run(name, _with_empty(dtype))
  return _run(name, _with_empty(dtype))


def _check_steps(updates, states, dtype):
  for u in updates:
    assert u['w'].dtype == dtype and u['w'].shape == (3,)
    assert np.all(np.isfinite(np.asarray(u['w'])))
  # The state keeps its dtypes (a lax.scan over steps needs that).
  for state in states[1:]:
    assert _dtypes(state) == _dtypes(states[0])
  if isinstance(states[-1], mtl.AggregatorState):
    assert not bool(states[-1].last_skipped)


@pytest.mark.parametrize('name', NAMES)
def test_every_aggregator_float64_reproducer(name):
  """The issue's reproducer: a float64 ``[2, 3]`` Jacobian, two steps."""
  if name in registry.TRACKS_GRADIENTS:
    pytest.skip('init needs the parameters and the update follows the '
                "tracked gradients: in the method's own test file")
  if name in registry.NEEDS_SECOND_GRADS:
    pytest.skip('the update needs second_grads= (another batch): '
                "in the method's own test file")
  with x64():
    updates, states = _run(name, {'w': jnp.asarray(J2, jnp.float64)})
    _check_steps(updates, states, jnp.float64)


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
@pytest.mark.parametrize('name', NAMES)
def test_every_aggregator_zero_size_leaves(name, dtype):
  """T = 3 (the solvers' T > 2 paths) with zero-size leaves: these add
  nothing to the Gramian and come back zero-size in the input's dtype;
  float32 agrees with float64 to float32 accuracy. (Under
  ``JAX_ENABLE_X64=1`` the float32 case checks float32 inputs with x64 on.)"""
  if name in registry.TRACKS_GRADIENTS:
    pytest.skip('init needs the parameters and the update follows the '
                "tracked gradients: in the method's own test file")
  if name in registry.NEEDS_SECOND_GRADS:
    pytest.skip('the update needs second_grads= (another batch): '
                "in the method's own test file")
  updates, states = _updates_with_empty(name, dtype)
  _check_steps(updates, states, dtype)
  u = updates[0]
  assert u['empty'].shape == (0,) and u['empty'].dtype == dtype
  assert u['empty3'].shape == (2, 0) and u['empty3'].dtype == dtype
  if dtype == 'float32':
    ref = _updates_with_empty(name, 'float64')[0][0]['w']
    np.testing.assert_allclose(np.asarray(u['w']), np.asarray(ref),
                               rtol=1e-3, atol=1e-4)


def test_gramian_matches_numpy_float64():
  with x64():
    g = {'a': jnp.asarray(G64[:, :200]), 'b': jnp.asarray(
        G64[:, 200:].reshape(3, 3, 19))}
    ref = G64 @ G64.T
    k = mtl.gramian(g)
    assert k.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(k), ref, rtol=1e-13,
                               atol=1e-13 * np.abs(ref).max())
    k_hat, scale = mtl.normalized_gramian(g)
    assert k_hat.dtype == scale.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(k_hat * scale**2), ref, rtol=1e-13,
                               atol=1e-13 * np.abs(ref).max())
    assert float(jnp.max(jnp.diag(k_hat))) == 1.0


@pytest.mark.parametrize('magnitude', [1e-200, 1e200])
def test_normalized_gramian_float64_extremes(magnitude):
  """float64's range: 1e±200 gradients (K over/underflows even float64)."""
  with x64():
    k_hat, scale = mtl.normalized_gramian({'w': jnp.asarray(G64 * magnitude)})
    ref = G64 @ G64.T
    ref_scale = np.sqrt(np.max(np.diag(ref)))
    np.testing.assert_allclose(np.asarray(k_hat), ref / ref_scale**2,
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(float(scale), ref_scale * magnitude, rtol=1e-12)


def test_linear_scalarization_matches_numpy_float64():
  w = np.array([0.3, 1.7, 2.9])
  with x64():
    tx = mtl.linear_scalarization(jnp.asarray(w), num_tasks=3)
    grads = {'a': jnp.asarray(G64[:, :57]), 'b': jnp.asarray(G64[:, 57:])}
    u, state = jax.jit(tx.update)(grads, tx.init(None))
    assert u['a'].dtype == u['b'].dtype == jnp.float64
    ref = w @ G64
    out = np.concatenate([np.asarray(u['a']), np.asarray(u['b'])])
    np.testing.assert_allclose(out, ref, rtol=1e-13,
                               atol=1e-14 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(state.weights), w, rtol=1e-6)


def test_weighted_sum_and_diagnostics_float64():
  c = np.array([0.5, -1.25, 2.0])
  with x64():
    g = {'w': jnp.asarray(G64)}
    out = mtl.weighted_sum(jnp.asarray(c), g)['w']
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), c @ G64, rtol=1e-12,
                               atol=1e-13 * np.abs(c @ G64).max())
    diag = mtl.diagnostics.from_gramian(mtl.gramian(g))
    assert diag.min_cosine.dtype == jnp.float64
    k = G64 @ G64.T
    norms = np.sqrt(np.diag(k))
    cos = k / np.outer(norms, norms)
    np.testing.assert_allclose(float(diag.min_cosine),
                               cos[~np.eye(3, dtype=bool)].min(), rtol=1e-12)


def _loss(p, x):
  h = jnp.tanh(x @ p['w'])
  return jnp.stack([jnp.mean(h ** 2), jnp.mean((h - 1) ** 2),
                    jnp.mean(h * p['v'])])


def test_gradient_sources_float64():
  """value_and_jacobian, jacobian_free_gramian / _grads and
  representation_grads keep float64 and agree to float64 rounding."""
  with x64():
    rng = np.random.default_rng(1)
    p = {'w': jnp.asarray(rng.standard_normal((4, 5))),
         'v': jnp.asarray(rng.standard_normal(5))}
    x = jnp.asarray(rng.standard_normal((6, 4)))
    losses, jac = mtl.value_and_jacobian(_loss)(p, x)
    assert losses.dtype == jnp.float64
    assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(jac))
    k = mtl.gramian(jac)
    _, k_free = jax.jit(mtl.jacobian_free_gramian(_loss))(p, x)
    assert k_free.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(k_free), np.asarray(k), rtol=1e-12,
                               atol=1e-14 * float(jnp.abs(k).max()))

    agg = mtl.aligned_mtl()
    out = jax.jit(mtl.jacobian_free_grads(_loss, agg))(p, agg.init(None), x)
    ref, _ = agg.update(jac, agg.init(None))
    for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref)):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                                 atol=1e-12)

    encode = lambda w, x: jnp.tanh(x @ w)
    heads = lambda h, z, y: jnp.mean((z @ h.T - y) ** 2, axis=0)
    step = jax.jit(mtl.representation_grads(encode, heads, mtl.aligned_mtl()))
    y = jnp.asarray(rng.standard_normal((6, 3)))
    res = step(p['w'], jnp.asarray(rng.standard_normal((3, 5))),
               mtl.aligned_mtl().init(None), x, y)
    assert res.losses.dtype == jnp.float64
    assert res.encoder_grads.dtype == res.head_grads.dtype == jnp.float64


def test_linesearch_float64():
  """The Armijo test runs in float64: a decrease far below float32's
  resolution of the value (1e-12 relative) is still accepted."""
  with x64():
    params = {'w': jnp.asarray([1e-6])}
    offset = 1e6
    value_fn = lambda q: offset + jnp.sum(q['w'] ** 2)
    grad = {'w': 2 * params['w']}
    ls = mtl.backtracking_linesearch(lr_ub=0.5, slope='grad')
    state = ls.init(params)
    assert state.lr_ub.dtype == jnp.float64
    u, state = jax.jit(lambda d, s, p: ls.update(
        d, s, p, value_fn=value_fn, value=value_fn(p), grad=grad))(
            grad, state, params)
    assert bool(state.info.accepted)
    assert u['w'].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(u['w']), [-1e-6], rtol=1e-12)


# ---------------------------------------------------------------------------
# Zero-size leaves in the Gramian engine.


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_zero_size_leaves_gramian_engine(dtype):
  with x64():
    grads = _with_empty(dtype)
    k = mtl.gramian(grads)
    np.testing.assert_allclose(np.asarray(k), J3 @ J3.T, rtol=1e-6)
    assert float(mtl.gramians.max_abs(grads)) == 6.0
    only_empty = {'empty': grads['empty']}
    assert float(mtl.gramians.max_abs(only_empty)) == 0.0
    k_hat, scale = mtl.normalized_gramian(only_empty)
    assert np.all(np.asarray(k_hat) == 0) and float(scale) == 1.0
    out = mtl.weighted_sum(jnp.ones(3, dtype), grads)
    assert out['empty'].shape == (0,) and out['empty3'].shape == (2, 0)
