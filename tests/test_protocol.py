"""Single-task baselines and seed tables (``mtl_optax.protocol``)."""

import jax
import numpy as np
import pytest

from mtl_optax import metrics
from mtl_optax import protocol
from mtl_optax import training
from tests.test_training import _arrays as training_arrays
from tests.test_training import _data_fn as training_data_fn

NUM = 32


def _data_fn():
  return training_data_fn(training_arrays(num=NUM))


def _config(**overrides):
  base = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                         method='aligned_mtl', level='representation',
                         batch_size=16, optimizer='adam', learning_rate=3e-3,
                         num_steps=3, log_every_steps=1, eval_every_epochs=1.0,
                         max_eval_batches=1)
  return base.replace(**overrides)


def test_single_task_configs_are_one_hot_linear_scalarization():
  config = _config()
  configs = protocol.single_task_configs(config)
  assert list(configs) == ['left', 'right']
  for task, weights in (('left', (1.0, 0.0)), ('right', (0.0, 1.0))):
    c = configs[task]
    assert (c.method, c.level) == ('linear_scalarization', 'parameter')
    assert tuple(c.method_kwargs['weights']) == weights
    assert c.replace(method=config.method, level=config.level,
                     method_kwargs=config.method_kwargs) == config
  with pytest.raises(ValueError, match='tasks=None'):
    protocol.single_task_configs(config, tasks=('left', 'left'))


def test_single_task_run_trains_only_its_task():
  config = protocol.single_task_configs(_config())['left']
  data_fn = _data_fn()
  experiment = training.build(config, num_train_examples=NUM)
  init = jax.tree.map(np.asarray, experiment.init_state.params)
  result = training.train(config, data_fn=data_fn, progress=False)
  params = jax.tree.map(np.asarray, result.state.params)
  # the other head never moves; the encoder and the task's head do
  jax.tree.map(np.testing.assert_array_equal, params['heads']['right'],
               init['heads']['right'])
  moved = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(params['heads']['left'], init['heads']['left'])
  assert moved(params['encoder'], init['encoder'])
  # the first step's update is Adam's on ∇L_left alone: lr · sign(g)
  g = jax.grad(lambda p: experiment.model.loss_fn(
      training.create_model(config)[1], train=True)(
          p, experiment.init_state.batch_stats,
          next(iter(data_fn('train', batch_size=16, seed=config.seed,
                            shuffle=True, num_epochs=None,
                            drop_remainder=True))))[0][0])(
                                experiment.init_state.params)
  one = training.train(config.replace(num_steps=1), data_fn=data_fn,
                       progress=False)
  step = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                      one.state.params['encoder'], init['encoder'])
  expected = jax.tree.map(lambda x: -3e-3 * x / (np.abs(x) + 1e-8),
                          g['encoder'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               step, expected)


def test_single_task_baselines_report_each_task_from_its_own_run(tmp_path):
  config = _config()
  baselines = protocol.single_task_baselines(config, data_fn=_data_fn(),
                                             workdir=tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'single_task_left', 'single_task_right']
  # a second call resumes the finished runs and reports the same
  assert protocol.single_task_baselines(
      config, data_fn=_data_fn(), workdir=tmp_path) == baselines
  assert list(baselines) == ['left', 'right']
  for task, c in protocol.single_task_configs(config).items():
    result = training.train(c, data_fn=_data_fn(), progress=False)
    assert baselines[task] == result.evaluations[-1]['metrics'][task]
  assert np.isfinite(metrics.delta_mtl_of(baselines, baselines))
  assert metrics.delta_mtl_of(baselines, baselines) == 0.0


CLI = ['--config', 'multi_mnist', '--synthetic', '32', '--set', 'num_steps=2',
       '--set', 'batch_size=16', '--set', 'max_eval_batches=1',
       '--set', 'log_every_steps=1']


def test_cli_single_task_prints_the_baselines(capsys):
  import json
  from mtl_optax import configs
  from mtl_optax import train as train_cli
  train_cli.main(CLI + ['--single-task'])
  out = json.loads(capsys.readouterr().out)['single_task']
  config = configs.get_config('multi_mnist', num_steps=2, batch_size=16,
                              max_eval_batches=1, log_every_steps=1)
  expected = protocol.single_task_baselines(
      config, data_fn=train_cli.synthetic_data_fn('multi_mnist', 32,
                                                  seed=config.seed))
  assert out == expected
  with pytest.raises(SystemExit):
    train_cli.main(CLI + ['--single-task', '--sweep', 'seed=0,1'])
