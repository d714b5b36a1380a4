"""Multi-task CIFAR-100 (the 20-task set-up used by PCGrad, Yu et al. 2020).

CIFAR-100's 100 fine classes fall into 20 coarse classes of 5 each. Task
``t`` is the 5-way classification of the fine class among the 5 fine classes
of coarse class ``t``; an example takes part only in the task of its own
coarse class.

Sources (``data_source(split, source=...)``), both with the records
``image`` uint8 [32, 32, 3], ``label`` (fine) and ``coarse_label``, splits
``train`` 50 000 / ``test`` 10 000:

* ``'cifar100_mt'`` (default): this module's builder ``Cifar100Mt``, prepared
  without TensorFlow from ``cifar-100-binary.tar.gz`` (the file tfds'
  ``cifar100`` uses; taken from the manual directory or, only when asked
  (``--download``, ``download=True``), downloaded from ``CIFAR100_URL``;
  SHA256-checked), records in file order. Preparation
  checks every record's ``coarse_label`` against ``FINE_TO_COARSE``.
* ``'tfds'``: tfds' own ``cifar100``, if prepared in ArrayRecord format (its
  ``download_and_prepare`` needs TensorFlow to encode the PNGs; reading does
  not).

The coarse class of an example is derived from its fine ``label`` with the
standard CIFAR-100 table ``FINE_TO_COARSE``.

Batches (``preprocess``): ``image`` float32 ``[B, 32, 32, 3]`` = uint8 / 255
(range [0, 1], no standardisation); for each coarse class name in ``TASKS``
(tfds / CIFAR-100 order, i.e. alphabetical) an int32 ``[B]`` label: the index
``k ∈ [0, 5)`` of the example's fine class in the **ascending list of fine
ids** of that coarse class (``FINE_CLASSES[t]``), or ``-1`` (ignore) when the
example belongs to another coarse class.
"""

from __future__ import annotations

import os
import tarfile
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops
from mtl_optax.data import task_names

TASKS = task_names.CIFAR100_COARSE_CLASSES
NUM_CLASSES_PER_TASK = 5
IGNORE = -1
CIFAR100_FILE = 'cifar-100-binary.tar.gz'
CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/' + CIFAR100_FILE
# Size and SHA256 of CIFAR100_FILE, as recorded by tfds for its cifar100.
CIFAR100_SHA256 = (
    168513733, '58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec')

# Coarse class of each fine class 0..99 (CIFAR-100's published hierarchy).
FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int32)

# FINE_CLASSES[t]: the 5 fine ids of coarse class t, ascending.
FINE_CLASSES = np.stack(
    [np.flatnonzero(FINE_TO_COARSE == t) for t in range(len(TASKS))]
).astype(np.int32)

# FINE_TO_INDEX[f]: position of fine class f within FINE_CLASSES of its coarse.
FINE_TO_INDEX = np.empty(100, np.int32)
FINE_TO_INDEX[FINE_CLASSES.ravel()] = np.tile(
    np.arange(NUM_CLASSES_PER_TASK, dtype=np.int32), len(TASKS))


def task_labels(fine_labels: np.ndarray) -> np.ndarray:
  """Fine labels ``[B]`` -> per-task labels ``[B, 20]`` (``-1`` off-task).

  Example:
    >>> task_labels(np.array([0, 30]))[:, [0, 4]].tolist()   # apple, dolphin
    [[-1, 0], [1, -1]]
  """
  fine = np.asarray(fine_labels).astype(np.int64)
  out = np.full(fine.shape + (len(TASKS),), IGNORE, np.int32)
  np.put_along_axis(out, FINE_TO_COARSE[fine][..., None].astype(np.int64),
                    FINE_TO_INDEX[fine][..., None], axis=-1)
  return out


