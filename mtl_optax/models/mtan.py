"""MTAN: SegNet with task attention (Liu, Johns & Davison, CVPR 2019).

The shared network is a SegNet: five encoder levels with ``filters = (64,
128, 256, 512, 512)`` channels (3×3 convolution + BatchNorm + ReLU layers:
two at the first two levels, three at the others), each ending in a 2×2
max-pool that remembers its argmax, and a mirrored decoder that unpools with
those indices. Every layer has a bias (as the authors' code).

Each task has one attention module per encoder and per decoder level. A
module reads the level's first feature map (concatenated with the previous
module's output), computes a soft mask (1×1 conv + BN + ReLU, 1×1 conv + BN
+ sigmoid) and multiplies the level's last feature map with it. Between
levels, a 3×3 convolution + BN + ReLU (then a 2×2 max-pool in the encoder, a
×2 bilinear upsampling before it in the decoder) carries the attended
features on; these convolutions are *shared by all tasks*, as in the
authors' code. The prediction is a 3×3 and a 1×1 convolution on the last
decoder attention; surface normals are scaled to unit length.

In the ``MultiTaskModel`` protocol: ``encode(x)`` is the SegNet and returns
``z = SegNetFeatures`` (the 20 maps the attention modules read); each
``heads[task]`` holds the task's attention modules and prediction layers and
a reference to the one ``MTANSharedConvs`` module. ``functional`` stores the
shared convolutions once (under the alphabetically first task) and marks them
True in ``shared_mask``. The image sides must be multiples of 32.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_optax.models import base
from mtl_optax.models import layers

FILTERS = (64, 128, 256, 512, 512)

# Task sets: task -> output channels.
TASK_SETS = {
    'nyuv2': {'segmentation': 13, 'depth': 1, 'normals': 3},
    'cityscapes2': {'segmentation': 7, 'depth': 1},
}

_xavier = nnx.initializers.xavier_normal()


def _conv_layer(in_features: int, out_features: int, *, rngs: nnx.Rngs):
  """3×3 convolution (with bias) + BatchNorm + ReLU."""
  return nnx.Sequential(
      layers.ConvBN(in_features, out_features, 3, use_bias=True,
                    kernel_init=_xavier, rngs=rngs),
      nnx.relu)


def _num_layers(level: int) -> int:
  return 2 if level < 2 else 3


def _decoder_features(filters: Sequence[int], level: int) -> int:
  """Output channels of decoder level ``level`` (0 = full resolution)."""
  return filters[max(level - 1, 0)]


class SegNetFeatures(NamedTuple):
  """The shared features the attention modules read (``z`` of MTAN).

  Encoder fields are indexed by level (0 = full resolution); decoder fields
  by decoding step (0 = deepest level, 4 = full resolution).
  """
  encoder_first: tuple[jax.Array, ...]      # output of each level's 1st layer
  encoder_last: tuple[jax.Array, ...]       # output of each level (pre-pool)
  decoder_upsampled: tuple[jax.Array, ...]  # unpooled input of each step
  decoder_last: tuple[jax.Array, ...]       # output of each step


class SegNet(nnx.Module):
  """MTAN's shared network: ``[B, H, W, C] -> SegNetFeatures``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models.mtan import SegNet
    >>> def forward():  # shapes only: nnx.eval_shape computes nothing
    ...   net = SegNet(filters=(4, 4, 8, 8, 8), rngs=nnx.Rngs(0))
    ...   return net(jnp.zeros((1, 32, 64, 3)))
    >>> nnx.eval_shape(forward).decoder_last[-1].shape
    (1, 32, 64, 4)
  """

  def __init__(self, *, filters: Sequence[int] = FILTERS,
               in_features: int = 3, rngs: nnx.Rngs):
    f = tuple(filters)
    if len(f) != 5:
      raise ValueError(f'filters must have 5 entries; got {f}.')
    self.filters = f
    enc_first, enc_rest, dec_first, dec_rest = [], [], [], []
    for level in range(5):
      in_f = in_features if level == 0 else f[level - 1]
      enc_first.append(_conv_layer(in_f, f[level], rngs=rngs))
      enc_rest.append(nnx.Sequential(*[
          _conv_layer(f[level], f[level], rngs=rngs)
          for _ in range(_num_layers(level) - 1)]))
      out = _decoder_features(f, level)
      dec_first.append(_conv_layer(f[level], out, rngs=rngs))
      dec_rest.append(nnx.Sequential(*[
          _conv_layer(out, out, rngs=rngs)
          for _ in range(_num_layers(level) - 1)]))
    self.encoder_first = nnx.List(enc_first)
    self.encoder_rest = nnx.List(enc_rest)
    self.decoder_first = nnx.List(dec_first)   # indexed by level
    self.decoder_rest = nnx.List(dec_rest)

  def __call__(self, x: jax.Array) -> SegNetFeatures:
    h, w = x.shape[1:3]
    if h % 32 or w % 32:
      raise ValueError(f'MTAN SegNet needs image sides divisible by 32; got '
                       f'{h}x{w}.')
    enc_first, enc_last, argmaxes = [], [], []
    for level in range(5):
      first = self.encoder_first[level](x)
      last = self.encoder_rest[level](first)
      x, argmax = layers.max_pool_2x2_with_argmax(last)
      enc_first.append(first)
      enc_last.append(last)
      argmaxes.append(argmax)
    dec_up, dec_last = [], []
    for level in reversed(range(5)):
      up = layers.max_unpool_2x2(x, argmaxes[level])
      x = self.decoder_rest[level](self.decoder_first[level](up))
      dec_up.append(up)
      dec_last.append(x)
    return SegNetFeatures(tuple(enc_first), tuple(enc_last), tuple(dec_up),
                          tuple(dec_last))


class AttentionBlock(nnx.Module):
  """Soft mask: 1×1 conv + BN + ReLU, 1×1 conv + BN + sigmoid."""

  def __init__(self, in_features: int, features: int, *, rngs: nnx.Rngs):
    self.conv1 = layers.ConvBN(in_features, features, 1, use_bias=True,
                               kernel_init=_xavier, rngs=rngs)
    self.conv2 = layers.ConvBN(features, features, 1, use_bias=True,
                               kernel_init=_xavier, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.sigmoid(self.conv2(nnx.relu(self.conv1(x))))


class MTANSharedConvs(nnx.Module):
  """The 3×3 layers between attention modules, shared by every task."""

  def __init__(self, *, filters: Sequence[int] = FILTERS, rngs: nnx.Rngs):
    f = tuple(filters)
    self.encoder = nnx.List([
        _conv_layer(f[level], f[min(level + 1, 4)], rngs=rngs)
        for level in range(5)])
    self.decoder = nnx.List([   # indexed by level
        _conv_layer(f[level] if level < 4 else f[4],
                    _decoder_features(f, level), rngs=rngs)
        for level in range(5)])


class MTANHead(nnx.Module):
  """One task's attention network and prediction layers.

  Args:
    out_features: predicted channels.
    shared: the ``MTANSharedConvs`` every task's head refers to.
    filters: the SegNet's channels.
    rngs: random streams for the initialisation.
  """

  def __init__(self, out_features: int, *, shared: MTANSharedConvs,
               filters: Sequence[int] = FILTERS, rngs: nnx.Rngs):
    f = tuple(filters)
    self.shared = shared
    self.encoder_attention = nnx.List([
        AttentionBlock(f[0] if level == 0 else 2 * f[level], f[level],
                       rngs=rngs)
        for level in range(5)])
    self.decoder_attention = nnx.List([   # indexed by level
        AttentionBlock(f[level] + _decoder_features(f, level),
                       _decoder_features(f, level), rngs=rngs)
        for level in range(5)])
    self.predict = nnx.Sequential(
        layers.conv(f[0], f[0], 3, use_bias=True, kernel_init=_xavier,
                    rngs=rngs),
        layers.conv(f[0], out_features, 1, use_bias=True, kernel_init=_xavier,
                    rngs=rngs))

  def __call__(self, z: SegNetFeatures) -> jax.Array:
    a = None
    for level in range(5):
      inputs = z.encoder_first[level]
      if level > 0:
        inputs = jnp.concatenate([inputs, a], axis=-1)
      attended = self.encoder_attention[level](inputs) * z.encoder_last[level]
      a = layers.max_pool(self.shared.encoder[level](attended), 2, 2)
    for step, level in enumerate(reversed(range(5))):
      h, w = a.shape[1:3]
      a = layers.resize_bilinear(a, (2 * h, 2 * w), align_corners=True)
      a = self.shared.decoder[level](a)
      inputs = jnp.concatenate([z.decoder_upsampled[step], a], axis=-1)
      a = self.decoder_attention[level](inputs) * z.decoder_last[step]
    return self.predict(a)


def mtan_segnet(*, tasks: str | dict[str, int] = 'nyuv2',
                num_classes: int | None = None,
                filters: Sequence[int] = FILTERS, in_features: int = 3,
                rngs: nnx.Rngs) -> base.MultiTaskModel:
  """MTAN (SegNet with task attention) as a ``MultiTaskModel``.

  Args:
    tasks: ``'nyuv2'`` (segmentation 13, depth 1, normals 3),
      ``'cityscapes2'`` (segmentation 7, depth 1), or a dict task -> output
      channels (a task named ``'normals'`` is unit-normalised).
    num_classes: overrides the segmentation classes.
    filters: the five SegNet channel counts (64, 128, 256, 512, 512).
    in_features: image channels.
    rngs: random streams for the initialisation.

  Returns:
    The model; ``model.tasks`` in the order of ``tasks``.

  Example:
    >>> from flax import nnx
    >>> from mtl_optax.models.mtan import mtan_segnet
    >>> nnx.eval_shape(lambda: mtan_segnet(tasks='cityscapes2', rngs=nnx.Rngs(0))).tasks
    ('segmentation', 'depth')
  """
  outputs = dict(TASK_SETS[tasks]) if isinstance(tasks, str) else dict(tasks)
  if num_classes is not None:
    outputs['segmentation'] = num_classes
  encoder = SegNet(filters=filters, in_features=in_features, rngs=rngs)
  shared = MTANSharedConvs(filters=filters, rngs=rngs)
  heads = {}
  for task, out in outputs.items():
    head = MTANHead(out, shared=shared, filters=filters, rngs=rngs)
    heads[task] = layers.UnitNormalized(head) if task == 'normals' else head
  return base.MultiTaskModel(encoder, heads)
