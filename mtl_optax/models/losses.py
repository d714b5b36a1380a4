"""Per-task losses and the adapter to the ``task_losses`` convention.

The plain losses take ``(prediction, target[, mask])`` and return a float32
scalar (float64 for a float64 prediction), the mean over the valid elements (0 when none is valid; invalid
elements never reach the value or the gradient, so NaN targets there are
harmless):

- ``softmax_cross_entropy``: integer labels, ``ignore_label`` (-1) skipped;
  also the 2-way binary loss of two-logit heads (CelebA);
- ``sigmoid_binary_cross_entropy``: one logit, labels in {0, 1};
- ``l1_loss`` (optional mask), ``depth_l1_loss`` (target 0 = invalid);
- ``normal_cosine_loss``: ``1 - cos(pred, target)`` where the target normal is
  non-zero;
- ``pose_translation_loss`` / ``pose_orientation_loss``: per-example L2 (or
  L1) distance, the orientation between unit quaternions (PoseNet).

A ``task_losses`` dict maps a task to ``fn(output, batch) -> scalar``;
``target_loss(loss, key)`` makes one from a plain loss and the batch key of
its target.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

TaskLoss = Callable[[Any, Mapping[str, Any]], jax.Array]


def _loss_dtype(x) -> jnp.dtype:
  """Dtype a loss of ``x`` is computed in: float32, or float64 for float64
  ``x`` (bf16/f16 outputs widen; float64 models keep float64 gradients)."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    return jnp.dtype(jnp.float32)
  return jnp.promote_types(dtype, jnp.float32)


def _as(x, dtype) -> jax.Array:
  return jnp.asarray(x).astype(dtype)


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean of ``values`` where ``mask`` (broadcast) holds; 0 if nowhere."""
  values = _as(values, _loss_dtype(values))
  if mask is None:
    return jnp.mean(values)
  mask = jnp.broadcast_to(jnp.asarray(mask).astype(bool), values.shape)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask, dtype=values.dtype), 1.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          ignore_label: int = -1) -> jax.Array:
  """Mean softmax cross-entropy over the labels that are not ``ignore_label``.

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)`` or ``ignore_label``.
    ignore_label: label to skip (segmentation void, CIFAR-100-MT other tasks).

  Returns:
    A float32 scalar (float64 for float64 logits).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> logits = jnp.array([[0., 0.], [5., 0.]])
    >>> round(float(losses.softmax_cross_entropy(logits, jnp.array([1, -1]))), 4)
    0.6931
  """
  labels = jnp.asarray(labels)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_p = jax.nn.log_softmax(_as(logits, _loss_dtype(logits)), axis=-1)
  nll = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
  return masked_mean(nll, valid)


def sigmoid_binary_cross_entropy(logits: jax.Array,
                                 labels: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of single logits (``[...]`` or ``[..., 1]``)."""
  dtype = _loss_dtype(logits)
  logits, labels = _as(logits, dtype), _as(labels, dtype)
  if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  per = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(
      jnp.exp(-jnp.abs(logits)))
  return jnp.mean(per)


def l1_loss(pred: jax.Array, target: jax.Array,
            mask: jax.Array | None = None) -> jax.Array:
  """Mean absolute error over the valid elements.

  ``mask`` (bool or {0, 1}) is broadcast from the left-aligned leading axes:
  a ``[B, H, W]`` mask covers ``[B, H, W, C]`` predictions.
  """
  dtype = _loss_dtype(pred)
  err = jnp.abs(_as(pred, dtype) - _as(target, dtype))
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim))
  return masked_mean(err, mask)


def depth_l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """L1 depth (or disparity) error over pixels whose target is non-zero.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> float(losses.depth_l1_loss(jnp.array([1., 1.]), jnp.array([3., 0.])))
    2.0
  """
  return l1_loss(pred, target, jnp.asarray(target) != 0)


def l2_loss(pred: jax.Array, target: jax.Array,
            mask: jax.Array | None = None) -> jax.Array:
  """Mean squared error over the valid elements (``mask`` as ``l1_loss``'s).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> float(losses.l2_loss(jnp.array([1., 4.]), jnp.array([3., 0.]),
    ...                      jnp.array([True, False])))
    4.0
  """
  dtype = _loss_dtype(pred)
  diff = _as(pred, dtype) - _as(target, dtype)
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = mask.reshape(mask.shape + (1,) * (diff.ndim - mask.ndim))
  return masked_mean(diff * diff, mask)


