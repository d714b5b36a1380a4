"""MultiMNIST (Sener & Koltun, NeurIPS 2018, §4.1 and App. C.1): two digits.

The paper: "For each image, a different one is chosen uniformly in random.
Then one of these images is put at the top-left and the other one is at the
bottom-right"; task L classifies the top-left digit, task R the bottom-right
one; 60K training examples. It does not give the geometry. Two builder
configs, fixed and deterministic (version 1.1.0 of the builder):

- ``'sener_koltun'`` (the default): the geometry of the papers' public code,
  which every MultiMNIST table of these papers used: the bottom-right digit
  at canvas offset (6, 6) and a nearest-neighbour resize;
- ``'area'``: offset (8, 8) and an area-averaging resize (version 1.0.0's
  only geometry): less overlap and no lost pixels, an easier problem (about
  1-2 points higher accuracies with the same training).

The construction:

1. **pairing**: within a split of ``n`` MNIST images (train 60 000, test
   10 000; the test composites use test digits only), example ``i`` pairs
   digit ``i`` with digit ``j_i = (i + u_i) mod n``, ``u_i`` uniform in
   ``[1, n)`` drawn as ``np.random.default_rng(seed).integers(1, n, size=n)``
   with ``seed = 0`` for train and ``1`` for test: ``j_i`` is uniform over the
   other ``n - 1`` images. Every digit is the top-left digit of exactly one
   example (its own). (The papers' code draws the partner uniformly over all
   ``n`` images, itself included.)
2. **canvas**: a 36×36 black canvas; digit ``i`` (28×28) at rows/columns
   ``[0, 28)`` (top-left), digit ``j_i`` at ``[6, 34)`` (``'sener_koltun'``)
   or ``[8, 36)`` (``'area'``) (bottom-right); where they overlap the canvas
   takes the pixel-wise **maximum**.
3. **resize** 36×36 → 28×28: ``'sener_koltun'``: nearest neighbour, pixel
   ``i`` read from ``floor((i + 0.5)·36/28)`` (PIL's ``NEAREST``);
   ``'area'``: area averaging (``image_ops.resize_area``: a box filter with
   footprint 9/7 pixel, anti-aliased), then rounded to the nearest integer
   (``np.rint``; the exact values are multiples of 1/81, so there are no
   ties). Stored as uint8.
4. **labels**: ``left = label[i]``, ``right = label[j_i]``, int32 in [0, 10).

Records, in index order (``disable_shuffling``): ``image`` uint8 [28, 28, 1],
``left`` and ``right`` int32. The loader's batches (``preprocess``):
``{'image': float32 [B, 28, 28, 1] = uint8 / 255 (range [0, 1], no mean/std
standardisation), 'left': int32 [B], 'right': int32 [B]}``.

Sources: the four MNIST IDX files, read from a manual directory
(``--mnist-dir``), or downloaded from
``https://storage.googleapis.com/cvdf-datasets/mnist/`` (tfds' MNIST mirror)
only when asked (``--download``, ``prepare(download=True)``); a missing
directory or file is an immediate ``FileNotFoundError``. Either way their
SHA256 is checked against ``MNIST_SHA256``.

Prepare (no TensorFlow; ArrayRecord files, 36 MB; about 12 s of CPU)::

    python -m mtl_optax.data.multi_mnist --mnist-dir DIR --data-dir OUT
    python -m mtl_optax.data.multi_mnist --download --data-dir OUT
    python -m mtl_optax.data.multi_mnist --config area --mnist-dir DIR ...

and read the ``'area'`` config with ``data.load('multi_mnist', split,
config='area')`` (``Config.dataset_options={'config': 'area'}``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import time
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops

TASKS = ('left', 'right')
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
CANVAS_SIZE = 36
LEFT_OFFSET = (0, 0)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where the bottom-right digit goes and how the canvas is resized."""
  right_offset: tuple[int, int]
  resize: str                   # 'nearest' or 'area'


