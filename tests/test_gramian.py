"""Tests of the Gramian engine: mtl.gramian, normalized_gramian, combine,
weighted_sum and the shared-mask resolution, against direct numpy references."""

import importlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mtl_optax as mtl

gram_lib = importlib.import_module("mtl_optax.gramians")


def _rng(seed=0):
  return np.random.default_rng(seed)


def _np_matrix(tree, mask=None, dtype=np.float64):
  """[T, P] numpy matrix of the (selected) leaves, in jax leaf order."""
  leaves = jax.tree.leaves(tree)
  flags = [True] * len(leaves) if mask is None else mask
  t = np.asarray(leaves[0]).shape[0]
  parts = [np.asarray(x, dtype=np.float32).astype(dtype).reshape(t, -1)
           for x, m in zip(leaves, flags) if m]
  if not parts:
    return np.zeros((t, 0), dtype)
  return np.concatenate(parts, axis=1)


def _np_gram(tree, mask=None):
  m = _np_matrix(tree, mask)
  return m @ m.T


def _assert_gram_close(actual, expected, rtol=2e-5):
  actual = np.asarray(actual, np.float64)
  scale = np.max(np.abs(np.diag(expected)))
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * max(scale, 1e-300))


# ---------------------------------------------------------------------------
# gramian


@pytest.mark.parametrize('shape', [(3, 5), (2, 4, 3), (1, 7), (4, 2, 2, 2)])
def test_gramian_single_leaf(shape):
  x = _rng(1).standard_normal(shape).astype(np.float32)
  k = mtl.gramian(jnp.asarray(x))
  assert k.shape == (shape[0], shape[0])
  assert k.dtype == jnp.float32
  m = x.reshape(shape[0], -1).astype(np.float64)
  _assert_gram_close(k, m @ m.T)
  np.testing.assert_array_equal(np.asarray(k), np.asarray(k).T)


def test_gramian_multi_leaf_mixed_shapes():
  r = _rng(2)
  tree = {
      'enc': {'w': r.standard_normal((3, 4, 5)), 'b': r.standard_normal((3, 5))},
      'head': [r.standard_normal((3, 2, 3, 2)), r.standard_normal((3, 1))],
  }
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  k = mtl.gramian(tree)
  _assert_gram_close(k, _np_gram(tree))


@pytest.mark.parametrize('cols', [300_001, 2 * 65536])
def test_gramian_chunked_cpu_path(cols):
  # T=2: chunk of 65536 columns; > 2 chunks takes the fori_loop path, and
  # 300_001 is not a multiple of the chunk so the remainder is exercised.
  assert cols >= 2 * gram_lib._chunk_columns(2)
  r = _rng(3)
  big = r.standard_normal((2, cols)).astype(np.float32)
  small = r.standard_normal((2, 3, 3)).astype(np.float32)
  tree = {'big': jnp.asarray(big), 'small': jnp.asarray(small)}
  k = jax.jit(mtl.gramian)(tree)
  _assert_gram_close(k, _np_gram(tree), rtol=1e-4)
  # And the big leaf alone, unjitted.
  m = big.astype(np.float64)
  _assert_gram_close(mtl.gramian(jnp.asarray(big)), m @ m.T, rtol=1e-4)


def test_gramian_chunked_remainder_only_tail_counts():
  # A leaf that is zero except in the last (remainder) columns: a bug dropping
  # the tail would give a zero Gramian.
  cols = 300_001
  x = np.zeros((2, cols), np.float32)
  x[0, -5:] = [1, 2, 3, 4, 5]
  x[1, -3:] = [1, 1, 1]
  k = np.asarray(mtl.gramian(jnp.asarray(x)))
  np.testing.assert_allclose(k, [[55., 12.], [12., 3.]])
  # And a nonzero entry in the middle of a full chunk.
  y = np.zeros((2, cols), np.float32)
  y[:, 65536 * 2 + 17] = [2., -3.]
  np.testing.assert_allclose(np.asarray(mtl.gramian(jnp.asarray(y))),
                             [[4., -6.], [-6., 9.]])


# ---------------------------------------------------------------------------
# shared masks


