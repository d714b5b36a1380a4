"""Office-Home (multi-input: the domains Art, Clipart, Product and
Real_World are four 65-way tasks, each with its own images), ResNet-18 with
one classifier per domain: LibMTL's set-up, as ``office31`` (Adam 1e-4,
weight decay 1e-5, batch 64 per domain, 100 epochs, 224×224; the same
assumptions: no ImageNet weights unless ``model_kwargs['pretrained']``
names a torchvision checkpoint, L2 weight decay, an epoch one pass over the
largest domain, our seeded 60/20/20 split).
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='resnet18_office', model_kwargs={'tasks': 'office_home'},
      dataset='office_home', method='aligned_mtl', multi_input=True,
      train_split='train', eval_split='validation',
      extra_eval_splits=('test',), batch_size=64,
      optimizer='adam', learning_rate=1e-4, weight_decay=1e-5,
      num_epochs=100)
  return config.replace(**overrides)
