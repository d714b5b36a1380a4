"""models.from_torchvision: our encoders compute torchvision's functions.

A torchvision ResNet-18/34/50 (plain and dilated) or VGG-16-BN with random
weights and random BatchNorm statistics is converted, and our forward pass
is compared with torchvision's (images NCHW there, NHWC here):

- float32, eval mode (running statistics): the largest difference at most
  1e-5 times the largest output (measured 1e-6 to 2e-6);
- float32, train mode (batch statistics): at most 5e-4 times it (measured
  up to 1.1e-4 on ResNet-50): at 64×64 the last stage normalises over n = 8
  values per channel (2 images × 2 × 2), which amplifies float32 rounding;
- float64 (both networks with the same float32 weights, computed in
  float64; 48×48 images), train mode: outputs to 1e-9 of the largest and
  the running mean and variance after the step to rtol 1e-6 (the variance
  is stored in float32): the same function, not just close.

Float32 running statistics after the train step: rtol 1e-4 of each
tensor's largest entry.

The tests that need torchvision skip without it (``pip install
'mtl-optax[torch]'`` after torch and torchvision from PyTorch's CPU index;
CI installs them); the error messages and the BatchNorm convention's unit
test on our side need no torch.
"""

import copy
import re
import time

import numpy as np
import pytest

pytest.importorskip('flax')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from flax import nnx

from mtl_optax import models
from mtl_optax.models import layers
from mtl_optax.models import torchvision_weights as tw

EVAL_TOL = 1e-5    # of the largest output, float32
TRAIN_TOL = 5e-4   # float32, batch statistics over few values
EXACT_TOL = 1e-9   # float64


def _torchvision():
  """torchvision, or a skip (absent, or a build that does not import)."""
  try:
    import torch
    import torchvision
  except ImportError as e:
    pytest.skip(f"needs torch and torchvision (pip install 'mtl-optax[torch]' "
                f'from the CPU index): {e}')
  except (RuntimeError, OSError) as e:   # e.g. a CUDA torchvision on CPU torch
    pytest.skip('torchvision is installed but does not import (a CUDA build '
                'on a CPU torch? install both from '
                f'https://download.pytorch.org/whl/cpu): {e}')
  torch.set_num_threads(2)
  return torch, torchvision


def _build(torch, fn, seed=0):
  """``fn()`` (a torchvision model) with seeded random weights, random
  BatchNorm affine and running statistics and random conv biases:
  torchvision's initialisation (1, 0, 0, 1, 0) would not notice a mix-up."""
  torch.manual_seed(seed)
  net = fn()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.uniform_(-0.5, 0.5, generator=g)
        m.running_mean.uniform_(-0.5, 0.5, generator=g)
        m.running_var.uniform_(0.5, 2.0, generator=g)
      elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
        m.bias.uniform_(-0.1, 0.1, generator=g)
  return net


def _abstract(fn):
  """The module ``fn()`` builds, without initialising it (from_torchvision
  then writes every parameter and statistic)."""
  return nnx.eval_shape(fn)


def _image(shape=(2, 3, 64, 64), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _close(ours, theirs_nchw_or_flat, tol=EVAL_TOL):
  """max |ours - theirs| <= tol · max |theirs|; returns the ratio."""
  theirs = np.asarray(theirs_nchw_or_flat)
  if theirs.ndim == 4:
    theirs = np.transpose(theirs, (0, 2, 3, 1))
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape
  err = float(np.max(np.abs(ours - theirs)))
  scale = float(np.max(np.abs(theirs)))
  assert err <= tol * scale, (err, scale, err / scale)
  return err / scale


def _resnet_body(torch, net):
  """torchvision's ResNet up to layer4 (no pooling, no classifier)."""
  return torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                             net.layer1, net.layer2, net.layer3, net.layer4)


def _check_running_stats(their_model, encoder, rtol):
  """Each running mean and variance to ``rtol`` (of its largest entry near
  zero)."""
  state = their_model.state_dict()
  checked = 0
  for key, target in tw._targets(encoder).items():  # pylint: disable=protected-access
    if key.endswith(('running_mean', 'running_var')):
      theirs = state[key].double().numpy()
      np.testing.assert_allclose(
          np.asarray(target.variable.get_value(), np.float64), theirs,
          rtol=rtol, atol=rtol * np.max(np.abs(theirs)), err_msg=key)
      checked += 1
  assert checked > 0


