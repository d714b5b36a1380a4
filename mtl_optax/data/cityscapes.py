"""Cityscapes for scene understanding: segmentation, instance offsets, disparity.

Two task sets over one prepared dataset (tfds builder ``cityscapes_mtl``):

* ``'cityscapes'`` (Sener & Koltun 2018, App. C.3): 256×512 images;
  ``segmentation`` int32 ``[B, H, W]`` in the 19 Cityscapes *train ids*
  (``-1`` ignore); ``instance`` float32 ``[B, H, W, 2]``: for a pixel of an
  instance (a Cityscapes instance id ≥ 1000: person, rider, car, truck, bus,
  train, motorcycle, bicycle) the offset ``centre − pixel`` from the pixel to
  the mean position of its instance's pixels, channel 0 = x (column), channel
  1 = y (row), in pixels of the stored resolution; zeros elsewhere;
  ``instance_mask`` float32 ``[B, H, W]`` (1 on instance pixels, 0 elsewhere);
  ``depth`` float32 ``[B, H, W, 1]``: **disparity** in pixels of the stored
  resolution (Sener & Koltun regress disparity), ``0`` = invalid.
* ``'cityscapes_mtan'`` (the MTAN 2-task variant): ``segmentation`` in the 7
  Cityscapes *categories* flat, construction, object, nature, sky, human,
  vehicle (category id − 1; ``void`` → ``-1``) and ``depth`` as above.

``image`` is float32 ``[B, H, W, 3]`` = uint8 / 255 (range [0, 1]).

Builder ``CityscapesMtl`` (no TensorFlow; ``tfds.features.Tensor`` features,
ArrayRecord). Manual directory = the extracted ``leftImg8bit_trainvaltest.zip``,
``gtFine_trainvaltest.zip`` and ``disparity_trainvaltest.zip`` from
https://www.cityscapes-dataset.com, i.e. for ``split`` in ``train``, ``val``::

    leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png     RGB, 1024×2048
    gtFine/{split}/{city}/{stem}_gtFine_labelIds.png      uint8 label ids
    gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png   uint16 id·1000+k / id
    disparity/{split}/{city}/{stem}_disparity.png         uint16, d = (p−1)/256

(``stem`` = ``{city}_{seq}_{frame}``). tfds splits: ``train`` (2 975 images)
and ``validation`` (the 500 ``val`` images; Cityscapes' test labels are not
public). PNGs are decoded with Pillow.

Resizing to ``(H, W)`` (config ``'256x512'`` by default): the image by area
averaging (for 1024×2048 → 256×512 the mean of each 4×4 block); label ids,
instance ids and disparity by nearest neighbour (output pixel ``(i, j)`` reads
input pixel ``(⌊(i+½)·1024/H⌋, ⌊(j+½)·2048/W⌋)``, ``(4i+2, 4j+2)`` here);
the disparity is then multiplied by ``W / 2048`` so that it is measured in
pixels of the stored image. Instance centres are computed on the resized
instance-id map.

Stored records: ``image`` uint8 ``[H, W, 3]``, ``label_ids`` uint8 ``[H, W]``
(raw Cityscapes label ids; 255 for anything outside 0–33),
``instance`` float32 ``[H, W, 2]``, ``instance_mask`` uint8 ``[H, W]``,
``disparity`` float32 ``[H, W, 1]``; in sorted file order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops

TASKS = ('segmentation', 'instance', 'depth')
TASKS_MTAN = ('segmentation', 'depth')
NUM_CLASSES = 19
NUM_CLASSES_MTAN = 7
IGNORE = -1
SPLITS = {'train': 'train', 'validation': 'val'}

# (label id, name, train id or -1, category id) from the Cityscapes scripts'
# label definitions; category ids: 0 void, 1 flat, 2 construction, 3 object,
# 4 nature, 5 sky, 6 human, 7 vehicle.
LABELS = (
    (0, 'unlabeled', -1, 0), (1, 'ego vehicle', -1, 0),
    (2, 'rectification border', -1, 0), (3, 'out of roi', -1, 0),
    (4, 'static', -1, 0), (5, 'dynamic', -1, 0), (6, 'ground', -1, 0),
    (7, 'road', 0, 1), (8, 'sidewalk', 1, 1), (9, 'parking', -1, 1),
    (10, 'rail track', -1, 1), (11, 'building', 2, 2), (12, 'wall', 3, 2),
    (13, 'fence', 4, 2), (14, 'guard rail', -1, 2), (15, 'bridge', -1, 2),
    (16, 'tunnel', -1, 2), (17, 'pole', 5, 3), (18, 'polegroup', -1, 3),
    (19, 'traffic light', 6, 3), (20, 'traffic sign', 7, 3),
    (21, 'vegetation', 8, 4), (22, 'terrain', 9, 4), (23, 'sky', 10, 5),
    (24, 'person', 11, 6), (25, 'rider', 12, 6), (26, 'car', 13, 7),
    (27, 'truck', 14, 7), (28, 'bus', 15, 7), (29, 'caravan', -1, 7),
    (30, 'trailer', -1, 7), (31, 'train', 16, 7), (32, 'motorcycle', 17, 7),
    (33, 'bicycle', 18, 7),
)
CLASS_NAMES = tuple(name for _, name, t, _ in sorted(LABELS, key=lambda l: l[2])
                    if t >= 0)
CATEGORY_NAMES = ('flat', 'construction', 'object', 'nature', 'sky', 'human',
                  'vehicle')

# Lookup tables indexed by a uint8 label id (255 and unknown ids -> ignore).
TRAIN_ID = np.full(256, IGNORE, np.int32)
CATEGORY_7 = np.full(256, IGNORE, np.int32)
for _id, _, _train_id, _category in LABELS:
  TRAIN_ID[_id] = _train_id
  CATEGORY_7[_id] = _category - 1     # void (0) -> -1
del _id, _train_id, _category


def disparity_from_png(raw: np.ndarray) -> np.ndarray:
  """Cityscapes disparity PNG values ``p`` -> ``(p − 1) / 256`` (0 where p = 0).

  Example:
    >>> disparity_from_png(np.array([0, 1, 257, 513], np.uint16)).tolist()
    [0.0, 0.0, 1.0, 2.0]
  """
  raw = np.asarray(raw).astype(np.float32)
  return np.where(raw > 0, (raw - 1) / 256, 0).astype(np.float32)


def instance_offsets(instance_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Offsets from each instance pixel to its instance's centre.

  Args:
    instance_ids: int ``[H, W]`` Cityscapes instance ids; values ≥ 1000 are
      instances (``label_id · 1000 + k``), smaller values are not.

  Returns:
    ``(offsets, mask)``: float32 ``[H, W, 2]`` = ``(x_c − x, y_c − y)`` with
    ``(x_c, y_c)`` the mean column and row of the pixel's instance (zeros off
    instances), and uint8 ``[H, W]`` instance mask.

  Example:
    >>> ids = np.array([[0, 26001, 26001, 26001]])
    >>> off, mask = instance_offsets(ids)
    >>> off[0, :, 0].tolist(), mask.tolist()
    ([0.0, 1.0, 0.0, -1.0], [[0, 1, 1, 1]])
  """
  ids = np.asarray(instance_ids).astype(np.int64)
  h, w = ids.shape
  mask = ids >= 1000
  offsets = np.zeros((h, w, 2), np.float32)
  if mask.any():
    ys, xs = np.nonzero(mask)
    _, inverse, counts = np.unique(ids[ys, xs], return_inverse=True,
                                   return_counts=True)
    cx = np.bincount(inverse, weights=xs) / counts
    cy = np.bincount(inverse, weights=ys) / counts
    offsets[ys, xs, 0] = cx[inverse] - xs
    offsets[ys, xs, 1] = cy[inverse] - ys
  return offsets, mask.astype(np.uint8)


