"""The training loop: both levels train, resume is bit-identical, skips hold."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_optax import training
from mtl_optax.data import loader as loader_lib

NUM_EXAMPLES = 96


def _arrays(num=NUM_EXAMPLES, seed=0):
  rng = np.random.default_rng(seed)
  left = rng.integers(0, 10, num).astype(np.int32)
  right = rng.integers(0, 10, num).astype(np.int32)
  # A learnable signal: the labels written into two pixels.
  image = rng.normal(size=(num, 28, 28, 1)).astype(np.float32) * 0.1
  image[:, 3, 3, 0] += left / 10
  image[:, 20, 20, 0] += right / 10
  return {'image': image, 'left': left, 'right': right}


def _data_fn(arrays=None):
  arrays = arrays if arrays is not None else _arrays()

  def data_fn(split, *, batch_size, seed, shuffle, num_epochs,
              drop_remainder, state=None):
    return loader_lib.Loader(
        loader_lib.ArraySource(arrays), batch_size=batch_size, seed=seed,
        shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
        prefetch=2, process_index=0, process_count=1, state=state)

  return data_fn


def assert_same_state(a, b):
  """Two TrainStates are bit-identical."""
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                      a, b)
  assert all(jax.tree.leaves(same))


def _config(**overrides):
  base = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                         method='aligned_mtl', batch_size=16,
                         optimizer='adam', learning_rate=3e-3, num_steps=12,
                         log_every_steps=5, eval_every_epochs=1.0)
  return base.replace(**overrides)


@pytest.mark.parametrize('level', ['parameter', 'representation'])
@pytest.mark.parametrize('method', ['aligned_mtl', 'mgda'])
def test_trains_logs_and_evaluates(level, method):
  result = training.train(_config(level=level, method=method),
                          progress=False, data_fn=_data_fn())
  history = result.history
  assert history['losses'].shape == (12, 2)
  assert history['weights'].shape == (12, 2)
  assert np.isfinite(history['weights']).all()
  assert history['dominance_rate'].shape == (12,)
  assert (history['dominance_rate'] >= 1).all()
  assert not history['skipped'].any()
  assert int(result.state.step) == 12
  # 96 examples / 16 = 6 steps per epoch: evaluations after steps 6 and 12.
  assert [e['step'] for e in result.evaluations] == [6, 12]
  accuracy = result.evaluations[-1]['metrics']['left']['accuracy']
  assert 0.0 <= accuracy <= 1.0
  first = history['losses'][:3].sum(-1).mean()
  last = history['losses'][-3:].sum(-1).mean()
  assert last < first


def test_resume_is_bit_identical(tmp_path):
  config = _config(num_steps=10, checkpoint_every_steps=4)
  straight = training.train(config, progress=False, data_fn=_data_fn())
  interrupted = training.train(config, workdir=tmp_path, progress=False,
                               data_fn=_data_fn(), stop_after=6)
  assert int(interrupted.state.step) == 6
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn())
  assert int(resumed.state.step) == 10
  assert resumed.history['losses'].shape == (4, 2)
  assert_same_state(straight.state, resumed.state)
  np.testing.assert_array_equal(straight.history['losses'][6:],
                                resumed.history['losses'])
  lines = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text()
           .splitlines()]
  assert 'config' in lines[0]
  assert any('eval' in l for l in lines)


def test_resume_representation_level_keeps_aggregator_state(tmp_path):
  config = _config(method='nash_mtl', level='representation', num_steps=6)
  straight = training.train(config, progress=False, data_fn=_data_fn())
  training.train(config, workdir=tmp_path, progress=False,
                 data_fn=_data_fn(), stop_after=3)
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn())
  assert_same_state(straight.state, resumed.state)


def test_resuming_another_configs_checkpoint_names_the_fix(tmp_path):
  # A workdir written by another method (another optimizer state) is refused
  # before any array is read, with the workdir and the fix in the message;
  # the workdir's own config still resumes from it afterwards.
  config = _config(num_steps=4, checkpoint_every_steps=2)
  training.train(config, workdir=tmp_path, progress=False, data_fn=_data_fn(),
                 stop_after=2)
  other = _config(num_steps=4, method='nash_mtl', level='representation')
  with pytest.raises(ValueError, match='another model, optimizer, method'):
    training.train(other, workdir=tmp_path, progress=False,
                   data_fn=_data_fn())
  with pytest.raises(ValueError, match='resume it with the same sweep'):
    training.train(config, workdir=tmp_path, progress=False,
                   data_fn=_data_fn(), sweep={'seed': [0, 1]})
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn())
  assert int(resumed.state.step) == 4


def test_non_finite_batch_freezes_parameters_and_optimizer():
  arrays = _arrays()
  experiment = training.build(_config(), num_train_examples=NUM_EXAMPLES)
  state = jax.tree.map(jnp.copy, experiment.init_state)
  good = {k: v[:16] for k, v in arrays.items()}
  state, _ = experiment.train_step(state, good)   # Adam has momentum now
  bad = dict(good, image=good['image'].copy())
  bad['image'][0, 0, 0, 0] = np.nan
  before = jax.tree.map(np.asarray, state)
  after, log = experiment.train_step(state, bad)
  assert bool(log.skipped)
  for name in ('params', 'opt_state', 'batch_stats'):
    same = jax.tree.map(np.array_equal, getattr(before, name),
                        jax.tree.map(np.asarray, getattr(after, name)))
    assert all(jax.tree.leaves(same)), name


def test_step_decay_schedule():
  config = _config(learning_rate=0.1, lr_decay_epochs=(1, 2),
                   lr_decay_factor=0.5)
  schedule = training.learning_rate_schedule(config, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 9, 10, 19, 20)] == pytest.approx(
      [0.1, 0.1, 0.05, 0.05, 0.025])


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match='level'):
    training.build(_config(level='theta'), num_train_examples=16)
  with pytest.raises(ValueError, match='Unknown method'):
    training.build(_config(method='nope'), num_train_examples=16)
  with pytest.raises(ValueError, match='optimizer'):
    training.build(_config(optimizer='lbfgs'), num_train_examples=16)


def test_data_parallel_mesh_gives_the_single_device_run():
  # One device here; tests/test_sharding.py runs the mesh on 8 devices.
  config = _config(num_steps=4)
  plain = training.train(config, progress=False, data_fn=_data_fn())
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  meshed = training.train(config, progress=False, data_fn=_data_fn(),
                          mesh=mesh)
  np.testing.assert_allclose(meshed.history['losses'],
                             plain.history['losses'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               meshed.state.params, plain.state.params)
  for task, values in plain.evaluations[-1]['metrics'].items():
    assert meshed.evaluations[-1]['metrics'][task] == pytest.approx(values)


def test_extra_eval_splits_are_evaluated_with_the_eval_split():
  # Each split has its own data: the test split is the training data with
  # the labels shifted, so its accuracy must differ from the validation's.
  valid, test = _arrays(seed=1), _arrays(seed=1)
  test['left'] = (test['left'] + 1) % 10
  by_split = {'train': _arrays(), 'valid': valid, 'test': test}
  seen = []

  def data_fn(split, **kwargs):
    seen.append(split)
    return _data_fn(by_split[split])(split, **kwargs)

  config = _config(eval_split='valid', extra_eval_splits=('test',),
                   num_steps=6)
  result = training.train(config, progress=False, data_fn=data_fn)
  (evaluation,) = result.evaluations
  assert set(evaluation['extra_metrics']) == {'test'}
  assert seen == ['train', 'valid', 'test']
  only_valid = training.train(config.replace(extra_eval_splits=()),
                              progress=False, data_fn=data_fn)
  assert evaluation['metrics'] == only_valid.evaluations[0]['metrics']
  assert 'extra_metrics' not in only_valid.evaluations[0]
  test_metrics = evaluation['extra_metrics']['test']
  assert test_metrics['right'] == evaluation['metrics']['right']
  assert test_metrics['left'] != evaluation['metrics']['left']


def test_extra_eval_splits_are_checked():
  with pytest.raises(ValueError, match='tuple of split names'):
    training.build(_config(extra_eval_splits='test'), num_train_examples=16)
  with pytest.raises(ValueError, match='set eval_split'):
    training.build(_config(eval_split=None, extra_eval_splits=('test',)),
                   num_train_examples=16)


def test_config_seed_reaches_every_method_that_takes_one():
  from mtl_optax import registry
  seeded = [m for m in registry.available()
            if registry.takes_keyword(m, 'seed')]
  assert {'pcgrad', 'mamg', 'gradvac', 'graddrop'} <= set(seeded)
  for method in seeded:
    states = [training.build(_config(method=method, seed=s, optimizer='sgd'),
                             num_train_examples=16).init_state.opt_state
              for s in (3, 4)]
    # SGD's momentum starts at zero: only the method's key differs.
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]))
               ), method


def test_learning_rate_scales_give_each_part_its_rate():
  """One SGD step with heads at a tenth of the rate: the heads move a tenth
  as far as with the plain rate, the encoder as far."""
  base = _config(optimizer='sgd', momentum=0.0, num_steps=1,
                 learning_rate=1e-2, eval_split=None)
  plain = training.train(base, progress=False, data_fn=_data_fn())
  scaled = training.train(
      base.replace(learning_rate_scales={'heads': 0.1}), progress=False,
      data_fn=_data_fn())
  init = training.build(base, num_train_examples=NUM_EXAMPLES).init_state
  moved = lambda r, part: jax.tree.map(
      lambda a, b: np.asarray(a) - np.asarray(b), r.state.params[part],
      init.params[part])
  for a, b in zip(jax.tree.leaves(moved(scaled, 'heads')),
                  jax.tree.leaves(moved(plain, 'heads'))):
    # (float32 parameters: their differences are rounded to ~3e-8)
    np.testing.assert_allclose(a, 0.1 * b, rtol=1e-3, atol=1e-7)
  for a, b in zip(jax.tree.leaves(moved(scaled, 'encoder')),
                  jax.tree.leaves(moved(plain, 'encoder'))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert np.abs(jax.tree.leaves(moved(plain, 'heads'))[0]).max() > 0


@pytest.mark.parametrize('scales', [{'head': 0.1}, {'heads': -1.0},
                                    {'heads': float('nan')}])
def test_bad_learning_rate_scales_name_the_parts(scales):
  with pytest.raises(ValueError, match="learning_rate_scales maps the parts"):
    training.build(_config(learning_rate_scales=scales),
                   num_train_examples=NUM_EXAMPLES)
