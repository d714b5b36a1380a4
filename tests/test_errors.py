"""Errors that name the fix (issue 16, part 3): each says what was expected,
what was received and what to do; the valid inputs next to them still pass."""

import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fake_mnist
import mtl_optax as mtl
from mtl_optax.jacobian import jacobian_free_grads

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
EXPECTED = ('stacked per-task gradients', 'mtl_optax.value_and_jacobian',
            'leading task axis T')
FIX = 'must come first in the chain'


def _params():
  return {'encoder': jnp.ones((8, 3)) * 0.1, 'heads': jnp.ones((2, 3)) * 0.1}


def _losses(p):
  enc = jnp.sum(p['encoder'] ** 2)
  return jnp.stack([enc + jnp.sum(p['heads'][0] ** 2),
                    jnp.sum(p['encoder']) + jnp.sum(p['heads'][1])])


def _jac(params=None):
  return mtl.value_and_jacobian(_losses)(_params() if params is None
                                         else params)[1]


def _assert_says(message, *parts):
  for part in parts:
    assert part in message, (part, message)


# ------------------------------------------------ 1. updates without task axis


def test_aggregator_after_adam_names_the_chain_order():
  params = _params()
  grads = jax.grad(lambda p: jnp.sum(_losses(p)))(params)   # one gradient
  tx = optax.chain(optax.adam(1e-3), mtl.aligned_mtl())
  with pytest.raises(ValueError) as info:
    tx.update(grads, tx.init(params), params)
  msg = str(info.value)
  _assert_says(msg, "received updates with the parameters' shapes",
               "['encoder'] (8, 3), ['heads'] (2, 3)", *EXPECTED, FIX,
               'optax.chain(mtl.aligned_mtl(), optax.adam(1e-3))')


def test_two_aggregators_chained_names_the_chain_order():
  params = _params()
  tx = optax.chain(mtl.mgda(), mtl.aligned_mtl())
  with pytest.raises(ValueError) as info:
    tx.update(_jac(), tx.init(params), params)
  _assert_says(str(info.value), "parameters' shapes",
               "['encoder'] (8, 3)", *EXPECTED, FIX)


def test_ordinary_gradients_into_a_first_aggregator():
  params = _params()
  grads = jax.grad(lambda p: jnp.sum(_losses(p)))(params)
  tx = optax.chain(mtl.aligned_mtl(), optax.adam(1e-3))
  with pytest.raises(ValueError) as info:
    tx.update(grads, tx.init(params), params)
  _assert_says(str(info.value), "parameters' shapes", *EXPECTED,
               'not jax.grad')


def test_disagreeing_leading_axes_without_params():
  # The user's report: before, "Leaf ['heads'] has 2 tasks on its leading
  # axis but leaf ['encoder'] has 8" and nothing else.
  params = _params()
  tx = optax.chain(mtl.mgda(), mtl.aligned_mtl())
  with pytest.raises(ValueError) as info:
    tx.update(_jac(), tx.init(params))          # params not given
  _assert_says(str(info.value), "Leaf ['heads'] has leading axis 2",
               "Received: ['encoder'] (8, 3), ['heads'] (2, 3)", *EXPECTED,
               FIX)


def test_one_leaf_tree_against_num_tasks():
  tx = mtl.aligned_mtl(num_tasks=2)
  one = {'w': jnp.ones((5, 3))}          # a parameter's gradient, T unknown
  with pytest.raises(ValueError) as info:
    tx.update(one, tx.init(one))
  _assert_says(str(info.value), 'built for num_tasks=2', '5 tasks',
               "Received: ['w'] (5, 3)", *EXPECTED, FIX)
  # ... and with the parameters given it is recognised for what it is.
  with pytest.raises(ValueError, match="parameters' shapes"):
    tx.update(one, tx.init(one), one)


def test_scalar_leaf_names_the_leaf_and_the_fix():
  tree = {'a': jnp.ones((2, 2)), 's': jnp.ones(())}
  with pytest.raises(ValueError) as info:
    mtl.num_tasks(tree)
  _assert_says(str(info.value), "Leaf ['s'] is a scalar",
               "Received: ['a'] (2, 2), ['s'] ()", *EXPECTED, FIX)


def test_long_trees_are_described_briefly():
  tree = {f'l{i:02d}': jnp.ones((3, 2)) for i in range(30)}
  tree['z'] = jnp.ones((4, 2))
  with pytest.raises(ValueError) as info:
    mtl.num_tasks(tree)
  msg = str(info.value)
  _assert_says(msg, "['z'] (4, 2)", '(31 leaves in all)')
  assert "['l10']" not in msg and len(msg) < 900


