"""Multi-input MTL (each task has its own examples, LibMTL's multi-input mode).

The loader's epoch rule (the largest task sets the epoch, the smaller ones
cycle) against the plain index arithmetic; per-task gradients of the
multi-input loss against separate ``jax.grad``s of each task's loss on its
own batch; the z-level Gramian (diagonal); the training loop at both levels,
its evaluation per task against a direct computation, and resumption.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtl_optax as mtl
from mtl_optax import data
from mtl_optax import models
from mtl_optax import training
from mtl_optax.data import loader as loader_lib
from tests.test_training import assert_same_state

TASKS = ('amazon', 'dslr', 'webcam')       # office31's domains
SIZES = {'amazon': 24, 'dslr': 10, 'webcam': 16}
CLASSES = 3
BATCH = 4


def toy_model(*, rngs, features=4):
  """A small multi-input model: conv + BatchNorm encoder, a head per domain
  (the training tests' model, as ``'test_multi_input:toy_model'``)."""
  encoder = nnx.Sequential(
      models.layers.ConvBN(3, features, 3, stride=2, rngs=rngs), nnx.relu,
      models.layers.global_average_pool)
  return models.MultiTaskModel(encoder, {
      t: nnx.Linear(features, CLASSES, rngs=rngs) for t in TASKS})


def _arrays(seed=0, sizes=SIZES):
  """Each domain's examples: 8×8 images whose channel ``label`` is raised
  (a learnable signal), shifted by a per-domain offset."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, (task, n) in enumerate(sizes.items()):
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    image = (rng.normal(size=(n, 8, 8, 3)) * 0.1 + 0.1 * k).astype(np.float32)
    image[np.arange(n), :, :, labels] += 1.0
    out[task] = {'image': image, task: labels}
  return out


def _loader(arrays, **kwargs):
  kwargs = {'prefetch': 0, 'process_index': 0, 'process_count': 1, **kwargs}
  return loader_lib.MultiInputLoader(
      {t: loader_lib.ArraySource(a) for t, a in arrays.items()}, **kwargs)


def _data_fn(by_split=None):
  by_split = by_split or {}

  def data_fn(split, *, batch_size, seed, shuffle, num_epochs,
              drop_remainder, state=None):
    return _loader(by_split.get(split) or _arrays(), batch_size=batch_size,
                   seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                   drop_remainder=drop_remainder, state=state)

  return data_fn


def _config(**overrides):
  base = training.Config(
      model='test_multi_input:toy_model', dataset='office31',
      method='aligned_mtl', batch_size=BATCH, eval_batch_size=BATCH,
      optimizer='adam', learning_rate=1e-2, num_steps=12,
      log_every_steps=6, eval_every_epochs=1.0,
      checkpoint_every_seconds=None)
  return base.replace(**overrides)


# -- the loader -----------------------------------------------------------------


def _indexed(sizes=SIZES):
  return {t: {'i': np.arange(n)} for t, n in sizes.items()}


def test_loader_epoch_is_the_largest_task_and_smaller_ones_cycle():
  it = _loader(_indexed(), batch_size=BATCH, seed=3, num_epochs=2)
  steps = {t: n // BATCH for t, n in SIZES.items()}        # 6, 2, 4
  assert it.steps_per_epoch == 6 and it.num_examples == 24
  assert it.num_examples_per_task == SIZES
  got = [{t: b[t]['i'] for t in TASKS} for b in it]
  assert len(got) == 12 and it.get_state() == {'epoch': 2, 'step': 0}
  for g, batch in enumerate(got):
    for t in TASKS:
      # Step g of task t: batch g mod steps_t of its own epoch g // steps_t.
      epoch, step = divmod(g, steps[t])
      order = loader_lib.epoch_order(SIZES[t], seed=3, epoch=epoch)
      np.testing.assert_array_equal(batch[t],
                                    order[step * BATCH:(step + 1) * BATCH])
  with pytest.raises(StopIteration):
    next(it)


@pytest.mark.parametrize('prefetch', [0, 2])
def test_loader_resumes_from_its_state(prefetch):
  straight = [b['dslr']['i'] for b in _loader(
      _indexed(), batch_size=BATCH, seed=1, num_epochs=2, prefetch=prefetch)]
  it = _loader(_indexed(), batch_size=BATCH, seed=1, num_epochs=2,
               prefetch=prefetch)
  for _ in range(7):
    next(it)
  state = it.get_state()
  assert state == {'epoch': 1, 'step': 1}
  it.close()
  resumed = _loader(_indexed(), batch_size=BATCH, seed=1, num_epochs=2,
                    prefetch=prefetch, state=state)
  rest = [b['dslr']['i'] for b in resumed]
  assert len(rest) == 5
  for a, b in zip(straight[7:], rest):
    np.testing.assert_array_equal(a, b)


def test_per_task_reads_every_example_of_every_task_once():
  it = _loader(_indexed(), batch_size=BATCH, shuffle=False,
               drop_remainder=False, num_epochs=1)
  next(it)              # the stream's position does not matter
  seen = {}
  order = []
  for batch in it.per_task():
    (task,) = batch
    order.append(task)
    seen.setdefault(task, []).append(batch[task]['i'])
  assert list(dict.fromkeys(order)) == list(TASKS)
  for t, n in SIZES.items():
    np.testing.assert_array_equal(np.concatenate(seen[t]), np.arange(n))
  assert [list(b) for b in it.per_task(max_batches=1)] == [[t] for t in TASKS]


def test_loader_errors_name_the_fix():
  with pytest.raises(ValueError, match='non-empty dict'):
    loader_lib.MultiInputLoader({}, batch_size=2)
  with pytest.raises(ValueError, match='transforms has tasks'):
    _loader(_indexed(), batch_size=2, transforms={'nope': lambda b: b})
  with pytest.raises(ValueError, match='Invalid state'):
    _loader(_indexed(), batch_size=2, state={'epoch': 0, 'step': 99})


# -- gradients ------------------------------------------------------------------


def _office_model_and_batches():
  model = models.create('resnet18_office', width=2, hidden=4, rngs=0)
  fm = models.functional(model)
  batches = data.random_batch('office31', 3, image_size=(16, 16), seed=1)
  return fm, models.default_task_losses('resnet18_office'), batches


def test_per_task_gradients_equal_separate_grads_of_each_task():
  # value_and_jacobian needs nothing new: row t of the Jacobian of the [T]
  # multi-input losses is the gradient of task t's loss on its own batch.
  fm, task_losses, batches = _office_model_and_batches()
  loss_fn = fm.loss_fn(task_losses, multi_input=True)
  (losses, stats), jac = jax.jit(mtl.value_and_jacobian(
      loss_fn, has_aux=True))(fm.params, fm.batch_stats, batches)
  assert losses.shape == (3,)
  running = fm.batch_stats
  for i, task in enumerate(fm.tasks):
    def alone(params, task=task):
      outputs, new_stats = fm.apply(params, running, batches[task]['image'],
                                    train=True)
      return task_losses[task](outputs[task], batches[task]), new_stats

    (loss, running), grad = jax.jit(jax.value_and_grad(alone, has_aux=True))(
        fm.params)
    np.testing.assert_allclose(losses[i], loss, rtol=1e-5)
    jax.tree.map(lambda row, g: np.testing.assert_allclose(
        row[i], g, rtol=1e-3, atol=1e-5), jac, grad)
  # BatchNorm's running averages: one update per task, in task order (the
  # sequence of separate forward passes above, as LibMTL's loop).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               stats['encoder'], running['encoder'])


def test_z_level_gramian_is_diagonal_and_aligned_ub_rescales_norms():
  fm, task_losses, batches = _office_model_and_batches()
  grams = jax.jit(fm.representation_gramians(task_losses, multi_input=True))(
      fm.params, fm.batch_stats, batches)
  k_z = np.asarray(grams.gram_z)
  assert (k_z[~np.eye(3, dtype=bool)] == 0).all()   # exactly: disjoint z_t
  assert (np.diag(k_z) > 0).all()
  assert (np.asarray(grams.gram_theta)[~np.eye(3, dtype=bool)] != 0).any()
  aggregator = mtl.aligned_mtl(num_tasks=3)
  step = jax.jit(fm.representation_step(task_losses, aggregator,
                                        multi_input=True))
  out = step(fm.params, fm.batch_stats, aggregator.init(None), batches)
  # A diagonal K: each task's z-gradient rescaled to the smallest norm.
  lam = np.diag(k_z)
  np.testing.assert_allclose(out.aggregator_state.weights,
                             np.sqrt(lam.min() / lam), rtol=1e-4)


def test_multi_input_batches_are_checked():
  fm, task_losses, batches = _office_model_and_batches()
  loss_fn = fm.loss_fn(task_losses, multi_input=True)
  with pytest.raises(ValueError, match='one batch per task'):
    loss_fn(fm.params, fm.batch_stats, {'amazon': batches['amazon']})
  uneven = dict(batches, dslr={'image': batches['dslr']['image'][:2],
                               'dslr': batches['dslr']['dslr'][:2]})
  with pytest.raises(ValueError, match='same image shape'):
    loss_fn(fm.params, fm.batch_stats, uneven)


# -- the training loop -------------------------------------------------------------


def _accuracy(fm, state, arrays, task):
  outputs, _ = fm.apply(state.params, state.batch_stats,
                        arrays[task]['image'], train=False)
  return float(np.mean(np.argmax(outputs[task], -1) == arrays[task][task]))


@pytest.mark.parametrize('method', ['aligned_mtl', 'mgda'])
def test_trains_at_the_parameter_level_and_evaluates_each_domain(method):
  test = _arrays(seed=1, sizes={'amazon': 9, 'dslr': 5, 'webcam': 7})
  config = _config(method=method)
  assert training.is_multi_input(config)       # office31's, inferred
  result = training.train(config, progress=False,
                          data_fn=_data_fn({'test': test}))
  history = result.history
  assert history['losses'].shape == (12, 3)
  assert np.isfinite(history['weights']).all()
  assert not history['skipped'].any()
  first = history['losses'][:3].sum(-1).mean()
  last = history['losses'][-3:].sum(-1).mean()
  assert last < first
  # The largest domain (24 examples, batch 4) sets the epoch: 6 steps.
  assert [e['step'] for e in result.evaluations] == [6, 12]
  metrics = result.evaluations[-1]['metrics']
  assert set(metrics) == set(TASKS) | {'average'}
  fm = training.build(config, num_train_examples=24).model
  for task in TASKS:     # each domain on its own split, partial batch kept
    assert metrics[task]['count'] == len(test[task][task])
    assert metrics[task]['accuracy'] == pytest.approx(
        _accuracy(fm, result.state, test, task), abs=1e-6)
  assert metrics['average']['accuracy'] == pytest.approx(
      np.mean([metrics[t]['accuracy'] for t in TASKS]))


def test_trains_at_the_representation_level():
  result = training.train(_config(level='representation', num_steps=6,
                                  eval_split=None),
                          progress=False, data_fn=_data_fn())
  assert result.history['losses'].shape == (6, 3)
  assert np.isfinite(result.history['weights']).all()
  assert not result.history['skipped'].any()


def test_max_eval_batches_counts_each_domain():
  config = _config(num_steps=6, max_eval_batches=1)
  result = training.train(config, progress=False, data_fn=_data_fn())
  metrics = result.evaluations[-1]['metrics']
  assert all(metrics[t]['count'] == BATCH for t in TASKS)


def test_resume_is_bit_identical(tmp_path):
  config = _config(num_steps=9, checkpoint_every_steps=4)
  straight = training.train(config, progress=False, data_fn=_data_fn())
  interrupted = training.train(config, workdir=tmp_path, progress=False,
                               data_fn=_data_fn(), stop_after=5)
  assert int(interrupted.state.step) == 5
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn())
  assert int(resumed.state.step) == 9
  assert_same_state(straight.state, resumed.state)
  np.testing.assert_array_equal(straight.history['losses'][5:],
                                resumed.history['losses'])
  assert resumed.evaluations == straight.evaluations
  lines = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text()
           .splitlines()]
  assert lines[0]['config']['multi_input'] is None
  assert [l['step'] for l in lines if 'losses' in l] == list(range(1, 10))


def test_training_errors_name_the_fix():
  with pytest.raises(ValueError, match='multi_input must be'):
    training.build(_config(multi_input='yes'), num_train_examples=24)
  # A single-input stream for a multi-input config: the step says what to
  # feed.
  single = {'image': np.zeros((8, 8, 8, 3), np.float32),
            **{t: np.zeros(8, np.int32) for t in TASKS}}

  def plain(split, **kwargs):
    return loader_lib.Loader(loader_lib.ArraySource(single), prefetch=0,
                             process_index=0, process_count=1, **kwargs)

  with pytest.raises(ValueError, match='one batch per task'):
    training.train(_config(num_steps=1), progress=False, data_fn=plain)


def test_adam_weight_decay_is_l2_in_the_gradient():
  # LibMTL's Office runs: torch.optim.Adam(weight_decay=1e-5), i.e. the L2
  # term wd·θ added to the gradient before Adam's normalisation.
  params = {'w': jnp.ones(3)}
  zero = {'w': jnp.zeros(3)}
  config = _config(learning_rate=0.1, weight_decay=1e-2)
  for decay, expected in ((1e-2, -0.1), (0.0, 0.0)):
    tx = training.make_optimizer(config.replace(weight_decay=decay),
                                 optax.constant_schedule(0.1))
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates['w'], expected, rtol=1e-5)
