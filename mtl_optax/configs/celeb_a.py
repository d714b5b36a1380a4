"""CelebA, 40 binary attributes, ResNet-18 at 64×64.

``protocol='aligned_mtl'`` (default): Senushkin et al. App. D.1: Adam 1e-3
"gradually decreased", 20 epochs, batch 256; the learning rate is divided
by 10 after epochs 10 and 15 here, our reading of "gradually"; the global
average pool (512 features). Accuracy on the validation split, as the paper
reports.

``protocol='sener_koltun'``: Sener & Koltun's App. C.2: 40 heads of
2048 × 2 (``pool='sener_koltun'``: the 8×8 map averaged over 4×4 tiles),
SGD with momentum (0.9, our assumption: the paper gives none), batch 256,
100 epochs with the rate halved every 30, the rate chosen from {1e-4, ...,
5e-2} on the validation split (``learning_rate`` here is a placeholder:
give the chosen one); the test split's accuracies are reported
(``extra_eval_splits``).
"""

from mtl_optax import training

PROTOCOLS = ('aligned_mtl', 'sener_koltun')


def get_config(protocol: str = 'aligned_mtl', **overrides) -> training.Config:
  if protocol == 'aligned_mtl':
    config = training.Config(
        model='resnet18_celeba', dataset='celeb_a', method='aligned_mtl',
        train_split='train', eval_split='validation', batch_size=256,
        optimizer='adam', learning_rate=1e-3, lr_decay_epochs=(10, 15),
        num_epochs=20)
  elif protocol == 'sener_koltun':
    config = training.Config(
        model='resnet18_celeba', model_kwargs={'pool': 'sener_koltun'},
        dataset='celeb_a', method='mgda', train_split='train',
        eval_split='validation', extra_eval_splits=('test',),
        batch_size=256, optimizer='sgd', momentum=0.9, learning_rate=1e-3,
        lr_decay_epochs=(30, 60, 90), lr_decay_factor=0.5, num_epochs=100)
  else:
    raise ValueError(f'protocol must be one of {PROTOCOLS}, got '
                     f'{protocol!r}.')
  return config.replace(**overrides)