def test_optimizer_as_representation_aggregator():
  encode = lambda w, x: jnp.tanh(x @ w)

  def heads(h, z, y):
    return jnp.stack([jnp.mean((z @ h[0] - y[:, 0]) ** 2),
                      jnp.mean((z @ h[1] - y[:, 1]) ** 2)])

  x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
  tx = optax.adam(1e-3)
  step = mtl.representation_grads(encode, heads, tx)
  with pytest.raises(ValueError) as info:
    step(jnp.ones((3, 4)) * .1, jnp.ones((2, 4)), tx.init(jnp.ones((8, 4))),
         x, y)
  _assert_says(str(info.value), 'representation_grads', 'expected (8, 4)',
               'it returned (2, 8, 4)', 'Pass an mtl_optax aggregator')
  agg = mtl.aligned_mtl()
  step = mtl.representation_grads(encode, heads, agg)
  out = step(jnp.ones((3, 4)) * .1, jnp.ones((2, 4)), agg.init(None), x, y)
  assert out.encoder_grads.shape == (3, 4)


def test_optimizer_as_jacobian_free_aggregator():
  def losses(p, x):
    return jnp.stack([jnp.sum(p['w'] * x), 3 * jnp.sum(p['w'])])

  params, x = {'w': jnp.ones(2)}, jnp.array([1., 0.])
  tx = optax.adam(1e-3)
  with pytest.raises(ValueError) as info:
    jacobian_free_grads(losses, tx)(params, tx.init(params), x)
  _assert_says(str(info.value), 'jacobian_free_grads',
               'Pass an mtl_optax aggregator')
  agg = mtl.aligned_mtl()
  out = jacobian_free_grads(losses, agg)(params, agg.init(params), x)
  assert out.grads['w'].shape == (2,)


@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda', 'upgrad', 'pcgrad',
                                  'linear_scalarization', 'nash_mtl'])
@pytest.mark.parametrize('case', ['no_params', 'T1', 'head_rows',
                                  'scalar_per_task'])
def test_valid_inputs_still_pass(name, case):
  if case == 'T1':
    params = {'w': jnp.array([1., 2.]), 'b': jnp.array(0.5)}
    fn = lambda p: jnp.stack([jnp.sum(p['w'] ** 2) + p['b']])
  elif case == 'scalar_per_task':
    params = {'w': jnp.array([1., 2.]), 'b': jnp.array(0.5)}   # b: scalar
    fn = lambda p: jnp.stack([jnp.sum(p['w'] ** 2) + p['b'],
                              jnp.sum(p['w']) * p['b']])
  else:     # heads with T = 2 rows
    params, fn = _params(), _losses
  t = 1 if case == 'T1' else 2
  losses, grads = mtl.value_and_jacobian(fn)(params)
  if case == 'scalar_per_task':
    assert grads['b'].shape == (2,)
  if case == 'head_rows':
    assert grads['heads'].shape == (2, 2, 3)
  agg = mtl.registry.for_tasks(name, num_tasks=t)
  tx = optax.chain(agg, optax.sgd(0.1))
  state = tx.init(params)
  given = None if case == 'no_params' else params
  updates, _ = tx.update(grads, state, given, losses=losses)
  assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_valid_update_under_jit_with_params():
  params = _params()
  tx = optax.chain(mtl.aligned_mtl(num_tasks=2), optax.adam(1e-3))
  updates, _ = jax.jit(tx.update)(_jac(), tx.init(params), params)
  assert updates['heads'].shape == (2, 3)


# ------------------------------------------------------- 2. NNX shared masks


def _nnx_model():
  nnx = pytest.importorskip('flax.nnx')

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.encoder = nnx.Linear(3, 4, rngs=rngs)
      self.heads = nnx.Linear(4, 2, rngs=rngs)

  return nnx, Model(nnx.Rngs(0))


def _nnx_stacked():
  nnx, model = _nnx_model()
  state = nnx.state(model, nnx.Param)
  key = iter(jax.random.split(jax.random.key(0), 8))
  grads = jax.tree.map(
      lambda x: jax.random.normal(next(key), (3,) + x.shape), state)
  return nnx, state, grads


