"""per_group=: one Gramian per group of shared leaves, in one pass.

Runs in float32 and, in the float64 pass of .ci/run (JAX_ENABLE_X64=1), in
float64: the gradients take JAX's default float.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

import mtl_optax as mtl
from mtl_optax import gramians as gram_lib
from mtl_optax.methods import _core

T = 3
METHODS = ['aligned_mtl', 'mgda', 'upgrad', 'imtl_g', 'cagrad', 'dualproj',
           'conflict_free', 'fairgrad', 'pcgrad']


def _dtype():
  return jnp.zeros(()).dtype


def _tol():
  return 1e-4 if _dtype() == jnp.float32 else 1e-10


def _grads(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  return {
      'encoder': {'conv': jax.random.normal(keys[0], (T, 4, 5)),
                  'bias': jax.random.normal(keys[1], (T, 5))},
      'mid': jax.random.normal(keys[2], (T, 7)) * 3.0,
      'heads': {'h1': jax.random.normal(keys[3], (T, 2)),
                'h2': jax.random.normal(keys[4], (T, 2, 3))},
  }


SHARED = {'encoder': True, 'mid': True, 'heads': False}


def _by_module(path):
  return path[0].key


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=_tol(),
                               atol=_tol())


def _reference(name, grads, group_of):
  """Runs the method on each group's leaves alone (a direct loop) and puts
  the updates together; task-specific leaves are their plain sum."""
  mask = gram_lib.resolve_shared_mask(SHARED, grads)
  paths_leaves = jax.tree_util.tree_leaves_with_path(grads)
  flags = jax.tree.leaves(mask)
  groups = {}
  for i, ((path, leaf), is_shared) in enumerate(zip(paths_leaves, flags)):
    if is_shared:
      groups.setdefault(group_of(i, path), []).append(i)
  out = [None] * len(paths_leaves)
  for members in groups.values():
    sub = [paths_leaves[i][1] for i in members]
    tx = getattr(mtl, name)(num_tasks=T)
    update, _ = tx.update(sub, tx.init(None))
    for i, u in zip(members, update):
      out[i] = u
  for i, is_shared in enumerate(flags):
    if not is_shared:
      out[i] = jnp.sum(paths_leaves[i][1], axis=0)
  return jax.tree.unflatten(jax.tree.structure(grads), out)


@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda', 'upgrad', 'imtl_g',
                                  'cagrad'])
def test_none_is_bit_identical(name):
  grads = _grads()
  factory = getattr(mtl, name)
  a, b = factory(shared=SHARED, num_tasks=T), factory(
      shared=SHARED, num_tasks=T, per_group=None)
  ua, sa = jax.jit(a.update)(grads, a.init(None))
  ub, sb = jax.jit(b.update)(grads, b.init(None))
  for x, y in zip(jax.tree.leaves((ua, sa)), jax.tree.leaves((ub, sb))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_none_is_the_global_weighting():
  """per_group=None: the weighting of the one normalised Gramian, combined
  with weighted_sum, bit for bit (today's path)."""
  grads = _grads()
  tx = mtl.imtl_g(shared=SHARED, per_group=None)
  update, _ = jax.jit(tx.update)(grads, tx.init(None))

  @jax.jit
  def direct(grads):
    mask = gram_lib.resolve_shared_mask(SHARED, grads)
    k_hat, _ = gram_lib.normalized_gramian(grads, mask)
    with jax.default_matmul_precision('highest'):
      c = mtl.weightings.imtl_g(k_hat)
    return gram_lib.weighted_sum(c, grads, mask,
                                 task_weights=jnp.ones((T,), c.dtype))

  for x, y in zip(jax.tree.leaves(update), jax.tree.leaves(direct(grads))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Eager and jitted updates run the same code; the float64 pass checks the
# jitted one only (the eager runs are most of this file's time).
JIT_MODES = [True] if jax.config.jax_enable_x64 else [False, True]


@pytest.mark.parametrize('jit', JIT_MODES)
@pytest.mark.parametrize('name', METHODS)
def test_leaf_equals_each_leaf_alone(name, jit):
  grads = _grads()
  tx = getattr(mtl, name)(shared=SHARED, num_tasks=T, per_group='leaf')
  update_fn = jax.jit(tx.update) if jit else tx.update
  update, state = update_fn(grads, tx.init(None))
  _close(update, _reference(name, grads, lambda i, path: i))
  assert not bool(state.last_skipped)
  assert state.weights.shape == (T,)


@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda', 'upgrad', 'imtl_g',
                                  'cagrad', 'pcgrad'])