GEOMETRIES = {'sener_koltun': Geometry((6, 6), 'nearest'),
              'area': Geometry((8, 8), 'area')}
DEFAULT_CONFIG = 'sener_koltun'
PAIRING_SEEDS = {'train': 0, 'test': 1}

MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
MNIST_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
# (size in bytes, SHA256) of the files above, as published with MNIST's tfds
# mirror.
MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz': (
        9912422,
        '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'),
    'train-labels-idx1-ubyte.gz': (
        28881,
        '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c'),
    't10k-images-idx3-ubyte.gz': (
        1648877,
        '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6'),
    't10k-labels-idx1-ubyte.gz': (
        4542,
        'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6'),
}
NUM_EXAMPLES = {'train': 60_000, 'test': 10_000}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'),
               0x0E: np.dtype('>f8')}


# --------------------------------------------------------------------------
# IDX files.


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (MNIST's format), gzip-compressed or not.

  Args:
    path: file path.

  Returns:
    The array, in native byte order.

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   write_idx(os.path.join(tmp, 'x-idx1-ubyte.gz'), np.array([3, 1, 4], np.uint8))
    ...   read_idx(os.path.join(tmp, 'x-idx1-ubyte.gz'))
    array([3, 1, 4], dtype=uint8)
  """
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] == b'\x1f\x8b':
    raw = gzip.decompress(raw)
  if raw[:2] != b'\x00\x00' or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an IDX file (magic {raw[:4]!r}).')
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  count = int(np.prod(shape))
  data = np.frombuffer(raw, dtype, count, offset=4 + 4 * ndim)
  return data.reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file, gzip-compressed if ``path`` ends .gz.

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   write_idx(os.path.join(tmp, 'x-idx3-ubyte'), np.zeros((2, 3, 3), np.uint8))
    ...   read_idx(os.path.join(tmp, 'x-idx3-ubyte')).shape
    (2, 3, 3)
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'Only uint8 IDX files are written, got {array.dtype}.')
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, '>u4').tobytes()
  raw = header + np.ascontiguousarray(array).tobytes()
  if str(path).endswith('.gz'):
    raw = gzip.compress(raw, mtime=0)
  with open(path, 'wb') as f:
    f.write(raw)


# --------------------------------------------------------------------------
# The construction.


def partner_indices(num_examples: int, *, seed: int) -> np.ndarray:
  """For each example ``i`` the index ``j_i ≠ i`` of its bottom-right digit.

  ``j_i = (i + u_i) mod n`` with ``u = default_rng(seed).integers(1, n, n)``:
  uniform over the ``n - 1`` other examples, deterministic in ``seed``.

  Example:
    >>> j = partner_indices(1000, seed=0)
    >>> bool((j != np.arange(1000)).all()), int(j.min()) >= 0, int(j.max()) < 1000
    (True, True, True)
  """
  if num_examples < 2:
    raise ValueError('MultiMNIST needs at least two images to pair.')
  offsets = np.random.default_rng(seed).integers(1, num_examples,
                                                 size=num_examples)
  return (np.arange(num_examples) + offsets) % num_examples


def overlay(top_left: np.ndarray, bottom_right: np.ndarray, *,
            config: str = DEFAULT_CONFIG) -> np.ndarray:
  """Composes pairs of 28×28 digits into 28×28 two-digit images.

  ``top_left`` at canvas offset ``LEFT_OFFSET``, ``bottom_right`` at the
  config's offset of a ``CANVAS_SIZE``² canvas, pixel-wise maximum where
  they overlap, resized to 28×28 as the config says (see the module doc).

  Args:
    top_left: uint8 ``[N, 28, 28]``.
    bottom_right: uint8 ``[N, 28, 28]``.
    config: a key of ``GEOMETRIES``.

  Returns:
    uint8 ``[N, 28, 28]``.

  Example:
    ``'area'``: a 7×7 block of 252 in the top-left digit covers output
    pixels 0-4 fully, 4/9 of pixel 5 along each axis (252·4/9 = 112,
    252·16/81 ≈ 50); ``'sener_koltun'``: output pixels 0-4 read canvas
    pixels 0, 1, 3, 4, 5 (inside the block), pixel 5 reads canvas pixel 7:

    >>> a = np.zeros((1, 28, 28), np.uint8); a[0, :7, :7] = 252
    >>> out = overlay(a, np.zeros_like(a), config='area')
    >>> out[0, 0, :7].tolist(), out[0, 5, :7].tolist()
    ([252, 252, 252, 252, 252, 112, 0], [112, 112, 112, 112, 112, 50, 0])
    >>> overlay(a, np.zeros_like(a))[0, 0, :7].tolist()
    [252, 252, 252, 252, 252, 0, 0]
  """
  geometry = _geometry(config)
  top_left = np.asarray(top_left)
  bottom_right = np.asarray(bottom_right)
  n, h, w = top_left.shape
  canvas = np.zeros((n, CANVAS_SIZE, CANVAS_SIZE), np.uint8)
  (r0, c0), (r1, c1) = LEFT_OFFSET, geometry.right_offset
  canvas[:, r0:r0 + h, c0:c0 + w] = top_left
  region = canvas[:, r1:r1 + h, c1:c1 + w]
  np.maximum(region, bottom_right, out=region)
  if geometry.resize == 'nearest':
    idx = image_ops.nearest_indices(CANVAS_SIZE, IMAGE_SHAPE[0])
    return canvas[:, idx[:, None], idx[None, :]]
  a = image_ops.area_matrix(CANVAS_SIZE, IMAGE_SHAPE[0])
  out = a @ canvas.astype(np.float64) @ a.T     # rows, then columns
  return image_ops.to_uint8(out)


def _geometry(config: str) -> Geometry:
  try:
    return GEOMETRIES[config]
  except KeyError:
    raise ValueError(f'Unknown MultiMNIST config {config!r}; use one of '
                     f'{sorted(GEOMETRIES)}.') from None


def make_multi_mnist(images: np.ndarray, labels: np.ndarray, *, seed: int,
                     config: str = DEFAULT_CONFIG,
                     chunk_size: int = 8192) -> dict[str, np.ndarray]:
  """Builds one MultiMNIST split from one MNIST split.

  Args:
    images: uint8 ``[n, 28, 28]`` MNIST digits.
    labels: ``[n]`` digit labels.
    seed: pairing seed (``PAIRING_SEEDS[split]``).
    config: a key of ``GEOMETRIES``.
    chunk_size: examples composed per vectorised chunk (bounds memory).

  Returns:
    ``{'image': uint8 [n, 28, 28, 1], 'left': int32 [n], 'right': int32 [n]}``;
    example ``i`` has digit ``i`` top-left and ``partner_indices(n, seed)[i]``
    bottom-right.

  Example:
    >>> imgs = np.zeros((3, 28, 28), np.uint8)
    >>> out = make_multi_mnist(imgs, np.array([7, 8, 9]), seed=0)
    >>> out['image'].shape, out['left'].tolist()
    ((3, 28, 28, 1), [7, 8, 9])
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.shape[1:] != (28, 28) or len(images) != len(labels):
    raise ValueError(f'Expected [n, 28, 28] images and [n] labels, got '
                     f'{images.shape} and {labels.shape}.')
  _geometry(config)
  partner = partner_indices(len(images), seed=seed)
  composed = np.empty(images.shape, np.uint8)
  for start in range(0, len(images), chunk_size):
    sl = slice(start, start + chunk_size)
    composed[sl] = overlay(images[sl], images[partner[sl]], config=config)
  return {
      'image': composed[..., None],
      'left': labels.astype(np.int32),
      'right': labels[partner].astype(np.int32),
  }


# --------------------------------------------------------------------------
# The tfds builder.


@dataclasses.dataclass
class MultiMnistConfig(tfds.core.BuilderConfig):
  """A geometry of the composition (a key of ``GEOMETRIES``)."""


# Not registered when run as a script, where the module is imported twice.
class MultiMnist(builder_base.ArrayRecordBuilder,
                 skip_registration=__name__ == '__main__'):
  """MultiMNIST as an ArrayRecord tfds dataset, prepared without TensorFlow.

  Args: ``verify_checksums`` (check the MNIST files' SHA256; ``False`` only
  for hand-made test files) and tfds' ``data_dir``, ``config``, ``version``,
  ``file_format`` (default ``'array_record'``).
  """

  name = 'multi_mnist'
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': '36x36 canvas, offsets (0,0)/(8,8), max, area '
                            'resize to 28x28; pairing seeds train 0, test 1.',
                   '1.1.0': "configs: 'sener_koltun' (offset (6,6), nearest "
                            "resize; the papers' code) and 'area' (1.0.0)."}
  BUILDER_CONFIGS = [
      MultiMnistConfig(name='sener_koltun', description=(
          "The papers' code: offset (6, 6), nearest-neighbour resize.")),
      MultiMnistConfig(name='area', description=(
          'Offset (8, 8), area-averaging resize (version 1.0.0).')),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'A directory holding ' + ', '.join(MNIST_FILES.values()) +
      '; or download them from ' + MNIST_URL + ' (download=True).')
  MANUAL_DIR_OPTION = '--mnist-dir / mnist_dir='

  FILES = {name: (MNIST_URL + name, size, digest)
           for name, (size, digest) in MNIST_SHA256.items()}

  def _info(self) -> tfds.core.DatasetInfo:
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            'left': tfds.features.Tensor(shape=(), dtype=np.int32),
            'right': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        homepage='https://arxiv.org/abs/1810.04650',
        disable_shuffling=True,
    )

  def prepare_command(self, data_dir: str) -> str:
    """The README's command that prepares MultiMNIST in ``data_dir``."""
    config = ('' if self.builder_config.name == DEFAULT_CONFIG
              else f' --config {self.builder_config.name}')
    return (f'python -m mtl_optax.data.multi_mnist --data-dir {data_dir}'
            f'{config} --mnist-dir DIR  (or --download instead of '
            '--mnist-dir)')

  def _split_generators(self, dl_manager):
    paths = self._fetch_files(dl_manager)
    return {
        split: self._generate_examples(
            images_path=paths[MNIST_FILES[f'{split}_images']],
            labels_path=paths[MNIST_FILES[f'{split}_labels']],
            seed=PAIRING_SEEDS[split])
        for split in ('train', 'test')
    }

  def _generate_examples(self, *, images_path, labels_path, seed):
    data = make_multi_mnist(read_idx(images_path), read_idx(labels_path),
                            seed=seed, config=self.builder_config.name)
    for i in range(len(data['left'])):
      yield i, {'image': data['image'][i], 'left': data['left'][i],
                'right': data['right'][i]}