def _check_eval_and_train(torch, their_model, body, encoder, x,
                          out=lambda y: y):
  """Float32 eval and train mode, float64 train mode (see the module
  docstring). ``body(their_model)`` is the part that gives the output, as
  ``out`` of it. Returns the float32 eval and train errors."""
  def run(model, ours, x, train):
    body(model).train(train)
    ours.train() if train else ours.eval()   # pylint: disable=expression-not-assigned
    with torch.no_grad():
      ref = out(body(model)(torch.from_numpy(x))).numpy()
    return ours(_nhwc(x)), ref

  eval_err = _close(*run(their_model, encoder, x, False))
  layers.unbiased_running_variance(encoder)
  theirs32, ours32 = copy.deepcopy(their_model), nnx.clone(encoder)
  train_err = _close(*run(theirs32, ours32, x, True), tol=TRAIN_TOL)
  _check_running_stats(theirs32, ours32, rtol=1e-4)
  # float64 on 48×48 images (float64 convolutions are slow on XLA:CPU).
  # Not smaller: at 32×32 the last stage normalises over n = 2 values per
  # channel, where BatchNorm is so ill-conditioned that even float64
  # rounding grows to 3e-6 through three of them.
  with jax.enable_x64(True):
    theirs64, ours64 = copy.deepcopy(their_model).double(), nnx.clone(encoder)
    # The same (float32) values held in float64, as torch's .double(): a
    # float64 pass must not write float64 statistics into float32 arrays
    # (a scatter JAX warns will become an error).
    nnx.update(ours64, jax.tree.map(
        lambda v: (jnp.asarray(v, jnp.float64)
                   if jnp.issubdtype(v.dtype, jnp.floating) else v),
        nnx.state(ours64)))
    x64 = _image((2, 3, 48, 48), seed=1).astype(np.float64)
    _close(*run(theirs64, ours64, x64, True), tol=EXACT_TOL)
    _check_running_stats(theirs64, ours64, rtol=1e-6)
  return eval_err, train_err


def _dilate(torch, net, style):
  """Strides of layer3 and layer4 -> dilations 2 and 4 on a torchvision
  ResNet-18/34 (whose BasicBlock refuses ``replace_stride_with_dilation``):
  'torchvision' keeps a stage's first block at the previous stage's
  dilation (as torchvision's Bottleneck ResNets, and CSAIL's
  ``ResnetDilated``), 'deeplab' dilates it too."""
  del torch
  previous = 1
  for layer, d in ((net.layer3, 2), (net.layer4, 4)):
    for b, block in enumerate(layer):
      for conv in (block.conv1, block.conv2):
        dilation = previous if (b == 0 and conv is block.conv1
                                and style == 'torchvision') else d
        conv.stride = (1, 1)
        conv.dilation = conv.padding = (dilation, dilation)
      if block.downsample is not None:
        block.downsample[0].stride = (1, 1)
    previous = d
  return net


RESNETS = [  # depth, output stride (None: 32)
    (18, None), (34, None), (50, None), (18, 8), (34, 8), (50, 8), (50, 16)]


@pytest.mark.parametrize('depth,output_stride', RESNETS)
def test_resnet_computes_torchvisions_function(depth, output_stride):
  torch, torchvision = _torchvision()
  start = time.perf_counter()
  make = getattr(torchvision.models, f'resnet{depth}')
  if output_stride is None or depth < 50:
    theirs = _build(torch, make)
    if output_stride is not None:
      theirs = _dilate(torch, theirs, 'torchvision')
  else:
    theirs = _build(torch, lambda: make(replace_stride_with_dilation=(
        [False, True, True] if output_stride == 8 else [False, False, True])))
  ours = _abstract(lambda: models.resnet.resnet(
      depth=depth, output_stride=output_stride, global_pool=False,
      dilation_style='torchvision', rngs=nnx.Rngs(0)))
  assert models.from_torchvision(ours, theirs.state_dict(),
                                 ignore=('fc',)) is ours
  errs = _check_eval_and_train(torch, theirs,
                               lambda m: _resnet_body(torch, m), ours,
                               _image())
  print(f'resnet{depth} output stride {output_stride}: float32 relative '
        f'errors eval {errs[0]:.1e}, train {errs[1]:.1e}; '
        f'{time.perf_counter() - start:.1f} s')


