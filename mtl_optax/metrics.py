"""Evaluation metrics of the multi-task benchmarks, streaming and jit-friendly.

The papers this project implements report:

- classification accuracy (MultiMNIST, CelebA, multi-task CIFAR-100, where
  the label ``-1`` means "not this task");
- semantic segmentation mIoU and pixel accuracy (Cityscapes, NYUv2), from a
  confusion matrix;
- depth absolute and relative error and the fractions with
  ``δ = max(ŷ/y, y/ŷ) < 1.25, 1.25², 1.25³`` (Chai et al., 2022, §IV-B);
- surface-normal angle error: mean, median and the fractions within 11.25°,
  22.5° and 30° (Chai et al., 2022, §IV-B);
- per-pixel regression errors (instance offsets, disparity; Sener & Koltun,
  2018, §4.3);
- camera pose: median translation (m) and orientation (°) errors (Senushkin
  et al., §5.4);
- the summaries Δ_MTL (Chai et al., 2022, Eqs. (20)-(21)) and the growth rate
  R (Senushkin et al., §5.4).

Streaming. Each benchmark metric is a :class:`Metric`, a tuple of pure
functions ``(init, update, merge, compute)`` in the style of an Optax
``GradientTransformation``: ``init()`` returns a state of fixed-shape arrays,
``update(state, predictions, targets, mask=None)`` adds one batch,
``merge(a, b)`` combines two states (shards, devices; for all but ``pose``
it is an elementwise sum, so ``lax.psum`` of the states also merges them) and
``compute(state)`` returns a dict of arrays at the end. The four functions
come jitted (static shapes, no host round-trip) and can be called inside a
larger jitted evaluation step::

    seg = metrics.segmentation(num_classes=19)
    state = seg.init()
    for logits, labels in batches:
      state = seg.update(state, logits, labels)
    seg.compute(state)   # {'miou': ..., 'pixel_accuracy': ...}

:func:`collection` bundles several metrics into one keyed by task name.

Conventions (every edge case has a defined, finite result; the one NaN is
the documented overflow signal of :func:`pose`):

- rates (accuracy, mIoU, pixel accuracy, δ, within-t°) are fractions in
  ``[0, 1]``; the papers' tables print them ×100;
- a quantity over no valid element (an empty mask, a batch of ignore labels)
  is ``0``; every state keeps its ``count`` so an evaluation can tell "empty"
  from "zero error";
- predictions may be integer labels, or logits with one more (trailing, class)
  axis than the targets, which are ``argmax``-ed;
- counts are ``int32`` (exact up to 2^31 - 1 elements per state), sums
  ``float32``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# Thresholds of the depth δ metric: 1.25, 1.25² and 1.25³ are exact in binary.
DEPTH_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
# Angle thresholds of the surface-normal metric, in degrees.
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


class Metric(NamedTuple):
  """A streaming metric: pure functions over a fixed-shape state.

  Attributes:
    init: ``() -> state``.
    update: ``(state, predictions, targets, mask=None) -> state``.
    merge: ``(state, state) -> state``; the state of the union of the data.
    compute: ``state -> dict`` of arrays.
  """
  init: Callable[[], PyTree]
  update: Callable[..., PyTree]
  merge: Callable[[PyTree, PyTree], PyTree]
  compute: Callable[[PyTree], dict]


def _metric(init, update, merge, compute) -> Metric:
  # Jitted here so that eager use costs one compilation per shape, not one
  # per primitive; jitting them again (or inside a larger jit) is free.
  return Metric(jax.jit(init), jax.jit(update), jax.jit(merge),
                jax.jit(compute))


def _sum_merge(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def _ratio(num, den):
  """``num / den`` with ``0`` where ``den == 0``, in float32."""
  num = jnp.asarray(num, jnp.float32)
  den = jnp.asarray(den, jnp.float32)
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _labels(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Integer labels from labels or from logits with a trailing class axis."""
  predictions = jnp.asarray(predictions)
  targets = jnp.asarray(targets)
  if predictions.ndim == targets.ndim + 1:
    return jnp.argmax(predictions, axis=-1)
  if predictions.shape != targets.shape:
    raise ValueError(
        f'predictions {predictions.shape} must be labels with the targets '
        f'shape {targets.shape}, or logits with one more trailing axis.')
  return predictions


def _valid(base: jax.Array, mask) -> jax.Array:
  if mask is None:
    return base
  return base & jnp.broadcast_to(jnp.asarray(mask, bool), base.shape)


def _count(valid, axis=None) -> jax.Array:
  return jnp.sum(valid, axis=axis, dtype=jnp.int32)


def _sum(x, valid, axis=None) -> jax.Array:
  return jnp.sum(jnp.where(valid, x, 0.0), axis=axis, dtype=jnp.float32)


# ----------------------------------------------------------------------------
# Classification.
# ----------------------------------------------------------------------------


class ClassificationState(NamedTuple):
  """Correct and valid counts (scalars, or one per task)."""
  correct: jax.Array
  count: jax.Array


@functools.partial(jax.jit, static_argnames=('ignore_index', 'axis'))
def accuracy(predictions: jax.Array,
             targets: jax.Array,
             *,
             ignore_index: int = -1,
             axis: int | tuple[int, ...] | None = None,
             mask: jax.Array | None = None) -> jax.Array:
  """Fraction of correctly classified examples, skipping ignored labels.

  ``accuracy = #{i : ŷ_i = y_i, y_i ≠ ignore_index} / #{i : y_i ≠
  ignore_index}``. In multi-task CIFAR-100 (Yu et al., 2020; Chai et al.,
  2022, §IV-A) each image has a label for one of the 20 tasks and ``-1`` for
  the others.

  Args:
    predictions: integer labels with the targets' shape, or logits with an
      extra trailing class axis.
    targets: integer labels; ``ignore_index`` marks entries to skip.
    ignore_index: label value that is not counted.
    axis: static int or tuple of axes to reduce (``None``: all); e.g.
      ``axis=0`` on ``[B, T]`` labels gives one accuracy per task.
    mask: optional bools broadcastable to ``targets``; ``False`` is skipped.

  Returns:
    float32 accuracy in ``[0, 1]``; ``0`` where no label is valid.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> pred, target = jnp.array([1, 2, 0, 3]), jnp.array([1, 0, 0, -1])
    >>> float(metrics.accuracy(pred, target))
    0.6666666865348816
  """
  labels = _labels(predictions, targets)
  targets = jnp.asarray(targets)
  valid = _valid(targets != ignore_index, mask)
  correct = _count(valid & (labels == targets), axis)
  return _ratio(correct, _count(valid, axis))


