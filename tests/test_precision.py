"""Every contraction that feeds a weighting runs at full float32 precision.

On GPUs (TF32) and TPUs (one bf16 pass) JAX's default matmul precision
rounds float32 inputs to about 3 significant digits, which leaves the
Gramian ~1e-3 accurate. XLA:CPU ignores the precision attribute, so these
tests read it off the StableHLO lowered for 'cuda' and 'tpu' (and 'cpu',
which has the chunked Gramian branch): every ``dot_general`` must say
``precision = [HIGHEST, HIGHEST]``. Shapes are abstract
(``jax.ShapeDtypeStruct``): nothing is allocated or compiled.
"""

import os
import re

import jax
import jax.numpy as jnp
import pytest

import mtl_optax as mtl
from mtl_optax import registry

PLATFORMS = ('cuda', 'tpu')
T = 3

_PRECISION = re.compile(r'precision = \[(\w+), (\w+)\]')
_REF = re.compile(r'loc\(#(loc\d+)\)\s*$')
_LOC = re.compile(r'^#(loc\d+) = (.*)$', re.M)


def _spec(*shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def _source(ref, table, depth=0):
  """``file.py:line`` of the innermost frame behind location ``ref``."""
  text = table.get(ref, '')
  found = re.search(r'"([^"]+\.py)":(\d+)', text)
  if found:
    return f'{os.path.basename(found.group(1))}:{found.group(2)}'
  if depth < 40:
    for inner in re.findall(r'#(loc\d+)', text):
      where = _source(inner, table, depth + 1)
      if where:
        return where
  return None


def dot_precisions(fn, *args, platform='cuda'):
  """``[(precision, source)]`` for every dot_general of ``jit(fn)(*args)``
  lowered for ``platform``; a dot without the attribute counts as DEFAULT."""
  text = jax.jit(fn).trace(*args).lower(
      lowering_platforms=(platform,)).as_text(debug_info=True)
  table = dict(_LOC.findall(text))
  out = []
  for line in text.splitlines():
    if 'stablehlo.dot_general' not in line:
      continue
    found, ref = _PRECISION.search(line), _REF.search(line)
    precision = 'DEFAULT'
    if found and found.group(1) == found.group(2):
      precision = found.group(1)
    out.append((precision, _source(ref.group(1), table) if ref else None))
  return out


def assert_all_highest(fn, *args, platforms=PLATFORMS, min_dots=1):
  for platform in platforms:
    dots = dot_precisions(fn, *args, platform=platform)
    assert len(dots) >= min_dots, (platform, dots)
    low = [d for d in dots if d[0] != 'HIGHEST']
    assert not low, (
        f'{platform}: {len(low)} of {len(dots)} dot_generals are not at '
        f'HIGHEST precision (precision, innermost source): {low}')


def _stacked():
  return {'w': _spec(T, 5, 4), 'b': _spec(T, 4), 'big': _spec(T, 70_000),
          'head': _spec(T, 2, 3)}


MASK = {'w': True, 'b': True, 'big': True, 'head': False}


def test_checker_sees_default_precision():
  """The checker itself: a plain ``@`` is reported as DEFAULT."""
  dots = dot_precisions(lambda a: a @ a.T, _spec(T, 4))
  assert [p for p, _ in dots] == ['DEFAULT']
  with pytest.raises(AssertionError, match='not at HIGHEST'):
    assert_all_highest(lambda a: a @ a.T, _spec(T, 4))


def test_gramian():
  # 'cpu' lowers the chunked branch of the large leaf.
  assert_all_highest(lambda g: mtl.gramian(g, MASK), _stacked(),
                     platforms=PLATFORMS + ('cpu',), min_dots=3)


def test_normalized_gramian():
  assert_all_highest(lambda g: mtl.normalized_gramian(g, MASK), _stacked(),
                     platforms=PLATFORMS + ('cpu',), min_dots=3)


def test_weighted_sum():
  assert_all_highest(
      lambda c, g: mtl.weighted_sum(c, g, MASK, task_weights=jnp.ones(T)),
      _spec(T), _stacked(), min_dots=4)


def test_sharded_leaf_contractions():
  """A leaf sharded over an ``Explicit`` mesh axis takes the one-dot_general
  path (all non-task axes contracted at once); a one-device mesh is enough
  for its types."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  mesh = jax.make_mesh((1,), ('data',), axis_types=(AxisType.Explicit,))
  leaf = jax.ShapeDtypeStruct((T, 8, 4), jnp.float32,
                              sharding=NamedSharding(mesh,
                                                     PartitionSpec(None, 'data')))
  with jax.set_mesh(mesh):
    assert_all_highest(lambda g: mtl.normalized_gramian({'w': g}), leaf)
    assert_all_highest(lambda c, g: mtl.combine(c, {'w': g}), _spec(T), leaf)
    text = jax.jit(lambda g: mtl.gramian({'w': g})).trace(leaf).lower(
        lowering_platforms=('cuda',)).as_text()
  assert 'contracting_dims = [1, 2] x [1, 2]' in text


def test_bf16_gradients():
  g = {'w': _spec(T, 64, dtype=jnp.bfloat16)}
  assert_all_highest(lambda g: mtl.gramian(g), g)
  assert_all_highest(lambda c, g: mtl.combine(c, g), _spec(T), g)


def _update(name):
  tx = mtl.registry.for_tasks(name, num_tasks=T, shared=MASK)
  state = jax.eval_shape(lambda: tx.init(None))

  def update(grads, state, losses):
    return tx.update(grads, state, None, losses=losses)

  return update, state


@pytest.mark.parametrize('name', mtl.available())
def test_full_update(name):
  """Every method's whole update, the weighting's own T×T products
  included (the solvers run under ``default_matmul_precision('highest')``)."""
  if name in registry.TRACKS_GRADIENTS:
    pytest.skip('init needs the parameters and the update follows the '
                "tracked gradients: in the method's own test file")
  if name in registry.NEEDS_SECOND_GRADS:
    pytest.skip('the update needs second_grads= (another batch): '
                "in the method's own test file")
  update, state = _update(name)
  assert_all_highest(update, _stacked(), state, _spec(T), min_dots=2)


def test_representation_level_gramian():
  """The ``-UB`` step: the Gramian of ``∂L_t/∂z`` and the update's sums (the
  model is elementwise, so every dot_general is the package's)."""
  encode = lambda w, x: jnp.tanh(x * w)
  heads = lambda h, z, y: jnp.sum((z[None] * h - y) ** 2, axis=(1, 2))
  agg = mtl.linear_scalarization()
  step = mtl.representation_grads(encode, heads, agg)
  state = jax.eval_shape(lambda: agg.init(None))
  assert_all_highest(step, _spec(8), _spec(T, 1, 8), state, _spec(4, 8),
                     _spec(T, 4, 8), min_dots=2)


def _matmul_loss(params, x):
  h = jnp.tanh(x @ params['w'])
  return jnp.stack([jnp.mean((h @ params['v'][t]) ** 2) for t in range(T)])


_PARAMS = {'w': _spec(6, 5), 'v': _spec(T, 5)}


@pytest.mark.parametrize('chunk_size', [1, 2, None])
def test_jacobian_free_gramian(chunk_size):
  """The JVPs are the Gramian's inner products: the model's own matmuls in
  the Gramian's VJPs and JVPs are traced at HIGHEST too; only the returned
  losses (one forward pass) keep the model's precision."""
  fn = mtl.jacobian_free_gramian(_matmul_loss, chunk_size=chunk_size)
  forward = len(dot_precisions(_matmul_loss, _PARAMS, _spec(4, 6)))
  for platform in PLATFORMS:
    dots = dot_precisions(fn, _PARAMS, _spec(4, 6), platform=platform)
    low = [d for d in dots if d[0] != 'HIGHEST']
    assert len(low) == forward, (platform, low)
    assert len(dots) - len(low) >= 3 * forward, (platform, dots)


def test_jacobian_free_gramian_precision_none_keeps_model_default():
  fn = mtl.jacobian_free_gramian(_matmul_loss, precision=None)
  dots = dot_precisions(fn, _PARAMS, _spec(4, 6))
  assert 'DEFAULT' in {p for p, _ in dots}


def test_jacobian_free_grads_coefficients():
  """Everything but the update's VJP (an ordinary backward pass at the
  model's precision): with an elementwise model all dots are HIGHEST."""
  loss = lambda p, x: jnp.stack([jnp.sum(jnp.sin(p['w'] * x[t]))
                                 for t in range(T)])
  agg = mtl.linear_scalarization()
  step = mtl.jacobian_free_grads(loss, agg)
  state = jax.eval_shape(lambda: agg.init(None))
  assert_all_highest(step, {'w': _spec(5)}, state, _spec(T, 5), min_dots=2)


def test_linesearch_inner_products():
  """The slope ``<d, ∇f>`` and the preference-weighted objective decide
  whether and how far to step."""
  ls = mtl.backtracking_linesearch(slope='grad')
  params = {'w': _spec(5)}
  value_fn = lambda p: jnp.stack([jnp.sum(p['w'] ** 2)] * T)
  state = jax.eval_shape(lambda: ls.init({'w': jnp.zeros(5)}))

  def update(d, state, params, grad):
    return ls.update(d, state, params, value_fn=value_fn,
                     value=value_fn(params), grad=grad)

  assert_all_highest(update, params, state, params, params, min_dots=2)


@pytest.mark.parametrize('z_step', ['direction', 'scaled', 'linearized'])
def test_fast_linesearch_inner_products(z_step):
  encode = lambda w, x: jnp.tanh(x * w)
  heads = lambda h, z, y: jnp.sum((z[None] * h - y) ** 2, axis=(1, 2))
  fast = mtl.fast_backtracking_linesearch(
      encode, heads, mtl.linear_scalarization(), z_step=z_step)
  state = jax.eval_shape(lambda: fast.init(jnp.zeros(8), jnp.zeros((T, 1, 8))))
  assert_all_highest(fast.step, _spec(8), _spec(T, 1, 8), state, _spec(4, 8),
                     _spec(T, 4, 8), min_dots=3)


def test_jacobian_free_rejects_unknown_precision():
  with pytest.raises(ValueError, match='precision must be'):
    mtl.jacobian_free_gramian(_matmul_loss, precision='fast')
  with pytest.raises(ValueError, match='precision must be'):
    mtl.jacobian_free_grads(_matmul_loss, mtl.mgda(), precision='fast')