def test_deeplab_dilation_dilates_every_block():
  """Our default ``dilation_style='deeplab'`` dilates a dilated stage's
  first block as well (DeepLab-v2; AdaShare's ResNet-34): a different
  function from torchvision's convention, with the same weights."""
  torch, torchvision = _torchvision()
  theirs = _build(torch, torchvision.models.resnet34).eval()
  state = theirs.state_dict()
  x = _image()

  def ours(style):
    enc = _abstract(lambda: models.resnet.resnet(
        depth=34, output_stride=8, global_pool=False, dilation_style=style,
        rngs=nnx.Rngs(0)))
    models.from_torchvision(enc, state, ignore=('fc',))
    enc.eval()
    return enc(_nhwc(x))

  def reference(style):
    net = _dilate(torch, copy.deepcopy(theirs), style)
    with torch.no_grad():
      return _resnet_body(torch, net)(torch.from_numpy(x)).numpy()

  deeplab = ours('deeplab')
  _close(deeplab, reference('deeplab'))
  assert not np.allclose(deeplab, np.transpose(reference('torchvision'),
                                               (0, 2, 3, 1)), atol=1e-2)


def test_vgg16_bn_computes_torchvisions_function():
  torch, torchvision = _torchvision()
  theirs = _build(torch, torchvision.models.vgg16_bn)
  ours = _abstract(lambda: models.vgg.VGG16(rngs=nnx.Rngs(0)))
  models.from_torchvision(ours, theirs.state_dict(), ignore=('classifier',))
  # Ours ends in the global average of the last map (1×1 at 32×32; 2×2 here).
  errs = _check_eval_and_train(
      torch, theirs, lambda m: m.features, ours, _image(),
      out=lambda y: y.mean(dim=(2, 3)))
  print(f'vgg16_bn: relative errors eval {errs[0]:.1e}, train {errs[1]:.1e}')


def test_mtan_segnet_encoder_is_vgg16_bn():
  """MTAN's SegNet takes vgg16_bn's features in its encoder half; its
  decoder and the task heads are not written."""
  torch, torchvision = _torchvision()
  theirs = _build(torch, torchvision.models.vgg16_bn).eval()
  model = _abstract(lambda: models.create('mtan_segnet', tasks='cityscapes2',
                                          rngs=0))
  models.from_torchvision(model, theirs.state_dict(), ignore=('classifier',))
  net = model.encoder
  # Left abstract (eval_shape's placeholders): not written.
  for part in (net.decoder_first, net.decoder_rest, model.heads):
    assert not any(isinstance(v, jax.Array)
                   for v in jax.tree.leaves(nnx.state(part)))
  # The encoder half as SegNet.__call__ runs it: each level's pre-pool map.
  x = _image()
  h = _nhwc(x)
  ours = []
  for level in range(5):
    h = nnx.view(net.encoder_rest[level], use_running_average=True)(
        nnx.view(net.encoder_first[level], use_running_average=True)(h))
    ours.append(h)
    h, _ = layers.max_pool_2x2_with_argmax(h)
  y = torch.from_numpy(x)
  level = 0
  with torch.no_grad():
    for m in theirs.features:
      if isinstance(m, torch.nn.MaxPool2d):
        _close(ours[level], y.numpy())
        level += 1
      y = m(y)
  assert level == 5


def test_multi_task_model_loads_its_encoder_and_keeps_its_heads():
  torch, torchvision = _torchvision()
  theirs = _build(torch, torchvision.models.resnet18).eval()
  encoder = _abstract(lambda: models.resnet.resnet(depth=18, rngs=nnx.Rngs(0)))
  model = models.MultiTaskModel(
      encoder, {'a': nnx.Linear(512, 3, rngs=nnx.Rngs(1))})
  head = np.asarray(model.heads['a'].kernel.get_value())
  models.from_torchvision(model, theirs.state_dict(), ignore=('fc',))
  model.eval()
  x = _image()
  with torch.no_grad():
    pooled = torch.flatten(theirs.avgpool(_resnet_body(torch, theirs)(
        torch.from_numpy(x))), 1).numpy()
  _close(model.encode(_nhwc(x)), pooled)
  np.testing.assert_array_equal(model.heads['a'].kernel.get_value(), head)
  out = model(_nhwc(x))['a']
  np.testing.assert_allclose(out, pooled @ head + np.asarray(
      model.heads['a'].bias.get_value()), rtol=1e-4, atol=1e-4)


