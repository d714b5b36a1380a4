"""Cityscapes three-task (segmentation 19 classes, instance offsets,
disparity) at 256×512 with a dilated ResNet-50 and PSPNet heads
(Senushkin et al. 2023 supplement, following MGDA-UB: Adam 1e-4, batch 8,
100 epochs; training images augmented "using random rotation and horizontal
flips": MGDA-UB's ±10° and p = ½, ``mtl_optax.data.augment``). Metrics on
the validation split, the disparity's MSE (and MSE up to scale) among them.
Their hyper-parameter search holds out 275 random training images:
``train_split='train@rest275', eval_split='train@holdout275'``.
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='resnet50_pspnet_cityscapes', dataset='cityscapes',
      dataset_options={'augment': True}, method='aligned_mtl',
      train_split='train', eval_split='validation',
      batch_size=8, optimizer='adam', learning_rate=1e-4, num_epochs=100)
  return config.replace(**overrides)