def make_example(*, image: np.ndarray, label_ids: np.ndarray,
                 instance_ids: np.ndarray, disparity_png: np.ndarray,
                 size: tuple[int, int]) -> dict[str, np.ndarray]:
  """One stored record from full-resolution arrays (see the module doc).

  Args:
    image: uint8 ``[H0, W0, 3]``.
    label_ids: ``[H0, W0]`` Cityscapes label ids.
    instance_ids: ``[H0, W0]`` Cityscapes instance ids.
    disparity_png: ``[H0, W0]`` raw uint16 disparity PNG values.
    size: stored ``(H, W)``.

  Returns:
    The record dict of the builder.
  """
  label_ids = np.asarray(label_ids).astype(np.int64)
  label_ids = np.where((label_ids >= 0) & (label_ids <= 33), label_ids, 255)
  offsets, mask = instance_offsets(image_ops.resize_nearest(instance_ids, size))
  disparity = disparity_from_png(image_ops.resize_nearest(disparity_png, size))
  disparity *= np.float32(size[1] / np.shape(disparity_png)[1])
  return {
      'image': image_ops.to_uint8(image_ops.resize_area(image, size)),
      'label_ids': image_ops.resize_nearest(label_ids, size).astype(np.uint8),
      'instance': offsets,
      'instance_mask': mask,
      'disparity': disparity[..., None],
  }


