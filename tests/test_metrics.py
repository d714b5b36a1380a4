"""Tests of ``mtl_optax.metrics``: hand-computed cases (arithmetic in the
comments), direct numpy loops on random inputs, streaming == one batch, the
edge cases (nothing valid, absent classes, ignore labels), and the published
tables of Chai et al. (Δ_MTL, Table II) and Senushkin et al. (R, Table 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_optax import metrics

RNG = np.random.default_rng(0)

# One compilation per metric and shape for the whole file.
CLS = metrics.classification(num_tasks=3)
CLS_UPDATE = jax.jit(CLS.update)
SEG = metrics.segmentation(num_classes=4)
SEG_UPDATE = jax.jit(SEG.update)
DEPTH = metrics.depth()
DEPTH_UPDATE = jax.jit(DEPTH.update)
NORMALS = metrics.normals()
NORMALS_UPDATE = jax.jit(NORMALS.update)
POSE = metrics.pose(capacity=16)
POSE_UPDATE = jax.jit(POSE.update)


def as_float(d):
  return {k: float(v) for k, v in d.items()}


# ----------------------------------------------------------------------------
# Classification.
# ----------------------------------------------------------------------------


def test_accuracy_by_hand_with_logits_and_ignore_label():
  logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
  # argmax -> [1, 0, 1, 0]; targets [1, 1, -1, 0]: label -1 skipped,
  # correct at 0 and 3 of the 3 valid -> 2/3.
  targets = jnp.array([1, 1, -1, 0])
  assert float(metrics.accuracy(logits, targets)) == pytest.approx(2 / 3)
  # A mask hiding the last example: 1 correct of 2 valid.
  mask = jnp.array([True, True, True, False])
  assert float(metrics.accuracy(logits, targets, mask=mask)) == 0.5


def test_accuracy_per_task_matches_numpy_loop_and_streams():
  b, t, k = 24, 3, 5
  logits = RNG.normal(size=(b, t, k)).astype(np.float32)
  targets = RNG.integers(0, k, size=(b, t))
  targets[RNG.random((b, t)) < 0.4] = -1          # multi-task CIFAR-100 style
  targets[:, 2] = -1                              # a task with no label at all
  correct, count = np.zeros(t), np.zeros(t)
  for i in range(b):
    for j in range(t):
      if targets[i, j] != -1:
        count[j] += 1
        correct[j] += int(np.argmax(logits[i, j]) == targets[i, j])
  expected = np.where(count > 0, correct / np.maximum(count, 1), 0.0)

  state = CLS.init()
  for s in (slice(0, 8), slice(8, 16), slice(16, 24)):
    state = CLS_UPDATE(state, logits[s], targets[s])
  out = CLS.compute(state)
  np.testing.assert_allclose(out['accuracy'], expected, rtol=1e-6)
  np.testing.assert_array_equal(out['count'], count)
  assert float(out['accuracy'][2]) == 0.0 and int(out['count'][2]) == 0
  one_shot = metrics.accuracy(logits, targets, axis=0)
  np.testing.assert_allclose(one_shot, expected, rtol=1e-6)


def test_accuracy_with_no_valid_label_is_zero():
  targets = -jnp.ones((4,), jnp.int32)
  assert float(metrics.accuracy(jnp.zeros((4,), jnp.int32), targets)) == 0.0


def test_classification_checks_the_task_axis():
  with pytest.raises(ValueError, match='task axis'):
    CLS.update(CLS.init(), jnp.zeros((2, 4), jnp.int32),
               jnp.zeros((2, 4), jnp.int32))


# ----------------------------------------------------------------------------
# Segmentation.
# ----------------------------------------------------------------------------


def test_confusion_matrix_miou_pixel_accuracy_by_hand():
  # 4 classes. Class 3 appears in neither targets nor predictions; class 2 is
  # predicted once but never in the targets; one pixel is ignored (-1) and
  # one has the "void" label 255 (out of range, also skipped).
  targets = jnp.array([[0, 0, 1, 1], [1, -1, 0, 255]])
  preds = jnp.array([[0, 1, 1, 1], [2, 3, 0, 0]])
  # valid pixels (t, p): (0,0) (0,1) (1,1) (1,1) (1,2) (0,0)
  cm = metrics.confusion_matrix(preds, targets, 4)
  np.testing.assert_array_equal(
      cm, [[2, 1, 0, 0],
           [0, 2, 1, 0],
           [0, 0, 0, 0],
           [0, 0, 0, 0]])
  # IoU_0 = 2 / (3 + 2 - 2) = 2/3; IoU_1 = 2 / (3 + 3 - 2) = 1/2;
  # IoU_2 = 0 / (0 + 1 - 0) = 0 (predicted, never true: counts);
  # class 3: union 0, left out. mIoU = (2/3 + 1/2 + 0) / 3 = 7/18.
  np.testing.assert_allclose(metrics.iou(cm), [2 / 3, 1 / 2, 0, 0], rtol=1e-6)
  np.testing.assert_array_equal(metrics.present_classes(cm),
                                [True, True, True, False])
  assert float(metrics.miou(cm)) == pytest.approx(7 / 18)
  # Pixel accuracy: trace 4 of 6 valid pixels.
  assert float(metrics.pixel_accuracy(cm)) == pytest.approx(4 / 6)


def np_confusion(preds, targets, c, ignore):
  cm = np.zeros((c, c), np.int64)
  for t, p in zip(targets.ravel(), preds.ravel()):
    if t != ignore and 0 <= t < c:
      cm[t, p] += 1
  return cm


def np_miou(cm):
  ious = []
  for k in range(cm.shape[0]):
    union = cm[k, :].sum() + cm[:, k].sum() - cm[k, k]
    if union > 0:
      ious.append(cm[k, k] / union)
  return np.mean(ious) if ious else 0.0


def test_segmentation_matches_numpy_loop_and_streams_over_batches():
  c = 4
  logits = RNG.normal(size=(3, 6, 7, c)).astype(np.float32)
  targets = RNG.integers(0, c - 1, size=(3, 6, 7))   # class 3 never a target
  targets[RNG.random(targets.shape) < 0.2] = -1
  cm_ref = np_confusion(np.argmax(logits, -1), targets, c, -1)
  state = SEG.init()
  for i in range(3):
    state = SEG_UPDATE(state, logits[i:i + 1], targets[i:i + 1])
  np.testing.assert_array_equal(state, cm_ref)
  out = SEG.compute(state)
  assert float(out['miou']) == pytest.approx(np_miou(cm_ref), rel=1e-6)
  assert float(out['pixel_accuracy']) == pytest.approx(
      np.trace(cm_ref) / cm_ref.sum(), rel=1e-6)
  # merge of two halves == one pass
  a = SEG_UPDATE(SEG.init(), logits[:1], targets[:1])
  b = SEG_UPDATE(SEG_UPDATE(SEG.init(), logits[1:2], targets[1:2]),
                 logits[2:], targets[2:])
  np.testing.assert_array_equal(SEG.merge(a, b), cm_ref)


def test_segmentation_with_no_valid_pixel_is_zero_not_nan():
  targets = jnp.full((1, 2, 2), -1)
  state = SEG_UPDATE(SEG.init(), jnp.zeros((1, 2, 2), jnp.int32), targets)
  assert int(state.sum()) == 0
  assert as_float(SEG.compute(state)) == {'miou': 0.0, 'pixel_accuracy': 0.0}
  # A mask that hides every pixel does the same.
  state = SEG_UPDATE(SEG.init(), jnp.zeros((1, 2, 2), jnp.int32),
                     jnp.zeros((1, 2, 2), jnp.int32),
                     jnp.zeros((1, 2, 2), bool))
  assert int(state.sum()) == 0


def test_confusion_matrix_ignore_index_inside_the_class_range():
  # ignore_index=255 with labels in range; and ignore_index=1 drops class 1.
  cm = metrics.confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 1, 255]),
                                2, ignore_index=255)
  np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])
  cm = metrics.confusion_matrix(jnp.array([0, 0, 1]), jnp.array([0, 1, 1]),
                                2, ignore_index=1)
  np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])


# ----------------------------------------------------------------------------
# Depth.
# ----------------------------------------------------------------------------


def test_depth_by_hand():
  pred = jnp.array([[1.0, 2.0], [4.0, -1.0], [7.0, 1.0]])
  target = jnp.array([[1.0, 4.0], [3.0, 2.0], [0.0, 1.0]])
  # valid: target > 0 -> all but (2, 0): pixels (p, t) =
  #   (1, 1): |e| 0, rel 0,    δ = 1
  #   (2, 4): |e| 2, rel 1/2,  δ = max(1/2, 2) = 2
  #   (4, 3): |e| 1, rel 1/3,  δ = 4/3 ≈ 1.333
  #   (-1, 2): |e| 3, rel 3/2, δ = ∞ (non-positive prediction)
  #   (1, 1): |e| 0, rel 0,    δ = 1
  # abs = 6/5; rel = (1/2 + 1/3 + 3/2)/5 = 7/15;
  # δ<1.25: {1, 1} -> 2/5; δ<1.5625: + 4/3 -> 3/5; δ<1.953125: 2 is not -> 3/5
  state = DEPTH_UPDATE(DEPTH.init(), pred, target)
  out = as_float(DEPTH.compute(state))
  assert out == pytest.approx({'abs_err': 6 / 5, 'rel_err': 7 / 15,
                               'delta1': 2 / 5, 'delta2': 3 / 5,
                               'delta3': 3 / 5, 'count': 5.0})


def np_depth(pred, target, mask):
  ae, re, n, within = 0.0, 0.0, 0, [0, 0, 0]
  for p, t, m in zip(pred.ravel(), target.ravel(), mask.ravel()):
    if t > 0 and m:
      n += 1
      ae += abs(p - t)
      re += abs(p - t) / t
      d = max(p / t, t / p) if p > 0 else np.inf
      for k in range(3):
        within[k] += d < 1.25**(k + 1)
  return {'abs_err': ae / n, 'rel_err': re / n, 'delta1': within[0] / n,
          'delta2': within[1] / n, 'delta3': within[2] / n, 'count': n}


def test_depth_matches_numpy_loop_streaming_and_merge():
  target = RNG.uniform(0.5, 10.0, size=(4, 5, 6)).astype(np.float32)
  target[RNG.random(target.shape) < 0.3] = 0.0       # missing depth
  pred = (target * RNG.uniform(0.5, 2.2, size=target.shape)).astype(
      np.float32)
  pred[0, 0, :3] = RNG.uniform(0.5, 3.0, size=3)   # predictions at holes
  mask = RNG.random(target.shape) < 0.9
  expected = np_depth(pred.astype(np.float64), target.astype(np.float64),
                      mask)
  a = DEPTH_UPDATE(DEPTH_UPDATE(DEPTH.init(), pred[:1], target[:1], mask[:1]),
                   pred[1:2], target[1:2], mask[1:2])
  b = DEPTH_UPDATE(DEPTH_UPDATE(DEPTH.init(), pred[2:3], target[2:3],
                                mask[2:3]), pred[3:], target[3:], mask[3:])
  out = as_float(DEPTH.compute(DEPTH.merge(a, b)))
  assert out == pytest.approx(expected, rel=1e-5)


def test_depth_with_no_valid_pixel_is_zero_not_nan():
  state = DEPTH_UPDATE(DEPTH.init(), jnp.ones((2, 3)), jnp.zeros((2, 3)))
  out = as_float(DEPTH.compute(state))
  assert out == {'abs_err': 0.0, 'rel_err': 0.0, 'delta1': 0.0,
                 'delta2': 0.0, 'delta3': 0.0, 'count': 0.0}


# ----------------------------------------------------------------------------
# Regression.
# ----------------------------------------------------------------------------


def test_regression_by_hand_with_channel_axis_mask():
  reg = metrics.regression()
  pred = jnp.array([[1.0, 2.0], [5.0, 5.0], [0.0, 0.0]])   # [pixels, 2]
  target = jnp.array([[0.0, 0.0], [5.0, 3.0], [9.0, 9.0]])
  mask = jnp.array([[True], [True], [False]])               # broadcast to 2
  # valid entries: diffs 1, 2, 0, 2 -> mae 5/4, mse (1 + 4 + 0 + 4)/4 = 9/4
  out = as_float(reg.compute(reg.update(reg.init(), pred, target, mask)))
  assert out == {'mae': 1.25, 'mse': 2.25, 'count': 4.0}
  empty = reg.update(reg.init(), pred, target, jnp.zeros((3, 1), bool))
  assert as_float(reg.compute(empty)) == {'mae': 0.0, 'mse': 0.0, 'count': 0.0}


# ----------------------------------------------------------------------------
# Surface normals.
# ----------------------------------------------------------------------------


def test_angle_errors_by_hand():
  pred = jnp.array([[0., 0., 3.], [1., 0., 0.], [0., 0., -1.], [1., 1., 0.],
                    [0., 0., 0.], [1., 0., 0.]])
  target = jnp.array([[0., 0., 1.], [0., 1., 0.], [0., 0., 2.], [1., 0., 0.],
                      [0., 0., 1.], [0., 0., 0.]])
  # same direction (scale ignored) 0°; orthogonal 90°; opposite 180°;
  # (1,1,0) vs (1,0,0): arccos(1/√2) = 45°; zero prediction: 90°;
  # zero target: invalid (angle reported as 0).
  angle, valid = metrics.angle_errors(pred, target)
  np.testing.assert_allclose(angle, [0, 90, 180, 45, 90, 0], atol=1e-4)
  np.testing.assert_array_equal(valid, [True] * 5 + [False])


def test_angle_errors_are_accurate_for_tiny_angles():
  # 1e-3 degrees: arccos of a float32 dot product would give 0 or ~0.03°.
  eps = np.deg2rad(1e-3)
  pred = jnp.array([[np.sin(eps), 0.0, np.cos(eps)]], jnp.float32)
  angle, _ = metrics.angle_errors(pred, jnp.array([[0., 0., 1.]]))
  assert float(angle[0]) == pytest.approx(1e-3, rel=1e-3)


def test_normals_by_hand():
  # angles 0°, 20°, 45°, 90° and one invalid (zero target).
  rad = np.deg2rad([0.0, 20.0, 45.0, 90.0, 10.0])
  pred = np.stack([np.sin(rad), np.zeros(5), np.cos(rad)], -1)
  target = np.array([[0., 0., 1.]] * 4 + [[0., 0., 0.]])
  out = as_float(NORMALS.compute(NORMALS_UPDATE(NORMALS.init(), pred, target)))
  # mean (0 + 20 + 45 + 90)/4 = 38.75; median (20 + 45)/2 = 32.5 (to within
  # half a bin, 0.005°); < 11.25: {0} 1/4; < 22.5: {0, 20} 2/4; < 30: 2/4.
  assert out['mean'] == pytest.approx(38.75, abs=1e-4)
  assert out['median'] == pytest.approx(32.5, abs=0.005 + 1e-4)
  assert (out['within_11_25'], out['within_22_5'], out['within_30'],
          out['count']) == (0.25, 0.5, 0.5, 4.0)


def test_normals_match_numpy_loop_within_the_median_bound():
  shape = (3, 8, 9)
  target = RNG.normal(size=shape + (3,))
  pred = target + RNG.normal(scale=0.6, size=shape + (3,))
  target[RNG.random(shape) < 0.15] = 0.0
  mask = RNG.random(shape) < 0.9
  angles = []
  for p, t, m in zip(pred.reshape(-1, 3), target.reshape(-1, 3),
                     mask.ravel()):
    if m and np.any(t != 0):
      c = p @ t / np.linalg.norm(p) / np.linalg.norm(t)
      angles.append(np.degrees(np.arccos(np.clip(c, -1, 1))))
  angles = np.array(angles)
  state = NORMALS.init()
  for i in range(3):
    state = NORMALS_UPDATE(state, pred[i:i + 1].astype(np.float32),
                           target[i:i + 1].astype(np.float32), mask[i:i + 1])
  out = as_float(NORMALS.compute(state))
  assert out['count'] == len(angles)
  assert out['mean'] == pytest.approx(angles.mean(), abs=1e-3)
  # error bound of the histogram median: half a bin = 90 / 18000 degrees
  assert abs(out['median'] - np.median(angles)) <= 90 / 18000 + 1e-4
  for key, t in (('within_11_25', 11.25), ('within_22_5', 22.5),
                 ('within_30', 30.0)):
    assert out[key] == pytest.approx(np.mean(angles < t), abs=1e-7)
  # the exact route: per-pixel angles, median on the host
  a, v = metrics.angle_errors(pred, target, mask)
  assert float(np.median(np.asarray(a)[np.asarray(v)])) == pytest.approx(
      np.median(angles), abs=1e-3)


def test_normals_with_no_valid_pixel_is_zero_not_nan():
  state = NORMALS_UPDATE(NORMALS.init(), np.ones((2, 3)), np.zeros((2, 3)))
  assert set(as_float(NORMALS.compute(state)).values()) == {0.0}


def test_histogram_median_even_odd_and_empty():
  # bins of width 1 over [0, 4): values in bins 0, 2, 2, 3
  # even count 4: middle order statistics 1 and 2 (0-based) are both in bin 2
  # -> centre 2.5. Odd (drop bin 3): the middle one is in bin 2 -> 2.5.
  assert float(metrics.histogram_median(jnp.array([1, 0, 2, 1]), 4.0)) == 2.5
  assert float(metrics.histogram_median(jnp.array([1, 0, 2, 0]), 4.0)) == 2.5
  # [1, 0, 0, 1]: middle values in bins 0 and 3 -> (0.5 + 3.5)/2 = 2
  assert float(metrics.histogram_median(jnp.array([1, 0, 0, 1]), 4.0)) == 2.0
  assert float(metrics.histogram_median(jnp.zeros((4,), jnp.int32))) == 0.0


# ----------------------------------------------------------------------------
# Camera pose.
# ----------------------------------------------------------------------------


def test_rotation_errors_by_hand():
  s = np.sqrt(0.5)
  q1 = jnp.array([[1., 0., 0., 0.], [1., 0., 0., 0.], [s, s, 0., 0.],
                  [1., 0., 0., 0.], [0., 0., 0., 1.], [0., 0., 0., 0.]])
  q2 = jnp.array([[-3., 0., 0., 0.], [s, s, 0., 0.], [-s, -s, 0., 0.],
                  [0., 1., 0., 0.], [0., 0., 1., 0.], [1., 0., 0., 0.]])
  # q vs -3q: the same rotation (sign ambiguity and scale) -> 0°;
  # <q1, q2> = √½ -> 2 acos(√½) = 90°; q vs -q -> 0°;
  # orthogonal quaternions -> 2 acos(0) = 180°; twice; a zero quaternion
  # -> 2 acos(0) = 180°.
  np.testing.assert_allclose(metrics.rotation_errors(q1, q2),
                             [0, 90, 0, 180, 180, 180], atol=1e-4)
  # numerically equal unit quaternions (|<q1,q2>| rounds above 1) stay finite
  q = jnp.array([[0.5, 0.5, 0.5, 0.5]])
  assert float(metrics.rotation_errors(q, q * 1.0000001)[0]) == pytest.approx(
      0.0, abs=1e-3)


def test_pose_errors_match_numpy_formula():
  q1 = RNG.normal(size=(50, 4))
  q2 = q1 + RNG.normal(scale=0.3, size=(50, 4))
  q2[::3] *= -2.0                                   # flip sign, rescale
  expected = []
  for a, b in zip(q1, q2):
    d = abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b)
    expected.append(np.degrees(2 * np.arccos(min(d, 1.0))))
  np.testing.assert_allclose(metrics.rotation_errors(q1, q2), expected,
                             atol=1e-3)
  t1, t2 = RNG.normal(size=(50, 3)), RNG.normal(size=(50, 3))
  np.testing.assert_allclose(metrics.translation_errors(t1, t2),
                             [np.linalg.norm(a - b) for a, b in zip(t1, t2)],
                             rtol=1e-6)


def test_masked_median_matches_numpy():
  x = RNG.normal(size=11).astype(np.float32)
  for mask in (np.ones(11, bool), RNG.random(11) < 0.5, x > 0,
               np.arange(11) < 1):
    assert float(metrics.masked_median(x, mask)) == pytest.approx(
        float(np.median(x[mask])), abs=1e-7)
  assert float(metrics.masked_median(x, np.zeros(11, bool))) == 0.0


def test_pose_streams_masks_merges_and_flags_overflow():
  # translation errors 1..10 (padding samples masked), rotations 0 exactly
  n = 10
  t_err = np.arange(1.0, n + 1)
  pred_t = np.stack([t_err, np.zeros(n), np.zeros(n)], -1)
  true_t = np.zeros((n, 3))
  q = np.tile([1., 0., 0., 0.], (n, 1))
  mask = np.ones(n, bool)
  mask[[2, 7]] = False                                # 3 and 8 are padding
  state = POSE.init()
  for s in (slice(0, 5), slice(5, 10)):
    state = POSE_UPDATE(state, (pred_t[s], q[s]), (true_t[s], q[s]), mask[s])
  out = as_float(POSE.compute(state))
  # kept: 1 2 4 5 6 7 9 10 -> median (5 + 6)/2 = 5.5
  assert out == {'median_translation': 5.5, 'median_rotation': 0.0,
                 'count': 8.0}
  merged = POSE.merge(state, state)                   # 16 samples: fits
  assert as_float(POSE.compute(merged))['median_translation'] == 5.5
  over = POSE.merge(merged, state)                    # 24 > 16: flagged
  out = POSE.compute(over)
  assert np.isnan(out['median_translation']) and int(out['count']) == 24
  assert as_float(POSE.compute(POSE.init())) == {
      'median_translation': 0.0, 'median_rotation': 0.0, 'count': 0.0}


# ----------------------------------------------------------------------------
# Collection.
# ----------------------------------------------------------------------------


def test_collection_under_jit_with_missing_tasks():
  coll = metrics.collection({'seg': SEG, 'depth': DEPTH})
  update = jax.jit(coll.update)
  seg_p = jnp.array([[0, 1, 2]])
  seg_t = jnp.array([[0, 1, 1]])
  state = update(coll.init(), {'seg': seg_p, 'depth': jnp.array([2.0])},
                 {'seg': seg_t, 'depth': jnp.array([1.0])})
  state = update(state, {'seg': seg_p}, {'seg': seg_t})   # no depth label
  out = coll.compute(state)
  # seg: 2 x (2 of 3 right) -> 4/6; depth: one pixel |2 - 1| = 1
  assert float(out['seg']['pixel_accuracy']) == pytest.approx(4 / 6)
  assert float(out['depth']['abs_err']) == 1.0
  assert int(out['depth']['count']) == 1
  with pytest.raises(KeyError, match='normals'):
    coll.update(state, {'normals': seg_p}, {'normals': seg_t})


# ----------------------------------------------------------------------------
# Δ_MTL (Chai et al., Eqs. (20)-(21)) and the growth rate R.
# ----------------------------------------------------------------------------

# Table II of Chai et al. (NYUv2, segmentation + surface normals): mIoU,
# PixAcc | mean, median angle, within 11.25, 22.5, 30.
STL = np.array([27.8, 58.5, 17.3, 14.4, 37.2, 73.7, 85.1])
LOWER = np.array([False, False, True, True, False, False, False])
ROWS = {  # method: (values, ΔT_Seg, ΔT_SN, Δ_MTL) as printed
    'Multi-Task': ([22.6, 55.0, 16.9, 13.7, 41.0, 73.1, 84.3], -12.3, 3.1,
                   -4.6),
    'PCGrad': ([30.3, 61.3, 16.5, 13.9, 39.8, 74.8, 86.3], 6.8, 3.6, 5.2),
    'MAMG': ([32.0, 62.7, 15.9, 12.3, 46.8, 73.6, 84.4], 11.2, 9.4, 10.3),
}


def test_delta_mtl_by_hand():
  # task A (2 metrics): acc 0.9 vs 0.8 -> +12.5; err 3 vs 2 (lower better)
  #   -> -(3 - 2)/2 = -50;  ΔT_A = (12.5 - 50)/2 = -18.75
  # task B (1 metric): err 1 vs 2 -> +50;  ΔT_B = 50
  # Δ_MTL = (-18.75 + 50)/2 = 15.625 (the mean over all 3 metrics would be
  # (12.5 - 50 + 50)/3 ≈ 4.17: tasks first, then metrics, as Eq. (21)).
  m, b = np.array([0.9, 3.0, 1.0]), np.array([0.8, 2.0, 2.0])
  lower = np.array([False, True, True])
  np.testing.assert_allclose(
      metrics.task_improvements(m, b, lower, (2, 1)), [-18.75, 50], rtol=1e-6)
  assert float(metrics.delta_mtl(m, b, lower, (2, 1))) == pytest.approx(15.625)
  assert float(metrics.delta_mtl(m, b, lower)) == pytest.approx(12.5 / 3)


def test_delta_mtl_reproduces_table_ii_of_chai_et_al():
  values = np.array([v for v, *_ in ROWS.values()])
  delta = jax.jit(metrics.task_improvements, static_argnums=3)(
      values, STL, LOWER, (2, 5))
  for (_, seg, sn, total), d, dm in zip(
      ROWS.values(), np.asarray(delta),
      np.asarray(metrics.delta_mtl(values, STL, LOWER, (2, 5)))):
    # printed to 0.1 from inputs printed to 0.1: agree within rounding
    assert d[0] == pytest.approx(seg, abs=0.15)
    assert d[1] == pytest.approx(sn, abs=0.15)
    assert dm == pytest.approx(total, abs=0.06)
  # MAMG by hand: seg (4.2/27.8 + 4.2/58.5)/2 = (15.108 + 7.179)/2 = 11.14;
  # SN (1.4/17.3 + 2.1/14.4 + 9.6/37.2 - 0.1/73.7 - 0.7/85.1)/5 = 9.50;
  # Δ_MTL = (11.14 + 9.50)/2 = 10.32 (printed +10.3), whereas a mean over the
  # 7 metrics at once gives 9.97.
  mamg = np.array(ROWS['MAMG'][0])
  flat = float(metrics.delta_mtl(mamg, STL, LOWER, (7,)))
  assert flat == pytest.approx(9.97, abs=0.01)


def test_delta_mtl_rejects_bad_inputs():
  with pytest.raises(ValueError, match='sum to'):
    metrics.delta_mtl(STL, STL, LOWER, (2, 4))
  with pytest.raises(ValueError, match='zero'):
    metrics.delta_mtl(np.ones(2), np.array([1.0, 0.0]), np.zeros(2, bool))


def test_growth_rate_reproduces_table_4_of_senushkin_et_al():
  # Mean column of Table 4 (translation m, orientation °), uniform = P.
  uniform = np.array([0.79, 9.39])
  rows = {  # method: (mean t, mean r), printed R in %
      'MGDA': ((0.49, 9.42), (37.98, -0.32)),
      'GradNorm': ((0.27, 10.92), (65.82, -16.29)),
      'Z-aligned': ((0.34, 9.30), (56.96, 0.96)),
  }
  for (means, printed) in rows.values():
    r = [float(metrics.growth_rate(m, p)) * 100
         for m, p in zip(means, uniform)]
    # 1 - 0.34/0.79 = 0.5696; 1 - 9.30/9.39 = 0.0096 (MGDA's 37.97 is
    # printed 37.98)
    np.testing.assert_allclose(r, printed, atol=0.011)
  # Per-scene medians averaged inside: Z-aligned translation, 7 scenes.
  z = np.array([0.18, 0.48, 0.43, 0.28, 0.27, 0.32, 0.42])
  u = np.array([0.48, 1.78, 0.46, 0.70, 0.72, 0.90, 0.47])
  assert float(metrics.growth_rate(z, u)) == pytest.approx(
      1 - z.mean() / u.mean(), rel=1e-6)
  both = metrics.growth_rate(np.stack([z, z]), np.stack([u, u]), axis=-1)
  assert both.shape == (2,)
  with pytest.raises(ValueError, match='zero'):
    metrics.growth_rate(z, np.zeros(7))
