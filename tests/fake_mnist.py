"""Tiny synthetic MNIST IDX files, and MultiMNIST prepared from them."""

import pathlib

import numpy as np

from mtl_optax.data import multi_mnist


def write_mnist(directory, *, n_train=8, n_test=4, seed=0):
  """Writes the four MNIST IDX files (random sparse digits) to ``directory``.

  Returns:
    ``{split: (images [n, 28, 28] uint8, labels [n] uint8)}``.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  splits = {}
  for split, n in (('train', n_train), ('test', n_test)):
    images = ((rng.random((n, 28, 28)) < 0.2) *
              rng.integers(1, 256, (n, 28, 28))).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    multi_mnist.write_idx(
        directory / multi_mnist.MNIST_FILES[f'{split}_images'], images)
    multi_mnist.write_idx(
        directory / multi_mnist.MNIST_FILES[f'{split}_labels'], labels)
    splits[split] = (images, labels)
  return splits


def prepare_multi_mnist(root, **sizes) -> pathlib.Path:
  """MultiMNIST prepared under ``root/tfds`` from ``write_mnist(**sizes)``;
  returns the tfds data directory."""
  root = pathlib.Path(root)
  write_mnist(root / 'mnist', **sizes)
  multi_mnist.prepare(data_dir=root / 'tfds', mnist_dir=root / 'mnist',
                      verify_checksums=False)
  return root / 'tfds'