def prepare(*, data_dir: str | os.PathLike,
            mnist_dir: str | os.PathLike | None = None,
            verify_checksums: bool = True,
            download: bool = False,
            config: str = DEFAULT_CONFIG) -> MultiMnist:
  """Prepares MultiMNIST in ``data_dir`` (no-op if already there).

  Args:
    data_dir: tfds data directory to write ``multi_mnist/CONFIG/1.1.0``
      into.
    mnist_dir: directory with the four MNIST IDX files.
    verify_checksums: check the files' SHA256.
    download: download the MNIST files ``mnist_dir`` does not hold (or all
      four without ``mnist_dir``). Default False: nothing is downloaded.
    config: the geometry, a key of ``GEOMETRIES``.

  Returns:
    The prepared builder (``builder.as_data_source(split)`` reads it).

  Raises:
    FileNotFoundError: at once, before any work, if ``mnist_dir`` is given
      and is not a directory, or (without ``download``) is not given or
      lacks some of the files; the message names the path and the files.
  """
  _geometry(config)
  builder = MultiMnist(data_dir=os.fspath(data_dir), config=config,
                       verify_checksums=verify_checksums, download=download)
  if not builder.is_prepared():
    MultiMnist.check_manual_dir(mnist_dir, option='--mnist-dir',
                                download=download)
  config = tfds.download.DownloadConfig(
      manual_dir=None if mnist_dir is None else os.fspath(mnist_dir))
  builder.download_and_prepare(download_config=config)
  return builder