def _tree(seed=4, t=3):
  r = _rng(seed)
  return {
      'enc': {'w': jnp.asarray(r.standard_normal((t, 4, 3)), jnp.float32),
              'b': jnp.asarray(r.standard_normal((t, 3)), jnp.float32)},
      'head': {'w': jnp.asarray(r.standard_normal((t, 3, 2)), jnp.float32),
               'b': jnp.asarray(r.standard_normal((t, 2)), jnp.float32)},
  }


def test_gramian_full_bool_mask():
  tree = _tree()
  mask = {'enc': {'w': True, 'b': False}, 'head': {'w': False, 'b': True}}
  flags = jax.tree.leaves(mask)
  _assert_gram_close(mtl.gramian(tree, mask), _np_gram(tree, flags))
  # Differs from the all-shared Gramian: the mask matters.
  assert not np.allclose(mtl.gramian(tree, mask), mtl.gramian(tree))


def test_gramian_prefix_mask():
  tree = _tree()
  k = mtl.gramian(tree, {'enc': True, 'head': False})
  m = np.concatenate([np.asarray(tree['enc']['b'], np.float64).reshape(3, -1),
                      np.asarray(tree['enc']['w'], np.float64).reshape(3, -1)],
                     axis=1)
  _assert_gram_close(k, m @ m.T)
  resolved = mtl.resolve_shared_mask({'enc': True, 'head': False}, tree)
  assert resolved == {'enc': {'w': True, 'b': True},
                      'head': {'w': False, 'b': False}}


def test_gramian_predicate_mask():
  tree = _tree()
  seen = []

  def pred(path, leaf):
    seen.append(jax.tree_util.keystr(path))
    return path[0].key == 'head'

  k = mtl.gramian(tree, pred)
  m = np.concatenate([np.asarray(tree['head']['b'], np.float64).reshape(3, -1),
                      np.asarray(tree['head']['w'], np.float64).reshape(3, -1)],
                     axis=1)
  _assert_gram_close(k, m @ m.T)
  assert "['enc']['w']" in seen and "['head']['b']" in seen


def test_gramian_no_shared_leaf_is_zero():
  tree = _tree()
  k = mtl.gramian(tree, {'enc': False, 'head': False})
  np.testing.assert_array_equal(np.asarray(k), np.zeros((3, 3)))


def test_mask_wrong_structure_raises_value_error():
  tree = _tree()
  with pytest.raises(ValueError, match='shared'):
    mtl.gramian(tree, {'enc': True})
  with pytest.raises(ValueError, match='shared'):
    mtl.gramian(tree, {'enc': True, 'head': True, 'extra': False})
  with pytest.raises(ValueError, match='shared'):
    mtl.gramian(tree, [True, False])
  with pytest.raises(ValueError, match='shared'):
    mtl.resolve_shared_mask({'enc': True, 'head': {'w': True}}, tree)


@pytest.mark.parametrize('bad', [1, 'yes', 0.0, jnp.ones(3, bool)])
def test_mask_non_bool_entry_raises_type_error(bad):
  tree = _tree()
  with pytest.raises(TypeError, match=r"\['enc'\]"):
    mtl.gramian(tree, {'enc': bad, 'head': False})


def test_mask_numpy_bool_accepted():
  tree = _tree()
  k = mtl.gramian(tree, {'enc': np.bool_(True), 'head': np.bool_(False)})
  np.testing.assert_allclose(k, mtl.gramian(tree, {'enc': True,
                                                   'head': False}))


# ---------------------------------------------------------------------------
# low precision


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_gramian_low_precision_accumulates_in_f32(dtype):
  r = _rng(5)
  # Long rows so that accumulating in the input dtype would be visibly wrong.
  tree = {'a': jnp.asarray(r.standard_normal((3, 4000)), dtype),
          'b': jnp.asarray(r.standard_normal((3, 8, 8)), dtype)}
  k = mtl.gramian(tree)
  assert k.dtype == jnp.float32
  # Reference: f64 Gramian of the values as actually rounded to `dtype`.
  ref = _np_gram(tree)
  _assert_gram_close(k, ref, rtol=1e-5)


def test_gramian_mixed_dtypes():
  r = _rng(6)
  tree = {'a': jnp.asarray(r.standard_normal((2, 50)), jnp.bfloat16),
          'b': jnp.asarray(r.standard_normal((2, 30)), jnp.float32)}
  k = mtl.gramian(tree)
  assert k.dtype == jnp.float32
  _assert_gram_close(k, _np_gram(tree))


