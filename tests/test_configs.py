"""Every benchmark config builds and trains 2 steps on random
batches in its dataset's convention, at a small width and image size."""

import numpy as np
import pytest

from mtl_optax import configs
from mtl_optax import data
from mtl_optax import training
from mtl_optax.data import loader as loader_lib

SMALL_IMAGE = {'multi_mnist': None, 'celeb_a': (16, 16), 'cifar100_mt': None,
               'cityscapes': (32, 32), 'cityscapes_mtan': (32, 32),
               'nyuv2': (32, 32), 'seven_scenes': (32, 32),
               'office31': (16, 16), 'office_home': (16, 16)}


def _data_fn(dataset):
  arrays = data.random_batch(dataset, 8, image_size=SMALL_IMAGE[dataset])

  def data_fn(split, *, batch_size, seed, shuffle, num_epochs,
              drop_remainder, state=None):
    options = dict(batch_size=batch_size, seed=seed, shuffle=shuffle,
                   num_epochs=num_epochs, drop_remainder=drop_remainder,
                   prefetch=0, process_index=0, process_count=1, state=state)
    if data.is_multi_input(dataset):   # {task: arrays}: one stream per task
      return loader_lib.MultiInputLoader(
          {task: loader_lib.ArraySource(a) for task, a in arrays.items()},
          **options)
    return loader_lib.Loader(loader_lib.ArraySource(arrays), **options)

  return data_fn


CASES = [(name, {}) for name in configs.NAMES] + [
    ('nyuv2', {'arch': 'aspp'}), ('cityscapes_mtan', {'arch': 'aspp'})]


@pytest.mark.parametrize('name,args', CASES,
                         ids=[n + ''.join(a.values()) for n, a in CASES])
def test_config_trains_two_steps(name, args):
  config = configs.get_config(name, **args)
  assert config.model and config.dataset and config.method
  width = {} if config.model == 'lenet_multimnist' else {'width': 4}
  config = config.replace(
      batch_size=4, eval_batch_size=4, num_steps=2, max_eval_batches=1,
      model_kwargs={**config.model_kwargs, **width})
  # Each config at its representation level (the cheaper compile); both
  # levels of the loop are tested in test_training.py.
  result = training.train(config.replace(level='representation'),
                          progress=False, data_fn=_data_fn(config.dataset))
  assert int(result.state.step) == 2
  assert np.isfinite(result.history['losses']).all()
  assert not result.history['skipped'].any()
  metrics = result.evaluations[-1]['metrics']
  values = [v for task in metrics.values() for v in task.values()]
  assert values and np.isfinite(values).all()
  if data.is_multi_input(config.dataset):   # each domain, and their average
    assert set(metrics) == set(data.tasks(config.dataset)) | {'average'}


def test_unknown_config_is_a_clear_error():
  with pytest.raises(KeyError, match='known'):
    configs.get_config('imagenet')


def test_mamg_set_ups():
  """Chai et al. §IV-C as written: Adam with an L2 term (not decoupled),
  the backbone at 1e-2 and the heads at 1e-3 on Cityscapes, the two-task
  NYUv2 scenario (segmentation + normals)."""
  from flax import nnx
  from mtl_optax import models
  city = configs.get_config('cityscapes_mtan', arch='aspp')
  assert (city.optimizer, city.learning_rate, city.weight_decay) == (
      'adam', 1e-2, 1e-4)
  assert city.learning_rate_scales == {'heads': 0.1}
  nyu = configs.get_config('nyuv2', arch='aspp', tasks='seg_normals')
  assert nyu.optimizer == 'adam' and not nyu.learning_rate_scales
  model = nnx.eval_shape(lambda: models.create(
      nyu.model, rngs=0, width=2, **nyu.model_kwargs))
  assert model.tasks == ('segmentation', 'normals')
  assert sorted(models.default_task_losses(nyu.model, **nyu.model_kwargs)
                ) == ['normals', 'segmentation']
  with pytest.raises(ValueError, match="use arch='aspp'"):
    configs.get_config('nyuv2', tasks='seg_normals')
  with pytest.raises(ValueError, match='tasks are among'):
    models.create('resnet34_aspp_nyuv2', rngs=0, width=2, tasks=('edges',))


