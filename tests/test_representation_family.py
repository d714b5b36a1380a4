"""Every method runs at the representation level (the "-UB" step)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtl_optax as mtl
from mtl_optax import registry

T = 3


def _encode(w, x):
  return jnp.tanh(x @ w)


def _heads(h, z, y):
  return jnp.mean((jnp.einsum('bd,td->bt', z, h) - y) ** 2, axis=0) * \
      jnp.array([1.0, 10.0, 0.1])


def _build(name):
  kwargs = {'num_tasks': T} if name in mtl.registry.NEEDS_NUM_TASKS else {}
  if name == 'ema_weighting':
    kwargs['weighting'] = mtl.weightings.mgda
  return mtl.get_aggregator(name, **kwargs)


@pytest.mark.parametrize('name', mtl.available())
def test_representation_level_trains(name):
  if name in registry.TRACKS_GRADIENTS:
    pytest.skip('init needs the parameters and the update follows the '
                "tracked gradients: in the method's own test file")
  if name in registry.NEEDS_SECOND_GRADS:
    pytest.skip('the update needs second_grads= (another batch): '
                "in the method's own test file")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((32, 5)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((32, T)), jnp.float32)
  params = {'enc': jnp.asarray(rng.standard_normal((5, 6)) * 0.5, jnp.float32),
            'heads': jnp.zeros((T, 6), jnp.float32)}
  agg = _build(name)
  grads_fn = mtl.representation_grads(_encode, _heads, agg)
  tx = optax.adam(3e-2)

  @jax.jit
  def step(params, opt_state, agg_state):
    out = grads_fn(params['enc'], params['heads'], agg_state, x, y)
    grads = {'enc': out.encoder_grads, 'heads': out.head_grads}
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            out.aggregator_state, out.losses)

  opt_state, agg_state = tx.init(params), agg.init(None)
  first = None
  for _ in range(60):
    params, opt_state, agg_state, losses = step(params, opt_state, agg_state)
    first = losses if first is None else first
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(params))
  assert not bool(agg_state.last_skipped)
  # The total (unweighted) loss falls; with a fresh zero head every method
  # at least fits the heads.
  assert float(jnp.sum(losses)) < float(jnp.sum(first))


def test_representation_level_z_gramian_is_over_batch_and_features():
  # The Gramian the aggregator sees is that of dL_t/dz flattened over batch
  # and features: check the recorded dominance rate against numpy.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((8, T)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
  h = jnp.asarray(rng.standard_normal((T, 6)), jnp.float32)
  agg = mtl.aligned_mtl()
  out = mtl.representation_grads(_encode, _heads, agg)(w, h, agg.init(None),
                                                       x, y)
  z = _encode(w, x)
  jz = jax.jacrev(functools.partial(_heads, h, y=y))(z).reshape(T, -1)
  s = np.linalg.svd(np.asarray(jz, np.float64), compute_uv=False)
  np.testing.assert_allclose(
      float(out.aggregator_state.diagnostics.dominance_rate),
      s.max() / s.min(), rtol=1e-3)