def classification(ignore_index: int = -1,
                   num_tasks: int | None = None) -> Metric:
  """Streaming classification accuracy, overall or per task.

  Args:
    ignore_index: label value that is not counted (``-1``: "not this task").
    num_tasks: ``None`` for one accuracy over all entries; ``T`` for one
      accuracy per task, the task axis being the last axis of the targets
      (targets ``[B, T]``; predictions ``[B, T]`` labels or ``[B, T, K]``
      logits).

  Returns:
    A :class:`Metric` whose ``compute`` gives ``{'accuracy': ...}`` (scalar or
    ``[T]``; ``0`` for a task with no valid label) and ``'count'``, the number
    of valid labels.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.classification(num_tasks=2)
    >>> pred, target = jnp.array([[1, 0], [0, 0]]), jnp.array([[1, -1], [1, -1]])
    >>> s = m.update(m.init(), pred, target)
    >>> m.compute(s)['accuracy'].tolist()
    [0.5, 0.0]
  """
  shape = () if num_tasks is None else (num_tasks,)

  def init():
    zero = jnp.zeros(shape, jnp.int32)
    return ClassificationState(zero, zero)

  def update(state, predictions, targets, mask=None):
    labels = _labels(predictions, targets)
    targets = jnp.asarray(targets)
    if num_tasks is not None and targets.shape[-1:] != shape:
      raise ValueError(f'targets {targets.shape} must end in the task axis '
                       f'of size {num_tasks}.')
    axis = None if num_tasks is None else tuple(range(targets.ndim - 1))
    valid = _valid(targets != ignore_index, mask)
    return ClassificationState(
        state.correct + _count(valid & (labels == targets), axis),
        state.count + _count(valid, axis))

  def compute(state):
    return {'accuracy': _ratio(state.correct, state.count),
            'count': state.count}

  return _metric(init, update, _sum_merge, compute)


# ----------------------------------------------------------------------------
# Semantic segmentation.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit,
                   static_argnames=('num_classes', 'ignore_index', 'dtype'))
def confusion_matrix(predictions: jax.Array,
                     targets: jax.Array,
                     num_classes: int,
                     *,
                     ignore_index: int = -1,
                     mask: jax.Array | None = None,
                     dtype=jnp.int32) -> jax.Array:
  """Pixel counts ``cm[target, prediction]`` over the valid pixels.

  A pixel is counted when its target is in ``[0, num_classes)`` and not
  ``ignore_index`` (so 255 or -1 "void" labels are skipped either way), its
  predicted label is in ``[0, num_classes)``, and ``mask`` (if given) is
  ``True``. Confusion matrices of batches add up: sum them to stream over a
  dataset.

  Args:
    predictions: integer labels with the targets' shape, or logits with an
      extra trailing class axis (``[B, H, W, C]``).
    targets: integer labels, e.g. ``[B, H, W]``.
    num_classes: ``C``.
    ignore_index: label of pixels that are not counted.
    mask: optional bools broadcastable to ``targets``.
    dtype: counts' dtype (``int32``: exact up to 2^31 - 1 pixels per cell).

  Returns:
    ``[C, C]`` counts, rows the target class, columns the predicted class.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> pred, target = jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 0, -1])
    >>> metrics.confusion_matrix(pred, target, num_classes=2).tolist()
    [[1, 1], [0, 1]]
  """
  labels = _labels(predictions, targets).reshape(-1)
  targets = jnp.asarray(targets)
  flat = targets.reshape(-1)
  valid = ((flat != ignore_index) & (flat >= 0) & (flat < num_classes)
           & (labels >= 0) & (labels < num_classes))
  if mask is not None:
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), targets.shape)
    valid &= mask.reshape(-1)
  index = jnp.where(valid, flat * num_classes + labels, 0).astype(jnp.int32)
  cm = jnp.zeros((num_classes * num_classes,), dtype)
  cm = cm.at[index].add(valid.astype(dtype))
  return cm.reshape(num_classes, num_classes)


@jax.jit
def iou(cm: jax.Array) -> jax.Array:
  """Per-class intersection over union from a confusion matrix.

  ``IoU_c = cm[c, c] / (Σ_j cm[c, j] + Σ_i cm[i, c] - cm[c, c])``. A class that
  appears in neither the targets nor the predictions has no union; its IoU is
  returned as ``0`` and :func:`miou` leaves it out of the mean.

  Args:
    cm: ``[C, C]`` confusion matrix (rows target, columns prediction).

  Returns:
    ``[C]`` float32 IoUs in ``[0, 1]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> metrics.iou(jnp.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])).tolist()
    [0.5, 0.5, 0.0]
  """
  cm = jnp.asarray(cm, jnp.float32)
  inter = jnp.diag(cm)
  union = jnp.sum(cm, 0) + jnp.sum(cm, 1) - inter
  return _ratio(inter, union)


@jax.jit
def present_classes(cm: jax.Array) -> jax.Array:
  """Classes that occur in the targets or in the predictions (``[C]`` bools)."""
  cm = jnp.asarray(cm)
  return (jnp.sum(cm, 0) + jnp.sum(cm, 1)) > 0


@jax.jit
def miou(cm: jax.Array) -> jax.Array:
  """Mean IoU over the classes present in the targets or the predictions.

  ``mIoU = Σ_{c present} IoU_c / #present``, where a class is present when it
  occurs in the targets or in the predictions (its union is non-empty). A class
  in the targets that is never predicted, or predicted but absent from the
  targets, counts with IoU 0. Classes absent from both are excluded, the
  standard convention (a ``nanmean`` over per-class IoUs). ``0`` when no class
  is present.

  Args:
    cm: ``[C, C]`` confusion matrix, summed over the whole dataset.

  Returns:
    float32 scalar in ``[0, 1]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> float(metrics.miou(jnp.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])))
    0.5
  """
  return _ratio(jnp.sum(iou(cm)), jnp.sum(present_classes(cm)))


@jax.jit
def pixel_accuracy(cm: jax.Array) -> jax.Array:
  """Fraction of valid pixels labelled correctly: ``trace(cm) / Σ cm``.

  Args:
    cm: ``[C, C]`` confusion matrix.

  Returns:
    float32 scalar in ``[0, 1]``; ``0`` for an empty matrix.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> float(metrics.pixel_accuracy(jnp.array([[3, 1], [0, 4]])))
    0.875
  """
  cm = jnp.asarray(cm, jnp.float32)
  return _ratio(jnp.trace(cm), jnp.sum(cm))