def test_callable_equals_each_group_alone(name):
  grads = _grads(1)
  tx = getattr(mtl, name)(shared=SHARED, num_tasks=T, per_group=_by_module)
  update, _ = jax.jit(tx.update)(grads, tx.init(None))
  _close(update, _reference(name, grads, lambda i, path: _by_module(path)))


def test_one_group_equals_no_grouping():
  grads = _grads(2)
  a = mtl.upgrad(shared=SHARED, per_group=lambda path: 'all')
  b = mtl.upgrad(shared=SHARED)
  _close(a.update(grads, a.init(None))[0], b.update(grads, b.init(None))[0])


def test_group_gramians_are_each_groups_jjt():
  grads = _grads(3)
  k = gram_lib.group_gramians(grads, _by_module, SHARED)
  assert k.shape == (2, T, T)
  enc = jnp.concatenate([grads['encoder']['bias'].reshape(T, -1),
                         grads['encoder']['conv'].reshape(T, -1)], axis=1)
  mid = grads['mid']
  np.testing.assert_allclose(k[0], enc @ enc.T, rtol=_tol(), atol=_tol())
  np.testing.assert_allclose(k[1], mid @ mid.T, rtol=_tol(), atol=_tol())
  k_leaf = gram_lib.group_gramians(grads, 'leaf', SHARED)
  assert k_leaf.shape == (3, T, T)
  np.testing.assert_allclose(jnp.sum(k_leaf, 0), enc @ enc.T + mid @ mid.T,
                             rtol=_tol(), atol=_tol())


def test_extreme_group_scales_are_normalised_per_group():
  grads = _grads(4)
  grads['mid'] = grads['mid'] * 1e25        # K of this group overflows f32
  grads['encoder'] = jax.tree.map(lambda x: x * 1e-25, grads['encoder'])
  tx = mtl.imtl_g(shared=SHARED, num_tasks=T, per_group=_by_module)
  update, state = jax.jit(tx.update)(grads, tx.init(None))
  assert not bool(state.last_skipped)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(update))
  ref = _reference('imtl_g', grads, lambda i, path: _by_module(path))
  for x, y in zip(jax.tree.leaves(update), jax.tree.leaves(ref)):
    scale = float(jnp.max(jnp.abs(y))) or 1.0
    np.testing.assert_allclose(np.asarray(x) / scale, np.asarray(y) / scale,
                               rtol=1e-3, atol=1e-3)


def _count(jaxpr, primitive):
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      n += 1
    for sub in jax_core.jaxprs_in_params(eqn.params):
      n += _count(sub, primitive)
  return n


def test_one_gramian_pass():
  """As many contractions with groups as without: each leaf's Gramian is
  computed once and added to its group's block (the weighting is vmapped,
  not repeated per group)."""
  grads = _grads()

  def count(per_group):
    tx = mtl.imtl_g(shared=SHARED, per_group=per_group)
    jaxpr = jax.make_jaxpr(tx.update)(grads, tx.init(None)).jaxpr
    return _count(jaxpr, 'dot_general')

  assert count('leaf') == count(None) == count(_by_module)


def test_non_finite_group_skips_the_step():
  grads = _grads()
  grads['mid'] = grads['mid'].at[0, 0].set(jnp.nan)
  tx = mtl.aligned_mtl(shared=SHARED, num_tasks=T, per_group='leaf')
  state = tx.init(None)
  update, state = jax.jit(tx.update)(grads, state)
  assert bool(state.last_skipped) and int(state.num_skipped) == 1
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(update))
  assert bool(jnp.all(state.weights == 0))


