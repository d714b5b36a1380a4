"""The zoo's fast layers against XLA's own operations: values and gradients.

``layers.max_pool`` (reshape or separable slices instead of
``reduce_window``) and ``layers.conv_valid_small`` (a banded matmul on CPU)
must compute the same functions as ``nnx.max_pool`` and
``lax.conv_general_dilated``, with the same gradients, on every shape the
zoo uses and on awkward ones (odd sizes, windows that do not tile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl_optax.models import layers
from mtl_optax.models import lenet


def _random(shape, seed=0, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape)
                     .astype(dtype))


def _reference_pool(x, window, stride, padding):
  return nnx.max_pool(x, (window, window), strides=(stride, stride),
                      padding=((padding, padding), (padding, padding)))


POOLS = [
    # (shape, window, stride, padding)
    ((3, 24, 24, 10), 2, 2, 0),    # LeNet, tiled
    ((2, 9, 7, 3), 2, 2, 0),       # odd sizes: the last row/column dropped
    ((2, 32, 32, 4), 3, 2, 1),     # ResNet's ImageNet stem
    ((2, 11, 10, 2), 3, 2, 1),     # overlapping, odd
    ((1, 8, 8, 1), 3, 3, 0),       # tiled 3×3, 8 = 2·3 + 2
    ((2, 7, 9, 3), 3, 1, 1),       # stride 1, "same" size
]


@pytest.mark.parametrize('shape,window,stride,padding', POOLS)
def test_max_pool_values_and_gradient_match_reduce_window(
    shape, window, stride, padding):
  x = _random(shape)
  ours = layers.max_pool(x, window, stride, padding)
  ref = _reference_pool(x, window, stride, padding)
  assert ours.shape == ref.shape
  np.testing.assert_array_equal(ours, ref)
  cotangent = _random(ref.shape, seed=1)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cotangent))(x)
  np.testing.assert_allclose(
      grad(lambda x: layers.max_pool(x, window, stride, padding)),
      grad(lambda x: _reference_pool(x, window, stride, padding)),
      rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_at_ties_sums_to_the_cotangent():
  # A constant window: reduce_window sends the cotangent to one input, we
  # share it between the tied inputs; either way it sums to the cotangent.
  x = jnp.zeros((1, 4, 4, 1))
  for window, stride, padding in ((2, 2, 0), (3, 2, 1)):
    out = layers.max_pool(x, window, stride, padding)
    g = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, stride,
                                                   padding)))(x)
    assert np.all(np.asarray(g) >= 0)
    assert float(jnp.sum(g)) == pytest.approx(out.size)


def test_max_pool_rejects_a_window_larger_than_the_input():
  with pytest.raises(ValueError, match='does not fit'):
    layers.max_pool(jnp.zeros((1, 2, 2, 1)), 3, 2)


def _reference_conv(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)


CONVS = [
    ((4, 28, 28, 1), (5, 5, 1, 10)),    # LeNet conv1
    ((4, 12, 12, 10), (5, 5, 10, 20)),  # LeNet conv2
    ((2, 9, 6, 3), (3, 2, 3, 4)),       # non-square kernel, odd sizes
    ((1, 5, 5, 2), (5, 5, 2, 1)),       # one output pixel
    ((2, 7, 30, 2), (3, 5, 2, 3)),      # two groups of 13 output columns
]


@pytest.mark.parametrize('x_shape,k_shape', CONVS)
@pytest.mark.parametrize('formulation', ['banded', 'dispatched'])
def test_conv_valid_small_matches_xla_convolution(x_shape, k_shape,
                                                  formulation):
  x, kernel, bias = (_random(x_shape), _random(k_shape, seed=1),
                     _random(k_shape[-1:], seed=2))
  if formulation == 'banded':   # the CPU formulation, whatever the backend
    fn = lambda x, k, b: layers._conv_valid_banded(x, k) + b
  else:                         # what the zoo calls on this backend
    fn = layers.conv_valid_small
  ref_fn = lambda x, k, b: _reference_conv(x, k) + b
  out, ref = fn(x, kernel, bias), ref_fn(x, kernel, bias)
  assert out.shape == ref.shape
  scale = float(jnp.max(jnp.abs(ref)))
  np.testing.assert_allclose(out, ref, atol=1e-5 * scale)
  cotangent = _random(ref.shape, seed=3)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), (0, 1, 2))
  ref_grads = jax.grad(lambda *a: jnp.sum(ref_fn(*a) * cotangent), (0, 1, 2))
  for g, r in zip(grads(x, kernel, bias), ref_grads(x, kernel, bias)):
    np.testing.assert_allclose(g, r, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_band_groups():
  assert layers._output_group(24, 5) == 12   # LeNet conv1: two halves
  assert layers._output_group(8, 5) == 8     # LeNet conv2: whole row
  assert layers._output_group(25, 5) == 25   # odd: whole row
  assert layers._output_group(26, 5) == 13


def test_conv_valid_small_is_exact_in_float64():
  with jax.enable_x64(True):
    x = _random((2, 10, 10, 3), dtype=np.float64)
    kernel = _random((5, 5, 3, 4), seed=1, dtype=np.float64)
    out = layers._conv_valid_banded(x, kernel)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _reference_conv(x, kernel), rtol=1e-12,
                               atol=1e-12)


def test_conv_valid_small_under_vmap_of_vjps():
  # The parameter-level step vmaps the VJP over the task axis.
  x, kernel = _random((3, 12, 12, 2)), _random((5, 5, 2, 3), seed=1)
  cotangents = _random((4, 3, 8, 8, 3), seed=2)
  vjp = lambda f: jax.vmap(jax.vjp(f, kernel)[1])(cotangents)[0]
  np.testing.assert_allclose(
      vjp(lambda k: layers.conv_valid_small(x, k)),
      vjp(lambda k: _reference_conv(x, k)), rtol=1e-4, atol=1e-4)


def test_lenet_matches_the_same_network_built_from_xla_ops():
  model = lenet.LeNet(rngs=nnx.Rngs(0))
  x = _random((5, 28, 28, 1))

  def reference(x):
    def block(conv, x):
      x = _reference_conv(x, conv.kernel[...]) + conv.bias[...]
      return nnx.relu(_reference_pool(x, 2, 2, 0))
    x = block(model.conv2, block(model.conv1, x))
    return nnx.relu(model.fc(x.reshape(x.shape[0], -1)))

  np.testing.assert_allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


# -- BatchNorm -------------------------------------------------------------------

BN_CONFIGS = [
    {},
    {'use_fast_variance': False},
    {'use_scale': False, 'use_bias': False},
    {'momentum': 0.7, 'epsilon': 1e-3},
    {'dtype': jnp.bfloat16},
    {'param_dtype': jnp.bfloat16},
    {'dtype': jnp.float32, 'param_dtype': jnp.bfloat16},
    {'axis': 1},
]


# nnx.BatchNorm's in-place update of float32 statistics from float64 ones
# warns that JAX will refuse it one day; ours casts explicitly.
@pytest.mark.filterwarnings(
    'ignore:scatter inputs have incompatible types:FutureWarning')
@pytest.mark.parametrize('input_dtype', ['float32', 'bfloat16', 'float64'])
@pytest.mark.parametrize('config', range(len(BN_CONFIGS)))
def test_batch_norm_train_mode_is_nnx_batch_norm_bit_for_bit(config,
                                                             input_dtype):
  kwargs = BN_CONFIGS[config]
  features = 5 if kwargs.get('axis') == 1 else 6
  x = np.random.default_rng(config).normal(1.0, 3.0, (4, 5, 3, 6))
  with jax.enable_x64(input_dtype == 'float64'):
    x = jnp.asarray(x, input_dtype)
    ours, theirs = (cls(features, use_running_average=False, rngs=nnx.Rngs(0),
                        **kwargs)
                    for cls in (layers.BatchNorm, nnx.BatchNorm))
    step = nnx.jit(lambda m, x: m(x))
    for run in (lambda m: m(x), lambda m: step(m, x)):   # eager, then jitted
      got, want = run(ours), run(theirs)
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(np.asarray(got, np.float64),
                                    np.asarray(want, np.float64))
      for name in ('mean', 'var'):
        a, b = getattr(ours, name)[...], getattr(theirs, name)[...]
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    # Eval mode is nnx.BatchNorm's own code.
    np.testing.assert_array_equal(ours(x, use_running_average=True),
                                  theirs(x, use_running_average=True))


def test_batch_norm_unbiased_running_variance_is_pytorchs():
  x = np.random.default_rng(0).normal(size=(2, 3, 1, 4)).astype(np.float32)
  bn = layers.BatchNorm(4, use_running_average=False, momentum=0.75,
                        unbiased_running_var=True, rngs=nnx.Rngs(0))
  y = bn(jnp.asarray(x))
  flat = x.reshape(-1, 4)
  np.testing.assert_allclose(bn.var[...],
                             0.75 + 0.25 * flat.var(0, ddof=1), rtol=1e-6)
  np.testing.assert_allclose(bn.mean[...], 0.25 * flat.mean(0), atol=1e-7)
  # Normalised with the biased batch variance, as in PyTorch's train mode.
  np.testing.assert_allclose(
      y.reshape(-1, 4), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5),
      rtol=1e-4, atol=1e-5)


def test_batch_norm_trace_never_asks_a_tracer_for_its_sharding(monkeypatch):
  # Flax's `variable[...] = traced` reads `traced.sharding`, which JAX
  # answers by searching the whole program traced so far: quadratic trace
  # time in the number of BatchNorms. Ours must not go there.
  from jax._src import core
  asked = []
  original = core.Tracer.sharding

  def counting(self):
    asked.append(type(self).__name__)
    return original.fget(self)

  monkeypatch.setattr(core.Tracer, 'sharding', property(counting))
  stack = nnx.Sequential(*[
      layers.BatchNorm(3, use_running_average=False, rngs=nnx.Rngs(0))
      for _ in range(4)])
  nnx.jit(lambda m, x: m(x))(stack, jnp.ones((2, 3)))
  assert not asked, asked
  # The check would see Flax's own BatchNorm do it.
  nnx.jit(lambda m, x: m(x))(
      nnx.BatchNorm(3, use_running_average=False, rngs=nnx.Rngs(0)),
      jnp.ones((2, 3)))
  assert asked
