"""Random batches in every dataset's batch convention (no files needed).

For smoke tests, step-time benchmarks and trying a config before the data is
prepared: the same keys, shapes, dtypes and value ranges as ``load`` yields
(images in [0, 1], labels in range with some ignore labels, positive depths
with some invalid zeros, unit normals, unit quaternions with w ≥ 0). For a
multi-input dataset (``office31``, ``office_home``) one such batch per task,
``{task: {'image': ..., task: labels}}``.
"""

from __future__ import annotations

import numpy as np

from mtl_optax.data import datasets
from mtl_optax.data.task_names import OFFICE_CLASSES
from mtl_optax.data.task_names import SEGMENTATION_CLASSES

IMAGE_SHAPES = {
    'multi_mnist': (28, 28, 1),
    'celeb_a': (64, 64, 3),
    'cifar100_mt': (32, 32, 3),
    'cityscapes': (256, 512, 3),
    'cityscapes_mtan': (128, 256, 3),
    'nyuv2': (288, 384, 3),
    'seven_scenes': (224, 224, 3),
    'office31': (224, 224, 3),
    'office_home': (224, 224, 3),
}


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_batch(name: str, batch_size: int, *,
                 image_size: tuple[int, int] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch of dataset ``name``.

  Args:
    name: a dataset name of ``mtl_optax.data.DATASETS``.
    batch_size: number of examples.
    image_size: ``(H, W)`` instead of the dataset's own.
    seed: numpy seed.

  Returns:
    ``{'image': float32 [B, H, W, C], <task>: target, ...}``; for a
    multi-input dataset ``{task: {'image': ..., task: target}}``, ``B``
    examples for every task.

  Example:
    >>> b = random_batch('multi_mnist', 4)
    >>> b['image'].shape, b['left'].dtype.name
    ((4, 28, 28, 1), 'int32')
    >>> b = random_batch('office31', 2, image_size=(8, 8))
    >>> sorted(b), sorted(b['dslr']), b['dslr']['image'].shape
    (['amazon', 'dslr', 'webcam'], ['dslr', 'image'], (2, 8, 8, 3))
  """
  rng = np.random.default_rng(seed)
  h, w, c = IMAGE_SHAPES[name]
  if image_size is not None:
    h, w = image_size
  b = batch_size
  tasks = datasets.tasks(name)
  if datasets.is_multi_input(name):
    return {task: {'image': rng.random((b, h, w, c), dtype=np.float32),
                   task: rng.integers(0, OFFICE_CLASSES[name], b
                                      ).astype(np.int32)}
            for task in tasks}
  batch = {'image': rng.random((b, h, w, c), dtype=np.float32)}
  if name == 'seven_scenes':
    batch['translation'] = rng.normal(size=(b, 3)).astype(np.float32)
    q = _unit(rng.normal(size=(b, 4)))
    batch['orientation'] = q * np.where(q[:, :1] < 0, -1, 1).astype(np.float32)
    return batch
  if name in SEGMENTATION_CLASSES:
    seg = rng.integers(0, SEGMENTATION_CLASSES[name], (b, h, w))
    seg[rng.random((b, h, w)) < 0.1] = -1
    batch['segmentation'] = seg.astype(np.int32)
    depth = rng.uniform(0.5, 10, (b, h, w, 1)).astype(np.float32)
    depth[rng.random((b, h, w, 1)) < 0.1] = 0
    batch['depth'] = depth
    if 'instance' in tasks:
      mask = (rng.random((b, h, w)) < 0.5).astype(np.float32)
      batch['instance'] = (rng.normal(size=(b, h, w, 2)) *
                           mask[..., None]).astype(np.float32)
      batch['instance_mask'] = mask
    if 'normals' in tasks:
      batch['normals'] = _unit(rng.normal(size=(b, h, w, 3)))
    return batch
  if name == 'cifar100_mt':
    own = rng.integers(0, len(tasks), b)
    for i, task in enumerate(tasks):
      batch[task] = np.where(own == i, rng.integers(0, 5, b), -1
                             ).astype(np.int32)
    return batch
  classes = 10 if name == 'multi_mnist' else 2
  for task in tasks:
    batch[task] = rng.integers(0, classes, b).astype(np.int32)
  return batch
