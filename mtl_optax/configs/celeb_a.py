"""CelebA, 40 binary attributes, ResNet-18 at 64×64 (Senushkin et al. App.
D.1: Adam 1e-3 "gradually decreased", 20 epochs, batch 256; the learning
rate is divided by 10 after epochs 10 and 15 here, our reading of
"gradually"). Accuracy on the validation split, as the paper reports.
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='resnet18_celeba', dataset='celeb_a', method='aligned_mtl',
      train_split='train', eval_split='validation', batch_size=256,
      optimizer='adam', learning_rate=1e-3, lr_decay_epochs=(10, 15),
      num_epochs=20)
  return config.replace(**overrides)
