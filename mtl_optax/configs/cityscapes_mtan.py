"""Cityscapes two-task (segmentation 7 classes, depth) at 128×256.

``arch='mtan'`` (default): MTAN (Senushkin et al. 2023 supplement, following
CAGrad: Adam 1e-4 halved after 100 of 200 epochs, batch 8; CAGrad's runs use
its ``--apply_augmentation``: scale {1, 1.2, 1.5} crop and horizontal flip,
``mtl_optax.data.augment``). ``arch='aspp'``: MAMG's set-up (Chai et al.
2022 §IV-C, the tasks "described in [MTAN]"): the dilated ResNet-34 with
ASPP heads, Adam with the backbone at 1e-2 and the heads at 1e-3
(``learning_rate_scales``), L2 weight decay 1e-4 in the gradient, batch 16;
the paper names no augmentation and no epochs (none, and 200 as MTAN's).
Its 2975/125/500 division (AdaShare's) is not pinned down by either paper;
we evaluate on the validation split. Metrics on the validation split.
"""

from mtl_optax import training


def get_config(arch: str = 'mtan', **overrides) -> training.Config:
  if arch == 'mtan':
    config = training.Config(
        model='mtan_segnet', model_kwargs={'tasks': 'cityscapes2'},
        dataset='cityscapes_mtan',
        dataset_options={'config': '128x256', 'augment': True},
        method='aligned_mtl', train_split='train',
        eval_split='validation', batch_size=8, optimizer='adam',
        learning_rate=1e-4, lr_decay_epochs=(100,), lr_decay_factor=0.5,
        num_epochs=200)
  elif arch == 'aspp':
    config = training.Config(
        model='resnet34_aspp_nyuv2', model_kwargs={'tasks': 'cityscapes2'},
        dataset='cityscapes_mtan', dataset_options={'config': '128x256'},
        method='mamg', train_split='train', eval_split='validation',
        batch_size=16, optimizer='adam', learning_rate=1e-2,
        learning_rate_scales={'heads': 0.1}, weight_decay=1e-4,
        num_epochs=200)
  else:
    raise ValueError(f"arch must be 'mtan' or 'aspp', got {arch!r}.")
  return config.replace(**overrides)