def test_dict_prefix_mask_on_nnx_state():
  nnx, _, grads = _nnx_stacked()
  mask = mtl.resolve_shared_mask({'encoder': True, 'heads': False}, grads)
  assert jax.tree.structure(mask) == jax.tree.structure(grads)
  pred = mtl.resolve_shared_mask(
      lambda path, leaf: path[0].key == 'encoder', grads)
  assert jax.tree.leaves(mask) == jax.tree.leaves(pred) == [
      True, True, False, False]
  # The aggregator on the NNX state equals the one on the plain dicts.
  shared = {'encoder': True, 'heads': False}
  agg = mtl.aligned_mtl(shared=shared)
  on_state, _ = agg.update(grads, agg.init(None))
  on_dict, _ = agg.update(nnx.to_pure_dict(grads), agg.init(None))
  assert isinstance(on_state, nnx.State)
  np.testing.assert_allclose(
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(on_state)]),
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(on_dict)]),
      rtol=1e-6)
  np.testing.assert_allclose(mtl.gramian(grads, shared),
                             mtl.gramian(nnx.to_pure_dict(grads), shared))


def test_nnx_state_mask_on_plain_gradients():
  nnx, state, grads = _nnx_stacked()
  mask_state = jax.tree.map(lambda _: True, state)
  mask_state['heads'] = jax.tree.map(lambda _: False, state['heads'])
  mask = mtl.resolve_shared_mask(mask_state, nnx.to_pure_dict(grads))
  assert jax.tree.leaves(mask) == [True, True, False, False]


def test_nnx_mask_mismatch_is_short_and_names_the_keys():
  _, _, grads = _nnx_stacked()
  with pytest.raises(ValueError) as info:
    mtl.resolve_shared_mask({'encoder': True, 'head': False}, grads)
  msg = str(info.value)
  _assert_says(msg, 'at the top level', "missing from the mask: ['heads']",
               "not in the gradients: ['head']",
               "shared=lambda path, leaf: path[0].key == 'encoder'",
               'models.functional(model).shared_mask')
  assert 'PyTreeDef' not in msg and len(msg) < 600
  with pytest.raises(ValueError) as info:
    mtl.resolve_shared_mask({'encoder': True, 'heads': {'kernel': False}},
                            grads)
  _assert_says(str(info.value), "at ['heads']",
               "missing from the mask: ['bias']")


def test_plain_mask_mismatch_is_short():
  tree = {'enc': {'w': jnp.ones((3, 2))}, 'head': {'b': jnp.ones((3, 2))}}
  with pytest.raises(ValueError) as info:
    mtl.gramian(tree, {'enc': True})
  msg = str(info.value)
  _assert_says(msg, "missing from the mask: ['head']", 'path[0].key')
  assert 'PyTreeDef' not in msg
  with pytest.raises(ValueError, match='a list where the gradients have a '
                     'dict'):
    mtl.gramian(tree, [True, False])


def test_functional_model_mask_on_the_model_nnx_state():
  nnx = pytest.importorskip('flax.nnx')
  from mtl_optax import models
  model = models.create('lenet_multimnist', rngs=0)
  fm = models.functional(model)
  on_dict = mtl.resolve_shared_mask(
      fm.shared_mask, jax.tree.map(lambda x: jnp.stack([x, x]), fm.params))
  state = nnx.state(model, nnx.Param)      # NNX's own container
  grads = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), state)
  on_state = mtl.resolve_shared_mask(fm.shared_mask, grads)
  assert jax.tree.structure(on_state) == jax.tree.structure(grads)
  assert jax.tree.leaves(on_state) == jax.tree.leaves(on_dict)
  assert any(jax.tree.leaves(on_state)) and not all(jax.tree.leaves(on_state))


def test_core_does_not_import_flax():
  code = ('import sys, jax.numpy as jnp, mtl_optax as mtl\n'
          "g = {'a': jnp.ones((2, 3)), 'b': jnp.ones((2,))}\n"
          "mtl.resolve_shared_mask({'a': True, 'b': False}, g)\n"
          'try:\n'
          "  mtl.resolve_shared_mask({'a': True}, g)\n"
          'except ValueError:\n'
          '  pass\n'
          "assert 'flax' not in sys.modules, 'flax imported'\n")
  subprocess.run([sys.executable, '-c', code], check=True,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))


# ------------------------------------------- 3. manual directories, downloads