def segmentation(num_classes: int, ignore_index: int = -1) -> Metric:
  """Streaming semantic segmentation: a confusion matrix summed over batches.

  Args:
    num_classes: ``C``.
    ignore_index: label of pixels that are not counted.

  Returns:
    A :class:`Metric` whose state is the ``[C, C]`` int32 confusion matrix and
    whose ``compute`` gives ``{'miou', 'pixel_accuracy'}`` (see :func:`miou`
    for classes absent from both targets and predictions).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.segmentation(num_classes=2)
    >>> pred, target = jnp.array([[0, 1], [1, 1]]), jnp.array([[0, 1], [0, -1]])
    >>> s = m.update(m.init(), pred, target)
    >>> {k: round(float(v), 4) for k, v in m.compute(s).items()}
    {'miou': 0.5, 'pixel_accuracy': 0.6667}
  """

  def init():
    return jnp.zeros((num_classes, num_classes), jnp.int32)

  def update(state, predictions, targets, mask=None):
    return state + confusion_matrix(predictions, targets, num_classes,
                                    ignore_index=ignore_index, mask=mask)

  def compute(state):
    return {'miou': miou(state), 'pixel_accuracy': pixel_accuracy(state)}

  return _metric(init, update, _sum_merge, compute)


# ----------------------------------------------------------------------------
# Depth.
# ----------------------------------------------------------------------------


class DepthState(NamedTuple):
  """Sums over valid pixels: ``Σ|ŷ-y|``, ``Σ|ŷ-y|/y``, δ counts, count."""
  abs_err: jax.Array
  rel_err: jax.Array
  within: jax.Array  # [3] int32, one per threshold 1.25, 1.25², 1.25³
  count: jax.Array


@jax.jit
def depth_sums(predictions: jax.Array,
               targets: jax.Array,
               mask: jax.Array | None = None) -> DepthState:
  """Sums and counts of the depth errors of one batch (see :func:`depth`).

  Valid pixels have ``target > 0`` (and ``mask``). ``δ = max(ŷ/y, y/ŷ)``;
  a non-positive prediction has ``δ = ∞`` (never within a threshold).

  Args:
    predictions: predicted depths, the targets' shape (or broadcastable).
    targets: ground-truth depths; ``≤ 0`` marks a missing value.
    mask: optional bools broadcastable to ``targets``.

  Returns:
    A :class:`DepthState` of this batch; add states to merge them.
  """
  targets = jnp.asarray(targets, jnp.float32)
  predictions = jnp.broadcast_to(jnp.asarray(predictions, jnp.float32),
                                 targets.shape)
  valid = _valid(targets > 0, mask)
  y = jnp.where(valid, targets, 1.0)
  err = jnp.abs(predictions - y)
  positive = predictions > 0
  yhat = jnp.where(positive, predictions, 1.0)
  delta = jnp.where(positive, jnp.maximum(yhat / y, y / yhat), jnp.inf)
  within = jnp.stack(
      [_count(valid & (delta < t)) for t in DEPTH_THRESHOLDS])
  return DepthState(_sum(err, valid), _sum(err / y, valid), within,
                    _count(valid))


def depth() -> Metric:
  """Streaming depth metrics over the valid pixels (``target > 0``).

  With ``N`` valid pixels of the whole dataset (Chai et al., 2022, §IV-B):

  - ``abs_err = Σ |ŷ - y| / N``;
  - ``rel_err = Σ |ŷ - y| / y / N`` ("abs rel");
  - ``delta1, delta2, delta3 = #{δ < 1.25^k} / N``, ``δ = max(ŷ/y, y/ŷ)``
    (strict ``<``; a prediction ``≤ 0`` is never within).

  Every pixel of the dataset counts once (pooled), which differs from a mean
  of per-image means when images have different numbers of valid pixels.

  Returns:
    A :class:`Metric` whose ``compute`` gives ``{'abs_err', 'rel_err',
    'delta1', 'delta2', 'delta3', 'count'}``; all ``0`` with no valid pixel.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.depth()
    >>> s = m.update(m.init(), jnp.array([1., 3., 5.]), jnp.array([2., 2., 0.]))
    >>> {k: float(v) for k, v in m.compute(s).items()}
    {'abs_err': 1.0, 'count': 2.0, 'delta1': 0.0, 'delta2': 0.5, 'delta3': 0.5, 'rel_err': 0.5}
  """

  def init():
    zero_f = jnp.zeros((), jnp.float32)
    zero_i = jnp.zeros((), jnp.int32)
    return DepthState(zero_f, zero_f, jnp.zeros((3,), jnp.int32), zero_i)

  def update(state, predictions, targets, mask=None):
    return _sum_merge(state, depth_sums(predictions, targets, mask))

  def compute(state):
    out = {'abs_err': _ratio(state.abs_err, state.count),
           'rel_err': _ratio(state.rel_err, state.count)}
    for k in range(3):
      out[f'delta{k + 1}'] = _ratio(state.within[k], state.count)
    out['count'] = state.count
    return out

  return _metric(init, update, _sum_merge, compute)


# ----------------------------------------------------------------------------
# Per-pixel regression (instance offsets, disparity).
# ----------------------------------------------------------------------------


class RegressionState(NamedTuple):
  """``Σ|ŷ-y|``, ``Σ(ŷ-y)²`` and the count over valid entries."""
  abs_err: jax.Array
  sq_err: jax.Array
  count: jax.Array


def regression() -> Metric:
  """Streaming mean absolute and mean squared error over valid entries.

  ``mae = Σ |ŷ - y| / N``, ``mse = Σ (ŷ - y)² / N`` over the ``N`` entries
  where ``mask`` is ``True`` (all entries when no mask is given), e.g. the
  instance-offset and disparity errors of Cityscapes (Sener & Koltun, 2018,
  §4.3). Every scalar entry counts once: for ``[B, H, W, 2]`` offsets with a
  ``[B, H, W, 1]`` mask, ``N`` is twice the number of masked pixels.

  Returns:
    A :class:`Metric` whose ``update(state, predictions, targets, mask=None)``
    takes a mask broadcastable to ``targets`` and whose ``compute`` gives
    ``{'mae', 'mse', 'count'}``; ``0`` with no valid entry.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.regression()
    >>> s = m.update(m.init(), jnp.array([1., 4., 9.]), jnp.array([2., 2., 0.]),
    ...              jnp.array([True, True, False]))
    >>> {k: float(v) for k, v in m.compute(s).items()}
    {'count': 2.0, 'mae': 1.5, 'mse': 2.5}
  """

  def init():
    zero = jnp.zeros((), jnp.float32)
    return RegressionState(zero, zero, jnp.zeros((), jnp.int32))

  def update(state, predictions, targets, mask=None):
    targets = jnp.asarray(targets, jnp.float32)
    diff = jnp.asarray(predictions, jnp.float32) - targets
    valid = _valid(jnp.ones(diff.shape, bool), mask)
    return RegressionState(state.abs_err + _sum(jnp.abs(diff), valid),
                           state.sq_err + _sum(diff * diff, valid),
                           state.count + _count(valid))

  def compute(state):
    return {'mae': _ratio(state.abs_err, state.count),
            'mse': _ratio(state.sq_err, state.count),
            'count': state.count}

  return _metric(init, update, _sum_merge, compute)