def test_diagnostics_are_the_whole_gramians():
  grads = _grads()
  a = mtl.upgrad(shared=SHARED, num_tasks=T, per_group='leaf')
  b = mtl.upgrad(shared=SHARED, num_tasks=T)
  da = a.update(grads, a.init(None))[1].diagnostics
  db = b.update(grads, b.init(None))[1].diagnostics
  _close(da, db)


def test_weights_are_the_mean_over_groups():
  grads = _grads()
  tx = mtl.mgda(shared=SHARED, num_tasks=T, per_group=_by_module)
  _, state = tx.update(grads, tx.init(None))
  parts = []
  for key in ('encoder', 'mid'):
    one = mtl.mgda(num_tasks=T)
    parts.append(one.update(grads[key], one.init(None))[1].weights)
  np.testing.assert_allclose(state.weights, (parts[0] + parts[1]) / 2,
                             rtol=_tol(), atol=_tol())


@pytest.mark.parametrize('bad', ['layer', 'Leaf', 3, ['encoder'], True])
@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda', 'upgrad', 'imtl_g',
                                  'cagrad'])
def test_bad_values_raise(name, bad):
  with pytest.raises(ValueError, match="None.*'leaf'.*key_path"):
    getattr(mtl, name)(per_group=bad)


def test_unhashable_group_id_raises():
  tx = mtl.upgrad(per_group=lambda path: [path[0].key])
  with pytest.raises(ValueError, match='not hashable'):
    tx.update(_grads(), tx.init(None))


def test_stateful_weighting_raises_naming_the_fix():
  direction = _core.gramian_direction(
      lambda k, scale, inner, extra: (jnp.ones(k.shape[0]), inner + 1),
      per_group='leaf', method='my_method')
  tx = _core._build(direction, num_tasks=None, preferences=None,
                    init_inner=lambda: jnp.zeros(()))
  with pytest.raises(ValueError, match='my_method.*without state.*None'):
    tx.update(_grads(), tx.init(None))


def test_pcgrad_groups_share_the_key():
  """pcgrad's key advances once per step, as without groups, and every
  group draws the same orders (the reference runs each group from the same
  seed)."""
  grads = _grads(5)
  a = mtl.pcgrad(shared=SHARED, num_tasks=T, per_group=_by_module, seed=3)
  b = mtl.pcgrad(shared=SHARED, num_tasks=T, seed=3)
  sa, sb = a.init(None), b.init(None)
  for _ in range(2):
    _, sa = jax.jit(a.update)(grads, sa)
    _, sb = b.update(grads, sb)
  np.testing.assert_array_equal(np.asarray(sa.inner), np.asarray(sb.inner))


def test_stateful_method_raises():
  with pytest.raises(ValueError, match='gradvac.*without state'):
    direction = _core.gramian_direction(
        lambda k, scale, inner, extra: (jnp.ones(k.shape[0]), inner),
        per_group='leaf', method='gradvac')
    tx = _core._build(direction, num_tasks=T, preferences=None,
                      init_inner=lambda: (jax.random.PRNGKey(0),
                                          jnp.zeros((T, T))))
    tx.update(_grads(), tx.init(None))


def test_aligned_mtl_svd_refuses_per_group():
  with pytest.raises(ValueError, match="method='eigh'"):
    mtl.aligned_mtl(method='svd', per_group='leaf')


def test_trains_with_per_group():
  from mtl_optax import training
  from tests.test_training import _config, _data_fn
  config = _config(num_steps=2, log_every_steps=1,
                   method_kwargs={'per_group': 'leaf'})
  result = training.train(config, progress=False, data_fn=_data_fn())
  assert result.history['weights'].shape == (2, 2)
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()
  assert int(result.state.step) == 2


# -- methods with state: one state per group ------------------------------------


