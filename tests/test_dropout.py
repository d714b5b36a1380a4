"""Dropout in the functional view and the training loop.

The masks come from the model's own random streams (``nnx.Dropout(rate,
rngs=rngs)``), carried in ``batch_stats`` as raw ``uint32`` keys and
counters: a fresh mask every training step, none in eval mode, the same
mask for every task of one step, and a resumed run bit-identical to an
uninterrupted one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtl_optax as mtl
from mtl_optax import models, training
from mtl_optax.models import lenet

from tests.test_training import _config, _data_fn, assert_same_state

DROPOUT = dict(dropout=0.5, head_hidden=50)


def _tiny(rate=0.5):
  rngs = nnx.Rngs(0)
  encoder = nnx.Sequential(nnx.Linear(3, 64, rngs=rngs),
                           nnx.Dropout(rate, rngs=rngs))
  return models.MultiTaskModel(encoder, {
      'a': nnx.Linear(64, 1, rngs=rngs), 'b': nnx.Linear(64, 2, rngs=rngs)})


def _counts(stats):
  return [int(x) for path, x in jax.tree_util.tree_leaves_with_path(stats)
          if path[-1].key == 'count']


def test_streams_are_plain_uint32_state():
  fm = models.functional(_tiny())
  leaves = jax.tree.leaves(fm.batch_stats)
  assert leaves and all(x.dtype == jnp.uint32 for x in leaves)
  assert _counts(fm.batch_stats) == [0]


def test_fresh_mask_each_training_step_none_in_eval():
  model = _tiny()
  fm = models.functional(model)
  x = jnp.ones((8, 3))
  out1, stats1 = fm.apply(fm.params, fm.batch_stats, x, train=True)
  out2, stats2 = fm.apply(fm.params, stats1, x, train=True)
  assert _counts(stats1) == [1] and _counts(stats2) == [2]
  assert not np.allclose(out1['a'], out2['a'])
  # The same state gives the same mask (the step is a pure function).
  again, _ = jax.jit(lambda s: fm.apply(fm.params, s, x, train=True))(
      fm.batch_stats)
  np.testing.assert_allclose(again['a'], out1['a'], rtol=1e-6)
  # Eval mode: no mask, no key consumed, the deterministic network.
  ev, ev_stats = fm.apply(fm.params, stats1, x, train=False)
  assert _counts(ev_stats) == [1]
  model.eval()
  np.testing.assert_allclose(ev['a'], model(x)['a'], rtol=1e-6)


def test_inverted_dropout_masks_and_scales():
  model = _tiny(rate=0.25)
  fm = models.functional(model)
  z, _ = fm.encode(fm.params['encoder'], fm.batch_stats['encoder'],
                   jnp.ones((256, 3)), train=True)
  clean, _ = fm.encode(fm.params['encoder'], fm.batch_stats['encoder'],
                       jnp.ones((256, 3)), train=False)
  kept = np.asarray(z) != 0
  # Kept units are scaled by 1/(1 - rate); the dropped fraction is the rate.
  np.testing.assert_allclose(np.asarray(z)[kept],
                             (np.asarray(clean) / 0.75)[kept], rtol=1e-5)
  assert abs(1 - kept.mean() - 0.25) < 0.02


def test_lenet_channel_dropout_zeroes_whole_channels():
  encoder = lenet.LeNet(dropout=0.5, rngs=nnx.Rngs(1))
  x = jax.random.uniform(jax.random.key(0), (64, 28, 28, 1))
  conv2 = encoder._conv(encoder.conv2, encoder._conv(encoder.conv1, x))
  masked = encoder.dropout(conv2)
  dropped = np.all(np.asarray(masked) == 0, axis=(1, 2))      # [B, C]
  partial = np.any(np.asarray(masked) == 0, axis=(1, 2)) & ~dropped
  assert not partial.any()            # a channel is dropped whole, or kept
  assert 0.4 < dropped.mean() < 0.6
  # Masks differ between the examples of a batch (torch's Dropout2d).
  assert len({tuple(row) for row in dropped}) > 1


def test_every_task_sees_the_same_mask():
  """value_and_jacobian's rows equal each task's gradient computed alone
  from the same state (one forward pass, one mask)."""
  model = models.create('lenet_multimnist', rngs=0, **DROPOUT)
  fm = models.functional(model)
  losses_of = models.default_task_losses('lenet_multimnist')
  loss_fn = fm.loss_fn(losses_of)
  batch = _data_fn()('train', batch_size=16, seed=0, shuffle=False,
                     num_epochs=1, drop_remainder=True)
  batch = jax.tree.map(jnp.asarray, next(iter(batch)))
  (losses, stats), jac = mtl.value_and_jacobian(loss_fn, has_aux=True)(
      fm.params, fm.batch_stats, batch)
  assert _counts(stats) == [1, 1, 1]
  for t in range(2):
    grad = jax.grad(lambda p: loss_fn(p, fm.batch_stats, batch)[0][t])(
        fm.params)
    jax.tree.map(lambda row, g: np.testing.assert_allclose(
        row[t], g, rtol=1e-5, atol=1e-7), jac, grad)
  eval_losses, _ = fm.loss_fn(losses_of, train=False)(fm.params,
                                                      fm.batch_stats, batch)
  assert not np.allclose(losses, eval_losses)


@pytest.mark.parametrize('level', ['parameter', 'representation'])
def test_training_with_dropout_resumes_bit_identically(tmp_path, level):
  config = _config(level=level, num_steps=8, checkpoint_every_steps=3,
                   model_kwargs=DROPOUT)
  straight = training.train(config, progress=False, data_fn=_data_fn())
  assert _counts(straight.state.batch_stats) == [8, 8, 8]
  training.train(config, workdir=tmp_path, progress=False,
                 data_fn=_data_fn(), stop_after=5)
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn())
  assert_same_state(straight.state, resumed.state)
  np.testing.assert_array_equal(straight.history['losses'][5:],
                                resumed.history['losses'])
  assert np.isfinite(straight.history['losses']).all()


def test_update_model_writes_the_streams_back():
  model = _tiny()
  fm = models.functional(model)
  x = jnp.ones((8, 3))
  out, stats = fm.apply(fm.params, fm.batch_stats, x, train=True)
  fm.update_model(model, fm.params, stats)
  # The stateful model continues the stream where the functional step left
  # it: its next mask is the functional view's second one.
  nxt, _ = fm.apply(fm.params, stats, x, train=True)
  np.testing.assert_allclose(model(x)['a'], nxt['a'], rtol=1e-6)
  assert not np.allclose(out['a'], nxt['a'])
  merged = fm.merge(fm.params, stats, train=True)
  np.testing.assert_allclose(merged(x)['a'], nxt['a'], rtol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
    (dict(dropout=-0.1), r'dropout must be in \[0, 1\)'),
    (dict(head_hidden=0), 'hidden must be a positive int'),
])
def test_bad_dropout_settings_name_the_fix(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.create('lenet_multimnist', rngs=0, **kwargs)


def test_head_dropout_without_hidden_layer_names_the_fix():
  with pytest.raises(ValueError, match='give hidden='):
    lenet.task_head(50, 10, dropout=0.5, rngs=nnx.Rngs(0))


def test_sener_koltun_variant_shapes():
  model = models.create('lenet_multimnist', rngs=0, **DROPOUT)
  # Table 7's network plus one FC 50×50 per head.
  plain = models.create('lenet_multimnist', rngs=0)
  assert models.num_params(model) - models.num_params(plain) == 2 * 2550
  model.eval()
  out = model(jnp.zeros((2, 28, 28, 1)))
  assert {t: o.shape for t, o in out.items()} == {'left': (2, 10),
                                                  'right': (2, 10)}
  tx = optax.chain(mtl.aligned_mtl(), optax.sgd(0.1))
  assert tx.init(models.functional(model).params) is not None


def test_learning_rate_sweep_runs_are_the_single_runs_with_dropout():
  """Each vmapped run draws its masks from its own stacked streams: the
  same as the run trained alone."""
  config = _config(num_steps=4, model_kwargs=DROPOUT)
  sweep = training.train(config, progress=False, data_fn=_data_fn(),
                         sweep={'learning_rate': [1e-3, 3e-3]})
  alone = training.train(config.replace(learning_rate=3e-3), progress=False,
                         data_fn=_data_fn())
  np.testing.assert_allclose(sweep.run(1).history['losses'],
                             alone.history['losses'], rtol=1e-4, atol=1e-5)
  counts = [np.asarray(x) for path, x in
            jax.tree_util.tree_leaves_with_path(sweep.state.batch_stats)
            if path[-1].key == 'count']
  assert len(counts) == 3 and all(c.tolist() == [4, 4] for c in counts)