class DisparityState(NamedTuple):
  """Sums over valid pixels: ``Σ|ŷ-y|``, ``Σ(ŷ-y)²``, ``Σŷ²``, ``Σŷy``,
  ``Σy²`` and the count."""
  abs_err: jax.Array
  sq_err: jax.Array
  pred_sq: jax.Array
  pred_target: jax.Array
  target_sq: jax.Array
  count: jax.Array


def disparity() -> Metric:
  """Streaming disparity errors over the valid pixels (``target > 0``).

  With ``N`` valid pixels of the whole dataset (pooled):

  - ``mae = Σ |ŷ - y| / N`` and ``mse = Σ (ŷ - y)² / N``, the errors
    Sener & Koltun (2018, Table 4) and Senushkin et al. (2023) report for
    Cityscapes' disparities;
  - ``mse_up_to_scale = min_s Σ (s ŷ - y)² / N = (Σy² - (Σŷy)²/Σŷ²) / N``,
    the error after the best single scale of all the predictions: our
    reading of Table 3's "Disparity error MSE (up to scale)" in Senushkin
    et al. (a disparity is known only up to the camera's scale); it is
    unchanged when the predictions are multiplied by any ``c ≠ 0``. With
    ``Σŷ² = 0`` it is ``Σy²/N``. The sums are float32, so it is computed
    to about ``1e-7 · Σy²/N``, and clipped at 0.

  Returns:
    A :class:`Metric` whose ``update(state, predictions, targets, mask=None)``
    takes an optional mask broadcastable to ``targets`` and whose
    ``compute`` gives ``{'mae', 'mse', 'mse_up_to_scale', 'count'}``; ``0``
    with no valid pixel.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.disparity()
    >>> s = m.update(m.init(), jnp.array([1., 2., 7.]), jnp.array([2., 4., 0.]))
    >>> {k: float(v) for k, v in m.compute(s).items()}
    {'count': 2.0, 'mae': 1.5, 'mse': 2.5, 'mse_up_to_scale': 0.0}
  """

  def init():
    zero = jnp.zeros((), jnp.float32)
    return DisparityState(zero, zero, zero, zero, zero,
                          jnp.zeros((), jnp.int32))

  def update(state, predictions, targets, mask=None):
    targets = jnp.asarray(targets, jnp.float32)
    predictions = jnp.broadcast_to(jnp.asarray(predictions, jnp.float32),
                                   targets.shape)
    valid = _valid(targets > 0, mask)
    diff = predictions - targets
    return _sum_merge(state, DisparityState(
        _sum(jnp.abs(diff), valid), _sum(diff * diff, valid),
        _sum(predictions * predictions, valid),
        _sum(predictions * targets, valid), _sum(targets * targets, valid),
        _count(valid)))

  def compute(state):
    ok = state.pred_sq > 0
    explained = jnp.where(
        ok, state.pred_target ** 2 / jnp.where(ok, state.pred_sq, 1.0), 0.0)
    residual = jnp.maximum(state.target_sq - explained, 0.0)
    return {'mae': _ratio(state.abs_err, state.count),
            'mse': _ratio(state.sq_err, state.count),
            'mse_up_to_scale': _ratio(residual, state.count),
            'count': state.count}

  return _metric(init, update, _sum_merge, compute)


def merged(*members: Metric) -> Metric:
  """One :class:`Metric` reporting several metrics of the same outputs.

  Every member is updated with the same arguments; ``compute`` returns the
  union of the members' dicts (e.g. Cityscapes' disparities: the depth
  errors and :func:`disparity`'s). Only ``count`` may be reported by two
  members (the last one's is kept: merge metrics that count the same
  pixels); another repeated name raises ValueError at ``compute``.

  Args:
    *members: the metrics, at least one.

  Returns:
    A :class:`Metric` whose state is the tuple of the members' states.

  Raises:
    ValueError: with no member, or (at ``compute``) two members reporting
      a name other than ``count``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.merged(metrics.depth(), metrics.disparity())
    >>> s = m.update(m.init(), jnp.array([1., 3.]), jnp.array([2., 2.]))
    >>> out = m.compute(s)
    >>> float(out['abs_err']), float(out['mse']), float(out['count'])
    (1.0, 1.0, 2.0)
  """
  if not members:
    raise ValueError('merged() needs at least one metric, e.g. '
                     'metrics.merged(metrics.depth(), metrics.disparity()).')

  def init():
    return tuple(m.init() for m in members)

  def update(state, *args, **kwargs):
    return tuple(m.update(s, *args, **kwargs)
                 for m, s in zip(members, state))

  def merge(a, b):
    return tuple(m.merge(x, y) for m, x, y in zip(members, a, b))

  def compute(state):
    out = {}
    for m, s in zip(members, state):
      for name, value in m.compute(s).items():
        if name in out and name != 'count':
          raise ValueError(
              f'merged(): two metrics report {name!r}; merge metrics whose '
              'names differ (only count may repeat).')
        out[name] = value
    return out

  return Metric(init, update, merge, compute)


# ----------------------------------------------------------------------------
# Surface normals.
# ----------------------------------------------------------------------------


def _unit(v: jax.Array) -> jax.Array:
  """``v / ‖v‖`` along the last axis; the zero vector stays zero."""
  n = jnp.linalg.norm(v, axis=-1, keepdims=True)
  return v / jnp.where(n > 0, n, 1.0)


def _angle(a: jax.Array, b: jax.Array) -> jax.Array:
  """Angle in radians between unit vectors: ``2 atan2(‖a-b‖, ‖a+b‖)``.

  Equal to ``arccos(<a, b>)`` but accurate near 0 and π (Kahan's formula),
  where ``arccos`` of a float32 dot product loses up to ~0.03°.
  """
  return 2 * jnp.arctan2(jnp.linalg.norm(a - b, axis=-1),
                         jnp.linalg.norm(a + b, axis=-1))