def test_files_pth_and_safetensors_and_pretrained(tmp_path):
  torch, torchvision = _torchvision()
  theirs = _build(torch, torchvision.models.resnet18).eval()
  state = theirs.state_dict()
  torch.save(state, tmp_path / 'resnet18.pth')
  loaded = tw.load_state_dict(tmp_path / 'resnet18.pth')
  assert list(loaded) == list(state)
  assert all(isinstance(v, np.ndarray) for v in loaded.values())
  try:
    from safetensors.numpy import save_file
  except ImportError:
    save_file = None
  if save_file is not None:
    save_file({k: v.numpy() for k, v in state.items()},
              str(tmp_path / 'resnet18.safetensors'))
    from_st = tw.load_state_dict(tmp_path / 'resnet18.safetensors')
    assert set(from_st) == set(state)
    for k, v in state.items():
      np.testing.assert_array_equal(from_st[k], v.numpy())

  x = _image()
  with torch.no_grad():
    ref = _resnet_body(torch, theirs)(torch.from_numpy(x)).numpy()
  # resnet(pretrained=PATH) skips the classifier itself.
  enc = models.resnet.resnet(depth=18, global_pool=False,
                             pretrained=tmp_path / 'resnet18.pth',
                             rngs=nnx.Rngs(0))
  enc.eval()
  _close(enc(_nhwc(x)), ref)
  if save_file is not None:
    enc = _abstract(lambda: models.resnet.resnet(
        depth=18, global_pool=False, rngs=nnx.Rngs(0)))
    models.from_torchvision(enc, tmp_path / 'resnet18.safetensors',
                            ignore=('fc',))
    enc.eval()
    _close(enc(_nhwc(x)), ref)


# -- without torch: torchvision's names, written out here --------------------


def _resnet18_state(classifier=True):
  """A ResNet-18 state dict with torchvision's names and shapes (zeros)."""
  state = {}

  def conv_bn(conv, bn, cout, cin, k):
    state[f'{conv}.weight'] = np.zeros((cout, cin, k, k), np.float32)
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      state[f'{bn}.{name}'] = np.full((cout,), 0.5, np.float32)
    state[f'{bn}.num_batches_tracked'] = np.array(3, np.int64)

  conv_bn('conv1', 'bn1', 64, 3, 7)
  cin = 64
  for s, cout in enumerate((64, 128, 256, 512), start=1):
    for b in range(2):
      p = f'layer{s}.{b}'
      conv_bn(f'{p}.conv1', f'{p}.bn1', cout, cin if b == 0 else cout, 3)
      conv_bn(f'{p}.conv2', f'{p}.bn2', cout, cout, 3)
      if b == 0 and s > 1:
        conv_bn(f'{p}.downsample.0', f'{p}.downsample.1', cout, cin, 1)
    cin = cout
  if classifier:
    state['fc.weight'] = np.zeros((1000, 512), np.float32)
    state['fc.bias'] = np.zeros((1000,), np.float32)
  return state


def _resnet18():
  return _abstract(lambda: models.resnet.resnet(depth=18, rngs=nnx.Rngs(0)))


def test_torchvision_names_written_out_are_torchvisions():
  torch, torchvision = _torchvision()
  del torch
  theirs = {k: tuple(v.shape)
            for k, v in torchvision.models.resnet18().state_dict().items()}
  assert theirs == {k: v.shape for k, v in _resnet18_state().items()}


def test_numpy_state_dict_fills_every_parameter():
  enc = _resnet18()
  state = _resnet18_state(classifier=False)
  state['conv1.weight'] = np.arange(64 * 3 * 7 * 7, dtype=np.float32).reshape(
      64, 3, 7, 7)
  models.from_torchvision(enc, state)
  kernel = np.asarray(enc.stem.conv.kernel.get_value())
  assert kernel.shape == (7, 7, 3, 64)   # OIHW -> HWIO
  np.testing.assert_array_equal(kernel[2, 5, 1, 7], state['conv1.weight'][
      7, 1, 2, 5])
  # Every leaf concrete: nothing left abstract from eval_shape.
  leaves = jax.tree.leaves(nnx.state(enc))
  assert leaves and all(isinstance(v, jax.Array) for v in leaves)
  # Checkpoints saved before PyTorch 0.4.1 lack num_batches_tracked.
  models.from_torchvision(_resnet18(), {
      k: v for k, v in state.items() if not k.endswith('num_batches_tracked')})