def data_source(split: str, *, data_dir: str | os.PathLike | None = None,
                config: str = DEFAULT_CONFIG):
  """The prepared split (of the ``config`` geometry) as a tfds
  random-access source of records."""
  _geometry(config)
  builder = MultiMnist(data_dir=None if data_dir is None else os.fspath(data_dir),
                       config=config)
  return builder.as_prepared_source(split)


# MNIST's pixel mean and standard deviation (of [0, 1] values): the
# normalisation of Sener & Koltun's code (``transforms.Normalize``).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def preprocess(batch: Mapping[str, np.ndarray], *, normalize: bool = False
               ) -> dict[str, np.ndarray]:
  """Records -> ``{'image': float32 [B, 28, 28, 1], 'left', 'right'}``.

  Args:
    batch: the stored records (uint8 images, int labels).
    normalize: False: pixels in [0, 1]; True: ``(x - 0.1307) / 0.3081``,
      MNIST's mean and standard deviation, as the papers' code feeds LeNet
      (a ``load``/``Config.dataset_options`` option).

  Returns:
    The batch as the model and the losses take it.

  Example:
    >>> b = preprocess({'image': np.full((2, 28, 28, 1), 255, np.uint8),
    ...                 'left': np.array([1, 2]), 'right': np.array([3, 4])})
    >>> b['image'].dtype, float(b['image'].max()), b['right'].dtype
    (dtype('float32'), 1.0, dtype('int32'))
    >>> round(float(preprocess(b | {'image': np.zeros((1, 28, 28, 1),
    ...     np.uint8)}, normalize=True)['image'].max()), 4)
    -0.4242
  """
  if not isinstance(normalize, (bool, np.bool_)):
    raise ValueError(f'normalize must be True or False, got {normalize!r}.')
  image = image_ops.to_float(batch['image'])
  if normalize:
    image = (image - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
  return {
      'image': image,
      'left': np.asarray(batch['left'], np.int32),
      'right': np.asarray(batch['right'], np.int32),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m mtl_optax.data.multi_mnist',
      description='Prepare MultiMNIST (ArrayRecord, no TensorFlow).')
  parser.add_argument('--data-dir', required=True,
                      help='tfds data directory to write into.')
  parser.add_argument('--mnist-dir', default=None,
                      help='directory with the four MNIST .gz IDX files.')
  parser.add_argument('--download', action='store_true',
                      help='download the MNIST files (those --mnist-dir '
                           'does not hold) from ' + MNIST_URL + '.')
  parser.add_argument('--no-verify', action='store_true',
                      help='skip the SHA256 check of the MNIST files.')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      choices=sorted(GEOMETRIES),
                      help="the geometry (default: the papers' code, "
                           f'{DEFAULT_CONFIG!r})')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    builder = prepare(data_dir=args.data_dir, mnist_dir=args.mnist_dir,
                      verify_checksums=not args.no_verify,
                      download=args.download, config=args.config)
  except FileNotFoundError as e:
    parser.exit(2, f'{parser.prog}: error: {e}\n')
  elapsed = time.perf_counter() - start
  for split, info in sorted(builder.info.splits.items()):
    print(f'{split}: {info.num_examples} examples')
  print(f'prepared in {elapsed:.1f} s: {builder.data_dir}')


if __name__ == '__main__':
  main()