STATEFUL = {
    'gradvac': lambda **kw: mtl.gradvac(0.3, num_tasks=T, seed=1, **kw),
    'nash_mtl': lambda **kw: mtl.nash_mtl(max_norm=0.5, num_tasks=T, **kw),
    'ema_weighting': lambda **kw: mtl.ema_weighting(
        mtl.weightings.mgda, 0.6, num_tasks=T, **kw),
}


def _group_leaves(grads, group_of):
  mask = gram_lib.resolve_shared_mask(SHARED, grads)
  groups = {}
  for i, ((path, _), is_shared) in enumerate(zip(
      jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(mask))):
    if is_shared:
      groups.setdefault(group_of(i, path), []).append(i)
  return list(groups.values())


@pytest.mark.parametrize('group_of', ['leaf', 'module'])
@pytest.mark.parametrize('name', list(STATEFUL))
def test_stateful_method_per_group_is_each_group_its_own_aggregator(
    name, group_of):
  """Over several steps, every group's leaves get what a separate
  aggregator, with its own state, gives them (the direct loop)."""
  per_group = 'leaf' if group_of == 'leaf' else _by_module
  key_of = ((lambda i, path: i) if group_of == 'leaf'
            else (lambda i, path: _by_module(path)))
  tx = STATEFUL[name](shared=SHARED, per_group=per_group)
  steps = [_grads(seed) for seed in (11, 12, 13)]
  state = tx.init(steps[0])   # the groups come from the parameters' tree
  groups = _group_leaves(steps[0], key_of)
  alone = [STATEFUL[name]() for _ in groups]
  alone_states = [a.init(None) for a in alone]
  alone_updates = [jax.jit(a.update) for a in alone]
  heads = [i for i, f in enumerate(jax.tree.leaves(
      gram_lib.resolve_shared_mask(SHARED, steps[0]))) if not f]
  update_fn = jax.jit(tx.update)
  for grads in steps:
    update, state = update_fn(grads, state)
    assert not bool(state.last_skipped)
    got = jax.tree.leaves(update)
    leaves = jax.tree.leaves(grads)
    for g, members in enumerate(groups):
      ref, alone_states[g] = alone_updates[g](
          [leaves[i] for i in members], alone_states[g])
      for i, r in zip(members, ref):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(r),
                                   rtol=_tol(), atol=_tol())
    for i in heads:   # task-specific leaves: the plain (preference) sum
      np.testing.assert_allclose(np.asarray(got[i]),
                                 np.asarray(jnp.sum(leaves[i], axis=0)),
                                 rtol=_tol(), atol=_tol())
  # The state holds one copy per group, each that group's own.
  for g in range(len(groups)):
    mine = jax.tree.map(lambda x: x[g], state.inner)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=_tol(), atol=_tol()),
                 mine, alone_states[g].inner)


@pytest.mark.parametrize('name', list(STATEFUL))
def test_stateful_per_group_needs_the_parameters_at_init(name):
  tx = STATEFUL[name](shared=SHARED, per_group='leaf')
  with pytest.raises(ValueError, match=rf'{name}.*init\(params\)'):
    tx.init(None)


def test_stateful_per_group_state_from_other_parameters_names_the_fix():
  tx = mtl.nash_mtl(num_tasks=T, shared=SHARED, per_group='leaf')
  # Two shared leaves here; the gradients below have three.
  state = tx.init({'encoder': jnp.ones(3), 'mid': jnp.ones(7),
                   'heads': jnp.ones(2)})
  with pytest.raises(ValueError, match='nash_mtl.*3 parameter groups.*'
                     r'init\(params\)'):
    tx.update(_grads(), state)


def test_stateful_per_group_trains_at_the_parameter_level():
  from mtl_optax import training
  from tests.test_training import _config, _data_fn
  config = _config(num_steps=3, log_every_steps=1, method='nash_mtl',
                   method_kwargs={'per_group': 'leaf'})
  result = training.train(config, progress=False, data_fn=_data_fn())
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()
  alpha, step = result.state.opt_state[0].inner
  assert alpha.shape[1:] == (2,) and alpha.shape[0] > 1   # one α per leaf
  assert (np.asarray(step) == 3).all()