def test_unexpected_classifier_names_the_fix():
  with pytest.raises(ValueError) as info:
    models.from_torchvision(_resnet18(), _resnet18_state())
  message = str(info.value)
  assert 'ResNet-18' in message
  assert 'unexpected (2): fc.weight, fc.bias' in message
  assert "skip it with ignore=('fc',)" in message
  assert 'missing' not in message


def test_missing_and_unexpected_keys_are_listed():
  state = _resnet18_state(classifier=False)
  del state['layer4.1.bn2.running_var']
  state['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r'(?s)missing \(1\): '
                     r'layer4\.1\.bn2\.running_var.*unexpected \(1\): '
                     r'layer5\.0\.conv1\.weight'):
    models.from_torchvision(_resnet18(), state)


def test_wrong_architecture_says_which():
  enc = _abstract(lambda: models.resnet.resnet(depth=34, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError) as info:
    models.from_torchvision(enc, _resnet18_state(), ignore=('fc',))
  message = str(info.value)
  assert 'missing (80): layer1.2.conv1.weight' in message
  assert ('The state dict has a ResNet with basic blocks (2, 2, 2, 2); the '
          'model has basic blocks (3, 4, 6, 3).') in message


def test_shape_mismatches_name_both_shapes():
  state = _resnet18_state(classifier=False)
  state['layer2.0.bn1.weight'] = np.zeros((64,), np.float32)
  with pytest.raises(ValueError, match=re.escape(
      'layer2.0.bn1.weight: the state dict has shape (64,), the model needs '
      '(128,)')):
    models.from_torchvision(_resnet18(), state)
  # The CIFAR stem (CelebA's ResNet-18) is not torchvision's.
  celeba = _abstract(lambda: models.create('resnet18_celeba', width=64,
                                           rngs=0))
  with pytest.raises(ValueError) as info:
    models.from_torchvision(celeba, _resnet18_state(classifier=False))
  message = str(info.value)
  assert ('conv1.weight: the state dict has shape (64, 3, 7, 7), the model '
          'needs (64, 3, 3, 3)') in message
  assert 'CIFAR stem' in message


def test_nothing_is_written_when_something_does_not_fit():
  enc = _resnet18()
  models.from_torchvision(enc, _resnet18_state(classifier=False))
  state = _resnet18_state(classifier=False)
  state['bn1.weight'] = np.full((64,), 7.0, np.float32)
  state['layer1.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError):
    models.from_torchvision(enc, state)
  np.testing.assert_array_equal(enc.stem.norm.scale.get_value(), 0.5)


def test_bad_inputs():
  with pytest.raises(TypeError, match='no torchvision backbone for LeNet'):
    models.from_torchvision(models.create('lenet_multimnist'), {})
  with pytest.raises(TypeError, match=r"\['state_dict'\]"):
    models.from_torchvision(_resnet18(), {'state_dict': {'a': 1}})
  with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
    models.from_torchvision(_resnet18(), '/nonexistent/resnet18.pth')


# -- the BatchNorm convention --------------------------------------------------


def test_batch_norm_running_variance_conventions():
  """Flax averages the biased batch variance, PyTorch the unbiased one;
  ``unbiased_running_var`` switches ours to PyTorch's. n = 2·2·2 = 8 values
  per channel: a factor 8/7."""
  x = _image((2, 3, 2, 2), seed=1)
  bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
  assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)   # PyTorch's 0.1, 1e-5
  bn(_nhwc(x))
  var = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1)
  np.testing.assert_allclose(bn.var.get_value(), 0.9 + 0.1 * var, rtol=1e-6)
  assert layers.unbiased_running_variance(bn) == 1
  bn.var.set_value(jnp.ones(3))
  bn.mean.set_value(jnp.zeros(3))
  y = bn(_nhwc(x))
  np.testing.assert_allclose(bn.var.get_value(), 0.9 + 0.1 * var * 8 / 7,
                             rtol=1e-6)
  try:
    torch, _ = _torchvision()
  except pytest.skip.Exception:
    return
  theirs = torch.nn.BatchNorm2d(3).train()
  with torch.no_grad():
    ref = theirs(torch.from_numpy(x)).numpy()
  _close(y, ref)
  np.testing.assert_allclose(bn.var.get_value(), theirs.running_var.numpy(),
                             rtol=1e-6)
  np.testing.assert_allclose(bn.mean.get_value(), theirs.running_mean.numpy(),
                             rtol=1e-6, atol=1e-7)
