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

Without TensorFlow (tfds' own ``celeb_a`` builder needs it to prepare):
``CelebAJpegs`` (``python -m mtl_optax.data.prepare celeb_a_jpegs
--data-dir DATA --manual-dir CELEBA``) reads the files CelebA publishes, in
the manual directory as downloaded:

    img_align_celeba/000001.jpg ... 202599.jpg   "Align&Cropped Images"
    list_attr_celeba.txt                         "Anno": 40 attributes, ±1
    list_eval_partition.txt                      "Eval": 0 train, 1 val, 2 test

and stores each image already resized to 64×64 (area averaging, as
``preprocess``, rounded to uint8 as the papers' PIL ``Resize`` does) with
its attributes as tfds' ``celeb_a`` holds them, so ``preprocess`` serves
both; ~2.5 GB instead of the JPEGs' decoded 23 GB. Load it with the dataset
option ``source='jpegs'`` (``data.load('celeb_a', 'train', source='jpegs',
...)``, ``--set dataset_options="{'source': 'jpegs'}"``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops
from mtl_optax.data import task_names

TASKS = task_names.CELEBA_ATTRIBUTES
IMAGE_SIZE = 64


SOURCES = ('tfds', 'jpegs')
IMAGES_DIR = 'img_align_celeba'
ATTRIBUTES_FILE = 'list_attr_celeba.txt'
PARTITION_FILE = 'list_eval_partition.txt'
SPLITS = ('train', 'validation', 'test')   # list_eval_partition's 0, 1, 2
LAYOUT = (f'{IMAGES_DIR}/000001.jpg ... (the "Align&Cropped Images"), '
          f'{ATTRIBUTES_FILE} and {PARTITION_FILE}, as CelebA publishes them')


def data_source(split: str, *, data_dir: str | os.PathLike | None = None,
                source: str = 'tfds'):
  """A prepared CelebA split as a random-access source (no download).

  Args:
    split: ``'train'``, ``'validation'`` or ``'test'`` (tfds slicing
      allowed).
    data_dir: the tfds data directory.
    source: ``'tfds'`` (tfds' ``celeb_a``, prepared with tfds) or
      ``'jpegs'`` (``CelebAJpegs``, prepared from the published files
      without TensorFlow).

  Raises:
    ValueError: an unknown ``source``.
  """
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if source == 'jpegs':
    return CelebAJpegs(data_dir=data_dir).as_prepared_source(split)
  if source != 'tfds':
    raise ValueError(f'source must be one of {SOURCES}, got {source!r}: '
                     "'jpegs' for the builder over CelebA's own files.")
  return tfds.data_source('celeb_a', split=split, download=False,
                          data_dir=data_dir)


def _layout_error(root, problem: str) -> FileNotFoundError:
  return FileNotFoundError(
      f'CelebA in {os.fspath(root)!r}: {problem} The manual directory must '
      f'hold {LAYOUT}.')


def read_attributes(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """``list_attr_celeba.txt`` -> ``{file name: bool [40]}`` (``TASKS`` order).

  Raises:
    ValueError: the header's attribute names are not ``TASKS``, or a line
      has not 40 values of ±1.
  """
  lines = pathlib.Path(path).read_text().split('\n')
  names = lines[1].split()
  if tuple(names) != tuple(TASKS):
    raise ValueError(f'{path}: the attribute names {names[:3]}... are not '
                     "CelebA's 40 (list_attr_celeba.txt's second line).")
  out = {}
  for line in lines[2:]:
    if not line.strip():
      continue
    name, *values = line.split()
    if len(values) != len(TASKS) or set(values) - {'1', '-1'}:
      raise ValueError(f'{path}: the line of {name} needs 40 values of 1 or '
                       f'-1, got {len(values)}.')
    out[name] = np.array([v == '1' for v in values])
  return out


def read_partition(path: str | os.PathLike) -> dict[str, str]:
  """``list_eval_partition.txt`` -> ``{file name: split}``."""
  out = {}
  for line in pathlib.Path(path).read_text().split('\n'):
    if line.strip():
      name, part = line.split()
      out[name] = SPLITS[int(part)]
  return out


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
  """A CelebA JPEG as uint8 ``[size, size, 3]``: area-averaged (the whole
  218×178 face, aspect ratio not kept) and rounded."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    rgb = np.asarray(img.convert('RGB'), np.uint8)
  small = image_ops.resize_area(rgb, (size, size))
  return np.clip(np.round(small), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class CelebAConfig(tfds.core.BuilderConfig):
  """The stored image side (64, the papers')."""
  image_size: int = IMAGE_SIZE


class CelebAJpegs(builder_base.ArrayRecordBuilder,
                  skip_registration=__name__ == '__main__'):
  """CelebA from its published files as ArrayRecord, no TensorFlow."""

  name = 'celeb_a_jpegs'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [CelebAConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put CelebA in the manual directory as it is downloaded: {LAYOUT}.')

  def _info(self) -> tfds.core.DatasetInfo:
    s = int(self.builder_config.image_size)
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(s, s, 3), dtype=np.uint8),
            'attributes': tfds.features.FeaturesDict(
                {name: t(shape=(), dtype=np.bool_) for name in TASKS}),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    try:
      root = dl_manager.manual_dir
    except AssertionError:    # no manual directory, or an empty one
      root = getattr(dl_manager, '_manual_dir', None) or 'MANUAL_DIR'
      raise _layout_error(root, 'it is missing or empty.') from None
    root = pathlib.Path(root)
    for needed in (IMAGES_DIR, ATTRIBUTES_FILE, PARTITION_FILE):
      if not (root / needed).exists():
        raise _layout_error(root, f'{needed} is missing.')
    attributes = read_attributes(root / ATTRIBUTES_FILE)
    partition = read_partition(root / PARTITION_FILE)
    unlabelled = sorted(set(partition) - set(attributes))
    if unlabelled:
      raise ValueError(f'{root / ATTRIBUTES_FILE} has no attributes for '
                       f'{len(unlabelled)} images of {PARTITION_FILE}, e.g. '
                       f'{unlabelled[0]}.')
    missing = [n for n in sorted(partition)
               if not (root / IMAGES_DIR / n).exists()]
    if missing:
      raise _layout_error(root, f'{len(missing)} images of {PARTITION_FILE} '
                          f'are not in {IMAGES_DIR}/, e.g. {missing[0]}.')
    return {split: self._generate_examples(
        root=root, names=[n for n in sorted(partition)
                          if partition[n] == split],
        attributes=attributes) for split in SPLITS}

  def _generate_examples(self, *, root, names, attributes):
    size = int(self.builder_config.image_size)
    for name in names:
      yield name, {
          'image': load_image(root / IMAGES_DIR / name, size),
          'attributes': {t: bool(v) for t, v in zip(TASKS, attributes[name])}}


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
