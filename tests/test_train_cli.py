"""The training command line (``python -m mtl_optax.train``,
``mtl-optax-train``, ``benchmarks/train.py``) and models given as
``module:callable``.

The command-line runs are real processes, started from a directory outside
the repository, on a few steps of random MultiMNIST-shaped data
(``--synthetic``) with a tiny model of a module written into ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

for _module in ('flax', 'tensorflow_datasets', 'orbax.checkpoint', 'tqdm'):
  pytest.importorskip(_module, reason="needs the 'train' extra")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mtl_optax import data  # noqa: E402
from mtl_optax import models  # noqa: E402
from mtl_optax import training  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A user's module: an encoder of its own (not in the zoo) and two heads.
TINY_MODEL = textwrap.dedent('''
    from flax import nnx
    from mtl_optax import models


    class Encoder(nnx.Module):
      def __init__(self, features, *, rngs):
        self.dense = nnx.Linear(28 * 28, features, rngs=rngs)

      def __call__(self, x):
        return nnx.relu(self.dense(x.reshape(x.shape[0], -1)))


    def make_model(*, rngs, features=16):
      return models.MultiTaskModel(Encoder(features, rngs=rngs), {
          'left': nnx.Linear(features, 10, rngs=rngs),
          'right': nnx.Linear(features, 10, rngs=rngs)})
    ''')

FLAGS = ['--config', 'multi_mnist', '--model', 'tiny_cli_model:make_model',
         '--synthetic', '32', '--set', 'num_steps=3', '--set', 'batch_size=8',
         '--set', "model_kwargs={'features': 4}", '--set', 'log_every_steps=1']


def _run(command, *, cwd, pythonpath=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if pythonpath is not None:
    env['PYTHONPATH'] = os.pathsep.join(
        [str(pythonpath)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH')
                             else []))
  proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout), proc.stderr


def test_cli_trains_a_model_given_as_module_callable(tmp_path):
  modules = tmp_path / 'modules'
  modules.mkdir()
  (modules / 'tiny_cli_model.py').write_text(TINY_MODEL)
  workdir = tmp_path / 'run'
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()

  # The package's module, the model found through PYTHONPATH.
  out, _ = _run([sys.executable, '-m', 'mtl_optax.train', *FLAGS,
                 '--workdir', str(workdir)], cwd=elsewhere, pythonpath=modules)
  assert out['step'] == 3 and out['interrupted'] is None
  (evaluation,) = out['evaluations']
  assert set(evaluation['metrics']) == {'left', 'right'}
  records = [json.loads(line) for line in
             (workdir / 'log.jsonl').read_text().splitlines()]
  assert records[0]['config']['model'] == 'tiny_cli_model:make_model'
  assert [r['step'] for r in records if 'step' in r] == [1, 2, 3]

  # The clone's script runs the same command line; the model is found in
  # the current directory. The finished run reports its evaluation.
  again, stderr = _run([sys.executable, str(ROOT / 'benchmarks' / 'train.py'),
                        *FLAGS, '--workdir', str(workdir)], cwd=modules)
  assert 'resumed from step 3' in stderr
  assert again['evaluations'] == out['evaluations']


def test_cli_help_names_the_model_flag():
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'train.py'),
                         '--help'], capture_output=True, text=True,
                        timeout=300, check=True)
  assert '--model NAME|MODULE:CALLABLE' in proc.stdout
  assert '--synthetic N' in proc.stdout


# -- create_model, in process ---------------------------------------------


def _module(tmp_path, monkeypatch, name, source):
  (tmp_path / f'{name}.py').write_text(textwrap.dedent(source))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, name, raising=False)
  return name


def _config(model):
  return training.Config(model=model, dataset='multi_mnist')


def test_module_callable_builds_the_model_and_its_losses(tmp_path,
                                                         monkeypatch):
  name = _module(tmp_path, monkeypatch, 'user_models_ok', TINY_MODEL +
                 textwrap.dedent('''
      def with_losses(*, rngs):
        model = make_model(rngs=rngs, features=2)
        return model, {'left': lambda out, batch: 0.0,
                       'right': lambda out, batch: 1.0}

      class Factory:
        @staticmethod
        def create(*, rngs):
          return make_model(rngs=rngs, features=3)
      '''))
  config = _config(f'{name}:make_model').replace(
      model_kwargs={'features': 5}, seed=3)
  model, task_losses = training.create_model(config)
  assert isinstance(model, models.MultiTaskModel)
  assert model.heads['left'].in_features == 5
  assert set(task_losses) == {'left', 'right'}     # cross-entropy, by name
  # Seeded by Config.seed, like the zoo.
  again, _ = training.create_model(config)
  assert (model.encoder.dense.kernel[...] ==
          again.encoder.dense.kernel[...]).all()

  model, task_losses = training.create_model(_config(f'{name}:with_losses'))
  assert task_losses['right'](None, None) == 1.0
  model, _ = training.create_model(_config(f'{name}:Factory.create'))
  assert model.heads['left'].in_features == 3


def test_task_losses_by_name_follow_the_zoo():
  names = ('segmentation', 'depth', 'normals', 'instance', 'translation',
           'orientation', 'left')
  assert tuple(training.task_losses_by_name(names)) == names
  zoo = models.default_task_losses('resnet50_pspnet_cityscapes')
  batch = data.random_batch('cityscapes', 2, image_size=(8, 8))
  rng = np.random.default_rng(0)
  outputs = {'segmentation': rng.normal(size=(2, 8, 8, 19)),
             'instance': rng.normal(size=(2, 8, 8, 2)),
             'depth': rng.uniform(1, 2, size=(2, 8, 8, 1))}
  ours = training.task_losses_by_name(zoo)
  for task, loss in zoo.items():
    np.testing.assert_allclose(ours[task](outputs[task], batch),
                               loss(outputs[task], batch), rtol=1e-6)


def test_model_errors_name_the_fix(tmp_path, monkeypatch):
  name = _module(tmp_path, monkeypatch, 'user_models_bad', '''
      from flax import nnx

      NOT_CALLABLE = 3

      def returns_a_layer(*, rngs):
        return nnx.Linear(2, 2, rngs=rngs)

      def no_rngs(features=3):
        return None
      ''')
  broken = _module(tmp_path, monkeypatch, 'user_models_broken',
                   'import not_installed_dependency_\n')

  def error(model):
    with pytest.raises(Exception) as info:
      training.create_model(_config(model))
    return info

  info = error('no_such_user_module_:make_model')
  assert info.type is ModuleNotFoundError
  assert "no module named 'no_such_user_module_'" in str(info.value)
  assert 'PYTHONPATH' in str(info.value)
  info = error('no_such_package_.models:make_model')
  assert info.type is ModuleNotFoundError and 'PYTHONPATH' in str(info.value)
  # A module that exists but imports something missing: that error, as is.
  info = error(f'{broken}:make_model')
  assert info.type is ModuleNotFoundError
  assert info.value.name == 'not_installed_dependency_'
  info = error(f'{name}:make_model')
  assert info.type is AttributeError
  assert "has no attribute 'make_model'" in str(info.value)
  assert 'Define it there' in str(info.value)
  info = error(f'{name}:NOT_CALLABLE')
  assert info.type is TypeError and 'not a callable' in str(info.value)
  info = error(f'{name}:no_rngs')
  assert info.type is TypeError
  assert 'keyword argument rngs' in str(info.value)
  info = error(f'{name}:returns_a_layer')
  assert info.type is TypeError
  assert 'returned Linear' in str(info.value)
  assert 'must return a mtl_optax.models.MultiTaskModel' in str(info.value)
  info = error('a:b:c')
  assert info.type is ValueError and "'module:callable'" in str(info.value)
  info = error('lenet')
  assert info.type is ValueError
  assert 'lenet_multimnist' in str(info.value)
  assert "'module:callable'" in str(info.value)
