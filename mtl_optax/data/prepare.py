"""Command line: prepare one of this package's tfds datasets (no TensorFlow).

::

    python -m mtl_optax.data.prepare multi_mnist --data-dir OUT --manual-dir MNIST_DIR  # or --download
    python -m mtl_optax.data.prepare cifar100_mt --data-dir OUT --manual-dir DIR  # or --download
    python -m mtl_optax.data.prepare cityscapes --data-dir OUT --manual-dir CITYSCAPES
    python -m mtl_optax.data.prepare nyuv2 --data-dir OUT --manual-dir NYUV2_MTAN
    python -m mtl_optax.data.prepare seven_scenes --data-dir OUT --manual-dir 7SCENES \\
        [--config chess --config fire ...]   # default: all seven scenes
    python -m mtl_optax.data.prepare office31 --data-dir OUT --manual-dir OFFICE31
    python -m mtl_optax.data.prepare office_home --data-dir OUT --manual-dir OFFICE_HOME
    python -m mtl_optax.data.prepare celeb_a_jpegs --data-dir OUT --manual-dir CELEBA

Each module's doc says what the manual directory must hold. MultiMNIST and
CIFAR-100 download their files only with ``--download``; a missing manual
directory is an immediate error naming it. The command prints each split's
size and the time taken. ``celeb_a`` is tfds' own dataset (prepare it with
tfds in ArrayRecord format, which needs TensorFlow), or ``celeb_a_jpegs``
from CelebA's own files (``mtl_optax.data.celeb_a``; load it with
``source='jpegs'``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

import tensorflow_datasets as tfds

from mtl_optax.data import celeb_a
from mtl_optax.data import cifar100_mt
from mtl_optax.data import cityscapes
from mtl_optax.data import multi_mnist
from mtl_optax.data import nyuv2
from mtl_optax.data import office
from mtl_optax.data import seven_scenes

BUILDERS = {
    'multi_mnist': multi_mnist.MultiMnist,
    'cifar100_mt': cifar100_mt.Cifar100Mt,
    'cityscapes': cityscapes.CityscapesMtl,
    'nyuv2': nyuv2.Nyuv2Mtan,
    'seven_scenes': seven_scenes.SevenScenes,
    'office31': office.Office31,
    'office_home': office.OfficeHome,
    'celeb_a_jpegs': celeb_a.CelebAJpegs,
}


def prepare(name: str, *, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None = None,
            config=None, verify_checksums: bool = True,
            download: bool = False):
  """Prepares dataset ``name`` (a key of ``BUILDERS``) in ``data_dir``.

  Args:
    name: ``'multi_mnist'``, ``'cifar100_mt'``, ``'cityscapes'``,
      ``'nyuv2'``, ``'seven_scenes'``, ``'office31'``, ``'office_home'`` or
      ``'celeb_a_jpegs'``.
    data_dir: tfds data directory to write into.
    manual_dir: directory with the source files (see the dataset's module).
    config: builder config (name or instance), e.g. a 7-Scenes scene, or an
      ``office.OfficeConfig`` (image size, split fractions and seed).
    verify_checksums: check downloaded/manual files' SHA256 where known.
    download: download the source files that ``manual_dir`` does not hold
      (``multi_mnist``, ``cifar100_mt``). Default False: nothing is
      downloaded.

  Returns:
    The prepared builder.

  Raises:
    FileNotFoundError: at once if ``manual_dir`` is given and is not a
      directory, or is needed (no ``download``) and not given; the message
      names the path and what it must hold.
  """
  try:
    cls = BUILDERS[name]
  except KeyError:
    raise KeyError(f'Unknown dataset {name!r}; known: {sorted(BUILDERS)}.'
                   ) from None
  builder = cls(data_dir=os.fspath(data_dir), config=config,
                verify_checksums=verify_checksums, download=download)
  if not builder.is_prepared():
    cls.check_manual_dir(manual_dir, download=download)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir)))
  return builder


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m mtl_optax.data.prepare', description=__doc__.split('\n')[0])
  parser.add_argument('name', choices=sorted(BUILDERS))
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--manual-dir', default=None,
                      help='directory with the source files (see the '
                           "dataset's module doc)")
  parser.add_argument('--download', action='store_true',
                      help='download the source files (multi_mnist, '
                           'cifar100_mt) that --manual-dir does not hold')
  parser.add_argument('--config', action='append', default=None,
                      help='builder config (repeatable); seven_scenes: default '
                           'every scene\'s whole frames (chess_full, ...), or '
                           'scene names for the stored central crops')
  parser.add_argument('--no-verify', action='store_true',
                      help='skip SHA256 checks of the source files')
  args = parser.parse_args(argv)
  configs = args.config
  if configs is None:
    # 7-Scenes: the whole frames, which the config crops (randomly for
    # training, centrally for evaluation); '--config chess' etc. prepare the
    # stored central crops instead.
    configs = ([f'{s}_full' for s in seven_scenes.SCENES]
               if args.name == 'seven_scenes' else [None])
  for config in configs:
    start = time.perf_counter()
    try:
      builder = prepare(args.name, data_dir=args.data_dir,
                        manual_dir=args.manual_dir, config=config,
                        verify_checksums=not args.no_verify,
                        download=args.download)
    except FileNotFoundError as e:
      parser.exit(2, f'{parser.prog}: error: {e}\n')
    elapsed = time.perf_counter() - start
    label = builder.name + (f'/{config}' if config else '')
    for split, info in sorted(builder.info.splits.items()):
      print(f'{label} {split}: {info.num_examples} examples')
    print(f'{label} prepared in {elapsed:.1f} s: {builder.data_dir}')


if __name__ == '__main__':
  main()