@jax.jit
def angle_errors(predictions: jax.Array,
                 targets: jax.Array,
                 mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-pixel angle in degrees between predicted and target normals.

  ``angle = arccos(<ŷ/‖ŷ‖, y/‖y‖>)`` (computed as ``2 atan2(‖â-b̂‖, ‖â+b̂‖)``
  for accuracy). A pixel is valid when its target is non-zero (zero normals
  mark missing ground truth in NYUv2) and ``mask`` is ``True``. A zero
  prediction has angle 90° (as normalising with an epsilon gives).

  Use it for an exact median over a dataset: gather ``angles[valid]`` of each
  batch on the host and take ``np.median`` of the concatenation (the streaming
  :func:`normals` uses a histogram instead).

  Args:
    predictions: ``[..., D]`` normals, any scale.
    targets: ``[..., D]`` normals; zero vectors are invalid.
    mask: optional bools broadcastable to ``targets.shape[:-1]``.

  Returns:
    ``(angles, valid)``: ``[...]`` float32 degrees in ``[0, 180]`` (``0`` at
    invalid pixels) and ``[...]`` bools.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> a, v = metrics.angle_errors(jnp.array([[0., 0., 2.], [1., 0., 0.]]),
    ...                             jnp.array([[0., 1., 1.], [0., 0., 0.]]))
    >>> [round(float(x), 4) for x in a], v.tolist()
    ([45.0, 0.0], [True, False])
  """
  predictions = jnp.asarray(predictions, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  valid = _valid(jnp.any(targets != 0, axis=-1), mask)
  angle = jnp.degrees(_angle(_unit(predictions), _unit(targets)))
  return jnp.where(valid, angle, 0.0), valid


class NormalsState(NamedTuple):
  """Angle sum, within-threshold counts, count and angle histogram."""
  angle_sum: jax.Array
  within: jax.Array     # [3] int32: < 11.25°, < 22.5°, < 30°
  count: jax.Array
  histogram: jax.Array  # [num_bins] int32 over [0°, 180°]


@functools.partial(jax.jit, static_argnames='upper')
def histogram_median(histogram: jax.Array, upper: float = 180.0) -> jax.Array:
  """Median of values binned in ``len(histogram)`` equal bins over ``[0, upper]``.

  Each of the two middle order statistics (``k = ⌊(n-1)/2⌋`` and ``⌊n/2⌋``,
  0-based, as ``np.median`` averages them) is replaced by the centre of the
  bin that holds it, so the result is within half a bin width,
  ``upper / (2 len(histogram))``, of the exact median.

  Args:
    histogram: ``[B]`` integer counts.
    upper: the upper end of the binned range.

  Returns:
    float32 scalar; ``0`` for an empty histogram.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> float(metrics.histogram_median(jnp.array([1, 0, 2, 0]), upper=4.0))
    2.5
  """
  histogram = jnp.asarray(histogram)
  width = upper / histogram.shape[0]
  cum = jnp.cumsum(histogram)
  n = cum[-1]
  lo = jnp.searchsorted(cum, (n - 1) // 2, side='right')
  hi = jnp.searchsorted(cum, n // 2, side='right')
  median = (lo + hi + 1).astype(jnp.float32) * (width / 2)
  return jnp.where(n > 0, median, 0.0)


def normals(num_bins: int = 18000) -> Metric:
  """Streaming surface-normal angle errors over the valid pixels.

  With the per-pixel angles of :func:`angle_errors` over the ``N`` valid
  pixels of the dataset (Chai et al., 2022, §IV-B):

  - ``mean = Σ angle / N`` (exact);
  - ``within_11_25, within_22_5, within_30 = #{angle < t} / N`` (exact,
    strict ``<``);
  - ``median``: from a histogram of ``num_bins`` equal bins over
    ``[0°, 180°]`` (see :func:`histogram_median`), within ``90 / num_bins``
    degrees of the exact median (0.005° with the default 18000 bins, whose
    counts take 72 KB); a fixed-size state, so it streams in jit. For the
    exact median, concatenate :func:`angle_errors` on the host instead.

  Args:
    num_bins: number of histogram bins for the median.

  Returns:
    A :class:`Metric` whose ``update(state, predictions, targets, mask=None)``
    takes ``[..., 3]`` normals and whose ``compute`` gives ``{'mean',
    'median', 'within_11_25', 'within_22_5', 'within_30', 'count'}`` in
    degrees and fractions; all ``0`` with no valid pixel.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.normals(num_bins=180)
    >>> s = m.update(m.init(), jnp.array([[0., 0., 1.], [0., 1., 0.]]),
    ...              jnp.array([[0., 0., 1.], [0., 0., 1.]]))
    >>> {k: round(float(v), 4) for k, v in m.compute(s).items()}
    {'count': 2.0, 'mean': 45.0, 'median': 45.5, 'within_11_25': 0.5, 'within_22_5': 0.5, 'within_30': 0.5}
  """
  scale = num_bins / 180.0

  def init():
    return NormalsState(jnp.zeros((), jnp.float32), jnp.zeros((3,), jnp.int32),
                        jnp.zeros((), jnp.int32),
                        jnp.zeros((num_bins,), jnp.int32))

  def update(state, predictions, targets, mask=None):
    angle, valid = angle_errors(predictions, targets, mask)
    within = jnp.stack([_count(valid & (angle < t)) for t in NORMAL_THRESHOLDS])
    bins = jnp.clip(jnp.floor(angle * scale), 0, num_bins - 1).astype(jnp.int32)
    hist = state.histogram.at[bins.reshape(-1)].add(
        valid.reshape(-1).astype(jnp.int32))
    return NormalsState(state.angle_sum + _sum(angle, valid),
                        state.within + within, state.count + _count(valid),
                        hist)

  def compute(state):
    out = {'mean': _ratio(state.angle_sum, state.count),
           'median': histogram_median(state.histogram)}
    for key, k in zip(('within_11_25', 'within_22_5', 'within_30'), range(3)):
      out[key] = _ratio(state.within[k], state.count)
    out['count'] = state.count
    return out

  return _metric(init, update, _sum_merge, compute)


# ----------------------------------------------------------------------------
# Camera pose.
# ----------------------------------------------------------------------------


@jax.jit
def translation_errors(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Euclidean distance ``‖t̂ - t‖`` per sample (metres for 7-Scenes).

  Args:
    predictions: ``[..., 3]`` predicted camera positions.
    targets: ``[..., 3]`` true camera positions.

  Returns:
    ``[...]`` float32 distances.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> t = jnp.array([[3., 4., 0.]])
    >>> metrics.translation_errors(t, jnp.zeros((1, 3))).tolist()
    [5.0]
  """
  diff = jnp.asarray(predictions, jnp.float32) - jnp.asarray(targets,
                                                             jnp.float32)
  return jnp.linalg.norm(diff, axis=-1)


