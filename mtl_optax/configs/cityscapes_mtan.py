"""Cityscapes two-task (segmentation 7 classes, depth) at 128×256 with MTAN (Senushkin
et al. 2023 supplement, following CAGrad: Adam 1e-4 halved after 100 of 200
epochs, batch 8; CAGrad's runs use its ``--apply_augmentation``: scale
{1, 1.2, 1.5} crop and horizontal flip, ``mtl_optax.data.augment``). Metrics
on the validation split.
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='mtan_segnet', model_kwargs={'tasks': 'cityscapes2'},
      dataset='cityscapes_mtan',
      dataset_options={'config': '128x256', 'augment': True},
      method='aligned_mtl', train_split='train',
      eval_split='validation', batch_size=8, optimizer='adam',
      learning_rate=1e-4, lr_decay_epochs=(100,), lr_decay_factor=0.5,
      num_epochs=200)
  return config.replace(**overrides)