# ---------------------------------------------------------------------------
# combine / weighted_sum


def test_combine_matches_numpy_and_keeps_dtypes():
  r = _rng(7)
  tree = {'a': jnp.asarray(r.standard_normal((3, 4, 2)), jnp.float32),
          'b': [jnp.asarray(r.standard_normal((3, 5)), jnp.bfloat16),
                jnp.asarray(r.standard_normal((3,)), jnp.float16)]}
  c = np.array([0.5, -2.0, 1.5], np.float32)
  out = mtl.combine(jnp.asarray(c), tree)
  assert jax.tree.structure(out) == jax.tree.structure(
      jax.tree.map(lambda x: x[0], tree))
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
    assert o.dtype == g.dtype
    assert o.shape == g.shape[1:]
    gn = np.asarray(g, np.float32).astype(np.float64)
    ref = np.tensordot(c.astype(np.float64), gn, axes=1)
    tol = 1e-6 if g.dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(o, np.float64), ref, rtol=tol,
                               atol=tol)


def test_weighted_sum_mask_uses_task_weights():
  tree = _tree()
  c = jnp.array([1.0, 2.0, -1.0])
  w = jnp.array([0.1, 0.2, 0.3])
  mask = {'enc': True, 'head': False}
  out = mtl.weighted_sum(c, tree, mask, task_weights=w)
  for part, coeff in (('enc', c), ('head', w)):
    for name in ('w', 'b'):
      ref = np.tensordot(np.asarray(coeff, np.float64),
                         np.asarray(tree[part][name], np.float64), axes=1)
      np.testing.assert_allclose(out[part][name], ref, rtol=1e-5, atol=1e-6)
  # task_weights defaults to the coefficients.
  out2 = mtl.weighted_sum(c, tree, mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               out2, mtl.combine(c, tree))


def test_weighted_sum_bf16_accumulates_in_f32():
  # 1000 tasks' worth of small terms: summed in bf16 they would lose mass.
  t = 512
  x = jnp.full((t, 4), 1.0, jnp.bfloat16)
  c = jnp.full((t,), 1.0 / 3.0, jnp.float32)
  out = mtl.combine(c, x)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), t / 3.0, rtol=4e-3)


# ---------------------------------------------------------------------------
# normalized_gramian