@jax.jit
def rotation_errors(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Angle in degrees of the rotation between two orientation quaternions.

  ``θ = 2 arccos(|<q̂₁, q̂₂>|)`` with ``q̂ = q / ‖q‖`` (Senushkin et al.,
  §5.4; Kendall et al., 2015): the absolute value makes ``q`` and ``-q`` (the
  same rotation) equal, and ``θ ∈ [0°, 180°]``. Computed without ``arccos``
  (so no clipping is needed and small angles keep full precision): ``q̂₂``
  is flipped to the hemisphere of ``q̂₁`` and ``θ = 4 atan2(‖q̂₁ - q̂₂‖,
  ‖q̂₁ + q̂₂‖)``, the same value. A zero quaternion gives 180° (``2
  arccos(0)``).

  Args:
    predictions: ``[..., 4]`` quaternions, any scale, any component order
      (the same in both).
    targets: ``[..., 4]`` quaternions.

  Returns:
    ``[...]`` float32 degrees.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> q = jnp.array([[1., 0., 0., 0.], [1., 0., 0., 0.]])
    >>> r = jnp.array([[-2., 0., 0., 0.], [0.7071068, 0.7071068, 0., 0.]])
    >>> [round(float(x), 3) for x in metrics.rotation_errors(q, r)]
    [0.0, 90.0]
  """
  q1 = _unit(jnp.asarray(predictions, jnp.float32))
  q2 = _unit(jnp.asarray(targets, jnp.float32))
  sign = jnp.where(jnp.sum(q1 * q2, axis=-1, keepdims=True) < 0, -1.0, 1.0)
  return jnp.degrees(2 * _angle(q1, sign * q2))


@jax.jit
def masked_median(values: jax.Array,
                  mask: jax.Array | None = None) -> jax.Array:
  """Median of the entries of ``values`` where ``mask`` is ``True``.

  As ``np.median(values[mask])`` (the mean of the two middle values for an
  even count), with static shapes: the masked-out entries are sorted to the
  end. ``0`` when no entry is valid.

  Args:
    values: any shape; flattened.
    mask: optional bools of the same shape.

  Returns:
    float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> x = jnp.array([4., 1., 9., 2.])
    >>> float(metrics.masked_median(x, jnp.array([True, True, False, True])))
    2.0
  """
  values = jnp.asarray(values, jnp.float32).reshape(-1)
  valid = (jnp.ones(values.shape, bool) if mask is None else
           jnp.broadcast_to(jnp.asarray(mask, bool), values.shape))
  n = _count(valid)
  ordered = jnp.sort(jnp.where(valid, values, jnp.inf))
  lo = ordered[jnp.maximum((n - 1) // 2, 0)]  # the two middle values
  hi = ordered[n // 2]                         # (the same one for odd n)
  return jnp.where(n > 0, 0.5 * (lo + hi), 0.0)


class PoseState(NamedTuple):
  """Buffers of per-sample errors and the number of samples seen."""
  translation: jax.Array  # [capacity]
  rotation: jax.Array     # [capacity]
  count: jax.Array


def pose(capacity: int) -> Metric:
  """Streaming median translation and orientation errors (7-Scenes).

  Medians need every sample, so the per-sample errors of
  :func:`translation_errors` and :func:`rotation_errors` are written into
  fixed buffers of ``capacity`` entries (one float per image: 7-Scenes test
  scenes have at most a few thousand frames). ``update(state, predictions,
  targets, mask=None)`` takes ``predictions = (translation [B, 3], quaternion
  [B, 4])`` and the same for ``targets``; ``mask`` (``[B]`` bools) skips
  padding samples. ``merge`` appends the second state's samples.

  ``compute`` gives ``{'median_translation', 'median_rotation', 'count'}``
  (metres and degrees, per :func:`masked_median`); ``0`` with no sample. If
  more than ``capacity`` samples were added the extra ones were dropped, and
  both medians are returned as NaN, so an undersized buffer cannot go
  unnoticed.

  Args:
    capacity: the most samples the state holds.

  Returns:
    A :class:`Metric`.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.pose(capacity=4)
    >>> q = jnp.array([[1., 0., 0., 0.]] * 3)
    >>> t = jnp.array([[0., 0., 0.], [0., 0., 2.], [0., 0., 5.]])
    >>> s = m.update(m.init(), (t, q), (jnp.zeros((3, 3)), q))
    >>> {k: float(v) for k, v in m.compute(s).items()}
    {'count': 3.0, 'median_rotation': 0.0, 'median_translation': 2.0}
  """

  def init():
    zero = jnp.zeros((capacity,), jnp.float32)
    return PoseState(zero, zero, jnp.zeros((), jnp.int32))

  def _write(buffer, index, values):
    return buffer.at[index].set(values, mode='drop')

  def update(state, predictions, targets, mask=None):
    t_err = translation_errors(predictions[0], targets[0]).reshape(-1)
    r_err = rotation_errors(predictions[1], targets[1]).reshape(-1)
    valid = _valid(jnp.ones(t_err.shape, bool),
                   None if mask is None else jnp.reshape(mask, -1))
    position = state.count + jnp.cumsum(valid.astype(jnp.int32)) - 1
    index = jnp.where(valid, position, capacity)  # out of range: dropped
    return PoseState(_write(state.translation, index, t_err),
                     _write(state.rotation, index, r_err),
                     state.count + _count(valid))

  def merge(a, b):
    slot = jnp.arange(capacity)
    index = jnp.where(slot < b.count, a.count + slot, capacity)
    return PoseState(_write(a.translation, index, b.translation),
                     _write(a.rotation, index, b.rotation), a.count + b.count)

  def compute(state):
    kept = jnp.arange(capacity) < state.count
    ok = state.count <= capacity
    return {
        'median_translation': jnp.where(
            ok, masked_median(state.translation, kept), jnp.nan),
        'median_rotation': jnp.where(
            ok, masked_median(state.rotation, kept), jnp.nan),
        'count': state.count,
    }

  return _metric(init, update, merge, compute)


# ----------------------------------------------------------------------------
# Several tasks at once.
# ----------------------------------------------------------------------------


def collection(metrics: Mapping[str, Metric]) -> Metric:
  """One :class:`Metric` over several, keyed by task name.

  ``update(state, predictions, targets, masks=None)`` takes dicts keyed like
  ``metrics`` (``masks`` may hold only some keys); a task missing from
  ``predictions`` keeps its state, so batches may carry a subset of the
  tasks. ``compute`` returns a dict of the tasks' dicts.

  Args:
    metrics: name -> :class:`Metric`.

  Returns:
    A :class:`Metric` whose state is a dict of the members' states.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> m = metrics.collection({'seg': metrics.segmentation(2),
    ...                         'depth': metrics.depth()})
    >>> pred = {'seg': jnp.array([0, 1]), 'depth': jnp.array([1., 2.])}
    >>> target = {'seg': jnp.array([0, 0]), 'depth': jnp.array([1., 4.])}
    >>> s = m.update(m.init(), pred, target)
    >>> out = m.compute(s)
    >>> float(out['seg']['pixel_accuracy']), float(out['depth']['abs_err'])
    (0.5, 1.0)
  """
  metrics = dict(metrics)

  def init():
    return {k: m.init() for k, m in metrics.items()}

  def update(state, predictions, targets, masks=None):
    unknown = set(predictions) - set(metrics)
    if unknown:
      raise KeyError(f'No metric for the tasks {sorted(unknown)}.')
    masks = masks or {}
    return {
        k: (m.update(state[k], predictions[k], targets[k], masks.get(k))
            if k in predictions else state[k]) for k, m in metrics.items()
    }

  def merge(a, b):
    return {k: m.merge(a[k], b[k]) for k, m in metrics.items()}

  def compute(state):
    return {k: m.compute(state[k]) for k, m in metrics.items()}

  return _metric(init, update, merge, compute)


# ----------------------------------------------------------------------------
# Summaries over tasks: Δ_MTL and the growth rate R.
# ----------------------------------------------------------------------------


def _check_nonzero(x, what):
  """Raises when a concrete ``x`` has a zero entry (skipped under jit)."""
  try:
    arr = np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return
  if np.any(arr == 0):
    raise ValueError(f'{what} has a zero entry: the relative change against '
                     'it is undefined.')


def relative_improvement(method: jax.Array, baseline: jax.Array,
                         lower_is_better: jax.Array) -> jax.Array:
  """Per-metric signed relative change in percent, the summand of Eq. (20).

  ``r_j = (-1)^{l_j} (M_j - M_{STL,j}) / M_{STL,j} · 100``, ``l_j = 1`` when a
  lower value of metric ``j`` is better, so ``r_j > 0`` always means better
  than the baseline (Chai et al., 2022, Eq. (20)).

  Args:
    method: ``[..., M]`` metric values of the method.
    baseline: ``[M]`` (or broadcastable) values of the single-task baseline;
      no zero entry (checked when not traced; under jit a zero gives ±inf).
    lower_is_better: ``[M]`` bools.

  Returns:
    ``[..., M]`` float32 percentages.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> metrics.relative_improvement(jnp.array([55., 0.9]), jnp.array([50., 1.]),
    ...                              jnp.array([False, True])).round(4).tolist()
    [10.0, 10.0]
  """
  _check_nonzero(baseline, 'baseline')
  method = jnp.asarray(method, jnp.float32)
  baseline = jnp.asarray(baseline, jnp.float32)
  sign = jnp.where(jnp.asarray(lower_is_better, bool), -1.0, 1.0)
  return sign * (method - baseline) / baseline * 100.0


def task_improvements(method: jax.Array,
                      baseline: jax.Array,
                      lower_is_better: jax.Array,
                      metrics_per_task: Sequence[int] | None = None
                      ) -> jax.Array:
  """``ΔT_i`` of Chai et al. (2022), Eq. (20), for every task, in percent.

  ``ΔT_i = (1/m_i) Σ_{j ∈ task i} (-1)^{l_j} (M_{T_i,j} - M_{STL,j}) /
  M_{STL,j} · 100%``: the mean of :func:`relative_improvement` over the
  ``m_i`` metrics of task ``i``.

  Args:
    method: ``[..., M]`` metric values of the method, the metrics of task 0
      first, then task 1, ...
    baseline: ``[M]`` single-task baseline values (no zero entry).
    lower_is_better: ``[M]`` bools.
    metrics_per_task: static ``(m_1, ..., m_T)`` with ``Σ m_i = M``;
      ``None``: one metric per task.

  Returns:
    ``[..., T]`` float32 percentages.
  """
  r = relative_improvement(method, baseline, lower_is_better)
  m = r.shape[-1]
  if metrics_per_task is None:
    return r
  counts = [int(c) for c in metrics_per_task]
  if sum(counts) != m or min(counts, default=0) < 1:
    raise ValueError(f'metrics_per_task {tuple(counts)} must be positive and '
                     f'sum to the number of metrics {m}.')
  bounds = np.cumsum([0] + counts)
  return jnp.stack([jnp.mean(r[..., s:e], axis=-1)
                    for s, e in zip(bounds[:-1], bounds[1:])], axis=-1)


def delta_mtl(method: jax.Array,
              baseline: jax.Array,
              lower_is_better: jax.Array,
              metrics_per_task: Sequence[int] | None = None) -> jax.Array:
  """Δ_MTL of Chai et al. (2022), Eqs. (20)-(21), in percent.

  Eq. (20): ``ΔT_i = (1/m) Σ_j (-1)^{l_j} (M_{T_i,j} - M_{STL,j}) /
  M_{STL,j} · 100%`` over the ``m`` metrics of task ``i`` (``l_j = 1`` when
  lower is better); Eq. (21): ``Δ_MTL = (1/T) Σ_i ΔT_i``. The mean is over
  the metrics of each task, *then* over tasks (not over all metrics at once:
  a task with five metrics weighs as much as a task with two).

  Args:
    method: ``[..., M]`` metric values of the method (a leading axis for
      several methods at once), grouped by task in order.
    baseline: ``[M]`` single-task baseline values (no zero entry; checked when
      not traced, under jit a zero gives ±inf).
    lower_is_better: ``[M]`` bools.
    metrics_per_task: static ``(m_1, ..., m_T)``, summing to ``M``; ``None``
      means one metric per task (Taskonomy, CelebA).

  Returns:
    ``[...]`` float32 percentages; positive is better than the baseline.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> # task 1: mIoU 44 vs 40 (+10%);
    >>> # task 2: error 0.9 vs 1.0 (+10%), accuracy 0.6 vs 0.5 (+20%)
    >>> method, stl = jnp.array([44., 0.9, 0.6]), jnp.array([40., 1., 0.5])
    >>> lower = jnp.array([False, True, False])
    >>> d = metrics.delta_mtl(method, stl, lower, metrics_per_task=(1, 2))
    >>> round(float(d), 4)  # (10 + (10 + 20) / 2) / 2
    12.5
  """
  return jnp.mean(
      task_improvements(method, baseline, lower_is_better, metrics_per_task),
      axis=-1)


def growth_rate(method_errors: jax.Array,
                baseline_errors: jax.Array,
                axis: int | Sequence[int] | None = None) -> jax.Array:
  """Growth rate ``R = 1 - P_i / P`` of Senushkin et al., §5.4.

  "``R = 1 - P_i/P`` where ``P_i`` is the mean translation (orientation)
  error of a MTL method; ``P`` is the mean translation (orientation) error of
  the uniform scaling method." The means are over the scenes of the
  per-scene median errors (Table 4's "Mean" column). ``R > 0`` means lower
  error than the baseline; Table 4 prints ``100 R`` in percent.

  Args:
    method_errors: the method's errors (e.g. ``[7]`` per-scene medians, or
      ``[2, 7]`` for translation and orientation with ``axis=-1``).
    baseline_errors: the uniform-scaling errors, same shape; a zero mean is
      rejected when not traced.
    axis: axes to average over (``None``: all).

  Returns:
    float32 ``R`` (a fraction), reduced over ``axis``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import metrics
    >>> # Table 4, Z-aligned vs uniform, mean translation error: 0.34 m vs 0.79 m
    >>> round(float(metrics.growth_rate(jnp.array(0.34), jnp.array(0.79))), 4)
    0.5696
  """
  p_i = jnp.mean(jnp.asarray(method_errors, jnp.float32), axis=axis)
  p = jnp.mean(jnp.asarray(baseline_errors, jnp.float32), axis=axis)
  _check_nonzero(p, 'the mean baseline error')
  return 1.0 - p_i / p


# Whether a lower value is better, for every metric the library's metrics
# report (``count`` is not a performance metric and is never compared).
LOWER_IS_BETTER: Mapping[str, bool] = {
    # classification, segmentation
    'accuracy': False, 'miou': False, 'pixel_accuracy': False,
    # depth
    'abs_err': True, 'rel_err': True,
    'delta1': False, 'delta2': False, 'delta3': False,
    # surface normals: the mean and median angle errors, within-t° fractions
    'mean': True, 'median': True,
    'within_11_25': False, 'within_22_5': False, 'within_30': False,
    # per-pixel regression (instance offsets, disparity)
    'mae': True, 'mse': True, 'mse_up_to_scale': True,
    # camera pose
    'median_translation': True, 'median_rotation': True,
}


def _compared_metrics(task: str, method: Mapping[str, Mapping[str, float]],
                      baseline: Mapping[str, Mapping[str, float]],
                      names: Sequence[str] | None) -> list[str]:
  """The metric names of ``task`` compared by :func:`task_deltas`."""
  if task not in baseline or task not in method:
    where = 'the baseline' if task not in baseline else 'the method'
    raise ValueError(f'task {task!r} is not in {where}\'s metrics (tasks '
                     f'{sorted(method)} vs {sorted(baseline)}): give both '
                     'the same tasks, or choose the compared ones with '
                     'tasks=[...].')
  if names is None:
    names = [k for k in baseline[task] if k != 'count']
  names = list(names)
  if not names:
    raise ValueError(f'task {task!r} has no metric to compare: give them with '
                     f"metrics={{{task!r}: ['name', ...]}}.")
  for name in names:
    for what, values in (('method', method), ('baseline', baseline)):
      if name not in values[task]:
        raise ValueError(f'the {what} has no metric {name!r} for task '
                         f'{task!r} (it has {sorted(values[task])}): choose '
                         f"the compared ones with metrics={{{task!r}: "
                         "[...]}.")
  return names


def task_deltas(method: Mapping[str, Mapping[str, float]],
                baseline: Mapping[str, Mapping[str, float]], *,
                lower_is_better: Mapping[str, bool] | None = None,
                tasks: Sequence[str] | None = None,
                metrics: Mapping[str, Sequence[str]] | None = None
                ) -> dict[str, float]:
  """``ΔT_i`` of Chai et al. (2022), Eq. (20), from evaluation dicts, in %.

  The dict form of :func:`task_improvements`: ``method`` and ``baseline``
  are ``{task: {metric: value}}`` as ``training.evaluate`` returns them (the
  multi-task model's, and the single-task baselines' with task ``t`` taken
  from the model trained on ``t``). ``ΔT_i`` is the mean over task ``i``'s
  metrics of ``(-1)^{l_j} (M_j - M_{STL,j}) / M_{STL,j} · 100``.

  Args:
    method: the method's metrics, ``{task: {metric: value}}``.
    baseline: the single-task baselines', same form (no zero value).
    lower_is_better: ``{metric: bool}`` added to (and overriding)
      :data:`LOWER_IS_BETTER`; a compared metric in neither is an error.
    tasks: the tasks compared, in order (default: ``baseline``'s, without a
      multi-input evaluation's ``'average'``).
    metrics: ``{task: [metric, ...]}`` compared for those tasks (default:
      every metric of the baseline's task but ``count``).

  Returns:
    ``{task: ΔT_task}`` as Python floats; positive is better than the
    baseline.

  Raises:
    ValueError: a task or metric missing on either side, a metric whose
      direction is unknown, or a zero baseline value.

  Example:
    >>> from mtl_optax import metrics
    >>> stl = {'seg': {'miou': 0.40}, 'depth': {'abs_err': 1.0, 'count': 9}}
    >>> mtl = {'seg': {'miou': 0.44}, 'depth': {'abs_err': 0.9, 'count': 9}}
    >>> {k: round(v, 4) for k, v in metrics.task_deltas(mtl, stl).items()}
    {'seg': 10.0, 'depth': 10.0}
  """
  table = dict(LOWER_IS_BETTER)
  table.update(lower_is_better or {})
  if tasks is None:
    tasks = [t for t in baseline if t != 'average']
  tasks = list(tasks)
  if not tasks:
    raise ValueError('no task to compare: the baseline has none (or give '
                     'tasks=[...]).')
  metrics = dict(metrics or {})
  unknown_tasks = sorted(set(metrics) - set(tasks))
  if unknown_tasks:
    raise ValueError(f'metrics= names tasks {unknown_tasks} that are not '
                     f'compared (tasks {tasks}): drop them or add them to '
                     'tasks=[...].')
  result = {}
  for task in tasks:
    names = _compared_metrics(task, method, baseline, metrics.get(task))
    unknown = [n for n in names if n not in table]
    if unknown:
      raise ValueError(
          f'whether lower is better is unknown for metric(s) {unknown} of '
          f'task {task!r}: give it, e.g. lower_is_better='
          f'{{{unknown[0]!r}: True}} (lower is better) or False.')
    values = np.array([float(method[task][n]) for n in names], np.float64)
    base = np.array([float(baseline[task][n]) for n in names], np.float64)
    if np.any(base == 0):
      zero = [n for n, b in zip(names, base) if b == 0]
      raise ValueError(f'the baseline of task {task!r} is 0 for {zero}: the '
                       'relative change against it is undefined; leave them '
                       f"out with metrics={{{task!r}: [...]}}.")
    sign = np.where([table[n] for n in names], -1.0, 1.0)
    result[task] = float(np.mean(sign * (values - base) / base * 100.0))
  return result


def delta_mtl_of(method: Mapping[str, Mapping[str, float]],
                 baseline: Mapping[str, Mapping[str, float]], *,
                 lower_is_better: Mapping[str, bool] | None = None,
                 tasks: Sequence[str] | None = None,
                 metrics: Mapping[str, Sequence[str]] | None = None) -> float:
  """Δ_MTL of Chai et al. (2022), Eq. (21), from evaluation dicts, in %.

  ``Δ_MTL = (1/T) Σ_i ΔT_i`` with ``ΔT_i`` of :func:`task_deltas` (the mean
  over each task's metrics first, then over the tasks): the dict form of
  :func:`delta_mtl`. The arguments are :func:`task_deltas`'.

  Returns:
    Δ_MTL as a Python float; positive is better than the baselines.

  Example:
    >>> from mtl_optax import metrics
    >>> stl = {'a': {'accuracy': 0.5}, 'b': {'accuracy': 0.8}}
    >>> mtl = {'a': {'accuracy': 0.6}, 'b': {'accuracy': 0.8}}
    >>> round(metrics.delta_mtl_of(mtl, stl), 4)  # (20 + 0) / 2
    10.0
  """
  deltas = task_deltas(method, baseline, lower_is_better=lower_is_better,
                       tasks=tasks, metrics=metrics)
  return float(np.mean(list(deltas.values())))
