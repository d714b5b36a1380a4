"""ResNet encoders (He et al., CVPR 2016), optionally dilated.

``resnet(depth=18 | 34 | 50 | 101, ...)`` builds the convolutional part of a
ResNet (no classifier): basic blocks for 18/34, bottlenecks for 50/101 (the
stride on the 3×3 convolution, "ResNet v1.5" as torchvision), convolutions
without bias followed by BatchNorm, 1×1 projection shortcuts where the shape
changes.

- ``stem='imagenet'``: 7×7 stride-2 convolution and a 3×3 stride-2 max-pool;
  ``stem='cifar'``: one 3×3 stride-1 convolution and no pooling (the CelebA
  ResNet-18 of Sener & Koltun at 64×64).
- ``output_stride=8`` (or 16; ImageNet stem) replaces the strides of the
  last two stages (or the last one) by dilations 2 and 4 (or 2), as in
  PSPNet and DeepLab. The map stays fully convolutional. Two conventions:
  ``dilation_style='deeplab'`` (the default): every 3×3 convolution of a
  dilated stage uses its dilation (DeepLab-v2, AdaShare's ResNet-34);
  ``'torchvision'``: the 3×3 convolution that had the stride (in a dilated
  stage's first block) keeps the previous stage's dilation, the others use
  the stage's (torchvision's ``replace_stride_with_dilation``, and CSAIL's
  ``ResnetDilated`` that MGDA-UB's Cityscapes PSPNet uses).
- ``global_pool=True`` returns the ``[B, C]`` global average; otherwise the
  ``[B, H/s, W/s, C]`` feature map.
- ``width`` is the channel count of the first stage (64 as published); the
  stages have ``width · (1, 2, 4, 8)`` (× 4 for bottlenecks) channels.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from flax import nnx

from mtl_optax.models import layers

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


class BasicBlock(nnx.Module):
  """Two 3×3 convolutions and a residual connection (ResNet-18/34).

  ``strided_dilation`` is the first (strided) convolution's dilation
  (default ``dilation``).
  """
  expansion = 1

  def __init__(self, in_features: int, features: int, *, stride: int = 1,
               dilation: int = 1, strided_dilation: int | None = None,
               rngs: nnx.Rngs):
    out = features * self.expansion
    strided_dilation = dilation if strided_dilation is None else (
        strided_dilation)
    self.conv1 = layers.ConvBN(in_features, features, 3, stride=stride,
                               dilation=strided_dilation, rngs=rngs)
    self.conv2 = layers.ConvBN(features, out, 3, dilation=dilation, rngs=rngs)
    self.shortcut = (layers.ConvBN(in_features, out, 1, stride=stride,
                                   rngs=rngs)
                     if stride != 1 or in_features != out else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.conv1(x))
    y = self.conv2(y)
    residual = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(y + residual)


class Bottleneck(nnx.Module):
  """1×1 → 3×3 (strided, dilated) → 1×1 (×4) with a residual (ResNet-50+).

  ``strided_dilation`` is the 3×3 convolution's dilation (default
  ``dilation``).
  """
  expansion = 4

  def __init__(self, in_features: int, features: int, *, stride: int = 1,
               dilation: int = 1, strided_dilation: int | None = None,
               rngs: nnx.Rngs):
    out = features * self.expansion
    strided_dilation = dilation if strided_dilation is None else (
        strided_dilation)
    self.conv1 = layers.ConvBN(in_features, features, 1, rngs=rngs)
    self.conv2 = layers.ConvBN(features, features, 3, stride=stride,
                               dilation=strided_dilation, rngs=rngs)
    self.conv3 = layers.ConvBN(features, out, 1, rngs=rngs)
    self.shortcut = (layers.ConvBN(in_features, out, 1, stride=stride,
                                   rngs=rngs)
                     if stride != 1 or in_features != out else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.conv1(x))
    y = nnx.relu(self.conv2(y))
    y = self.conv3(y)
    residual = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(y + residual)


class ResNet(nnx.Module):
  """A ResNet encoder; see the module docstring for the options.

  Attributes:
    num_features: channels of the output (512 for ResNet-18/34, 2048 for 50).
    output_stride: spatial downsampling of the feature map.
  """

  def __init__(self, *, depth: int, stem: str = 'imagenet', width: int = 64,
               output_stride: int | None = None, global_pool: bool = True,
               in_features: int = 3, dilation_style: str = 'deeplab',
               rngs: nnx.Rngs):
    if depth not in STAGE_SIZES:
      raise ValueError(f'depth must be one of {sorted(STAGE_SIZES)}; '
                       f'got {depth}.')
    if stem not in ('imagenet', 'cifar'):
      raise ValueError(f"stem must be 'imagenet' or 'cifar'; got {stem!r}.")
    if dilation_style not in ('deeplab', 'torchvision'):
      raise ValueError("dilation_style must be 'deeplab' or 'torchvision'; "
                       f'got {dilation_style!r}.')
    full_stride = 32 if stem == 'imagenet' else 8
    output_stride = full_stride if output_stride is None else output_stride
    num_dilated = {full_stride: 0, full_stride // 2: 1,
                   full_stride // 4: 2}.get(output_stride)
    if num_dilated is None:
      raise ValueError(
          f'output_stride must be {full_stride}, {full_stride // 2} or '
          f'{full_stride // 4} with the {stem!r} stem; got {output_stride}.')
    block = BasicBlock if depth < 50 else Bottleneck
    self.stem_kind = stem
    self.dilation_style = dilation_style
    self.global_pool = global_pool
    if stem == 'imagenet':
      self.stem = layers.ConvBN(in_features, width, 7, stride=2, rngs=rngs)
    else:
      self.stem = layers.ConvBN(in_features, width, 3, rngs=rngs)
    # Strides of stages 2-4; the last `num_dilated` become dilations 2, 4.
    strides = [1, 2, 2, 2]
    dilations = [1, 1, 1, 1]
    for i in range(4 - num_dilated, 4):
      strides[i] = 1
      dilations[i] = 2 ** (i - (3 - num_dilated))
    stages = []
    in_f = width
    for i, num_blocks in enumerate(STAGE_SIZES[depth]):
      features = width * 2 ** i
      blocks = []
      for b in range(num_blocks):
        strided_dilation = None
        if b == 0 and i > 0 and dilation_style == 'torchvision':
          strided_dilation = dilations[i - 1]
        blocks.append(block(in_f, features, stride=strides[i] if b == 0 else 1,
                            dilation=dilations[i],
                            strided_dilation=strided_dilation, rngs=rngs))
        in_f = features * block.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.num_features = in_f
    self.output_stride = output_stride

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem(x))
    if self.stem_kind == 'imagenet':
      x = layers.max_pool(x, 3, 2, padding=1)
    for stage in self.stages:
      for block in stage:
        x = block(x)
    return layers.global_average_pool(x) if self.global_pool else x


def resnet(*, depth: int, stem: str = 'imagenet', width: int = 64,
           output_stride: int | None = None, global_pool: bool = True,
           in_features: int = 3, dilation_style: str = 'deeplab',
           pretrained: str | os.PathLike | Mapping[str, Any] | None = None,
           rngs: nnx.Rngs) -> ResNet:
  """A ResNet encoder without the classifier.

  Args:
    depth: 18, 34, 50 or 101.
    stem: ``'imagenet'`` (7×7/2 convolution + 3×3/2 max-pool) or ``'cifar'``
      (3×3/1 convolution, no pooling).
    width: channels of the first stage (64 as published).
    output_stride: downsampling of the feature map: 32 (standard, the
      default), 16 or 8 (dilated last stages) with the ImageNet stem; 8 (the
      default), 4 or 2 with the CIFAR stem.
    global_pool: return ``[B, C]`` pooled features instead of the map.
    in_features: input channels.
    dilation_style: ``'deeplab'`` (every 3×3 convolution of a dilated stage
      dilated) or ``'torchvision'`` (the one that had the stride keeps the
      previous stage's dilation, as ``replace_stride_with_dilation``); see
      the module docstring.
    pretrained: a torchvision ResNet checkpoint (a ``.pth`` or
      ``.safetensors`` path, or a state dict) loaded into the encoder with
      ``models.from_torchvision`` (its classifier ``fc.*`` skipped); None:
      random initialisation.
    rngs: random streams for the initialisation.

  Returns:
    A ``ResNet`` module mapping ``[B, H, W, in_features]`` images to features.

  Example:
    >>> from flax import nnx
    >>> from mtl_optax import models
    >>> enc = nnx.eval_shape(lambda: models.resnet.resnet(depth=18, rngs=nnx.Rngs(0)))
    >>> models.num_params(enc), enc.num_features
    (11176512, 512)
  """
  encoder = ResNet(depth=depth, stem=stem, width=width,
                   output_stride=output_stride, global_pool=global_pool,
                   in_features=in_features, dilation_style=dilation_style,
                   rngs=rngs)
  if pretrained is not None:
    # pylint: disable-next=g-import-not-at-top
    from mtl_optax.models import torchvision_weights
    torchvision_weights.from_torchvision(encoder, pretrained, ignore=('fc',))
  return encoder
