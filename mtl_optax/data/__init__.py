"""TensorFlow-free input pipelines for the multi-task benchmarks.

Datasets are tfds ``GeneratorBasedBuilder``s written as ArrayRecord files with
plain ``tfds.features.Tensor`` features (or tfds' own ``celeb_a`` and
``cifar100``), read by random access (``tfds.data_source``) and batched by a
deterministic, resumable, shardable numpy ``Loader``::

    from mtl_optax import data
    it = data.load('multi_mnist', 'train', data_dir=DIR, batch_size=256, seed=0)
    batch = next(it)   # {'image': f32 [256, 28, 28, 1], 'left', 'right': i32}
    state = it.get_state()    # {'epoch': 0, 'step': 1}: checkpoint it to resume

Modules: ``loader`` (the iterator), ``datasets`` (names -> specs, ``load``),
``augment`` (the papers' training augmentation, seeded per example),
``image_ops`` (numpy resizing), ``prepare`` (command line to prepare the
builders), ``builder_base``, one module per dataset (``multi_mnist``,
``celeb_a``, ``cifar100_mt``, ``cityscapes``, ``nyuv2``, ``seven_scenes``).

Attributes are imported on first use, so ``import mtl_optax.data`` does not
import tensorflow_datasets, and ``python -m mtl_optax.data.multi_mnist`` runs
the module once. It does check that tensorflow_datasets is installed (the
``data`` extra, ``pip install 'mtl-optax[data]'``) and says so if not.
"""

import importlib

from mtl_optax._extras import _require

_require('tensorflow_datasets', 'data', 'mtl_optax.data')

_SUBMODULES = ('augment', 'builder_base', 'celeb_a', 'cifar100_mt',
               'cityscapes', 'datasets', 'image_ops', 'loader', 'multi_mnist',
               'nyuv2', 'office', 'prepare', 'seven_scenes', 'synthetic',
               'task_names')
_ATTRIBUTES = {
    'DATASETS': 'datasets',
    'DatasetSpec': 'datasets',
    'get_spec': 'datasets',
    'is_multi_input': 'datasets',
    'load': 'datasets',
    'num_examples': 'datasets',
    'split_source': 'datasets',
    'tasks': 'datasets',
    'ArraySource': 'loader',
    'SubsetSource': 'loader',
    'holdout_indices': 'loader',
    'Loader': 'loader',
    'MultiInputLoader': 'loader',
    'read_into_memory': 'loader',
    'example_rng': 'loader',
    'augmentation': 'augment',
    'random_batch': 'synthetic',
}

__all__ = sorted(_SUBMODULES + tuple(_ATTRIBUTES))


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _ATTRIBUTES:
    module = importlib.import_module(f'{__name__}.{_ATTRIBUTES[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return __all__
