"""MultiMNIST with LeNet (Sener & Koltun 2018, App. C.1; Senushkin et al. §5.2).

The papers: SGD with momentum, batch 256, 100 epochs, the learning rate
halved every 30 epochs and chosen per method from
{1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2} on validation accuracy.
"""

from mtl_optax import training

LEARNING_RATE_GRID = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='lenet_multimnist', dataset='multi_mnist', method='aligned_mtl',
      train_split='train', eval_split='test', batch_size=256,
      optimizer='sgd', momentum=0.9, learning_rate=1e-2,
      lr_decay_epochs=(30, 60, 90), lr_decay_factor=0.5, num_epochs=100)
  return config.replace(**overrides)