def test_sener_koltun_cityscapes_protocol_uses_squared_errors():
  import jax.numpy as jnp
  config = configs.get_config('cityscapes', protocol='sener_koltun')
  assert (config.optimizer, config.batch_size, config.num_epochs) == (
      'sgd', 8, 250)
  assert config.lr_decay_epochs[:2] == (30, 60)
  assert config.lr_decay_factor == 0.5
  from mtl_optax import models
  mse = models.default_task_losses(config.model, **config.loss_kwargs)
  l1 = models.default_task_losses(config.model)
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  target = np.abs(rng.normal(size=(2, 4, 4, 1))).astype(np.float32)
  target[0, 0, 0, 0] = 0.0                     # an invalid pixel
  batch = {'depth': target}
  valid = target != 0
  np.testing.assert_allclose(
      float(mse['depth'](pred, batch)),
      np.mean(((np.asarray(pred) - target) ** 2)[valid]), rtol=1e-5)
  np.testing.assert_allclose(
      float(l1['depth'](pred, batch)),
      np.mean(np.abs(np.asarray(pred) - target)[valid]), rtol=1e-5)
  offsets = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
  mask = rng.uniform(size=(2, 4, 4)) < 0.5
  inst = {'instance': np.zeros((2, 4, 4, 2), np.float32),
          'instance_mask': mask}
  np.testing.assert_allclose(
      float(mse['instance'](offsets, inst)),
      np.mean((np.asarray(offsets) ** 2)[mask]), rtol=1e-5)
  with pytest.raises(ValueError, match="regression must be one of"):
    models.default_task_losses(config.model, regression='l2')
  with pytest.raises(ValueError, match='protocol must be one of'):
    configs.get_config('cityscapes', protocol='mgda')


def test_loss_kwargs_are_for_the_zoos_losses():
  from mtl_optax import training
  config = configs.get_config('multi_mnist').replace(
      model='tests.test_configs:_no_such_factory',
      loss_kwargs={'regression': 'mse'})
  with pytest.raises(ValueError, match='return .model, task_losses.'):
    training.create_model(config)


def test_pspnet_on_nyuv2():
  """Senushkin et al.'s PSPNet on NYUv2: the three NYUv2 heads (normals
  unit length), the losses of those tasks, MTAN's training set-up."""
  import jax
  import jax.numpy as jnp
  from mtl_optax import models
  config = configs.get_config('nyuv2', arch='pspnet')
  assert (config.optimizer, config.learning_rate, config.batch_size,
          config.num_epochs) == ('adam', 1e-4, 2, 200)
  out = jax.eval_shape(lambda: models.create(
      config.model, rngs=0, width=2, **config.model_kwargs)(
          jnp.zeros((1, 16, 24, 3))))
  assert {t: o.shape for t, o in out.items()} == {
      'segmentation': (1, 16, 24, 13), 'depth': (1, 16, 24, 1),
      'normals': (1, 16, 24, 3)}
  assert sorted(models.default_task_losses(config.model,
                                           **config.model_kwargs)) == [
      'depth', 'normals', 'segmentation']
  assert sorted(models.default_task_losses(config.model)) == [
      'depth', 'instance', 'segmentation']
  with pytest.raises(ValueError, match='tasks must be one of'):
    models.create(config.model, rngs=0, width=2, tasks='cityscapes2')


def test_sener_koltun_celeb_a_protocol():
  """003 App. C.2: 2048-wide heads from the 4×4-tile pooling, SGD, 100
  epochs halving every 30, the test split reported."""
  import jax
  import jax.numpy as jnp
  from mtl_optax import models
  config = configs.get_config('celeb_a', protocol='sener_koltun')
  assert (config.optimizer, config.num_epochs, config.lr_decay_factor,
          config.extra_eval_splits) == ('sgd', 100, 0.5, ('test',))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                  jnp.float32)
  model = models.create(config.model, rngs=0, width=4, **config.model_kwargs)
  assert model.encoder.num_features == 2 * 2 * 32
  z = model.encode(x)
  fmap = model.encoder.backbone(x)                 # [2, 8, 8, 32]
  assert fmap.shape == (2, 8, 8, 32)
  direct = np.stack([np.asarray(fmap)[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                     .mean(axis=(1, 2)) for i in range(2) for j in range(2)],
                    axis=1).reshape(2, -1)
  np.testing.assert_allclose(np.asarray(z), direct, rtol=1e-5, atol=1e-6)
  assert jax.tree.leaves(model.heads)[0].shape in {(2,), (128, 2)}
  with pytest.raises(ValueError, match='pool must be one of'):
    models.create('resnet18_celeba', rngs=0, width=4, pool='max')
