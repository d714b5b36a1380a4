"""Multi-task CIFAR-100: the 20 coarse classes as 20 five-way tasks, VGG-16
with one head per task (Chai et al. 2022 §IV-C, following PCGrad). The paper
gives Adam and no schedule for this set-up; ours: Adam 1e-3, batch 128, 100
epochs, divided by 10 after epoch 75.
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='vgg16_cifar100mt', dataset='cifar100_mt', method='mamg',
      train_split='train', eval_split='test', batch_size=128,
      optimizer='adam', learning_rate=1e-3, lr_decay_epochs=(75,),
      num_epochs=100)
  return config.replace(**overrides)