def parse_binary(raw: bytes) -> dict[str, np.ndarray]:
  """Parses a CIFAR-100 binary file (records: coarse, fine, 3072 CHW bytes).

  Example:
    >>> rec = bytes([3, 9]) + bytes(range(256)) * 12
    >>> out = parse_binary(rec + rec)
    >>> out['coarse_label'].tolist(), out['label'].tolist(), out['image'].shape
    ([3, 3], [9, 9], (2, 32, 32, 3))
    >>> int(out['image'][0, 0, 1, 0]), int(out['image'][0, 0, 0, 1])   # R, G
    (1, 0)
  """
  record = 2 + 3 * 32 * 32
  if len(raw) % record:
    raise ValueError(f'{len(raw)} bytes is not a whole number of records.')
  data = np.frombuffer(raw, np.uint8).reshape(-1, record)
  return {
      'image': data[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
      'label': data[:, 1].astype(np.int32),
      'coarse_label': data[:, 0].astype(np.int32),
  }


def read_tarball(path) -> dict[str, dict[str, np.ndarray]]:
  """``{'train': ..., 'test': ...}`` parsed from ``cifar-100-binary.tar.gz``."""
  out = {}
  with tarfile.open(path, 'r:gz') as tar:
    for split in ('train', 'test'):
      member = tar.extractfile(f'cifar-100-binary/{split}.bin')
      if member is None:
        raise ValueError(f'{path} has no cifar-100-binary/{split}.bin.')
      out[split] = parse_binary(member.read())
  return out


# Not registered when run as a script, where the module is imported twice.
class Cifar100Mt(builder_base.ArrayRecordBuilder,
                 skip_registration=__name__ == '__main__'):
  """CIFAR-100 images with fine and coarse labels, as ArrayRecord, no TF."""

  name = 'cifar100_mt'
  VERSION = tfds.core.Version('1.0.0')
  FILES = {CIFAR100_FILE: (CIFAR100_URL,) + CIFAR100_SHA256}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'A directory holding {CIFAR100_FILE}; or download it from '
      f'{CIFAR100_URL} (download=True).')

  def _info(self) -> tfds.core.DatasetInfo:
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(32, 32, 3), dtype=np.uint8),
            'label': t(shape=(), dtype=np.int32),
            'coarse_label': t(shape=(), dtype=np.int32),
        }),
        homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    splits = read_tarball(self._fetch_files(dl_manager)[CIFAR100_FILE])
    return {split: self._generate_examples(arrays=arrays)
            for split, arrays in splits.items()}

  def _generate_examples(self, *, arrays):
    bad = np.flatnonzero(FINE_TO_COARSE[arrays['label']]
                         != arrays['coarse_label'])
    if len(bad):
      raise ValueError(f'{len(bad)} records disagree with FINE_TO_COARSE, '
                       f'e.g. record {bad[0]}.')
    for i in range(len(arrays['label'])):
      yield i, {k: v[i] for k, v in arrays.items()}


def data_source(split: str, *, data_dir: str | os.PathLike | None = None,
                source: str = 'cifar100_mt'):
  """A split as a random-access source of records (no download attempted).

  Args:
    split: ``'train'`` or ``'test'`` (tfds slicing allowed).
    data_dir: tfds data directory.
    source: ``'cifar100_mt'`` (this module's TF-free builder) or ``'tfds'``
      (tfds' ``cifar100``, prepared in ArrayRecord format).
  """
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if source == 'tfds':
    return tfds.data_source('cifar100', split=split, download=False,
                            data_dir=data_dir)
  if source != 'cifar100_mt':
    raise ValueError(f"source must be 'cifar100_mt' or 'tfds', got {source!r}.")
  return Cifar100Mt(data_dir=data_dir).as_prepared_source(split)


def preprocess(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """tfds records -> ``{'image': float32 [B, 32, 32, 3], <coarse name>: int32 [B]}``.

  Example:
    >>> b = preprocess({'image': np.zeros((2, 32, 32, 3), np.uint8),
    ...                 'label': np.array([0, 30])})
    >>> b['fruit_and_vegetables'].tolist(), b['aquatic_mammals'].tolist()
    ([0, -1], [-1, 1])
  """
  labels = task_labels(batch['label'])
  out = {'image': image_ops.to_float(batch['image'])}
  for t, name in enumerate(TASKS):
    out[name] = np.ascontiguousarray(labels[:, t])
  return out
