"""NYUv2 three-task (segmentation 13 classes, depth, normals) at 288×384.

``arch='mtan'`` (default): MTAN, Senushkin et al. 2023 supplement: Adam 1e-4,
batch 2, 200 epochs, training images "randomly scaled and cropped into
384×288" (``augment``: MTAN/CAGrad's scale {1, 1.2, 1.5} crop and
horizontal flip, ``mtl_optax.data.augment``). ``arch='aspp'``: the dilated
ResNet-34 with ASPP heads of MAMG (Chai et al. 2022 §IV-C: Adam 1e-2, batch
16, weight decay 1e-4; the paper names no augmentation, so none).
"""

from mtl_optax import training


def get_config(arch: str = 'mtan', **overrides) -> training.Config:
  if arch == 'mtan':
    config = training.Config(
        model='mtan_segnet', model_kwargs={'tasks': 'nyuv2'},
        dataset='nyuv2', dataset_options={'augment': True},
        method='aligned_mtl', train_split='train',
        eval_split='validation', batch_size=2, optimizer='adam',
        learning_rate=1e-4, num_epochs=200)
  elif arch == 'aspp':
    config = training.Config(
        model='resnet34_aspp_nyuv2', dataset='nyuv2', method='mamg',
        train_split='train', eval_split='validation', batch_size=16,
        optimizer='adamw', learning_rate=1e-2, weight_decay=1e-4,
        num_epochs=200)
  else:
    raise ValueError(f"arch must be 'mtan' or 'aspp', got {arch!r}.")
  return config.replace(**overrides)
