"""Δ_MTL from evaluation dicts (``metrics.task_deltas``/``delta_mtl_of``)."""

import numpy as np
import pytest

from mtl_optax import metrics


def _table_ii(values):
  """Table II of Chai et al. (2022) (NYUv2 seg + normals) as dicts."""
  seg, sn = values[:2], values[2:]
  return {
      'segmentation': {'miou': seg[0], 'pixel_accuracy': seg[1]},
      'normals': dict(zip(('mean', 'median', 'within_11_25', 'within_22_5',
                           'within_30'), sn), count=100.0),
  }


STL = [27.8, 58.5, 17.3, 14.4, 37.2, 73.7, 85.1]
ROWS = {  # method: (values, ΔT_Seg, ΔT_SN, Δ_MTL) as printed
    'Multi-Task': ([22.6, 55.0, 16.9, 13.7, 41.0, 73.1, 84.3], -12.3, 3.1,
                   -4.6),
    'PCGrad': ([30.3, 61.3, 16.5, 13.9, 39.8, 74.8, 86.3], 6.8, 3.6, 5.2),
    'MAMG': ([32.0, 62.7, 15.9, 12.3, 46.8, 73.6, 84.4], 11.2, 9.4, 10.3),
}


@pytest.mark.parametrize('name', sorted(ROWS))
def test_reproduces_table_ii_of_chai_et_al(name):
  values, seg, sn, total = ROWS[name]
  deltas = metrics.task_deltas(_table_ii(values), _table_ii(STL))
  assert list(deltas) == ['segmentation', 'normals']
  assert deltas['segmentation'] == pytest.approx(seg, abs=0.15)
  assert deltas['normals'] == pytest.approx(sn, abs=0.15)
  assert metrics.delta_mtl_of(_table_ii(values), _table_ii(STL)) == (
      pytest.approx(total, abs=0.06))


def test_agrees_with_the_array_form_and_a_hand_computation():
  method = {'a': {'accuracy': 0.9, 'abs_err': 3.0, 'count': 5},
            'b': {'mse': 1.0}, 'average': {'accuracy': 0.1}}
  base = {'a': {'accuracy': 0.8, 'abs_err': 2.0, 'count': 7},
          'b': {'mse': 2.0}, 'average': {'accuracy': 0.7}}
  # a: (+12.5 - 50)/2 = -18.75; b: +50; Δ = 15.625 ('average', 'count' out)
  assert metrics.task_deltas(method, base) == pytest.approx(
      {'a': -18.75, 'b': 50.0})
  assert metrics.delta_mtl_of(method, base) == pytest.approx(15.625)
  arr = float(metrics.delta_mtl(np.array([0.9, 3.0, 1.0]),
                                np.array([0.8, 2.0, 2.0]),
                                np.array([False, True, True]), (2, 1)))
  assert metrics.delta_mtl_of(method, base) == pytest.approx(arr, rel=1e-6)
  # restricting tasks and metrics
  assert metrics.delta_mtl_of(method, base, tasks=['a'],
                              metrics={'a': ['abs_err']}) == pytest.approx(-50)


def test_lower_is_better_overrides_and_extends_the_table():
  method, base = {'t': {'loss': 0.5}}, {'t': {'loss': 1.0}}
  with pytest.raises(ValueError, match=r"lower_is_better=\{'loss': True\}"):
    metrics.delta_mtl_of(method, base)
  assert metrics.delta_mtl_of(
      method, base, lower_is_better={'loss': True}) == pytest.approx(50.0)
  # flipping a known metric's direction flips the sign
  acc_m, acc_b = {'t': {'accuracy': 0.6}}, {'t': {'accuracy': 0.5}}
  assert metrics.delta_mtl_of(acc_m, acc_b) == pytest.approx(20.0)
  assert metrics.delta_mtl_of(
      acc_m, acc_b, lower_is_better={'accuracy': True}) == pytest.approx(-20.)


def test_every_reported_metric_has_a_direction():
  reported = set()
  for metric in (metrics.classification(), metrics.segmentation(3),
                 metrics.depth(), metrics.regression(), metrics.normals(),
                 metrics.pose(4)):
    reported |= set(metric.compute(metric.init()))
  assert reported - {'count'} <= set(metrics.LOWER_IS_BETTER)


def test_errors_name_the_fix():
  base = {'a': {'accuracy': 0.5}, 'b': {'accuracy': 0.5}}
  with pytest.raises(ValueError, match='tasks='):
    metrics.delta_mtl_of({'a': {'accuracy': 0.5}}, base)
  with pytest.raises(ValueError, match='metrics='):
    metrics.delta_mtl_of({'a': {'miou': 0.5}, 'b': {'accuracy': 0.5}}, base)
  with pytest.raises(ValueError, match='undefined'):
    metrics.delta_mtl_of(base, {'a': {'accuracy': 0.0},
                                'b': {'accuracy': 0.5}})
  with pytest.raises(ValueError, match='not compared'):
    metrics.delta_mtl_of(base, base, tasks=['a'], metrics={'b': ['accuracy']})
