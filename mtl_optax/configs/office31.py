"""Office-31 (multi-input: the domains amazon, dslr and webcam are three
31-way tasks, each with its own images), ResNet-18 with one classifier per
domain: LibMTL's set-up (its ``examples/office``: ImageNet-pretrained
ResNet-18, 224×224 images, Adam 1e-4 with weight decay 1e-5, batch 64 per
domain, 100 epochs, no schedule), accuracy per domain and their average on
the validation split, the test split evaluated with it.

Assumed where LibMTL's weights cannot be given here: ``model_kwargs`` has no
``pretrained`` (set ``--set model_kwargs="{'pretrained': 'resnet18.pth'}"``
with a torchvision ``resnet18`` checkpoint to start from ImageNet as LibMTL
does; nothing is downloaded); the weight decay is the L2 term that
``torch.optim.Adam`` adds (``optimizer='adam'`` with ``weight_decay``); an
epoch is one pass over the largest domain (LibMTL's rule); our 60/20/20
split of each domain replaces LibMTL's lists (``mtl_optax.data.office``).
"""

from mtl_optax import training


def get_config(**overrides) -> training.Config:
  config = training.Config(
      model='resnet18_office', model_kwargs={'tasks': 'office31'},
      dataset='office31', method='aligned_mtl', multi_input=True,
      train_split='train', eval_split='validation',
      extra_eval_splits=('test',), batch_size=64,
      optimizer='adam', learning_rate=1e-4, weight_decay=1e-5,
      num_epochs=100)
  return config.replace(**overrides)
