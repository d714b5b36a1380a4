"""Per-computation compiler options: scoped, harmless, same results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_optax import compiler


def test_no_options_off_cpu():
  assert compiler.cpu_compiler_options('gpu') == {}
  assert compiler.cpu_compiler_options('tpu') == {}


def test_cpu_options_are_accepted_by_jit():
  options = compiler.cpu_compiler_options('cpu')
  # This jaxlib knows the option (else the dict is empty, also fine).
  for key, value in options.items():
    assert key.startswith('xla_cpu_') and value
  out = jax.jit(lambda x: x * 3, compiler_options=options)(jnp.ones(3))
  np.testing.assert_array_equal(out, 3 * np.ones(3))


def test_an_option_this_jaxlib_does_not_know_gives_no_options(monkeypatch):
  monkeypatch.setattr(compiler, '_YNN_FUSION_TYPES', 'xla_cpu_no_such_option')
  compiler._accepted.cache_clear()
  try:
    assert compiler.cpu_compiler_options('cpu') == {}
  finally:
    compiler._accepted.cache_clear()


def test_options_do_not_change_what_a_convolution_step_computes():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)

  def loss(x, w):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(jnp.tanh(y) ** 2)

  grad = jax.grad(loss, (0, 1))
  plain = jax.jit(grad)(x, w)
  fast = jax.jit(grad, compiler_options=compiler.cpu_compiler_options())(x, w)
  for a, b in zip(plain, fast):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_options_are_not_global():
  # Compiling with the options leaves other computations as they were: no
  # XLA_FLAGS, no jax.config change.
  import os
  before = (os.environ.get('XLA_FLAGS'), jax.config.jax_default_matmul_precision)
  jax.jit(lambda x: x + 1,
          compiler_options=compiler.cpu_compiler_options())(jnp.zeros(2))
  assert (os.environ.get('XLA_FLAGS'),
          jax.config.jax_default_matmul_precision) == before


@pytest.mark.parametrize('fast', [True, False])
def test_training_steps_take_the_option(fast):
  pytest.importorskip('flax')
  from mtl_optax import training
  config = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                           batch_size=4, fast_cpu_convolutions=fast)
  experiment = training.build(config, num_train_examples=40)
  from mtl_optax import data
  batch = data.random_batch('multi_mnist', 4)
  state, log = experiment.train_step(
      jax.tree.map(jnp.copy, experiment.init_state), batch)
  assert int(state.step) == 1
  assert np.all(np.isfinite(np.asarray(log.losses)))


def test_jit_inside_another_jit_and_scan():
  # JAX rejects compiler_options on a nested jit: compiler.jit falls back to
  # the plain jitted function when traced.
  step = compiler.jit(lambda x: jnp.sin(x) * 2,
                      options={'xla_cpu_enable_fast_math': False})
  x = jnp.linspace(0., 1., 5)
  direct = step(x)
  np.testing.assert_allclose(jax.jit(step)(x), direct, rtol=1e-6)
  carry, _ = jax.lax.scan(lambda c, _: (step(c), None), x, None, length=2)
  np.testing.assert_allclose(carry, step(step(x)), rtol=1e-6)
  assert step.__wrapped__ is not None
  assert step.lower(x).compile() is not None


def test_jit_donates_at_top_level():
  step = compiler.jit(lambda x: x + 1, options={}, donate_argnums=0)
  x = jnp.zeros(3)
  y = step(x)
  np.testing.assert_array_equal(y, 1)


def test_training_step_runs_inside_a_user_jit():
  pytest.importorskip('flax')
  from mtl_optax import data, training
  experiment = training.build(
      training.Config(model='lenet_multimnist', dataset='multi_mnist',
                      batch_size=4), num_train_examples=40)
  batch = data.random_batch('multi_mnist', 4)
  two_steps = jax.jit(lambda s, b: experiment.train_step(
      experiment.train_step(s, b)[0], b)[0])
  state = two_steps(jax.tree.map(jnp.copy, experiment.init_state), batch)
  assert int(state.step) == 2
