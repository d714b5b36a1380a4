"""Dense-prediction heads on a feature map ``z = [B, h, w, C]``.

- ``PyramidPoolingHead``: PSPNet's pyramid pooling module (Zhao et al., CVPR
  2017): the map average-pooled to ``b×b`` bins for every ``b`` in ``bins``,
  each reduced by a 1×1 convolution + BatchNorm + ReLU, upsampled back and
  concatenated with ``z``; a 3×3 convolution + BatchNorm + ReLU fuses them
  and a 1×1 convolution predicts. PSPNet's dropout (0.1) before the last
  convolution is left out (the models here are deterministic).
- ``ASPPHead``: DeepLab-v2's atrous spatial pyramid pooling as used with a
  dilated ResNet-34 by AdaShare and MAMG: for every rate ``r`` a 3×3
  convolution with dilation ``r`` (to ``hidden`` channels) → ReLU → 1×1
  (``hidden``) → ReLU → 1×1 (outputs), all with bias; the branches are
  summed. Its dropout (0.5) is left out as well.

Both upsample their prediction bilinearly (corners aligned) by ``upsample``
(the encoder's output stride), so an input whose sides are multiples of the
stride gets outputs at its own size.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl_optax.models import layers


def _upsample(x: jax.Array, factor: int) -> jax.Array:
  if factor == 1:
    return x
  h, w = x.shape[1:3]
  return layers.resize_bilinear(x, (h * factor, w * factor))


class PyramidPoolingHead(nnx.Module):
  """PSPNet head: pyramid pooling, fusion, 1×1 prediction, upsampling.

  Args:
    in_features: channels of ``z``.
    out_features: predicted channels (classes, offsets, disparity).
    bins: pooled grid sizes (PSPNet: 1, 2, 3, 6).
    pool_features: channels of each pooled branch (default
      ``in_features // len(bins)``, 512 for ResNet-50).
    features: channels of the fusion convolution (PSPNet: 512).
    upsample: output size = ``z``'s size × ``upsample``.
    rngs: random streams for the initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models import heads
    >>> def forward():  # shapes only: nnx.eval_shape computes nothing
    ...   h = heads.PyramidPoolingHead(8, 3, features=4, rngs=nnx.Rngs(0))
    ...   return h(jnp.ones((1, 2, 4, 8)))
    >>> nnx.eval_shape(forward).shape
    (1, 16, 32, 3)
  """

  def __init__(self, in_features: int, out_features: int, *,
               bins: Sequence[int] = (1, 2, 3, 6),
               pool_features: int | None = None, features: int = 512,
               upsample: int = 8, rngs: nnx.Rngs):
    pool_features = pool_features or in_features // len(bins)
    self.bins = tuple(bins)
    self.upsample = upsample
    self.branches = nnx.List([
        layers.ConvBN(in_features, pool_features, 1, rngs=rngs)
        for _ in self.bins])
    self.fuse = layers.ConvBN(in_features + len(self.bins) * pool_features,
                              features, 3, rngs=rngs)
    self.predict = layers.conv(features, out_features, 1, use_bias=True,
                               rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    size = z.shape[1:3]
    pyramid = [z]
    for b, branch in zip(self.bins, self.branches):
      pooled = nnx.relu(branch(layers.adaptive_average_pool(z, b)))
      pyramid.append(layers.resize_bilinear(pooled, size))
    y = nnx.relu(self.fuse(jnp.concatenate(pyramid, axis=-1)))
    return _upsample(self.predict(y), self.upsample)


class ASPPHead(nnx.Module):
  """DeepLab-v2 ASPP head: summed atrous branches, then upsampling.

  Args:
    in_features: channels of ``z``.
    out_features: predicted channels.
    rates: dilation rates of the branches (DeepLab-v2: 6, 12, 18, 24).
    hidden: channels inside each branch (1024 as published).
    upsample: output size = ``z``'s size × ``upsample``.
    rngs: random streams for the initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models import heads
    >>> def forward():  # shapes only: nnx.eval_shape computes nothing
    ...   h = heads.ASPPHead(8, 13, hidden=4, rngs=nnx.Rngs(0))
    ...   return h(jnp.ones((1, 2, 4, 8)))
    >>> nnx.eval_shape(forward).shape
    (1, 16, 32, 13)
  """

  def __init__(self, in_features: int, out_features: int, *,
               rates: Sequence[int] = (6, 12, 18, 24), hidden: int = 1024,
               upsample: int = 8, rngs: nnx.Rngs):
    self.upsample = upsample
    self.branches = nnx.List([
        nnx.Sequential(
            layers.conv(in_features, hidden, 3, dilation=r, use_bias=True,
                        rngs=rngs),
            nnx.relu,
            layers.conv(hidden, hidden, 1, use_bias=True, rngs=rngs),
            nnx.relu,
            layers.conv(hidden, out_features, 1, use_bias=True, rngs=rngs),
        ) for r in rates])

  def __call__(self, z: jax.Array) -> jax.Array:
    y = sum(branch(z) for branch in self.branches)
    return _upsample(y, self.upsample)
