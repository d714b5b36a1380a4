"""The model zoo: parameter counts, shapes, BatchNorm modes, the functional
view, per-task gradients and a few training steps of every registry model.

Parameter counts and full-size shapes use ``nnx.eval_shape`` (no compute);
everything that runs uses small widths and inputs (stated per model below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtl_optax as mtl
from mtl_optax import models

# -- parameter counts by the layer formulas --------------------------------------


def conv_params(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def bn_params(c):
  return 2 * c   # scale and bias; running statistics are not parameters


def linear_params(cin, cout):
  return cin * cout + cout


def resnet_params(depth, *, stem_kernel=7, width=64):
  stages = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
  bottleneck = depth >= 50
  expansion = 4 if bottleneck else 1
  total = conv_params(stem_kernel, 3, width) + bn_params(width)
  cin = width
  for i, n in enumerate(stages):
    f = width * 2 ** i
    for b in range(n):
      if bottleneck:
        total += (conv_params(1, cin, f) + bn_params(f) + conv_params(3, f, f)
                  + bn_params(f) + conv_params(1, f, 4 * f) + bn_params(4 * f))
      else:
        total += (conv_params(3, cin, f) + bn_params(f) + conv_params(3, f, f)
                  + bn_params(f))
      downsample = i > 0 and b == 0
      if downsample or cin != f * expansion:
        total += conv_params(1, cin, f * expansion) + bn_params(f * expansion)
      cin = f * expansion
  return total


def _abstract(name, **kwargs):
  return nnx.eval_shape(lambda: models.create(name, **kwargs))


def _counts(model):
  return models.num_params(model.encoder), models.num_params(model.heads)


def test_resnet_formula_matches_the_published_backbones():
  # torchvision's ResNet-18/34/50 minus the 1000-way classifier.
  assert resnet_params(18) == 11_689_512 - linear_params(512, 1000)
  assert resnet_params(18) == 11_176_512
  assert resnet_params(34) == 21_284_672
  assert resnet_params(50) == 23_508_032


@pytest.mark.parametrize('depth,output_stride', [
    (18, None), (34, None), (50, None), (34, 8), (50, 8), (50, 16)])
def test_resnet_encoder_counts(depth, output_stride):
  enc = nnx.eval_shape(lambda: models.resnet.resnet(
      depth=depth, output_stride=output_stride, rngs=nnx.Rngs(0)))
  assert models.num_params(enc) == resnet_params(depth)


def test_registry_counts():
  # LeNet: conv 5x5 1->10, conv 5x5 10->20, FC 320->50; heads FC 50->10.
  lenet_enc = (conv_params(5, 1, 10, True) + conv_params(5, 10, 20, True)
               + linear_params(320, 50))
  assert lenet_enc == 21_330
  assert _counts(_abstract('lenet_multimnist')) == (
      lenet_enc, 2 * linear_params(50, 10))

  # CelebA ResNet-18 differs from 11,176,512 only in the 3x3 stem.
  celeba_enc = 11_176_512 - conv_params(7, 3, 64) + conv_params(3, 3, 64)
  assert resnet_params(18, stem_kernel=3) == celeba_enc == 11_168_832
  assert _counts(_abstract('resnet18_celeba')) == (
      celeba_enc, 40 * linear_params(512, 2))

  assert _counts(_abstract('resnet34_7scenes')) == (
      21_284_672, linear_params(512, 3) + linear_params(512, 4))

  # PSPNet head: 4 bins x (1x1 2048->512 + BN), 3x3 (2048+4*512)->512 + BN,
  # 1x1 512->out with bias.
  def psp(out):
    return (4 * (conv_params(1, 2048, 512) + bn_params(512))
            + conv_params(3, 4096, 512) + bn_params(512)
            + conv_params(1, 512, out, True))
  assert _counts(_abstract('resnet50_pspnet_cityscapes')) == (
      23_508_032, psp(19) + psp(2) + psp(1))

  # DeepLab-v2 ASPP: 4 rates x (3x3 512->1024, 1x1 1024->1024, 1x1 1024->out).
  def aspp(out):
    return 4 * (conv_params(3, 512, 1024, True)
                + conv_params(1, 1024, 1024, True)
                + conv_params(1, 1024, out, True))
  assert _counts(_abstract('resnet34_aspp_nyuv2')) == (
      21_284_672, aspp(13) + aspp(1) + aspp(3))

  # VGG-16-BN conv stack (13 convs with bias + BN), FC 512->5 per coarse class.
  vgg_channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512,
                  512]
  vgg = sum(conv_params(3, a, b, True) + bn_params(b)
            for a, b in zip(vgg_channels[:-1], vgg_channels[1:]))
  assert vgg == 14_714_688 + bn_params(64 * 2 + 128 * 2 + 256 * 3 + 512 * 6)
  assert _counts(_abstract('vgg16_cifar100mt')) == (
      vgg, 20 * linear_params(512, 5))


def _conv_layer(cin, cout):   # MTAN's 3x3 conv (bias) + BN
  return conv_params(3, cin, cout, True) + bn_params(cout)


def _attention(cin, c):       # 1x1 conv + BN, 1x1 conv + BN
  return (conv_params(1, cin, c, True) + bn_params(c)
          + conv_params(1, c, c, True) + bn_params(c))


def _mtan_prediction(out):
  return conv_params(3, 64, 64, True) + conv_params(1, 64, out, True)


def test_mtan_counts():
  model = _abstract('mtan_segnet', tasks='nyuv2')
  encoder, heads = _counts(model)
  # The authors' code normalises by the single-task SegNet (shared network +
  # one 13-class prediction layer): 24,981,069 parameters.
  assert encoder + _mtan_prediction(13) == 24_981_069
  per_task_attention = (
      sum(_attention(a, b) for a, b in [(64, 64), (256, 128), (512, 256),
                                         (1024, 512), (1024, 512)])
      + sum(_attention(a, b) for a, b in [(128, 64), (192, 64), (384, 128),
                                           (768, 256), (1024, 512)]))
  shared = (sum(_conv_layer(a, b) for a, b in [(64, 128), (128, 256),
                                               (256, 512), (512, 512),
                                               (512, 512)])
            + sum(_conv_layer(a, b) for a, b in [(64, 64), (128, 64),
                                                 (256, 128), (512, 256),
                                                 (512, 512)]))
  assert heads == (3 * per_task_attention + shared + _mtan_prediction(13)
                   + _mtan_prediction(1) + _mtan_prediction(3))
  assert encoder + heads == 44_229_073   # 1.77x the single-task SegNet


# -- shapes -------------------------------------------------------------------

# name -> (kwargs, published input shape, small input shape)
FULL = {
    'lenet_multimnist': ({}, (28, 28, 1), (28, 28, 1)),
    'resnet18_celeba': ({}, (64, 64, 3), (32, 32, 3)),
    'resnet34_7scenes': ({}, (224, 224, 3), (64, 64, 3)),
    'resnet50_pspnet_cityscapes': ({}, (256, 512, 3), (32, 64, 3)),
    'resnet34_aspp_nyuv2': ({}, (288, 384, 3), (32, 64, 3)),
    'mtan_segnet': ({'tasks': 'nyuv2'}, (288, 384, 3), (32, 64, 3)),
    'vgg16_cifar100mt': ({}, (32, 32, 3), (32, 32, 3)),
    'resnet18_office': ({}, (224, 224, 3), (32, 32, 3)),
}


# The zoo's own models; the multi-task architectures (hps_mlp, mmoe_mlp, ...)
# have their tests in tests/test_architectures.py.
ZOO = tuple(n for n in models.available()
            if n not in models.architectures.REGISTERED)


def _expected_shapes(name, batch, hw, kwargs):
  h, w = hw
  dense = {'segmentation': (batch, h, w, 19 if 'psp' in name else 13),
           'instance': (batch, h, w, 2), 'depth': (batch, h, w, 1),
           'normals': (batch, h, w, 3)}
  if name == 'lenet_multimnist':
    return {'left': (batch, 10), 'right': (batch, 10)}
  if name == 'resnet18_celeba':
    return {t: (batch, 2) for t in models.CELEBA_ATTRIBUTES}
  if name == 'resnet34_7scenes':
    return {'translation': (batch, 3), 'orientation': (batch, 4)}
  if name == 'vgg16_cifar100mt':
    return {t: (batch, 5) for t in models.CIFAR100_COARSE_CLASSES}
  if name == 'resnet18_office':   # multi-input: each domain its own images
    return {t: (batch, 31) for t in ('amazon', 'dslr', 'webcam')}
  if name == 'resnet50_pspnet_cityscapes':
    return {t: dense[t] for t in ('segmentation', 'instance', 'depth')}
  return {t: dense[t] for t in ('segmentation', 'depth', 'normals')}


@pytest.mark.parametrize('name', ZOO)
def test_output_shapes(name):
  kwargs, full, small = FULL[name]
  for batch, shape in [(2, full), (1, small)]:
    def forward():
      model = models.create(name, **kwargs)
      return model(jnp.zeros((batch,) + shape))
    out = nnx.eval_shape(forward)
    got = {t: tuple(y.shape) for t, y in out.items()}
    assert got == _expected_shapes(name, batch, shape[:2], kwargs)


def test_mtan_cityscapes2_shapes():
  out = nnx.eval_shape(lambda: models.create('mtan_segnet', tasks='cityscapes2')(
      jnp.zeros((2, 128, 256, 3))))
  assert {t: y.shape for t, y in out.items()} == {
      'segmentation': (2, 128, 256, 7), 'depth': (2, 128, 256, 1)}


def test_task_names_follow_the_data_conventions():
  assert len(models.CELEBA_ATTRIBUTES) == 40
  assert models.CELEBA_ATTRIBUTES[0] == '5_o_Clock_Shadow'
  assert models.CELEBA_ATTRIBUTES[-1] == 'Young'
  assert len(models.CIFAR100_COARSE_CLASSES) == 20
  assert models.CIFAR100_COARSE_CLASSES[9] == 'large_man-made_outdoor_things'
  for name in ZOO:
    kwargs = FULL[name][0]
    tasks = nnx.eval_shape(lambda: models.create(name, **kwargs)).tasks
    assert tuple(models.default_task_losses(name, **kwargs)) == tasks


# -- small runnable configurations ---------------------------------------------

# Test programs compile at XLA's lowest optimisation level: 3x faster to
# compile on CPU, and the inputs are tiny.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def _jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


# name -> (create kwargs, input shape, batch size) for the runs below.
SMALL = {
    'lenet_multimnist': ({}, (28, 28, 1), 8),
    'resnet18_celeba': ({'width': 4}, (16, 16, 3), 4),
    'resnet34_7scenes': ({'width': 4}, (32, 32, 3), 4),
    'resnet50_pspnet_cityscapes': ({'width': 4, 'features': 16}, (32, 32, 3),
                                   2),
    'resnet34_aspp_nyuv2': ({'width': 4, 'hidden': 16}, (32, 32, 3), 2),
    'mtan_segnet': ({'width': 4, 'tasks': 'cityscapes2'}, (32, 32, 3), 2),
    'vgg16_cifar100mt': ({'width': 4}, (32, 32, 3), 8),
}


def _targets(task, batch, hw, rng, name):
  h, w = hw
  if task in ('left', 'right'):
    return rng.integers(0, 10, batch)
  if task in models.CELEBA_ATTRIBUTES:
    return rng.integers(0, 2, batch)
  if task in models.CIFAR100_COARSE_CLASSES:
    return None   # filled in by _batch
  if task == 'translation':
    return rng.standard_normal((batch, 3))
  if task == 'orientation':
    q = rng.standard_normal((batch, 4))
    q[:, 0] = np.abs(q[:, 0])
    return q / np.linalg.norm(q, axis=-1, keepdims=True)
  if task == 'segmentation':
    classes = {'resnet50_pspnet_cityscapes': 19, 'mtan_segnet': 7}.get(name, 13)
    labels = rng.integers(0, classes, (batch, h, w))
    labels[:, :2] = -1
    return labels
  if task == 'instance':
    return rng.standard_normal((batch, h, w, 2))
  if task == 'depth':
    depth = rng.uniform(0.5, 2.0, (batch, h, w, 1))
    depth[:, :, :3] = 0.0
    return depth
  if task == 'normals':
    n = rng.standard_normal((batch, h, w, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[:, -2:] = 0.0
    return n
  raise KeyError(task)


def _batch(name, tasks, seed=0):
  _, shape, batch_size = SMALL[name]
  rng = np.random.default_rng(seed)
  batch = {'image': jnp.asarray(rng.standard_normal((batch_size,) + shape),
                                jnp.float32)}
  # CIFAR-100-MT: each example has a label for its own coarse class only.
  coarse = rng.integers(0, len(tasks), batch_size)
  for i, task in enumerate(tasks):
    target = _targets(task, batch_size, shape[:2], rng, name)
    if target is None:
      target = np.where(coarse == i, rng.integers(0, 5, batch_size), -1)
    dtype = jnp.int32 if np.issubdtype(target.dtype, np.integer) else jnp.float32
    batch[task] = jnp.asarray(target, dtype)
  if name == 'resnet50_pspnet_cityscapes':
    batch['instance_mask'] = jnp.asarray(rng.uniform(size=(batch_size,)
                                                     + shape[:2]) < 0.5)
  return batch


def _numpy_init(abstract, seed=0):
  """Fills an abstract model with He-normal kernels, zero biases, unit BN.

  Eager initialisation compiles one XLA program per kernel shape (tens of
  seconds for MTAN on this CPU); numpy values cost nothing. The real
  initialisers run in the doctests and in the toy-model tests.
  """
  graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  params, stats = (jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(s))
                   for s in (params, stats))
  return nnx.merge(graphdef, params, stats)


_MODELS = {}


def _small_model(name):
  """One small model per name, shared by the tests (they never mutate it)."""
  if name not in _MODELS:
    kwargs = SMALL[name][0]
    _MODELS[name] = _numpy_init(
        nnx.eval_shape(lambda: models.create(name, **kwargs)))
  return _MODELS[name]


def _losses(name):
  return models.default_task_losses(name, **SMALL[name][0])


def _allclose(a, b, **kwargs):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **kwargs), a, b)


# -- a toy model with every feature: BatchNorm in the encoder and the heads, a
# -- module shared by two heads, tasks not in alphabetical order -----------------


class _ToyHead(nnx.Module):

  def __init__(self, shared, out, *, rngs):
    self.shared = shared
    self.norm = models.layers.batch_norm(4, rngs=rngs)
    self.out = nnx.Linear(4, out, rngs=rngs)

  def __call__(self, z):
    return self.out(nnx.relu(self.norm(self.shared(z))))


def _toy_model():
  rngs = nnx.Rngs(0)
  encoder = nnx.Sequential(models.layers.ConvBN(3, 4, 3, stride=2, rngs=rngs),
                           nnx.relu, models.layers.global_average_pool)
  shared = nnx.Linear(4, 4, rngs=rngs)
  return models.MultiTaskModel(encoder, {
      'b': _ToyHead(shared, 3, rngs=rngs),
      'a': _ToyHead(shared, 1, rngs=rngs),
      'c': nnx.Linear(4, 2, rngs=rngs)})


TOY_LOSSES = {
    'b': models.losses.target_loss(models.losses.softmax_cross_entropy, 'b'),
    'a': lambda out, batch: jnp.mean((out[:, 0] - batch['a']) ** 2),
    'c': models.losses.target_loss(models.losses.l1_loss, 'c'),
}


def _toy_batch():
  rng = np.random.default_rng(3)
  return {'image': jnp.asarray(rng.standard_normal((6, 8, 8, 3)), jnp.float32),
          'b': jnp.asarray(rng.integers(0, 3, 6), jnp.int32),
          'a': jnp.asarray(rng.standard_normal(6), jnp.float32),
          'c': jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)}


def test_functional_view_matches_the_stateful_model():
  model = _toy_model()
  assert model.tasks == ('b', 'a', 'c')
  fm = models.functional(model)
  batch = _toy_batch()
  apply = _jit(fm.apply, static_argnames='train')
  for train in (True, False):
    model.train() if train else model.eval()
    outputs, new_stats = apply(fm.params, fm.batch_stats, batch['image'],
                               train=train)
    expected = model(batch['image'])   # updates the model's statistics
    _allclose(outputs, expected, rtol=1e-4, atol=1e-5)
    _, _, model_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    _allclose(new_stats, nnx.to_pure_dict(model_stats), rtol=1e-4, atol=1e-6)
    if train:
      assert _changed(new_stats, fm.batch_stats)
      fm.update_model(model, fm.params, fm.batch_stats)   # undo
    else:
      _allclose(new_stats, fm.batch_stats, rtol=0, atol=0)
  # The shared module's parameters are stored once, under the first task in
  # alphabetical order, and are the only shared head parameters.
  assert 'shared' in fm.params['heads']['a']
  assert 'shared' not in fm.params['heads']['b']
  flat = jax.tree_util.tree_flatten_with_path(fm.shared_mask)[0]
  assert {jax.tree_util.keystr(p) for p, m in flat if not m} == {
      "['heads']['a']['norm']['bias']", "['heads']['a']['norm']['scale']",
      "['heads']['a']['out']['bias']", "['heads']['a']['out']['kernel']",
      "['heads']['b']['norm']['bias']", "['heads']['b']['norm']['scale']",
      "['heads']['b']['out']['bias']", "['heads']['b']['out']['kernel']",
      "['heads']['c']['bias']", "['heads']['c']['kernel']"}
  assert jax.tree.structure(mtl.resolve_shared_mask(fm.shared_mask, fm.params)
                            ) == jax.tree.structure(fm.params)
  # Writing back and merging round-trip.
  params = jax.tree.map(lambda p: p + 1.0, fm.params)
  fm.update_model(model, params, new_stats)
  _allclose(models.functional(model).params, params, rtol=0, atol=0)
  merged = fm.merge(params, new_stats)
  assert merged.tasks == fm.tasks
  assert merged.heads['a'].shared is merged.heads['b'].shared


def test_per_task_gradients_equal_separate_grads():
  fm = models.functional(_toy_model())
  batch = _toy_batch()
  loss_fn = fm.loss_fn(TOY_LOSSES)

  @_jit
  def both(params, stats):
    (losses, new_stats), jac = mtl.value_and_jacobian(loss_fn, has_aux=True)(
        params, stats, batch)
    grads = [jax.grad(lambda p, t=t: loss_fn(p, stats, batch)[0][t])(params)
             for t in range(len(fm.tasks))]
    outputs, _ = fm.apply(params, stats, batch['image'], train=True)
    separate = [TOY_LOSSES[t](outputs[t], batch) for t in fm.tasks]
    return losses, jnp.stack(separate), new_stats, jac, grads

  losses, separate, new_stats, jac, grads = both(fm.params, fm.batch_stats)
  np.testing.assert_allclose(losses, separate, rtol=1e-6)   # fm.tasks order
  for t in range(3):
    _allclose(jax.tree.map(lambda g: g[t], jac), grads[t], rtol=1e-4,
              atol=1e-6)
  # A head's own parameters get gradient from its own task only; the shared
  # module (stored under 'a') from tasks 'b' and 'a' but not 'c'.
  kernel_norms = lambda tree: np.abs(np.asarray(tree['kernel'])).max(axis=(1, 2))
  assert np.count_nonzero(kernel_norms(jac['heads']['b']['out'])) == 1
  np.testing.assert_array_equal(
      kernel_norms(jac['heads']['a']['shared']) > 0, [True, True, False])
  assert (kernel_norms(jac['encoder']['layers'][0]['conv']) > 0).all()
  assert jax.tree.structure(new_stats) == jax.tree.structure(fm.batch_stats)


def test_stateful_model_modes_update_running_averages():
  model = _toy_model()
  x = _toy_batch()['image']
  before = np.asarray(model.encoder.layers[0].norm.mean[...])
  model.eval()
  model(x)
  np.testing.assert_array_equal(model.encoder.layers[0].norm.mean[...], before)
  model.train()
  model(x)
  assert not np.allclose(model.encoder.layers[0].norm.mean[...], before)


def test_mtan_shares_its_attention_convolutions():
  fm = models.functional(nnx.eval_shape(
      lambda: models.create('mtan_segnet', tasks='nyuv2')))
  flat = jax.tree_util.tree_flatten_with_path(fm.shared_mask['heads'])[0]
  shared = [p for p, m in flat if m]
  assert all(jax.tree_util.keystr(p).startswith("['depth']['shared']")
             for p in shared)
  assert 'shared' not in fm.params['heads']['segmentation']
  assert 'shared' not in fm.params['heads']['normals']['head']
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  shared_convs = (sum(_conv_layer(a, b) for a, b in [
      (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (64, 64),
      (128, 64), (256, 128), (512, 256), (512, 512)]))
  assert size(fm.params['heads']['depth']['shared']) == shared_convs
  assert all(jax.tree.leaves(fm.shared_mask['encoder']))


# -- BatchNorm in a registry model ------------------------------------------------


def test_batchnorm_train_and_eval_modes():
  name = 'resnet18_celeba'
  fm = models.functional(_small_model(name))
  x = _batch(name, fm.tasks)['image']
  apply = _jit(fm.apply, static_argnames='train')
  stats = fm.batch_stats
  repeated = x[:1].repeat(x.shape[0], 0)
  first = lambda tree: np.asarray(tree['Smiling'])[0]
  # Eval: running averages, statistics unchanged, an example's output does
  # not depend on the rest of its batch, deterministic.
  out, new = apply(fm.params, stats, x, train=False)
  _allclose(new, stats, rtol=0, atol=0)
  alone, _ = apply(fm.params, stats, repeated, train=False)
  np.testing.assert_allclose(first(out), first(alone), rtol=1e-5, atol=1e-6)
  _allclose(out, apply(fm.params, stats, x, train=False)[0], rtol=0, atol=0)
  # Train: batch statistics (the output depends on the batch), running
  # averages move by 1 - momentum = 0.1 towards the (biased) batch moments.
  out_t, new_t = apply(fm.params, stats, x, train=True)
  alone_t, _ = apply(fm.params, stats, repeated, train=True)
  assert not np.allclose(first(out_t), first(alone_t))
  stem = np.asarray(jax.lax.conv_general_dilated(
      x, fm.params['encoder']['stem']['conv']['kernel'], (1, 1),
      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  norm = new_t['encoder']['stem']['norm']
  np.testing.assert_allclose(norm['mean'], 0.1 * stem.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(norm['var'], 0.9 + 0.1 * stem.var((0, 1, 2)),
                             rtol=1e-4)


def test_forward_traces_once_per_shape():
  fm = models.functional(_small_model('lenet_multimnist'))
  traces = []

  @_jit
  def forward(params, stats, x):
    traces.append(x.shape)
    return fm.apply(params, stats, x, train=False)

  x = jnp.zeros((4, 28, 28, 1))
  for _ in range(3):
    forward(fm.params, fm.batch_stats, x)
  forward(jax.tree.map(lambda p: p * 2, fm.params), fm.batch_stats, x)
  assert len(traces) == 1
  forward(fm.params, fm.batch_stats, jnp.zeros((2, 28, 28, 1)))
  assert len(traces) == 2


# -- training with Aligned-MTL (θ level) and Aligned-MTL-UB (z level) -------------


def _changed(a, b):
  return any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


STEPS = 4


@pytest.mark.parametrize('name', list(SMALL))
def test_trains_with_aligned_mtl_at_both_levels(name):
  fm = models.functional(_small_model(name))
  task_losses = _losses(name)
  batch = _batch(name, fm.tasks)
  tx = optax.adam(3e-3)

  # θ level: per-task gradients of every parameter, the Gramian over the
  # shared ones.
  agg = mtl.aligned_mtl(shared=fm.shared_mask)
  loss_fn = fm.loss_fn(task_losses)

  @_jit
  def theta_step(params, stats, agg_state, opt_state):
    (losses, stats), grads = mtl.value_and_jacobian(loss_fn, has_aux=True)(
        params, stats, batch)
    direction, agg_state = agg.update(grads, agg_state, params)
    updates, opt_state = tx.update(direction, opt_state, params)
    return (optax.apply_updates(params, updates), stats, agg_state, opt_state,
            losses)

  # z level (Aligned-MTL-UB): one backward pass through the encoder.
  ub = mtl.aligned_mtl()
  rep_step = fm.representation_step(task_losses, ub)

  @_jit
  def z_step(params, stats, agg_state, opt_state):
    out = rep_step(params, stats, agg_state, batch)
    updates, opt_state = tx.update(out.grads, opt_state, params)
    return (optax.apply_updates(params, updates), out.batch_stats,
            out.aggregator_state, opt_state, out.losses)

  for step, agg_state in [(theta_step, agg.init(fm.params)),
                          (z_step, ub.init(None))]:
    state = (fm.params, fm.batch_stats, agg_state, tx.init(fm.params))
    first = None
    for _ in range(STEPS):
      *state, losses = step(*state)
      first = losses if first is None else first
    params, stats, agg_state, _ = state
    assert losses.shape == (len(fm.tasks),)
    assert not bool(agg_state.last_skipped)
    assert jax.tree.structure(stats) == jax.tree.structure(fm.batch_stats)
    assert all(np.isfinite(np.asarray(v)).all()
               for v in jax.tree.leaves((params, stats, losses)))
    assert _changed(params['encoder'], fm.params['encoder'])
    assert _changed(params['heads'], fm.params['heads'])
    assert _changed(stats, fm.batch_stats) == bool(jax.tree.leaves(stats))
    assert float(jnp.sum(losses)) < float(jnp.sum(first))
