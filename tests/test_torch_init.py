"""``init='pytorch'``: PyTorch's default initialisation of Linear and Conv
layers (weights and biases uniform on ±1/sqrt(fan_in)), checked against
the distribution's moments and, where torch is installed, against torch's
own layers by a two-sample Kolmogorov-Smirnov test."""

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from mtl_optax import models
from mtl_optax.models import layers, lenet


def _lenet_layers(model):
  enc = model.encoder
  return {'conv1': (enc.conv1, 1 * 25), 'conv2': (enc.conv2, 10 * 25),
          'fc': (enc.fc, 320), 'left': (model.heads['left'], 50),
          'right': (model.heads['right'], 50)}


def test_every_layer_is_uniform_on_the_fan_in_bound():
  model = models.create('lenet_multimnist', init='pytorch', rngs=3)
  for name, (layer, fan_in) in _lenet_layers(model).items():
    bound = 1 / np.sqrt(fan_in)
    for what in ('kernel', 'bias'):
      x = np.asarray(getattr(layer, what)[...]).ravel()
      assert np.all(np.abs(x) <= bound), (name, what)
      if x.size >= 200:      # U(-b, b): std b/sqrt(3), fills the interval
        assert np.std(x) == pytest.approx(bound / np.sqrt(3), rel=0.1), name
        assert np.abs(x).max() > 0.9 * bound, (name, what)
    assert np.any(np.asarray(layer.bias[...]) != 0), name


def test_flax_default_is_unchanged_and_differs():
  flax_model = models.create('lenet_multimnist', rngs=3)
  assert np.all(np.asarray(flax_model.encoder.fc.bias[...]) == 0)
  kernel = np.asarray(flax_model.encoder.fc.kernel[...])
  # LeCun normal: std 1/sqrt(fan_in), sqrt(3) x PyTorch's.
  assert np.std(kernel) == pytest.approx(1 / np.sqrt(320), rel=0.15)


def test_matches_torch_distribution():
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  ours = layers.torch_default_init(320)
  layer = nnx.Linear(320, 500, rngs=nnx.Rngs(0), **ours)
  reference = torch.nn.Linear(320, 500)
  for mine, theirs in ((layer.kernel[...], reference.weight),
                       (layer.bias[...], reference.bias)):
    mine = np.asarray(mine).ravel()
    theirs = theirs.detach().numpy().ravel()
    assert stats.ks_2samp(mine, theirs).pvalue > 1e-3
  conv = nnx.Conv(10, 20, (5, 5), rngs=nnx.Rngs(1),
                  **layers.torch_default_init(250))
  reference = torch.nn.Conv2d(10, 20, 5)
  assert stats.ks_2samp(np.asarray(conv.kernel[...]).ravel(),
                        reference.weight.detach().numpy().ravel()
                        ).pvalue > 1e-3


def test_bad_init_names_the_choices():
  with pytest.raises(ValueError, match="'pytorch'"):
    models.create('lenet_multimnist', init='torch')
  with pytest.raises(ValueError, match='fan_in'):
    layers.torch_default_init(0)
  assert lenet.INITS == ('flax', 'pytorch')