@dataclasses.dataclass
class CityscapesMtlConfig(tfds.core.BuilderConfig):
  """``size``: stored ``(height, width)``."""
  size: tuple[int, int] = (256, 512)


def _read_png(path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    return np.asarray(img)


# Not registered when run as a script, where the module is imported twice.
class CityscapesMtl(builder_base.ArrayRecordBuilder,
                    skip_registration=__name__ == '__main__'):
  """Cityscapes images, label ids, instance offsets and disparity (no TF)."""

  name = 'cityscapes_mtl'
  PREPARE_NAME = 'cityscapes'
  VERSION = tfds.core.Version('1.0.0')
  # 256×512: the three-task set-up (MGDA-UB, Aligned-MTL); 128×256: MTAN's
  # two-task set-up (followed by CAGrad and Aligned-MTL).
  BUILDER_CONFIGS = [CityscapesMtlConfig(name='256x512', size=(256, 512)),
                     CityscapesMtlConfig(name='128x256', size=(128, 256))]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Extract leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip and '
      'disparity_trainvaltest.zip (https://www.cityscapes-dataset.com) into '
      'the manual directory, giving leftImg8bit/, gtFine/ and disparity/.')

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.size
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(h, w, 3), dtype=np.uint8),
            'label_ids': t(shape=(h, w), dtype=np.uint8),
            'instance': t(shape=(h, w, 2), dtype=np.float32),
            'instance_mask': t(shape=(h, w), dtype=np.uint8),
            'disparity': t(shape=(h, w, 1), dtype=np.float32),
        }),
        homepage='https://www.cityscapes-dataset.com',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._generate_examples(root=root, split=folder)
            for split, folder in SPLITS.items()}

  def _generate_examples(self, *, root, split):
    images = sorted((root / 'leftImg8bit' / split).glob('*/*_leftImg8bit.png'))
    if not images:
      raise FileNotFoundError(
          f'No leftImg8bit/{split}/*/*_leftImg8bit.png under {root}.')
    for path in images:
      city = path.parent.name
      stem = path.name[:-len('_leftImg8bit.png')]
      gt = root / 'gtFine' / split / city
      yield stem, make_example(
          image=_read_png(path)[..., :3],
          label_ids=_read_png(gt / f'{stem}_gtFine_labelIds.png'),
          instance_ids=_read_png(gt / f'{stem}_gtFine_instanceIds.png'),
          disparity_png=_read_png(
              root / 'disparity' / split / city / f'{stem}_disparity.png'),
          size=self.builder_config.size)


def data_source(split: str, *, data_dir: str | os.PathLike | None = None,
                config: str | CityscapesMtlConfig = '256x512'):
  """The prepared ``cityscapes_mtl`` split as a random-access source."""
  builder = CityscapesMtl(
      data_dir=None if data_dir is None else os.fspath(data_dir), config=config)
  return builder.as_prepared_source(split)


def preprocess(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Records -> the 3-task batch (19-class segmentation, instance, disparity).

  Example:
    >>> rec = {'image': np.zeros((1, 2, 2, 3), np.uint8),
    ...        'label_ids': np.array([[[7, 26], [0, 255]]], np.uint8),
    ...        'instance': np.zeros((1, 2, 2, 2), np.float32),
    ...        'instance_mask': np.zeros((1, 2, 2), np.uint8),
    ...        'disparity': np.ones((1, 2, 2, 1), np.float32)}
    >>> preprocess(rec)['segmentation'].tolist()
    [[[0, 13], [-1, -1]]]
  """
  return {
      'image': image_ops.to_float(batch['image']),
      'segmentation': TRAIN_ID[np.asarray(batch['label_ids'])],
      'instance': np.asarray(batch['instance'], np.float32),
      'instance_mask': np.asarray(batch['instance_mask'], np.float32),
      'depth': np.asarray(batch['disparity'], np.float32),
  }


def preprocess_mtan(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Records -> the MTAN 2-task batch (7-category segmentation, disparity).

  Example:
    >>> rec = {'image': np.zeros((1, 1, 3, 3), np.uint8),
    ...        'label_ids': np.array([[[7, 26, 3]]], np.uint8),
    ...        'disparity': np.zeros((1, 1, 3, 1), np.float32)}
    >>> preprocess_mtan(rec)['segmentation'].tolist()
    [[[0, 6, -1]]]
  """
  return {
      'image': image_ops.to_float(batch['image']),
      'segmentation': CATEGORY_7[np.asarray(batch['label_ids'])],
      'depth': np.asarray(batch['disparity'], np.float32),
  }
