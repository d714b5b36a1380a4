"""NaN/Inf anywhere in the inputs of the methods with large or extra inputs
(MoCo, DB-MTL, ExcessMTL: a [T, ...] state; MoDo, SDMGrad: two or three
batches) skips the step and keeps the whole state bit for bit.

These methods certify their shared leaves through what they compute from
them (a Gramian, norms, excess risks, J₁J₂ᵀ: a NaN/Inf entry makes it
non-finite) and check only the rest directly, so every placement is tried:
the chunked part of a large leaf (first chunk, the remainder), a small
shared leaf, a task-specific leaf; in every batch; NaN, +Inf and -Inf. The
generic tests (test_family_aggregators) leave these methods to this file.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
from mtl_optax import gramians

T = 3
# Above two chunks of columns: the CPU's chunked reductions, remainder too.
BIG = 2 * gramians._chunk_columns(T) + 1001   # pylint: disable=protected-access
SHARED = {'enc': {'w': True, 'b': True}, 'head': False}
PLACES = [(('enc', 'w'), 0), (('enc', 'w'), BIG - 1), (('enc', 'b'), 4),
          (('head',), 1)]
BAD = [np.nan, np.inf, -np.inf]

METHODS = {
    'moco': dict(batches=('grads',)),
    'db_mtl': dict(batches=('grads',), losses=True),
    'excess_mtl': dict(batches=('grads',)),
    'modo': dict(batches=('grads', 'second_grads', 'third_grads')),
    'sdmgrad': dict(batches=('grads', 'second_grads', 'third_grads')),
}


def _params():
  return {'enc': {'w': jnp.zeros((BIG,)), 'b': jnp.zeros((7,))},
          'head': jnp.zeros((5,))}


def _grads(seed):
  r = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(r.standard_normal((T,) + p.shape), jnp.float32),
      _params())


def _poison(tree, path, index, bad):
  def f(key_path, x):
    keys = tuple(k.key for k in key_path)
    return x.at[1, index].set(bad) if keys == path else x
  return jax.tree_util.tree_map_with_path(f, tree)


def _step(name):
  tx = getattr(mtl, name)(num_tasks=T, shared=SHARED)
  spec = METHODS[name]

  @jax.jit
  def step(state, batches):
    extra = {k: v for k, v in batches.items() if k != 'grads'}
    if spec.get('losses'):
      extra['losses'] = jnp.array([1.0, 2.0, 0.5])
    return tx.update(batches['grads'], state, _params(), **extra)

  return tx, step


def _batches(name, seed):
  return {b: _grads(seed + i) for i, b in enumerate(METHODS[name]['batches'])}


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('name', sorted(METHODS))
def test_nonfinite_anywhere_skips_and_keeps_the_state(name):
  tx, step = _step(name)
  state = jax.tree.map(jnp.copy, tx.init(_params()))
  for seed in (1, 2):             # a warm state: its tracked copies nonzero
    _, state = step(state, _batches(name, 10 * seed))
  assert int(state.num_skipped) == 0
  clean = _batches(name, 100)
  expected_d, expected_state = step(state, clean)
  assert not bool(expected_state.last_skipped)
  tried = 0
  for batch in METHODS[name]['batches']:
    for path, index in PLACES:
      for bad in BAD:
        poisoned = dict(clean, **{batch: _poison(clean[batch], path, index,
                                                 bad)})
        d, skipped = step(state, poisoned)
        where = f'{name}: {bad} in {batch} {path}[1, {index}]'
        assert bool(skipped.last_skipped), where
        assert int(skipped.num_skipped) == 1, where
        for leaf in jax.tree.leaves(d):
          np.testing.assert_array_equal(np.asarray(leaf), 0, err_msg=where)
        _assert_trees_equal(skipped.inner, state.inner)
        np.testing.assert_array_equal(skipped.weights, state.weights)
        # The next clean step is the one the skipped step did not disturb.
        d2, after = step(skipped, clean)
        assert not bool(after.last_skipped), where
        _assert_trees_equal(d2, expected_d)
        _assert_trees_equal(after.inner, expected_state.inner)
        tried += 1
  assert tried == len(METHODS[name]['batches']) * len(PLACES) * len(BAD)
