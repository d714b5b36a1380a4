"""7-Scenes camera relocalisation, ResNet-34 with translation and
orientation heads (Senushkin et al. App. D.2: Adam 1e-3 divided by 10 every
40 epochs, batch 128, 120 epochs; one model per scene; "trained on random
crops of 224×224 and evaluated on central crops" of frames with the shorter
side 256: ``frames='full'`` reads the ``{scene}_full`` builder configs,
prepared with ``--config chess_full`` etc.).
"""

from mtl_optax import training


def get_config(scene: str = 'chess', **overrides) -> training.Config:
  config = training.Config(
      model='resnet34_7scenes', dataset='seven_scenes',
      dataset_options={'scene': scene, 'frames': 'full', 'augment': True},
      method='aligned_mtl',
      train_split='train', eval_split='test', batch_size=128,
      optimizer='adam', learning_rate=1e-3, lr_decay_epochs=(40, 80),
      num_epochs=120)
  return config.replace(**overrides)
