"""CelebA as 40 binary tasks (Sener & Koltun 2018, App. C.2), from tfds ``celeb_a``.

Source: the tfds ``celeb_a`` dataset (version 2.1.0: aligned and cropped
218×178 JPEG faces, splits ``train`` 162 770 / ``validation`` 19 867 /
``test`` 19 962), read with ``tfds.data_source`` (ArrayRecord; tfds decodes
the JPEGs with Pillow, no TensorFlow). Preparing it needs tfds' own
``download_and_prepare`` of ``celeb_a`` in ArrayRecord format (its files come
from Google Drive).

Batches (``preprocess``): ``image`` float32 ``[B, 64, 64, 3]``: the full
218×178 image resized to 64×64 (aspect ratio not kept, as in the paper) by
area averaging (``image_ops.resize_area``), then ``/ 255`` (range [0, 1], no
mean/std standardisation); one int32 ``[B]`` label in {0, 1} per attribute,
keyed by the 40 attribute names of ``TASKS`` (CelebA's ``list_attr_celeba``
order).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import image_ops
from mtl_optax.data import task_names

TASKS = task_names.CELEBA_ATTRIBUTES
IMAGE_SIZE = 64


def data_source(split: str, *, data_dir: str | os.PathLike | None = None):
  """tfds ``celeb_a`` split as a random-access source (no download attempted)."""
  return tfds.data_source(
      'celeb_a', split=split, download=False,
      data_dir=None if data_dir is None else os.fspath(data_dir))


def preprocess(batch: Mapping[str, np.ndarray], *,
               image_size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
  """tfds records -> ``{'image': float32 [B, s, s, 3], <attribute>: int32 [B]}``.

  Args:
    batch: stacked tfds ``celeb_a`` records (``image`` uint8 [B, H, W, 3],
      ``attributes`` a dict of bool [B]).
    image_size: side ``s`` of the square output image.

  Returns:
    The batch in this package's convention (see the module doc).

  Example:
    >>> attrs = {name: np.array([True, False]) for name in TASKS}
    >>> b = preprocess({'image': np.zeros((2, 218, 178, 3), np.uint8),
    ...                 'attributes': attrs})
    >>> b['image'].shape, b['Young'].tolist(), len(b)
    ((2, 64, 64, 3), [1, 0], 41)
  """
  out = {'image': image_ops.resize_area(
      image_ops.to_float(batch['image']), (image_size, image_size))}
  attributes = batch['attributes']
  for name in TASKS:
    out[name] = np.asarray(attributes[name]).astype(np.int32)
  return out
