"""Seeded random hold-outs of a split ('train@holdoutN' / 'train@restN'),
as Sener & Koltun's Cityscapes protocol chooses hyper-parameters on 275
random training images."""

import numpy as np
import pytest

import fake_mnist
from mtl_optax import data
from mtl_optax.data import loader as loader_lib


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_mnist.prepare_multi_mnist(
      tmp_path_factory.mktemp('holdout'), n_train=120, n_test=20)


def _images(data_dir, split):
  batches = data.load('multi_mnist', split, data_dir=data_dir, batch_size=7,
                      shuffle=False, drop_remainder=False, num_epochs=1,
                      prefetch=0, process_index=0, process_count=1)
  return np.concatenate([b['image'] for b in batches])


def test_holdout_and_rest_partition_the_split(data_dir):
  whole = _images(data_dir, 'train')
  held = _images(data_dir, 'train@holdout30')
  rest = _images(data_dir, 'train@rest30')
  assert len(held) == 30 and len(rest) == 90
  assert data.num_examples('multi_mnist', 'train@holdout30',
                           data_dir=data_dir) == 30
  # Exactly the records the seeded draw names, in the split's order.
  idx_held, idx_rest = loader_lib.holdout_indices(120, 30, seed=0)
  np.testing.assert_array_equal(held, whole[idx_held])
  np.testing.assert_array_equal(rest, whole[idx_rest])
  # Random, not a contiguous slice; another seed draws others.
  assert np.diff(idx_held).max() > 1
  other = _images(data_dir, 'train@holdout30_seed1')
  assert not np.array_equal(other, held)


def test_holdout_of_a_slice(data_dir):
  whole = _images(data_dir, 'train[:60]')
  held = _images(data_dir, 'train[:60]@holdout10')
  idx_held, _ = loader_lib.holdout_indices(60, 10)
  np.testing.assert_array_equal(held, whole[idx_held])


@pytest.mark.parametrize('count', [0, 120, 500])
def test_impossible_holdouts_name_the_bound(data_dir, count):
  with pytest.raises(ValueError, match=r'0 < count < 120'):
    data.num_examples('multi_mnist', f'train@holdout{count}',
                      data_dir=data_dir)


def test_subset_source_reads_through_the_source():
  src = loader_lib.ArraySource({'x': np.arange(10) * 10})
  sub = loader_lib.SubsetSource(src, np.array([1, 4, 9]))
  assert len(sub) == 3 and int(sub[2]['x']) == 90
  assert loader_lib.gather(sub, np.array([2, 0]))['x'].tolist() == [90, 10]
  memory = loader_lib.read_into_memory(sub)
  assert memory.arrays['x'].tolist() == [10, 40, 90]