@pytest.fixture
def no_network(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def refuse(*args, **kwargs):
    raise AssertionError('a download was attempted')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download', refuse)


def test_missing_mnist_dir_is_an_immediate_error(tmp_path, no_network):
  from mtl_optax.data import multi_mnist
  missing = tmp_path / 'no_such_mnist'
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as info:
    multi_mnist.prepare(data_dir=tmp_path / 'tfds', mnist_dir=missing)
  assert time.perf_counter() - start < 10
  _assert_says(str(info.value), f'--mnist-dir {str(missing)!r} does not exist',
               *multi_mnist.MNIST_FILES.values())


def test_missing_mnist_dir_on_the_command_line(tmp_path, no_network, capsys):
  from mtl_optax.data import multi_mnist
  with pytest.raises(SystemExit) as info:
    multi_mnist.main(['--data-dir', str(tmp_path / 'tfds'), '--mnist-dir',
                      str(tmp_path / 'nope')])
  assert info.value.code == 2
  err = capsys.readouterr().err
  _assert_says(err, str(tmp_path / 'nope'), 'does not exist',
               'train-images-idx3-ubyte.gz')


def test_no_download_unless_asked(tmp_path, no_network):
  from mtl_optax.data import multi_mnist
  from mtl_optax.data import prepare
  with pytest.raises(FileNotFoundError) as info:
    multi_mnist.prepare(data_dir=tmp_path / 'tfds')
  _assert_says(str(info.value), '--mnist-dir DIR', '--download',
               'download=True', 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(FileNotFoundError) as info:
    prepare.prepare('cifar100_mt', data_dir=tmp_path / 'tfds')
  _assert_says(str(info.value), '--manual-dir DIR', '--download',
               'cifar-100-binary.tar.gz')
  # A manual directory that lacks some files: named, nothing downloaded.
  partial = tmp_path / 'partial'
  partial.mkdir()
  (partial / 'train-images-idx3-ubyte.gz').write_bytes(b'')
  with pytest.raises(FileNotFoundError) as info:
    multi_mnist.prepare(data_dir=tmp_path / 'tfds2', mnist_dir=partial)
  _assert_says(str(info.value), f'{str(partial)!r} lacks',
               't10k-images-idx3-ubyte.gz', '--download')


def test_manual_only_dataset_without_manual_dir(tmp_path, no_network, capsys):
  from mtl_optax.data import prepare
  with pytest.raises(SystemExit):
    prepare.main(['nyuv2', '--data-dir', str(tmp_path / 'tfds'),
                  '--manual-dir', str(tmp_path / 'missing')])
  err = capsys.readouterr().err
  _assert_says(err, f"--manual-dir {str(tmp_path / 'missing')!r} does not "
               'exist', 'train/ and val/')
  with pytest.raises(FileNotFoundError, match='nyuv2_mtan needs its source '
                     'files: give --manual-dir DIR'):
    prepare.prepare('nyuv2', data_dir=tmp_path / 'tfds')


def test_download_is_attempted_only_when_asked(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  from mtl_optax.data import multi_mnist
  calls = []

  def fake_download(self, urls):
    calls.append(urls)
    raise RuntimeError('offline')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download',
                      fake_download)
  with pytest.raises(RuntimeError, match='offline'):
    multi_mnist.prepare(data_dir=tmp_path / 'tfds', download=True)
  assert len(calls) == 1 and len(calls[0]) == 4


def test_manual_dir_with_the_files_still_prepares(tmp_path, no_network):
  from mtl_optax import data
  from mtl_optax.data import multi_mnist
  mnist = tmp_path / 'mnist'
  fake_mnist.write_mnist(mnist, n_train=4, n_test=3)
  multi_mnist.prepare(data_dir=tmp_path / 'tfds', mnist_dir=mnist,
                      verify_checksums=False)
  assert data.num_examples('multi_mnist', 'test',
                           data_dir=tmp_path / 'tfds') == 3
  # Prepared: a second call needs neither the directory nor a download.
  multi_mnist.prepare(data_dir=tmp_path / 'tfds')


# ------------------------------------------------ 4. "not prepared" errors


def test_not_prepared_points_to_the_readme_command(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  from mtl_optax import data
  readme = README.read_text()
  with pytest.raises(FileNotFoundError) as info:
    data.load('multi_mnist', 'train', data_dir=tmp_path, batch_size=2)
  msg = str(info.value)
  command = 'python -m mtl_optax.data.multi_mnist --data-dir'
  _assert_says(msg, 'multi_mnist is not prepared', 'README',
               f'{command} {tmp_path} --mnist-dir DIR', '--download',
               'train-images-idx3-ubyte.gz')
  assert command in readme and '--mnist-dir' in readme
  assert 'download_and_prepare' not in msg    # no Python API to copy

  with pytest.raises(FileNotFoundError) as info:
    data.load('cityscapes_mtan', 'train', data_dir=tmp_path, batch_size=2,
              config='128x256')
  msg = str(info.value)
  command = 'python -m mtl_optax.data.prepare cityscapes --data-dir'
  _assert_says(msg, f'{command} {tmp_path} --config 128x256 --manual-dir DIR',
               'leftImg8bit')
  assert command in readme
  for name in ('nyuv2', 'cifar100_mt'):
    with pytest.raises(FileNotFoundError,
                       match=f'python -m mtl_optax.data.prepare {name} '):
      data.load(name, 'train', data_dir=tmp_path, batch_size=2)
