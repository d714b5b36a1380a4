"""NYUv2 (segmentation 13 classes, depth, normals) at 288×384.

``arch='mtan'`` (default): MTAN, Senushkin et al. 2023 supplement: Adam 1e-4,
batch 2, 200 epochs, training images "randomly scaled and cropped into
384×288" (``augment``: MTAN/CAGrad's scale {1, 1.2, 1.5} crop and
horizontal flip, ``mtl_optax.data.augment``). ``arch='aspp'``: the dilated
ResNet-34 with ASPP heads of MAMG (Chai et al. 2022 §IV-C: Adam 1e-2, batch
16, "L2 regularization (weight decay = 0.0001)", an L2 term in the gradient
as written, not a decoupled decay; the paper names no augmentation and no
epochs, so none and 200). ``tasks='seg_normals'`` gives MAMG's two-task
scenario (segmentation and normals; the paper uses NYUv2's 40-class labels,
our prepared NYUv2 holds MTAN's 13 classes). ``arch='pspnet'``: Senushkin
et al.'s other NYUv2 model (supplement, "NYUv2 three-task"): the dilated
ResNet-50 with PSPNet heads, trained as MTAN (Adam 1e-4, batch 2, 200
epochs, scale-and-crop augmentation).
"""

from mtl_optax import training

TASKS = {'all': 'nyuv2', 'seg_normals': ('segmentation', 'normals')}


def get_config(arch: str = 'mtan', tasks: str = 'all',
               **overrides) -> training.Config:
  if tasks not in TASKS:
    raise ValueError(f'tasks must be one of {sorted(TASKS)}, got {tasks!r}.')
  if arch in ('mtan', 'pspnet'):    # Senushkin et al.'s set-up for both
    if tasks != 'all':
      raise ValueError(f"arch={arch!r} trains the three tasks; tasks="
                       f"{tasks!r} is MAMG's set-up: use arch='aspp'.")
    config = training.Config(
        model={'mtan': 'mtan_segnet',
               'pspnet': 'resnet50_pspnet_cityscapes'}[arch],
        model_kwargs={'tasks': 'nyuv2'},
        dataset='nyuv2', dataset_options={'augment': True},
        method='aligned_mtl', train_split='train',
        eval_split='validation', batch_size=2, optimizer='adam',
        learning_rate=1e-4, num_epochs=200)
  elif arch == 'aspp':
    config = training.Config(
        model='resnet34_aspp_nyuv2', model_kwargs={'tasks': TASKS[tasks]},
        dataset='nyuv2', method='mamg', train_split='train',
        eval_split='validation', batch_size=16, optimizer='adam',
        learning_rate=1e-2, weight_decay=1e-4, num_epochs=200)
  else:
    raise ValueError(f"arch must be 'mtan', 'aspp' or 'pspnet', got "
                     f'{arch!r}.')
  return config.replace(**overrides)
