"""Office-Home (multi-input: the domains Art, Clipart, Product and
Real_World are four 65-way tasks, each with its own images), ResNet-18 with
one classifier per domain: LibMTL's set-up, as ``office31`` (Adam 1e-4,
weight decay 1e-5, batch 64 per domain, 100 epochs, 224×224; the same
assumptions: no ImageNet weights unless ``model_kwargs['pretrained']``
names a torchvision checkpoint, L2 weight decay, an epoch one pass over the
largest domain, our seeded 60/20/20 split).
"""

from mtl_optax import training
from mtl_optax.configs import office31


def get_config(**overrides) -> training.Config:
  return office31.get_config(**{
      'model_kwargs': {'tasks': 'office_home'}, 'dataset': 'office_home',
      **overrides})
