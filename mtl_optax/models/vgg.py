"""VGG-16 convolutional stack with BatchNorm (Simonyan & Zisserman, 2015).

Thirteen 3×3 convolutions (with bias, as ``vgg16_bn``) each followed by
BatchNorm and ReLU, in five blocks of (64, 64), (128, 128), (256, 256, 256),
(512, 512, 512), (512, 512, 512) channels, each block ending in a 2×2 max-pool.
The ImageNet classifier (the 4096-wide FC layers) is not part of it: on the
32×32 CIFAR images the stack leaves a 1×1×512 map, returned as ``[B, 512]``
(a global average, which equals the flattened map at 32×32 and keeps other
sizes working). Multi-task CIFAR-100 (MAMG, Chai et al. 2022) puts one FC
head per coarse class on it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from flax import nnx

from mtl_optax.models import layers

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))


class VGG16(nnx.Module):
  """VGG-16-BN encoder: ``[B, H, W, C] -> [B, 8 · width]``.

  Args:
    width: channels of the first block (64 as published); block ``i`` has
      ``width · (1, 2, 4, 8, 8)[i]`` channels.
    in_features: input channels.
    pretrained: a torchvision ``vgg16_bn`` checkpoint (a ``.pth`` or
      ``.safetensors`` path, or a state dict) loaded with
      ``models.from_torchvision`` (its classifier ``classifier.*``
      skipped); None: random initialisation.
    rngs: random streams for the initialisation.

  Example:
    >>> from flax import nnx
    >>> from mtl_optax import models
    >>> enc = nnx.eval_shape(lambda: models.vgg.VGG16(rngs=nnx.Rngs(0)))
    >>> models.num_params(enc)
    14723136
  """

  def __init__(self, *, width: int = 64, in_features: int = 3,
               pretrained: str | os.PathLike | Mapping[str, Any] | None = None,
               rngs: nnx.Rngs):
    blocks = []
    in_f = in_features
    for block in VGG16_BLOCKS:
      convs = []
      for channels in block:
        out = channels * width // 64
        convs.append(layers.ConvBN(in_f, out, 3, use_bias=True, rngs=rngs))
        in_f = out
      blocks.append(nnx.List(convs))
    self.blocks = nnx.List(blocks)
    self.num_features = in_f
    if pretrained is not None:
      # pylint: disable-next=g-import-not-at-top
      from mtl_optax.models import torchvision_weights
      torchvision_weights.from_torchvision(self, pretrained,
                                           ignore=('classifier',))

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      for conv_bn in block:
        x = nnx.relu(conv_bn(x))
      x = layers.max_pool(x, 2, 2)
    return layers.global_average_pool(x)
