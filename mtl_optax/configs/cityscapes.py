"""Cityscapes three-task (segmentation 19 classes, instance offsets,
disparity) at 256×512 with a dilated ResNet-50 and PSPNet heads
(Senushkin et al. 2023 supplement, following MGDA-UB: Adam 1e-4, batch 8,
100 epochs; training images augmented "using random rotation and horizontal
flips": MGDA-UB's ±10° and p = ½, ``mtl_optax.data.augment``). Metrics on
the validation split, the disparity's MSE (and MSE up to scale) among them.
Their hyper-parameter search holds out 275 random training images:
``train_split='train@rest275', eval_split='train@holdout275'``.

``protocol='sener_koltun'``: Sener & Koltun's own (NeurIPS 2018, App. C.3):
cross-entropy for segmentation and squared errors for disparity and instance
offsets (``loss_kwargs={'regression': 'mse'}``), SGD with momentum (0.9,
our assumption: the paper gives none), batch 8, 250 epochs with the rate
halved every 30, the rate chosen from {1e-4, ..., 5e-2} on the 275-image
hold-out (``learning_rate`` here is a placeholder: give the chosen one), an
ImageNet-initialised encoder (``model_kwargs={'pretrained': PATH}``).
"""

from mtl_optax import training


PROTOCOLS = ('aligned_mtl', 'sener_koltun')


def get_config(protocol: str = 'aligned_mtl', **overrides) -> training.Config:
  if protocol == 'aligned_mtl':
    config = training.Config(
        model='resnet50_pspnet_cityscapes', dataset='cityscapes',
        dataset_options={'augment': True}, method='aligned_mtl',
        train_split='train', eval_split='validation',
        batch_size=8, optimizer='adam', learning_rate=1e-4, num_epochs=100)
  elif protocol == 'sener_koltun':
    config = training.Config(
        model='resnet50_pspnet_cityscapes', dataset='cityscapes',
        dataset_options={'augment': True}, method='mgda',
        loss_kwargs={'regression': 'mse'}, train_split='train',
        eval_split='validation', batch_size=8, optimizer='sgd',
        momentum=0.9, learning_rate=1e-3,
        lr_decay_epochs=tuple(range(30, 250, 30)), lr_decay_factor=0.5,
        num_epochs=250)
  else:
    raise ValueError(f'protocol must be one of {PROTOCOLS}, got '
                     f'{protocol!r}.')
  return config.replace(**overrides)
