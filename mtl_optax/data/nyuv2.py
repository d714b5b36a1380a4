"""NYUv2 with 13-class segmentation, depth and surface normals (MTAN's format).

Builder ``nyuv2_mtan`` over a manual directory in the preprocessed format
released with MTAN (Liu et al., CVPR 2019): one ``.npy`` file per example and
modality, numbered from 0::

    train/image/{i}.npy    float [288, 384, 3], RGB in [0, 1]      (795 files)
    train/label/{i}.npy    float [288, 384], class 0..12, -1 = ignore
    train/depth/{i}.npy    float [288, 384, 1] (or [288, 384]), 0 = invalid
    train/normal/{i}.npy   float [288, 384, 3], 0 where invalid
    val/...                the same                                 (654 files)

tfds splits: ``train`` and ``validation`` (``val``, which MTAN and the papers
built on it report as the test set).

Stored records: ``image`` uint8 ``[288, 384, 3]`` (``round(255·x)``, i.e. at
most 1/510 from the released floats), ``segmentation`` int8 ``[288, 384]``
(-1 ignore), ``depth`` float32 ``[288, 384, 1]``, ``normals`` float32
``[288, 384, 3]``, in index order.

Batches (``preprocess``): ``image`` float32 ``[B, 288, 384, 3]`` = uint8 / 255
(range [0, 1]); ``segmentation`` int32 ``[B, 288, 384]`` (13 classes, -1
ignore); ``depth`` float32 ``[B, 288, 384, 1]`` (0 = invalid); ``normals``
float32 ``[B, 288, 384, 3]`` (as released: unit vectors, 0 where invalid).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops

TASKS = ('segmentation', 'depth', 'normals')
NUM_CLASSES = 13
IGNORE = -1
IMAGE_SIZE = (288, 384)
SPLITS = {'train': 'train', 'validation': 'val'}


def make_example(*, image, label, depth, normal) -> dict[str, np.ndarray]:
  """One stored record from the four MTAN arrays (shapes checked).

  Example:
    >>> h, w = 288, 384
    >>> rec = make_example(image=np.full((h, w, 3), 0.5), label=np.full((h, w), -1.0),
    ...                    depth=np.ones((h, w)), normal=np.zeros((h, w, 3)))
    >>> int(rec['image'][0, 0, 0]), int(rec['segmentation'][0, 0]), rec['depth'].shape
    (128, -1, (288, 384, 1))
  """
  h, w = IMAGE_SIZE
  image = np.asarray(image)
  depth = np.asarray(depth, np.float32)
  if depth.ndim == 2:
    depth = depth[..., None]
  label = np.asarray(label)
  normal = np.asarray(normal, np.float32)
  for name, arr, shape in (('image', image, (h, w, 3)),
                           ('label', label, (h, w)),
                           ('depth', depth, (h, w, 1)),
                           ('normal', normal, (h, w, 3))):
    if arr.shape != shape:
      raise ValueError(f'{name}: expected shape {shape}, got {arr.shape}.')
  label = np.rint(label)
  label = np.where((label >= 0) & (label < NUM_CLASSES), label, IGNORE)
  return {
      'image': image_ops.to_uint8(255 * np.asarray(image, np.float64)),
      'segmentation': label.astype(np.int8),
      'depth': depth,
      'normals': normal,
  }


# Not registered when run as a script, where the module is imported twice.
class Nyuv2Mtan(builder_base.ArrayRecordBuilder,
                skip_registration=__name__ == '__main__'):
  """NYUv2 (MTAN's 288×384 .npy release) as ArrayRecord, no TensorFlow."""

  name = 'nyuv2_mtan'
  PREPARE_NAME = 'nyuv2'
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put MTAN's preprocessed NYUv2 (directories train/ and val/, each with "
      'image/, label/, depth/, normal/ holding {i}.npy) in the manual '
      'directory.')

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = IMAGE_SIZE
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(h, w, 3), dtype=np.uint8),
            'segmentation': t(shape=(h, w), dtype=np.int8),
            'depth': t(shape=(h, w, 1), dtype=np.float32),
            'normals': t(shape=(h, w, 3), dtype=np.float32),
        }),
        homepage='https://github.com/lorenmt/mtan',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._generate_examples(directory=root / folder)
            for split, folder in SPLITS.items()}

  def _generate_examples(self, *, directory):
    indices = sorted(int(p.stem) for p in (directory / 'image').glob('*.npy'))
    if not indices:
      raise FileNotFoundError(f'No image/*.npy under {directory}.')
    for i in indices:
      arrays = {kind: np.load(directory / kind / f'{i}.npy')
                for kind in ('image', 'label', 'depth', 'normal')}
      yield i, make_example(**arrays)


def data_source(split: str, *, data_dir: str | os.PathLike | None = None):
  """The prepared ``nyuv2_mtan`` split as a random-access source."""
  builder = Nyuv2Mtan(data_dir=None if data_dir is None else os.fspath(data_dir))
  return builder.as_prepared_source(split)


def preprocess(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Records -> ``{'image', 'segmentation', 'depth', 'normals'}`` (module doc).

  Example:
    >>> b = preprocess({'image': np.zeros((1, 2, 2, 3), np.uint8),
    ...                 'segmentation': np.array([[[-1, 12], [0, 3]]], np.int8),
    ...                 'depth': np.zeros((1, 2, 2, 1)), 'normals': np.zeros((1, 2, 2, 3))})
    >>> b['segmentation'].dtype, b['segmentation'].tolist()
    (dtype('int32'), [[[-1, 12], [0, 3]]])
  """
  return {
      'image': image_ops.to_float(batch['image']),
      'segmentation': np.asarray(batch['segmentation']).astype(np.int32),
      'depth': np.asarray(batch['depth'], np.float32),
      'normals': np.asarray(batch['normals'], np.float32),
  }
