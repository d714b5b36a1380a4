"""The model zoo by name: the benchmarks' architectures and their losses.

==============================  ============  =========  =====================================
name                            dataset       input      tasks (outputs)
==============================  ============  =========  =====================================
``lenet_multimnist``            multi_mnist   28×28×1    left, right (10 logits)
``resnet18_celeba``             celeb_a       64×64×3    40 attributes (2 logits each)
``resnet34_7scenes``            seven_scenes  224×224×3  translation (3), orientation (4)
``resnet50_pspnet_cityscapes``  cityscapes    256×512×3  segmentation (19), instance (2),
                                                         depth (1), at the input size
``resnet34_aspp_nyuv2``         nyuv2         288×384×3  segmentation (13), depth (1),
                                                         normals (3, unit length)
``mtan_segnet``                 nyuv2 or      288×384×3  ``tasks='nyuv2'``: as above;
                                cityscapes    128×256×3  ``'cityscapes2'``: segmentation (7),
                                                         depth (1)
``vgg16_cifar100mt``            cifar100_mt   32×32×3    20 coarse classes (5 logits each)
``resnet18_office``             office31 or   224×224×3  one task per domain (31 or 65 logits),
                                office_home              multi-input: each domain its own images
``{arch}_mlp``                  multi_mnist   28×28×1    left, right (10 logits)
``{arch}_resnet18_celeba``      celeb_a       64×64×3    40 attributes (2 logits each)
==============================  ============  =========  =====================================

``{arch}`` is one of the multi-task architectures of
``mtl_optax.models.architectures``: ``hps`` (hard parameter sharing),
``cross_stitch``, ``mmoe``, ``cgc``, ``ple``, ``dselectk``, ``ltb``
(Learning to Branch), over an MLP (``hidden=(256, 128)``) or the zoo's
ResNet-18 blocks (``width``); their other keywords (``num_experts``, ``k``,
``num_levels``, ``nodes``, ...) go to the architecture's factory. Only the
``hps_*`` models have a single shared representation (the representation
level); the others run at the parameter level.

Every model takes ``width`` (64 as published; smaller for tests and quick
runs) and ``rngs`` (an ``nnx.Rngs`` or an int seed). ``default_task_losses``
gives each entry's ``task_losses`` for the batch convention
``{'image': ..., <task>: target, ...}`` (see ``mtl_optax.models.losses``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
from flax import nnx

from mtl_optax.data.task_names import CELEBA_ATTRIBUTES
from mtl_optax.data.task_names import CIFAR100_COARSE_CLASSES
from mtl_optax.data.task_names import OFFICE_CLASSES
from mtl_optax.data.task_names import OFFICE_DOMAINS
from mtl_optax.models import architectures
from mtl_optax.models import base
from mtl_optax.models import heads as heads_lib
from mtl_optax.models import layers
from mtl_optax.models import lenet
from mtl_optax.models import losses
from mtl_optax.models import mtan
from mtl_optax.models import resnet as resnet_lib
from mtl_optax.models import torchvision_weights
from mtl_optax.models import vgg

# A torchvision checkpoint: a path (.pth, .safetensors) or a state dict.
Pretrained = str | os.PathLike | Mapping[str, Any] | None

MULTI_MNIST_TASKS = ('left', 'right')
SEVEN_SCENES_TASKS = ('translation', 'orientation')
CITYSCAPES_TASKS = ('segmentation', 'instance', 'depth')
NYUV2_TASKS = ('segmentation', 'depth', 'normals')


def _rngs(rngs: nnx.Rngs | int) -> nnx.Rngs:
  return nnx.Rngs(rngs) if isinstance(rngs, int) else rngs


# -- models -------------------------------------------------------------------


def lenet_multimnist(*, rngs: nnx.Rngs | int = 0,
                     input_shape: tuple[int, int, int] = (28, 28, 1),
                     num_classes: int = 10, features: int = 50,
                     init: str = 'flax', dropout: float = 0.0,
                     head_hidden: int | None = None) -> base.MultiTaskModel:
  """LeNet encoder (FC 50) with an FC-10 head per digit (left, right);
  ``init='pytorch'``: PyTorch's default initialisation of every layer;
  ``dropout=0.5, head_hidden=50``: Sener & Koltun's regularised variant
  (channel dropout after the second convolution, heads FC 50 → ReLU →
  dropout → FC 10; see ``mtl_optax.models.lenet``)."""
  rngs = _rngs(rngs)
  encoder = lenet.LeNet(input_shape=input_shape, features=features,
                        init=init, dropout=dropout, rngs=rngs)
  return base.MultiTaskModel(encoder, {
      t: lenet.task_head(features, num_classes, hidden=head_hidden,
                         dropout=dropout if head_hidden else 0.0, init=init,
                         rngs=rngs)
      for t in MULTI_MNIST_TASKS})


class WindowPooledEncoder(nnx.Module):
  """An encoder's feature map average-pooled over ``window × window`` tiles
  and flattened: Sener & Koltun's CelebA representation (4×4 tiles of the
  8×8×512 map of a 64×64 image: 2×2×512 = 2048 features).

  Attributes:
    num_features: the flattened size, ``(H/window)·(W/window)·C`` for the
      ``input_shape`` given.
  """

  def __init__(self, backbone: nnx.Module, *, window: int,
               map_shape: tuple[int, int, int]):
    h, w, c = map_shape
    if h % window or w % window:
      raise ValueError(f'the {h}×{w} feature map does not tile into '
                       f'{window}×{window} windows; use input sides that '
                       f'are multiples of {8 * window}.')
    self.backbone = backbone
    self.window = window
    self.num_features = (h // window) * (w // window) * c

  def __call__(self, x: jax.Array) -> jax.Array:
    fmap = self.backbone(x)
    b, h, w, c = fmap.shape
    k = self.window
    tiles = fmap.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))
    return tiles.reshape(b, -1)


CELEBA_POOLS = ('global', 'sener_koltun')


def resnet18_celeba(*, rngs: nnx.Rngs | int = 0,
                    tasks: Sequence[str] = CELEBA_ATTRIBUTES,
                    num_classes: int = 2, width: int = 64,
                    in_features: int = 3, pool: str = 'global',
                    input_size: int = 64) -> base.MultiTaskModel:
  """ResNet-18 (3×3 stride-1 stem, no max-pool), pooled; an FC-2 per attribute.

  ``pool='global'``: the global average (512 features), as Aligned-MTL's
  Table 7. ``pool='sener_koltun'``: Sener & Koltun's 2048-wide
  representation (App. C.2, "40 separate 2048 × 2 ... layers"): the 8×8
  map of a 64×64 image averaged over 4×4 tiles, 2×2×512
  (``WindowPooledEncoder``; ``input_size`` gives the map's size).
  """
  if pool not in CELEBA_POOLS:
    raise ValueError(f'pool must be one of {CELEBA_POOLS}, got {pool!r}.')
  rngs = _rngs(rngs)
  encoder = resnet_lib.resnet(depth=18, stem='cifar', width=width,
                              in_features=in_features,
                              global_pool=pool == 'global', rngs=rngs)
  if pool == 'sener_koltun':
    side = input_size // 8          # three stride-2 stages after the stem
    encoder = WindowPooledEncoder(
        encoder, window=4, map_shape=(side, side, encoder.num_features))
  return base.MultiTaskModel(encoder, {
      t: nnx.Linear(encoder.num_features, num_classes, rngs=rngs)
      for t in tasks})


def resnet34_7scenes(*, rngs: nnx.Rngs | int = 0, width: int = 64,
                     in_features: int = 3,
                     pretrained: Pretrained = None) -> base.MultiTaskModel:
  """ResNet-34 (7×7/2 stem + max-pool), pooled; FC 3 (translation) and FC 4
  (orientation, a raw quaternion: normalise it for use). ``pretrained``: a
  torchvision ``resnet34`` checkpoint for the encoder (see
  ``models.from_torchvision``)."""
  rngs = _rngs(rngs)
  encoder = resnet_lib.resnet(depth=34, width=width, in_features=in_features,
                              pretrained=pretrained, rngs=rngs)
  return base.MultiTaskModel(encoder, {
      'translation': nnx.Linear(encoder.num_features, 3, rngs=rngs),
      'orientation': nnx.Linear(encoder.num_features, 4, rngs=rngs)})


_PSP_TASK_SETS = {
    'cityscapes': {'segmentation': 19, 'instance': 2, 'depth': 1},
    'nyuv2': {'segmentation': 13, 'depth': 1, 'normals': 3},
}


def resnet50_pspnet_cityscapes(*, rngs: nnx.Rngs | int = 0,
                               num_classes: int | None = None,
                               tasks: str = 'cityscapes', width: int = 64,
                               bins: Sequence[int] = (1, 2, 3, 6),
                               pool_features: int | None = None,
                               features: int | None = None,
                               in_features: int = 3,
                               dilation_style: str = 'torchvision',
                               pretrained: Pretrained = None
                               ) -> base.MultiTaskModel:
  """Dilated ResNet-50 (output stride 8) and a PSPNet head per task.

  Outputs at the input size (sides must be multiples of 8), for
  ``tasks='cityscapes'``: segmentation logits (``num_classes``, 19), instance
  centre offsets (2), disparity (1); ``tasks='nyuv2'`` (Senushkin et al.'s
  PSPNet on NYUv2): segmentation (13), depth (1), unit normals (3).
  ``features`` (fusion channels) defaults to ``8 · width`` (512) and
  ``pool_features`` to a quarter of the encoder's channels (512).
  ``dilation_style='torchvision'``: the dilated ResNet of MGDA-UB's code
  (CSAIL's, torchvision's ``replace_stride_with_dilation``); ``pretrained``:
  a torchvision ``resnet50`` checkpoint for the encoder (003 initialises it
  on ImageNet).
  """
  if tasks not in _PSP_TASK_SETS:
    raise ValueError(f'tasks must be one of {sorted(_PSP_TASK_SETS)}, got '
                     f'{tasks!r}.')
  rngs = _rngs(rngs)
  encoder = resnet_lib.resnet(depth=50, width=width, output_stride=8,
                              global_pool=False, in_features=in_features,
                              dilation_style=dilation_style,
                              pretrained=pretrained, rngs=rngs)
  features = 8 * width if features is None else features
  outputs = dict(_PSP_TASK_SETS[tasks])
  if num_classes is not None:
    outputs['segmentation'] = num_classes

  def head(task, out):
    psp = heads_lib.PyramidPoolingHead(
        encoder.num_features, out, bins=bins, pool_features=pool_features,
        features=features, upsample=encoder.output_stride, rngs=rngs)
    return layers.UnitNormalized(psp) if task == 'normals' else psp

  return base.MultiTaskModel(encoder, {t: head(t, out)
                                       for t, out in outputs.items()})


def resnet34_aspp_nyuv2(*, rngs: nnx.Rngs | int = 0,
                        num_classes: int | None = None,
                        tasks: str | Sequence[str] = 'nyuv2',
                        width: int = 64, rates: Sequence[int] = (6, 12, 18, 24),
                        hidden: int | None = None,
                        in_features: int = 3,
                        dilation_style: str = 'deeplab',
                        pretrained: Pretrained = None
                        ) -> base.MultiTaskModel:
  """Dilated ResNet-34 (output stride 8) and a DeepLab-v2 ASPP head per task
  (the AdaShare/MAMG set-up). ``hidden`` defaults to ``16 · width`` (1024).
  ``dilation_style='deeplab'`` dilates every block of a stage (AdaShare's
  convention); ``pretrained``: a torchvision ``resnet34`` checkpoint.

  Outputs at the input size (sides multiples of 8): segmentation logits
  (``num_classes``, default the task set's), depth (1), unit normals (3).
  ``tasks``: ``'nyuv2'`` (those three, 13 classes), ``'cityscapes2'``
  (segmentation with 7 classes and depth: MAMG's Cityscapes) or a sequence
  of those task names (e.g. ``('segmentation', 'normals')``, MAMG's NYUv2
  two-task set-up).
  """
  if isinstance(tasks, str):
    if tasks not in mtan.TASK_SETS:
      raise ValueError(f'tasks must be one of {sorted(mtan.TASK_SETS)} or '
                       f'task names, got {tasks!r}.')
    classes = mtan.TASK_SETS[tasks]['segmentation']
    tasks = tuple(mtan.TASK_SETS[tasks])
  else:
    classes = 13
    tasks = tuple(tasks)
    unknown = set(tasks) - {'segmentation', 'depth', 'normals'}
    if unknown or not tasks:
      raise ValueError(f'tasks are among segmentation, depth and normals; '
                       f'got {tasks!r}.')
  num_classes = classes if num_classes is None else num_classes
  rngs = _rngs(rngs)
  encoder = resnet_lib.resnet(depth=34, width=width, output_stride=8,
                              global_pool=False, in_features=in_features,
                              dilation_style=dilation_style,
                              pretrained=pretrained, rngs=rngs)
  hidden = 16 * width if hidden is None else hidden

  def head(out):
    return heads_lib.ASPPHead(encoder.num_features, out, rates=rates,
                              hidden=hidden, upsample=encoder.output_stride,
                              rngs=rngs)

  make = {'segmentation': lambda: head(num_classes), 'depth': lambda: head(1),
          'normals': lambda: layers.UnitNormalized(head(3))}
  return base.MultiTaskModel(encoder, {t: make[t]() for t in tasks})


def mtan_segnet(*, rngs: nnx.Rngs | int = 0,
                tasks: str | Mapping[str, int] = 'nyuv2',
                num_classes: int | None = None, width: int = 64,
                filters: Sequence[int] | None = None,
                in_features: int = 3,
                pretrained: Pretrained = None) -> base.MultiTaskModel:
  """MTAN SegNet (see ``mtl_optax.models.mtan``); ``tasks='nyuv2'`` or
  ``'cityscapes2'``. ``filters`` defaults to ``(64, 128, 256, 512, 512)``
  scaled by ``width / 64``; ``pretrained``: a torchvision ``vgg16_bn``
  checkpoint for the encoder half (its classifier is skipped)."""
  if filters is None:
    filters = tuple(f * width // 64 for f in mtan.FILTERS)
  model = mtan.mtan_segnet(tasks=dict(tasks) if not isinstance(tasks, str)
                           else tasks, num_classes=num_classes,
                           filters=filters, in_features=in_features,
                           rngs=_rngs(rngs))
  if pretrained is not None:
    torchvision_weights.from_torchvision(model, pretrained,
                                         ignore=('classifier',))
  return model


def vgg16_cifar100mt(*, rngs: nnx.Rngs | int = 0,
                     tasks: Sequence[str] = CIFAR100_COARSE_CLASSES,
                     num_classes: int = 5, width: int = 64,
                     in_features: int = 3,
                     pretrained: Pretrained = None) -> base.MultiTaskModel:
  """VGG-16-BN convolutional stack; an FC-5 head per CIFAR-100 coarse class.
  ``pretrained``: a torchvision ``vgg16_bn`` checkpoint for the stack."""
  rngs = _rngs(rngs)
  encoder = vgg.VGG16(width=width, in_features=in_features,
                      pretrained=pretrained, rngs=rngs)
  return base.MultiTaskModel(encoder, {
      t: nnx.Linear(encoder.num_features, num_classes, rngs=rngs)
      for t in tasks})


class OfficeEncoder(nnx.Module):
  """LibMTL's Office encoder: ImageNet standardisation, a pooled ResNet-18
  (7×7 stem) and a hidden FC + BatchNorm + ReLU + dropout (``hidden=None``:
  none), as LibMTL's (dropout 0.5; ``dropout=0``: none). Its FC is
  initialised as LibMTL's: weights N(0, 0.005²), biases 0.1.

  Attributes:
    num_features: size of the representation ``z`` (``hidden``, or 512).
  """

  def __init__(self, *, width: int = 64, hidden: int | None = 512,
               standardize: bool = True, in_features: int = 3,
               dropout: float = 0.5, pretrained: Pretrained = None,
               rngs: nnx.Rngs):
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout!r}: the '
                       'probability of zeroing a unit (0: no dropout).')
    self.standardize = layers.Standardize() if standardize else None
    self.resnet = resnet_lib.resnet(depth=18, width=width,
                                    in_features=in_features,
                                    pretrained=pretrained, rngs=rngs)
    if hidden:
      self.hidden = nnx.Linear(
          self.resnet.num_features, hidden, rngs=rngs,
          kernel_init=nnx.initializers.normal(0.005),
          bias_init=nnx.initializers.constant(0.1))
      self.norm = layers.batch_norm(hidden, rngs=rngs)
      self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    else:
      self.hidden = self.norm = self.dropout = None
    self.num_features = hidden or self.resnet.num_features

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.standardize is not None:
      x = self.standardize(x)
    z = self.resnet(x)
    if self.hidden is not None:
      z = nnx.relu(self.norm(self.hidden(z)))
      if self.dropout is not None:
        z = self.dropout(z)
    return z


def _office_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
  if isinstance(tasks, str):
    if tasks not in OFFICE_DOMAINS:
      raise ValueError(f'tasks must be {" or ".join(map(repr, OFFICE_DOMAINS))}'
                       f' or a sequence of task names, got {tasks!r}.')
    return OFFICE_DOMAINS[tasks]
  return tuple(tasks)


def resnet18_office(*, rngs: nnx.Rngs | int = 0,
                    tasks: str | Sequence[str] = 'office31',
                    num_classes: int | None = None, width: int = 64,
                    hidden: int | None = 512, standardize: bool = True,
                    in_features: int = 3, dropout: float = 0.5,
                    pretrained: Pretrained = None) -> base.MultiTaskModel:
  """LibMTL's Office-31 / Office-Home network: a shared ``OfficeEncoder``
  (pooled ResNet-18 + FC 512 + BatchNorm + ReLU + dropout ``dropout``, 0.5
  as LibMTL's) and one linear classifier
  per domain (PyTorch's default initialisation, as LibMTL's ``nn.Linear``).

  A multi-input model: domain ``t``'s head classifies domain ``t``'s images
  (train with ``multi_input`` batches, ``{domain: batch}``). ``tasks``:
  ``'office31'`` (amazon, dslr, webcam; 31 classes) or ``'office_home'``
  (Art, Clipart, Product, Real_World; 65 classes), or your own task names
  (then give ``num_classes``). ``pretrained``: a torchvision ``resnet18``
  checkpoint for the ResNet (LibMTL starts from ImageNet weights);
  ``standardize`` applies ImageNet's mean/std to the [0, 1] images, as
  LibMTL's ``Normalize``.
  """
  rngs = _rngs(rngs)
  if num_classes is None:
    if not isinstance(tasks, str):
      raise ValueError('num_classes is needed with your own task names; '
                       "tasks='office31' or 'office_home' implies it.")
    num_classes = OFFICE_CLASSES[tasks]
  tasks = _office_tasks(tasks)
  encoder = OfficeEncoder(width=width, hidden=hidden, standardize=standardize,
                          in_features=in_features, dropout=dropout,
                          pretrained=pretrained, rngs=rngs)
  return base.MultiTaskModel(encoder, {
      t: nnx.Linear(encoder.num_features, num_classes, rngs=rngs,
                    **layers.torch_default_init(encoder.num_features))
      for t in tasks})


# -- losses -------------------------------------------------------------------

_DENSE_LOSSES: dict[str, losses.TaskLoss] = {
    'segmentation': losses.target_loss(losses.softmax_cross_entropy,
                                       'segmentation'),
    'depth': losses.target_loss(losses.depth_l1_loss, 'depth'),
    'normals': losses.target_loss(losses.normal_cosine_loss, 'normals'),
    'instance': losses.target_loss(losses.l1_loss, 'instance',
                                   mask_key='instance_mask'),
}


def _classification_losses(default_tasks):
  def build(*, tasks: Sequence[str] = default_tasks, **_):
    return {t: losses.target_loss(losses.softmax_cross_entropy, t)
            for t in tasks}
  return build


# ``regression='mse'``: squared errors for depth/disparity and instance
# offsets (Sener & Koltun's Cityscapes losses) instead of L1.
_MSE_LOSSES: dict[str, losses.TaskLoss] = {
    'depth': losses.target_loss(losses.depth_l2_loss, 'depth'),
    'instance': losses.target_loss(losses.l2_loss, 'instance',
                                   mask_key='instance_mask'),
}
REGRESSION_LOSSES = ('l1', 'mse')


def _dense_losses(default_tasks):
  def build(*, tasks: str | Mapping[str, int] | Sequence[str] = default_tasks,
            regression: str = 'l1', **_):
    if regression not in REGRESSION_LOSSES:
      raise ValueError(f'regression must be one of {REGRESSION_LOSSES}, got '
                       f"{regression!r}: 'mse' for squared depth and "
                       'instance errors (Sener & Koltun), \'l1\' otherwise.')
    if isinstance(tasks, str):
      tasks = {**_PSP_TASK_SETS, **mtan.TASK_SETS}[tasks]
    table = dict(_DENSE_LOSSES, **(_MSE_LOSSES if regression == 'mse' else {}))
    return {t: table[t] for t in tasks}
  return build


def _pose_losses(*, norm: str = 'l2', **_):
  return {
      'translation': losses.target_loss(losses.pose_translation_loss,
                                        'translation', norm=norm),
      'orientation': losses.target_loss(losses.pose_orientation_loss,
                                        'orientation', norm=norm),
  }


def _office_losses(*, tasks: str | Sequence[str] = 'office31', **_):
  return {t: losses.target_loss(losses.softmax_cross_entropy, t)
          for t in _office_tasks(tasks)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry.

  Attributes:
    create: ``create(*, rngs, **kwargs) -> MultiTaskModel``.
    task_losses: ``task_losses(**kwargs) -> {task: fn(output, batch)}``; it
      accepts (and ignores what it does not use of) ``create``'s keywords.
    dataset: the dataset name of the data helpers.
    input_shape: the published ``(H, W, C)`` of the images.
  """
  create: Callable[..., base.MultiTaskModel]
  task_losses: Callable[..., dict[str, losses.TaskLoss]]
  dataset: str
  input_shape: tuple[int, int, int]


_REGISTRY: dict[str, ModelSpec] = {
    'lenet_multimnist': ModelSpec(
        lenet_multimnist, _classification_losses(MULTI_MNIST_TASKS),
        'multi_mnist', (28, 28, 1)),
    'resnet18_celeba': ModelSpec(
        resnet18_celeba, _classification_losses(CELEBA_ATTRIBUTES),
        'celeb_a', (64, 64, 3)),
    'resnet34_7scenes': ModelSpec(
        resnet34_7scenes, _pose_losses, 'seven_scenes', (224, 224, 3)),
    'resnet50_pspnet_cityscapes': ModelSpec(
        resnet50_pspnet_cityscapes, _dense_losses(CITYSCAPES_TASKS),
        'cityscapes', (256, 512, 3)),
    'resnet34_aspp_nyuv2': ModelSpec(
        resnet34_aspp_nyuv2, _dense_losses(NYUV2_TASKS), 'nyuv2',
        (288, 384, 3)),
    'mtan_segnet': ModelSpec(
        mtan_segnet, _dense_losses('nyuv2'), 'nyuv2', (288, 384, 3)),
    'vgg16_cifar100mt': ModelSpec(
        vgg16_cifar100mt, _classification_losses(CIFAR100_COARSE_CLASSES),
        'cifar100_mt', (32, 32, 3)),
    'resnet18_office': ModelSpec(
        resnet18_office, _office_losses, 'office31', (224, 224, 3)),
}
for _arch in architectures.ARCHITECTURES:
  _REGISTRY[f'{_arch}_mlp'] = ModelSpec(
      architectures.multimnist_factory(_arch),
      _classification_losses(MULTI_MNIST_TASKS), 'multi_mnist', (28, 28, 1))
for _arch in architectures.ARCHITECTURES:
  _REGISTRY[f'{_arch}_resnet18_celeba'] = ModelSpec(
      architectures.celeba_factory(_arch),
      _classification_losses(CELEBA_ATTRIBUTES), 'celeb_a', (64, 64, 3))


def available() -> tuple[str, ...]:
  """Names of the registered models.

  Example:
    >>> from mtl_optax import models
    >>> 'mtan_segnet' in models.available()
    True
  """
  return tuple(_REGISTRY)


def spec(name: str) -> ModelSpec:
  """The registry entry ``name`` (factory, losses, dataset, input shape)."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; available: {available()}.')
  return _REGISTRY[name]


def create(name: str, *, rngs: nnx.Rngs | int = 0,
           **kwargs: Any) -> base.MultiTaskModel:
  """Builds the registered model ``name``.

  Args:
    name: one of ``available()``.
    rngs: an ``nnx.Rngs`` or an int seed.
    **kwargs: the factory's options (``width``, ``num_classes``, ``tasks``
      ...; see the factory of the same name in this module).

  Returns:
    A ``MultiTaskModel``.

  Example:
    >>> from mtl_optax import models
    >>> models.create('lenet_multimnist').tasks
    ('left', 'right')
  """
  return spec(name).create(rngs=rngs, **kwargs)


def default_task_losses(name: str, **kwargs: Any) -> dict[str, Any]:
  """The standard ``task_losses`` of model ``name``.

  Args:
    name: one of ``available()``.
    **kwargs: the keywords given to ``create`` (``tasks`` selects the task
      set of ``mtan_segnet`` and the subsets of CelebA / CIFAR-100-MT),
      ``norm='l1'`` for L1 pose losses and ``regression='mse'`` for squared
      depth and instance errors; others are ignored.

  Returns:
    ``{task: fn(output, batch) -> scalar}``: cross-entropy (ignore label
    -1) for classification and segmentation, masked L1 for depth/disparity
    (target 0 invalid) and instance offsets (``batch['instance_mask']``
    when present), cosine loss for normals, L2 distances for the pose.

  Example:
    >>> from mtl_optax import models
    >>> sorted(models.default_task_losses('mtan_segnet', tasks='cityscapes2'))
    ['depth', 'segmentation']
  """
  return spec(name).task_losses(**kwargs)