def depth_l2_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Squared depth (or disparity) error over pixels whose target is
  non-zero: Sener & Koltun's Cityscapes disparity loss ("MSE")."""
  return l2_loss(pred, target, jnp.asarray(target) != 0)


def _norm(x: jax.Array) -> jax.Array:
  """``‖x‖`` on the last axis (keepdims), exact, with a zero gradient at 0."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(_norm(x), eps)


def normal_cosine_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """``1 - mean cos(pred, target)`` over pixels with a non-zero target normal.

  Args:
    pred: ``[..., 3]`` normals (normalised here, so any length works).
    target: ``[..., 3]``; all-zero vectors mark invalid pixels.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> t = jnp.array([[0., 0., 1.], [0., 0., 0.]])
    >>> float(losses.normal_cosine_loss(jnp.array([[0., 0., 2.], [1., 0., 0.]]), t))
    0.0
  """
  dtype = _loss_dtype(pred)
  pred, target = _as(pred, dtype), _as(target, dtype)
  valid = jnp.any(target != 0, axis=-1)
  cos = jnp.sum(_unit(pred) * _unit(target), axis=-1)
  return 1.0 - masked_mean(cos, valid)


def _distance(diff: jax.Array, norm: str) -> jax.Array:
  if norm == 'l2':
    return _norm(diff)[..., 0]
  if norm == 'l1':
    return jnp.sum(jnp.abs(diff), axis=-1)
  raise ValueError(f"norm must be 'l2' or 'l1'; got {norm!r}.")


def pose_translation_loss(pred: jax.Array, target: jax.Array, *,
                          norm: str = 'l2') -> jax.Array:
  """Mean per-example distance ``‖t̂ - t‖`` (``norm`` 'l2' or 'l1').

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> float(losses.pose_translation_loss(jnp.array([[3., 4., 0.]]), jnp.zeros((1, 3))))
    5.0
  """
  dtype = _loss_dtype(pred)
  diff = _as(pred, dtype) - _as(target, dtype)
  return jnp.mean(_distance(diff, norm))


def pose_orientation_loss(pred: jax.Array, target: jax.Array, *,
                          norm: str = 'l2') -> jax.Array:
  """Mean distance between unit quaternions, ``‖q̂/‖q̂‖ - q/‖q‖‖`` (PoseNet).

  The prediction is normalised here (the heads output raw 4-vectors); the
  sign ambiguity ``q ≡ -q`` is not folded (as PoseNet), so targets should be
  on one hemisphere.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> q = jnp.array([[1., 0., 0., 0.]])
    >>> float(losses.pose_orientation_loss(2 * q, q))
    0.0
  """
  dtype = _loss_dtype(pred)
  pred, target = _as(pred, dtype), _as(target, dtype)
  diff = _unit(pred) - _unit(target)
  return jnp.mean(_distance(diff, norm))


def target_loss(loss: Callable[..., jax.Array], key: str, *,
                mask_key: str | None = None, **kwargs) -> TaskLoss:
  """Adapts a plain loss to ``fn(output, batch)``.

  Args:
    loss: ``loss(output, target[, mask], **kwargs) -> scalar``.
    key: the batch key of the target.
    mask_key: a batch key holding a validity mask, passed as the third
      argument when the batch has it (e.g. ``'instance_mask'``).
    **kwargs: passed on to ``loss``.

  Returns:
    ``fn(output, batch) -> scalar``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import losses
    >>> fn = losses.target_loss(losses.l1_loss, 'depth', mask_key='valid')
    >>> float(fn(jnp.ones(2), {'depth': jnp.array([3., 0.]), 'valid': jnp.array([1, 0])}))
    2.0
  """

  def task_loss(output, batch):
    if mask_key is not None and mask_key in batch:
      return loss(output, batch[key], batch[mask_key], **kwargs)
    return loss(output, batch[key], **kwargs)

  return task_loss