@pytest.mark.parametrize('magnitude', [1e-20, 1e-3, 1.0, 1e3, 1e20])
def test_normalized_gramian_magnitudes(magnitude):
  r = _rng(8)
  base = r.standard_normal((3, 6)).astype(np.float64)
  x = (base * magnitude).astype(np.float32)
  k_hat, scale = mtl.normalized_gramian(jnp.asarray(x))
  k_hat = np.asarray(k_hat, np.float64)
  scale = float(scale)
  assert np.all(np.isfinite(k_hat)) and np.isfinite(scale) and scale > 0
  xd = x.astype(np.float64)
  ref = xd @ xd.T
  np.testing.assert_allclose(np.max(np.diag(k_hat)), 1.0, rtol=1e-6)
  # K = scale² K_hat, relative to K's own size.
  np.testing.assert_allclose(scale**2 * k_hat, ref, rtol=1e-5,
                             atol=1e-5 * np.max(np.diag(ref)))
  np.testing.assert_allclose(scale, np.sqrt(np.max(np.diag(ref))), rtol=1e-5)
  # The normalised Gramian does not depend on the magnitude.
  bd = base.astype(np.float32).astype(np.float64)
  ref_hat = bd @ bd.T / np.max(np.diag(bd @ bd.T))
  np.testing.assert_allclose(k_hat, ref_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('magnitude', [1e-20, 1e20])
def test_normalized_gramian_mixed_leaves_extreme(magnitude):
  r = _rng(9)
  tree = {'a': r.standard_normal((2, 3, 4)) * magnitude,
          'b': r.standard_normal((2, 7)) * magnitude * 3.0,
          'c': r.standard_normal((2, 1)) * magnitude * 0.1}
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  k_hat, scale = jax.jit(mtl.normalized_gramian)(tree)
  k_hat = np.asarray(k_hat, np.float64)
  ref = _np_gram(tree)
  np.testing.assert_allclose(np.max(np.diag(k_hat)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(k_hat, ref / np.max(np.diag(ref)), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(float(scale) / np.sqrt(np.max(np.diag(ref))),
                             1.0, rtol=1e-5)


def test_normalized_gramian_with_mask_extreme():
  r = _rng(10)
  tree = {'enc': jnp.asarray(r.standard_normal((2, 5)) * 1e20, jnp.float32),
          'head': jnp.asarray(r.standard_normal((2, 5)), jnp.float32)}
  k_hat, scale = mtl.normalized_gramian(tree, {'enc': False, 'head': True})
  ref = _np_gram(tree, [False, True])
  np.testing.assert_allclose(np.asarray(k_hat), ref / np.max(np.diag(ref)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(scale), np.sqrt(np.max(np.diag(ref))),
                             rtol=1e-5)


def _near_float32_max(seed, shape=(3, 6)):
  # Entries up to ~3e38, near float32's maximum: their plain Gramian
  # overflows, and 1 / max|entry| (~3e-39) is subnormal, which XLA:CPU
  # flushes to zero (the rescaled Gramian used to come out all zeros).
  base = _rng(seed).standard_normal(shape)
  return base, (base / np.abs(base).max() * 3e38).astype(np.float32)


def test_normalized_gramian_near_float32_max():
  base, x = _near_float32_max(20)
  k_hat, scale = jax.jit(mtl.normalized_gramian)(jnp.asarray(x))
  xd = x.astype(np.float64)
  ref = xd @ xd.T
  np.testing.assert_allclose(k_hat, ref / ref.diagonal().max(), rtol=1e-5,
                             atol=1e-6)
  # The largest norm itself is beyond float32's range.
  assert float(scale) == np.inf
  # Per group (per_group=): each group's block the same way.
  tree = {'a': jnp.asarray(x), 'b': jnp.asarray(x[:, :2] * 1e-3)}
  k_hats, _ = gram_lib.normalized_group_gramians(
      tree, {'a': True, 'b': True}, [0, 1], 2)
  np.testing.assert_allclose(k_hats[0], ref / ref.diagonal().max(),
                             rtol=1e-5, atol=1e-6)
  rb = xd[:, :2] @ xd[:, :2].T
  np.testing.assert_allclose(k_hats[1], rb / rb.diagonal().max(), rtol=1e-5,
                             atol=1e-6)


def test_normalized_gramian_zero():
  k_hat, scale = mtl.normalized_gramian(jnp.zeros((3, 4)))
  np.testing.assert_array_equal(np.asarray(k_hat), np.zeros((3, 3)))
  assert float(scale) == 1.0


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('magnitude', [1e-20, 1e20])
def test_normalized_gramian_low_precision_extreme(magnitude, dtype):
  if dtype == jnp.float16:
    magnitude = 1e-4 if magnitude < 1 else 1e4   # f16's range
  r = _rng(11)
  x = jnp.asarray(r.standard_normal((2, 64)) * magnitude, dtype)
  k_hat, scale = mtl.normalized_gramian(x)
  assert k_hat.dtype == jnp.float32
  # Reference: f64 Gramian of the values as rounded to `dtype`. Only the
  # input is low precision; the result is float32-accurate.
  ref = _np_gram(x)
  np.testing.assert_allclose(np.asarray(k_hat), ref / np.max(np.diag(ref)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(scale), np.sqrt(np.max(np.diag(ref))),
                             rtol=1e-5)


def test_normalized_gramian_nonfinite_gives_nonfinite_k_hat():
  x = np.ones((2, 3), np.float32)
  x[1, 2] = np.nan
  k_hat, _ = mtl.normalized_gramian(jnp.asarray(x))
  assert not np.all(np.isfinite(np.asarray(k_hat)))
  x[1, 2] = np.inf
  k_hat, _ = mtl.normalized_gramian(jnp.asarray(x))
  assert not np.all(np.isfinite(np.asarray(k_hat)))


# ---------------------------------------------------------------------------
# validation


def test_task_axis_disagreement_names_leaf():
  tree = {'enc': {'w': jnp.ones((3, 2))}, 'head': {'b': jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"\['head'\]\['b'\]"):
    mtl.gramian(tree)
  with pytest.raises(ValueError, match=r"\['head'\]\['b'\]"):
    mtl.combine(jnp.ones(3), tree)
  with pytest.raises(ValueError, match=r"\['head'\]\['b'\]"):
    mtl.num_tasks(tree)


def test_scalar_leaf_raises():
  tree = {'a': jnp.ones((2, 2)), 's': jnp.ones(())}
  with pytest.raises(ValueError, match=r"\['s'\].*scalar"):
    mtl.gramian(tree)
  with pytest.raises(ValueError):
    mtl.normalized_gramian(tree)


def test_num_tasks():
  assert mtl.num_tasks({'a': jnp.ones((4, 2)), 'b': jnp.ones((4,))}) == 4
  with pytest.raises(ValueError):
    mtl.num_tasks({})


def test_gramian_under_jit_and_grad_of_input_is_exact():
  # The Gramian is differentiable: d tr(K)/dG = 2 G.
  x = jnp.asarray(_rng(12).standard_normal((3, 5)), jnp.float32)
  g = jax.grad(lambda y: jnp.trace(mtl.gramian(y)))(x)
  np.testing.assert_allclose(g, 2 * x, rtol=1e-6)


def test_ml_dtypes_reference_sanity():
  # The bf16 reference above relies on numpy seeing the rounded values.
  v = jnp.asarray([1.0 + 2**-10], jnp.bfloat16)
  assert np.asarray(v, np.float32)[0] == np.float32(
      np.array([1.0 + 2**-10], dtype=ml_dtypes.bfloat16).astype(np.float32)[0])


# ---------------------------------------------------------------------------
# gramian_of, row_norms_of, row_sums_of: reductions of a map of the inputs,
# on CPU without storing the map (chunk by chunk above 2 chunks of columns).


def _mapped_trees(seed, magnitude=1.0, dtype=np.float32, cols=300_001):
  # T = 2: one leaf on the chunked path (remainder included), one small
  # N-d leaf, one zero-size leaf, one task-specific leaf.
  r = _rng(seed)
  shapes = {'big': (2, cols), 'small': (2, 3, 3), 'empty': (2, 0),
            'head': (2, 5)}
  make = lambda: {k: jnp.asarray((r.standard_normal(s) * magnitude)
                                 .astype(dtype)) for k, s in shapes.items()}
  mask = {'big': True, 'small': True, 'empty': True, 'head': False}
  return make(), make(), mask


def _track(y, g):      # MoCo's tracking, in the inputs' dtype
  return y - 0.375 * (y - g)


def _mapped_matrix(y, g, mask):
  fn = lambda a, b: np.asarray(a, np.float64) - 0.375 * (
      np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return np.concatenate([fn(y[k], g[k]).reshape(2, -1)
                         for k in sorted(mask) if mask[k]], axis=1)


@pytest.mark.parametrize('magnitude', [1.0, 1e-30, 1e30])
def test_mapped_reductions_match_the_mapped_tree(magnitude):
  y, g, mask = _mapped_trees(0, magnitude)
  m = _mapped_matrix(y, g, mask)
  norms = np.sqrt(np.sum(np.square(m / magnitude), 1)) * magnitude
  got_norms = jax.jit(lambda y, g: gram_lib.row_norms_of(
      _track, (y, g), mask))(y, g)
  np.testing.assert_allclose(np.asarray(got_norms, np.float64), norms,
                             rtol=1e-5)
  got_sums = jax.jit(lambda y, g: gram_lib.row_sums_of(
      _track, (y, g), mask))(y, g)
  np.testing.assert_allclose(np.asarray(got_sums, np.float64), m.sum(1),
                             rtol=1e-3, atol=1e-4 * magnitude * m.shape[1]
                             ** 0.5)
  if magnitude == 1.0:   # (the Gramian itself is not scaled)
    k = jax.jit(lambda y, g: gram_lib.gramian_of(_track, (y, g), mask))(y, g)
    _assert_gram_close(k, m @ m.T, rtol=1e-4)
    # Unjitted, and equal to the Gramian of the stored map.
    np.testing.assert_allclose(
        gram_lib.gramian_of(_track, (y, g), mask),
        mtl.gramian(jax.tree.map(_track, y, g), mask), rtol=1e-5)


def test_mapped_reductions_small_leaves_and_float64():
  with jax.enable_x64(True):
    y, g, mask = _mapped_trees(1, dtype=np.float64, cols=40)
    m = _mapped_matrix(y, g, mask)
    k = gram_lib.gramian_of(_track, (y, g), mask)
    assert k.dtype == jnp.float64
    np.testing.assert_allclose(k, m @ m.T, rtol=1e-12)
    np.testing.assert_allclose(gram_lib.row_norms_of(_track, (y, g), mask),
                               np.linalg.norm(m, axis=1), rtol=1e-12)
    np.testing.assert_allclose(gram_lib.row_sums_of(_track, (y, g), mask),
                               m.sum(1), rtol=1e-12)


def test_mapped_reductions_low_precision_accumulate_in_f32():
  y, g, mask = _mapped_trees(2, dtype=ml_dtypes.bfloat16, cols=200_000)
  assert gram_lib.gramian_of(_track, (y, g), mask).dtype == jnp.float32
  assert gram_lib.row_norms_of(_track, (y, g), mask).dtype == jnp.float32
  assert gram_lib.row_sums_of(_track, (y, g), mask).dtype == jnp.float32
  # Each bf16 block mapped as the tree would be, then accumulated in f32.
  mapped = jax.tree.map(_track, y, g)
  np.testing.assert_allclose(
      gram_lib.row_norms_of(_track, (y, g), mask),
      jnp.sqrt(jnp.diag(mtl.gramian(mapped, mask))), rtol=1e-4)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('where', [0, 100_000, 300_000])
def test_mapped_reductions_propagate_nonfinite(bad, where):
  # A NaN/Inf entry anywhere (first chunk, middle, remainder) makes its
  # task's norm non-finite (XLA:CPU's max may drop a NaN: the sum keeps
  # it); the other task's is untouched.
  y, g, mask = _mapped_trees(3)
  g = dict(g, big=g['big'].at[1, where].set(bad))
  norms = gram_lib.row_norms_of(_track, (y, g), mask)
  assert np.isfinite(norms[0]) and not np.isfinite(norms[1])
  assert not np.isfinite(gram_lib.gramian_of(_track, (y, g), mask)[1, 1])


def test_mapped_reductions_no_shared_leaf_and_bad_map():
  y, g, _ = _mapped_trees(4, cols=10)
  none = {k: False for k in y}
  np.testing.assert_array_equal(gram_lib.gramian_of(_track, (y, g), none),
                                np.zeros((2, 2)))
  np.testing.assert_array_equal(gram_lib.row_norms_of(_track, (y, g), none),
                                np.zeros(2))
  with pytest.raises(ValueError, match='elementwise'):
    gram_lib.gramian_of(lambda a, b: a[:, :1] * b[:, :1], (y, g))


# row_norms_and_gramian_of: both reductions from one read (DB-MTL's norms
# and its diagnostics' Gramian of the gradients).


def _both(y, g, mask):
  return jax.jit(lambda y, g: gram_lib.row_norms_and_gramian_of(
      _track, lambda a, b: b, (y, g), mask))(y, g)


@pytest.mark.parametrize('magnitude', [1.0, 1e-30, 1e30, 5e37])
def test_norms_and_gramian_match_the_separate_reductions(magnitude):
  # The chunked path (remainder), a small N-d leaf, a zero-size and a
  # task-specific leaf; gradients with entries up to near float32's maximum
  # (5e37 is their std: the plain Gramian overflows) and tiny ones (whose
  # squares underflow).
  y, g, mask = _mapped_trees(6, magnitude)
  norms, (k_hat, scale) = _both(y, g, mask)
  gm = np.concatenate([np.asarray(g[k], np.float64).reshape(2, -1) / magnitude
                       for k in sorted(mask) if mask[k]], axis=1)
  k = gm @ gm.T
  np.testing.assert_allclose(k_hat, k / k.diagonal().max(), rtol=1e-5)
  assert np.isfinite(np.asarray(k_hat)).all()
  if magnitude > 1e36:
    return   # the norms themselves exceed float32's range
  m = _mapped_matrix(y, g, mask)
  np.testing.assert_allclose(
      np.asarray(norms, np.float64),
      np.linalg.norm(m / magnitude, axis=1) * magnitude, rtol=1e-5)
  np.testing.assert_allclose(scale / magnitude,
                             np.sqrt(k.diagonal().max()), rtol=1e-5)
  if magnitude == 1.0:
    # Scaling by powers of two is exact: the normalised Gramian's own
    # values, and the norms of row_norms_of.
    expected_hat, expected_scale = gram_lib.normalized_gramian(g, mask)
    np.testing.assert_allclose(k_hat, expected_hat, rtol=2e-6)
    np.testing.assert_allclose(scale, expected_scale, rtol=2e-6)
    np.testing.assert_allclose(
        norms, gram_lib.row_norms_of(_track, (y, g), mask), rtol=1e-6)


def test_norms_and_gramian_float64_bfloat16_and_zero():
  with jax.enable_x64(True):
    y, g, mask = _mapped_trees(7, dtype=np.float64, cols=300_001)
    norms, (k_hat, scale) = gram_lib.row_norms_and_gramian_of(
        _track, lambda a, b: b, (y, g), mask)
    assert k_hat.dtype == norms.dtype == scale.dtype == jnp.float64
    gm = np.concatenate([np.asarray(g[k]).reshape(2, -1)
                         for k in sorted(mask) if mask[k]], axis=1)
    k = gm @ gm.T
    np.testing.assert_allclose(k_hat, k / k.diagonal().max(), rtol=1e-12)
    np.testing.assert_allclose(scale, np.sqrt(k.diagonal().max()),
                               rtol=1e-12)
    np.testing.assert_allclose(
        norms, np.linalg.norm(_mapped_matrix(y, g, mask), axis=1),
        rtol=1e-12)
  y, g, mask = _mapped_trees(8, dtype=ml_dtypes.bfloat16, cols=200_000)
  norms, (k_hat, scale) = gram_lib.row_norms_and_gramian_of(
      _track, lambda a, b: b, (y, g), mask)
  assert k_hat.dtype == norms.dtype == scale.dtype == jnp.float32
  expected_hat, expected_scale = gram_lib.normalized_gramian(g, mask)
  np.testing.assert_allclose(k_hat, expected_hat, rtol=1e-5)
  np.testing.assert_allclose(scale, expected_scale, rtol=1e-5)
  # All-zero gradients: zero K_hat and scale 1, as normalized_gramian; no
  # shared leaf: the same, and zero norms.
  zeros = jax.tree.map(jnp.zeros_like, g)
  _, (k_hat, scale) = gram_lib.row_norms_and_gramian_of(
      _track, lambda a, b: b, (y, zeros), mask)
  np.testing.assert_array_equal(k_hat, np.zeros((2, 2)))
  assert scale == 1.0
  none = {k: False for k in y}
  norms, (k_hat, scale) = gram_lib.row_norms_and_gramian_of(
      _track, lambda a, b: b, (y, g), none)
  np.testing.assert_array_equal(norms, np.zeros(2))
  np.testing.assert_array_equal(k_hat, np.zeros((2, 2)))
  assert scale == 1.0


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('where', [0, 100_000, 300_000])
def test_norms_and_gramian_propagate_nonfinite(bad, where):
  y, g, mask = _mapped_trees(9)
  g = dict(g, big=g['big'].at[1, where].set(bad))
  norms, (k_hat, _) = _both(y, g, mask)
  assert np.isfinite(norms[0]) and not np.isfinite(norms[1])
  assert not np.isfinite(np.asarray(k_hat)).all()


@pytest.mark.parametrize('cols', [50, 300_001])
def test_leaf_cross_gramian_matches_numpy(cols):
  # J₁ J₂ᵀ (MoDo's, SDMGrad's): the chunked CPU form (remainder included)
  # and the one product, against float64 numpy; N-d leaves flattened.
  r = _rng(5)
  a = r.standard_normal((3, cols)).astype(np.float32)
  b = r.standard_normal((3, cols)).astype(np.float32)
  k = jax.jit(lambda x, y: gram_lib.leaf_cross_gramian(x, y, jnp.float32))(
      jnp.asarray(a), jnp.asarray(b))
  expected = a.astype(np.float64) @ b.astype(np.float64).T
  np.testing.assert_allclose(k, expected, rtol=1e-4,
                             atol=1e-5 * np.abs(expected).max())
  if cols == 50:
    k3 = gram_lib.leaf_cross_gramian(jnp.asarray(a.reshape(3, 5, 10)),
                                     jnp.asarray(b.reshape(3, 5, 10)),
                                     jnp.float32)
    np.testing.assert_allclose(k3, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
