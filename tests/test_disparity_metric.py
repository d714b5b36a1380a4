"""metrics.disparity against direct numpy formulas, its scale invariance,
streaming, and metrics.merged."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_optax import metrics, training


def _data(seed, shape=(3, 8, 16, 1), invalid=0.3):
  rng = np.random.default_rng(seed)
  target = rng.uniform(1.0, 80.0, shape).astype(np.float32)
  target[rng.uniform(size=shape) < invalid] = 0.0        # missing pixels
  pred = (target * rng.uniform(0.5, 1.5, shape)
          + rng.normal(0, 3, shape)).astype(np.float32)
  return pred, target


def _direct(pred, target, mask=None):
  valid = target > 0 if mask is None else (target > 0) & mask
  p = pred[valid].astype(np.float64)
  y = target[valid].astype(np.float64)
  # min over s of mean (s p - y)², by least squares.
  s, *_ = np.linalg.lstsq(p[:, None], y, rcond=None)
  return {'mae': np.mean(np.abs(p - y)), 'mse': np.mean((p - y) ** 2),
          'mse_up_to_scale': np.mean((s[0] * p - y) ** 2),
          'count': valid.sum()}


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_the_direct_formulas(seed):
  pred, target = _data(seed)
  m = metrics.disparity()
  out = m.compute(m.update(m.init(), pred, target))
  ref = _direct(pred, target)
  for k in ('mae', 'mse', 'mse_up_to_scale'):
    np.testing.assert_allclose(float(out[k]), ref[k], rtol=2e-4)
  assert int(out['count']) == ref['count']
  assert float(out['mse_up_to_scale']) <= float(out['mse'])


def test_mask_and_streaming_equal_one_pass():
  pred, target = _data(3, shape=(4, 6, 10, 1))
  mask = np.random.default_rng(4).uniform(size=target.shape) < 0.7
  m = metrics.disparity()
  state = m.init()
  for i in range(4):     # one image at a time, merged
    state = m.merge(state, m.update(m.init(), pred[i:i + 1],
                                    target[i:i + 1], mask[i:i + 1]))
  ref = _direct(pred, target, mask)
  out = m.compute(state)
  for k in ('mae', 'mse', 'mse_up_to_scale'):
    np.testing.assert_allclose(float(out[k]), ref[k], rtol=2e-4)


@pytest.mark.parametrize('c', [0.01, 3.0, -2.0])
def test_up_to_scale_ignores_a_global_scale(c):
  pred, target = _data(5)
  m = metrics.disparity()
  base = m.compute(m.update(m.init(), pred, target))
  scaled = m.compute(m.update(m.init(), c * pred, target))
  np.testing.assert_allclose(float(scaled['mse_up_to_scale']),
                             float(base['mse_up_to_scale']), rtol=1e-3)
  # An exact multiple of the targets has no error up to scale.
  exact = m.compute(m.update(m.init(), 0.25 * target, target))
  assert float(exact['mse_up_to_scale']) <= 1e-6 * float(
      np.mean(target[target > 0] ** 2))
  assert float(exact['mse']) > 1.0


def test_edge_cases_are_finite_and_documented():
  m = metrics.disparity()
  none_valid = m.compute(m.update(m.init(), jnp.ones(4), jnp.zeros(4)))
  assert {k: float(v) for k, v in none_valid.items()} == {
      'mae': 0.0, 'mse': 0.0, 'mse_up_to_scale': 0.0, 'count': 0.0}
  zero_pred = m.compute(m.update(m.init(), jnp.zeros(2), jnp.array([1., 3.])))
  assert float(zero_pred['mse_up_to_scale']) == pytest.approx(5.0)


def test_merged_reports_both_and_refuses_clashing_names():
  pred, target = _data(6)
  m = metrics.merged(metrics.depth(), metrics.disparity())
  out = m.compute(m.update(m.init(), pred, target))
  depth = metrics.depth()
  ref = depth.compute(depth.update(depth.init(), pred, target))
  for k in ref:
    np.testing.assert_allclose(float(out[k]), float(ref[k]), rtol=1e-6)
  assert {'mse', 'mse_up_to_scale', 'mae'} <= set(out)
  clash = metrics.merged(metrics.disparity(), metrics.regression())
  with pytest.raises(ValueError, match="report 'mae'"):
    clash.compute(clash.update(clash.init(), pred, target))
  with pytest.raises(ValueError, match='at least one'):
    metrics.merged()
  assert metrics.LOWER_IS_BETTER['mse_up_to_scale']


def test_cityscapes_evaluation_reports_the_disparity_errors():
  spec = training.default_eval_metrics(
      'cityscapes', ('segmentation', 'instance', 'depth'), capacity=8)
  pred, target = _data(7)
  pred_in, target_in, mask = spec['depth'].inputs(
      {'depth': pred}, {'depth': target})
  metric = spec['depth'].metric
  out = metric.compute(metric.update(metric.init(), pred_in, target_in, mask))
  assert {'abs_err', 'rel_err', 'delta1', 'mse', 'mse_up_to_scale'} <= set(out)
  other = training.default_eval_metrics('nyuv2', ('depth',), capacity=8)
  assert 'mse' not in other['depth'].metric.compute(
      other['depth'].metric.init())
