"""Tests of the dataset builders and preprocessing in mtl_optax.data.

Every builder is prepared (without TensorFlow) from tiny files written to
tmp_path; tfds' own celeb_a and cifar100 are read through
tfds.testing.mock_data. References are computed here independently of the
library's helpers.
"""

import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fake_mnist

from mtl_optax import data
from mtl_optax.data import builder_base
from mtl_optax.data import celeb_a
from mtl_optax.data import cifar100_mt
from mtl_optax.data import cityscapes
from mtl_optax.data import multi_mnist
from mtl_optax.data import nyuv2
from mtl_optax.data import prepare as prepare_module
from mtl_optax.data import seven_scenes

USE_CODE = tfds.testing.MockPolicy.USE_CODE


def _all_batches(it):
  batches = list(it)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _block_mean(x, k):
  """Mean over k×k blocks of [H, W, ...] (exact area resize by 1/k)."""
  h, w = x.shape[:2]
  return x.astype(np.float64).reshape(h // k, k, w // k, k,
                                      *x.shape[2:]).mean(axis=(1, 3))


# ---------------------------------------------------------------- MultiMNIST


def _reference_overlay(top_left, bottom_right, config='sener_koltun'):
  """The documented construction, pixel by pixel: 36² canvas, max, resize.

  'sener_koltun': offset 6 and PIL's nearest-neighbour resize (what the
  papers' code calls); 'area': offset 8 and a 9/7 box filter.
  """
  offset = {'sener_koltun': 6, 'area': 8}[config]
  canvas = np.zeros((36, 36))
  for r in range(28):
    for c in range(28):
      canvas[r, c] = top_left[r, c]
  for r in range(28):
    for c in range(28):
      canvas[r + offset, c + offset] = max(canvas[r + offset, c + offset],
                                           bottom_right[r, c])
  if config == 'sener_koltun':
    return np.asarray(Image.fromarray(canvas.astype(np.uint8)).resize(
        (28, 28), Image.NEAREST))
  # 36 -> 28 is a factor 9/7: on a 7x finer grid each output pixel is a 9x9
  # block.
  fine = np.kron(canvas, np.ones((7, 7)))
  out = fine.reshape(28, 9, 28, 9).mean(axis=(1, 3))
  return np.rint(out).astype(np.uint8)


def _hand_digits():
  a = np.zeros((28, 28), np.uint8)
  a[4:24, 12:16] = 255                        # vertical bar
  b = np.zeros((28, 28), np.uint8)
  b[10:14, 2:26] = 200                         # horizontal bar
  b[20:28, 20:28] = 90                         # bottom-right block
  c = np.zeros((28, 28), np.uint8)
  c[:, :] = np.arange(28, dtype=np.uint8)[None, :] * 9   # a ramp
  d = np.eye(28, dtype=np.uint8) * 250                    # a diagonal
  return np.stack([a, b, c, d])


@pytest.mark.parametrize('config', ['sener_koltun', 'area'])
def test_overlay_matches_the_pixelwise_reference(config):
  digits = _hand_digits()
  pairs = [(0, 1), (1, 0), (2, 3), (3, 2), (1, 2)]
  got = multi_mnist.overlay(digits[[p[0] for p in pairs]],
                            digits[[p[1] for p in pairs]], config=config)
  for k, (i, j) in enumerate(pairs):
    np.testing.assert_array_equal(
        got[k], _reference_overlay(digits[i], digits[j], config))


def test_unknown_multi_mnist_config_names_the_configs():
  with pytest.raises(ValueError, match="'area', 'sener_koltun'"):
    multi_mnist.overlay(_hand_digits(), _hand_digits(), config='bilinear')


def test_pairing_is_deterministic_uniform_and_never_self():
  n = 2000
  j = multi_mnist.partner_indices(n, seed=0)
  np.testing.assert_array_equal(j, multi_mnist.partner_indices(n, seed=0))
  assert not np.array_equal(j, multi_mnist.partner_indices(n, seed=1))
  offsets = (j - np.arange(n)) % n
  assert offsets.min() >= 1 and offsets.max() <= n - 1
  # Uniform offsets in [1, n): mean n/2, sd of the mean ~ n/sqrt(12 n).
  assert abs(offsets.mean() - n / 2) < 4 * n / np.sqrt(12 * n)
  with pytest.raises(ValueError):
    multi_mnist.partner_indices(1, seed=0)


def test_make_multi_mnist_labels_follow_the_pairing():
  digits = _hand_digits()
  labels = np.array([3, 1, 4, 1])
  out = multi_mnist.make_multi_mnist(digits, labels, seed=5, chunk_size=3)
  j = (np.arange(4) + np.random.default_rng(5).integers(1, 4, size=4)) % 4
  np.testing.assert_array_equal(out['left'], labels)
  np.testing.assert_array_equal(out['right'], labels[j])
  for i in range(4):
    np.testing.assert_array_equal(out['image'][i, :, :, 0],
                                  _reference_overlay(digits[i], digits[j[i]]))
  assert out['left'].dtype == np.int32 and out['image'].dtype == np.uint8


def test_idx_reader_parses_hand_written_bytes(tmp_path):
  raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
  (tmp_path / 'a-idx3-ubyte').write_bytes(raw)
  np.testing.assert_array_equal(multi_mnist.read_idx(tmp_path / 'a-idx3-ubyte'),
                                [[[1, 2, 3]], [[4, 5, 6]]])
  x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  multi_mnist.write_idx(tmp_path / 'b.gz', x)
  np.testing.assert_array_equal(multi_mnist.read_idx(tmp_path / 'b.gz'), x)
  (tmp_path / 'bad').write_bytes(b'\x08\x03\x00\x00')
  with pytest.raises(ValueError, match='IDX'):
    multi_mnist.read_idx(tmp_path / 'bad')


@pytest.fixture(scope='module')
def prepared_multi_mnist(tmp_path_factory):
  root = tmp_path_factory.mktemp('multi_mnist')
  mnist_dir = root / 'mnist'
  mnist_dir.mkdir()
  splits = fake_mnist.write_mnist(mnist_dir, n_train=6, n_test=4, seed=1)
  for config in ('sener_koltun', 'area'):
    multi_mnist.prepare(data_dir=root / 'tfds', mnist_dir=mnist_dir,
                        verify_checksums=False, config=config)
  return root, splits


def test_multi_mnist_builder_and_load(prepared_multi_mnist):
  root, splits = prepared_multi_mnist
  for split, seed in (('train', 0), ('test', 1)):
    images, labels = splits[split]
    n = len(labels)
    assert data.num_examples('multi_mnist', split, data_dir=root / 'tfds') == n
    it = data.load('multi_mnist', split, data_dir=root / 'tfds', batch_size=3,
                   shuffle=False, drop_remainder=False, num_epochs=1)
    batch = next(iter(it))
    assert set(batch) == {'image', 'left', 'right'}
    assert batch['image'].dtype == np.float32
    assert batch['image'].shape == (3, 28, 28, 1)
    assert batch['left'].dtype == batch['right'].dtype == np.int32
    it.set_state({'epoch': 0, 'step': 0})
    got = _all_batches(it)
    j = (np.arange(n) + np.random.default_rng(seed).integers(1, n, n)) % n
    np.testing.assert_array_equal(got['left'], labels)
    np.testing.assert_array_equal(got['right'], labels[j])
    for i in range(n):
      want = _reference_overlay(images[i], images[j[i]]) / 255.0
      np.testing.assert_allclose(got['image'][i, :, :, 0], want, atol=1e-6)
    # The other geometry, by the load option.
    area = _all_batches(data.load(
        'multi_mnist', split, data_dir=root / 'tfds', batch_size=3,
        shuffle=False, drop_remainder=False, num_epochs=1, config='area'))
    np.testing.assert_array_equal(area['right'], labels[j])
    for i in range(n):
      want = _reference_overlay(images[i], images[j[i]], 'area') / 255.0
      np.testing.assert_allclose(area['image'][i, :, :, 0], want, atol=1e-6)
  # The builder is registered with tfds under its name.
  assert len(tfds.data_source('multi_mnist', split='test',
                              data_dir=root / 'tfds')) == 4
  # The record-by-record path (not in memory) gives the same batches.
  a = next(data.load('multi_mnist', 'train', data_dir=root / 'tfds',
                     batch_size=4, seed=3, in_memory=False))
  b = next(data.load('multi_mnist', 'train', data_dir=root / 'tfds',
                     batch_size=4, seed=3, in_memory=True))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # normalize=True: MNIST's mean and std, as the papers' code; labels kept.
  c = next(data.load('multi_mnist', 'train', data_dir=root / 'tfds',
                     batch_size=4, seed=3, normalize=True))
  np.testing.assert_allclose(c['image'], (b['image'] - 0.1307) / 0.3081,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(c['left'], b['left'])
  with pytest.raises(ValueError, match='normalize must be True or False'):
    next(data.load('multi_mnist', 'train', data_dir=root / 'tfds',
                   batch_size=4, normalize='mnist'))


def test_multi_mnist_checksums_are_verified(prepared_multi_mnist, tmp_path):
  root, _ = prepared_multi_mnist
  with pytest.raises(ValueError, match='SHA256'):
    multi_mnist.prepare(data_dir=tmp_path, mnist_dir=root / 'mnist')
  # The published checksums are the ones of tfds' MNIST mirror.
  infos = multi_mnist.MultiMnist.url_infos
  assert len(infos) == 4
  assert all(url.startswith(multi_mnist.MNIST_URL) for url in infos)


def test_multi_mnist_command_line(prepared_multi_mnist, tmp_path, capsys):
  root, _ = prepared_multi_mnist
  multi_mnist.main(['--data-dir', str(tmp_path), '--mnist-dir',
                    str(root / 'mnist'), '--no-verify'])
  out = capsys.readouterr().out
  assert 'test: 4 examples' in out and 'train: 6 examples' in out


# ---------------------------------------------------------------- CIFAR-100


def test_cifar100_hierarchy_table():
  counts = np.bincount(cifar100_mt.FINE_TO_COARSE, minlength=20)
  assert counts.tolist() == [5] * 20
  # A few fine classes (alphabetical CIFAR-100 ids) and their superclasses.
  known = {0: 'fruit_and_vegetables',    # apple
           4: 'aquatic_mammals',         # beaver
           8: 'vehicles_1',              # bicycle
           47: 'trees',                  # maple_tree
           89: 'vehicles_2',             # tractor
           95: 'aquatic_mammals',        # whale
           98: 'people'}                 # woman
  for fine, coarse in known.items():
    assert cifar100_mt.TASKS[cifar100_mt.FINE_TO_COARSE[fine]] == coarse


def test_cifar100_mt_batches_from_mock_data(tmp_path, monkeypatch):
  # tfds' own builder, unprepared under mock_data, leaves an empty
  # temporary directory (see the test below): keep it in tmp_path.
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  with tfds.testing.mock_data(num_examples=12, policy=USE_CODE):
    raw = cifar100_mt.data_source('train', source='tfds')
    fine = np.array([int(raw[i]['label']) for i in range(12)])
    images = np.stack([raw[i]['image'] for i in range(12)])
    it = data.load('cifar100_mt', 'train', source='tfds', batch_size=4,
                   shuffle=False, num_epochs=1)
    got = _all_batches(it)
  assert set(got) == {'image', *cifar100_mt.TASKS}
  assert got['image'].shape == (12, 32, 32, 3)
  assert got['image'].dtype == np.float32
  np.testing.assert_allclose(got['image'], images / 255.0, atol=1e-6)
  table = cifar100_mt.FINE_TO_COARSE
  for i, f in enumerate(fine):
    members = sorted(np.flatnonzero(table == table[f]).tolist())
    for t, name in enumerate(cifar100_mt.TASKS):
      assert got[name].dtype == np.int32
      want = members.index(f) if t == table[f] else -1
      assert got[name][i] == want


def _write_cifar_tarball(path, splits):
  import io
  import tarfile
  with tarfile.open(path, 'w:gz') as tar:
    for split, (images, fine, coarse) in splits.items():
      raw = b''.join(bytes([c, f]) + img.transpose(2, 0, 1).tobytes()
                     for img, f, c in zip(images, fine, coarse))
      info = tarfile.TarInfo(f'cifar-100-binary/{split}.bin')
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))


def test_cifar100_mt_builder_from_the_binary_tarball(tmp_path):
  rng = np.random.default_rng(0)
  table = cifar100_mt.FINE_TO_COARSE
  splits = {}
  for split, n in (('train', 7), ('test', 3)):
    fine = rng.integers(0, 100, n)
    splits[split] = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     fine, table[fine])
  (tmp_path / 'manual').mkdir()
  _write_cifar_tarball(tmp_path / 'manual' / cifar100_mt.CIFAR100_FILE, splits)
  config = tfds.download.DownloadConfig(manual_dir=tmp_path / 'manual')
  with pytest.raises(ValueError, match='SHA256'):
    cifar100_mt.Cifar100Mt(data_dir=tmp_path / 'x').download_and_prepare(
        download_config=config)
  cifar100_mt.Cifar100Mt(data_dir=tmp_path / 'tfds', verify_checksums=False
                         ).download_and_prepare(download_config=config)
  got = _all_batches(data.load('cifar100_mt', 'train', data_dir=tmp_path / 'tfds',
                               batch_size=7, shuffle=False, num_epochs=1))
  images, fine, coarse = splits['train']
  np.testing.assert_allclose(got['image'], images / 255.0, atol=1e-6)
  for i in range(7):
    labels = [got[name][i] for name in cifar100_mt.TASKS]
    assert [t for t, l in enumerate(labels) if l >= 0] == [coarse[i]]
    members = np.flatnonzero(table == coarse[i]).tolist()
    assert labels[coarse[i]] == members.index(fine[i])
  assert data.num_examples('cifar100_mt', 'test', data_dir=tmp_path / 'tfds') == 3
  # A record whose coarse label contradicts the hierarchy is refused.
  images, fine, coarse = splits['test']
  splits['test'] = (images, fine, (coarse + 1) % 20)
  (tmp_path / 'bad').mkdir()
  _write_cifar_tarball(tmp_path / 'bad' / cifar100_mt.CIFAR100_FILE, splits)
  with pytest.raises(ValueError, match='FINE_TO_COARSE'):
    cifar100_mt.Cifar100Mt(data_dir=tmp_path / 'y', verify_checksums=False
                           ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / 'bad'))


# ---------------------------------------------------------------- CelebA


def test_celeb_a_batches_from_mock_data(tmp_path, monkeypatch):
  # tfds' own builder, unprepared under mock_data, leaves an empty
  # temporary directory (see the test below): keep it in tmp_path.
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  with tfds.testing.mock_data(num_examples=5, policy=USE_CODE):
    raw = celeb_a.data_source('validation')
    records = [raw[i] for i in range(5)]
    it = data.load('celeb_a', 'validation', batch_size=5, shuffle=False,
                   num_epochs=1, image_size=16)
    got = next(it)
  assert len(celeb_a.TASKS) == 40 and celeb_a.TASKS[20] == 'Male'
  assert set(got) == {'image', *celeb_a.TASKS}
  assert got['image'].shape == (5, 16, 16, 3)
  assert got['image'].dtype == np.float32
  assert 0.0 <= got['image'].min() and got['image'].max() <= 1.0
  for name in celeb_a.TASKS:
    assert got[name].dtype == np.int32
    np.testing.assert_array_equal(
        got[name], [int(bool(r['attributes'][name])) for r in records])
  # Default size 64: the area resize of the whole 218x178 face.
  big = celeb_a.preprocess({'image': np.stack([r['image'] for r in records]),
                            'attributes': {n: np.zeros(5, bool)
                                           for n in celeb_a.TASKS}})
  assert big['image'].shape == (5, 64, 64, 3)
  np.testing.assert_allclose(big['image'].mean(axis=(1, 2)),
                             np.stack([r['image'] for r in records]).mean(
                                 axis=(1, 2)) / 255, rtol=2e-3)


# ---------------------------------------------------------------- Cityscapes


def _write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _fake_cityscapes(root, rng):
  """Two train and one val frame of 16x32 (stored at 4x8)."""
  frames = {}
  for split, names in (('train', ('aachen_000000_000019', 'bochum_000000_000313')),
                       ('val', ('frankfurt_000000_000294',))):
    for stem in names:
      city = stem.split('_')[0]
      image = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
      ids = rng.choice(np.array([0, 7, 9, 23, 26], np.uint8), (16, 32))
      inst = ids.astype(np.uint16)
      inst[2:10, 4:14] = 26000                # car instance 0
      inst[6:16, 16:30] = 24001               # person instance 1
      inst[0:4, 28:32] = 26002                # car instance 2
      disp = rng.integers(0, 5000, (16, 32)).astype(np.uint16)
      _write_png(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png',
                 image)
      gt = root / 'gtFine' / split / city
      _write_png(gt / f'{stem}_gtFine_labelIds.png', ids)
      _write_png(gt / f'{stem}_gtFine_instanceIds.png', inst)
      _write_png(root / 'disparity' / split / city / f'{stem}_disparity.png',
                 disp)
      frames.setdefault(split, []).append((image, ids, inst, disp))
  return frames


def _reference_offsets(inst):
  off = np.zeros(inst.shape + (2,))
  for k in np.unique(inst):
    if k < 1000:
      continue
    ys, xs = np.nonzero(inst == k)
    for y, x in zip(ys, xs):
      off[y, x] = (xs.mean() - x, ys.mean() - y)
  return off


def test_cityscapes_builder_and_both_task_sets(tmp_path):
  frames = _fake_cityscapes(tmp_path / 'manual', np.random.default_rng(0))
  config = cityscapes.CityscapesMtlConfig(name='test4x8', size=(4, 8))
  builder = cityscapes.CityscapesMtl(data_dir=tmp_path / 'tfds', config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=tmp_path / 'manual'))
  assert builder.info.splits['train'].num_examples == 2
  assert builder.info.splits['validation'].num_examples == 1

  got = _all_batches(data.load('cityscapes', 'train', data_dir=tmp_path / 'tfds',
                               config=config, batch_size=1, shuffle=False,
                               num_epochs=1))
  assert set(got) == {'image', 'segmentation', 'instance', 'instance_mask',
                      'depth'}
  train_id = {0: -1, 7: 0, 9: -1, 23: 10, 26: 13}
  for i, (image, ids, inst, disp) in enumerate(frames['train']):   # sorted
    np.testing.assert_allclose(got['image'][i],
                               np.rint(_block_mean(image, 4)) / 255, atol=1e-6)
    sub_ids, sub_inst, sub_disp = ids[2::4, 2::4], inst[2::4, 2::4], disp[2::4, 2::4]
    np.testing.assert_array_equal(got['segmentation'][i],
                                  np.vectorize(train_id.get)(sub_ids))
    np.testing.assert_allclose(got['instance'][i], _reference_offsets(sub_inst),
                               atol=1e-5)
    np.testing.assert_array_equal(got['instance_mask'][i], sub_inst >= 1000)
    want_disp = np.where(sub_disp > 0, (sub_disp - 1.0) / 256, 0) * (8 / 32)
    np.testing.assert_allclose(got['depth'][i, ..., 0], want_disp, rtol=1e-6)
  assert got['segmentation'].dtype == np.int32
  assert got['instance'].shape == (2, 4, 8, 2)
  assert got['instance_mask'].dtype == got['depth'].dtype == np.float32

  mtan = next(data.load('cityscapes_mtan', 'validation',
                        data_dir=tmp_path / 'tfds', config=config,
                        batch_size=1, shuffle=False))
  assert set(mtan) == {'image', 'segmentation', 'depth'}
  category = {0: -1, 7: 0, 9: 0, 23: 4, 26: 6}
  np.testing.assert_array_equal(
      mtan['segmentation'][0],
      np.vectorize(category.get)(frames['val'][0][1][2::4, 2::4]))


def test_cityscapes_label_tables():
  assert len(cityscapes.CLASS_NAMES) == 19
  assert cityscapes.CLASS_NAMES[:3] == ('road', 'sidewalk', 'building')
  assert cityscapes.CLASS_NAMES[-1] == 'bicycle'
  assert sorted(set(cityscapes.TRAIN_ID[:34]) - {-1}) == list(range(19))
  assert sorted(set(cityscapes.CATEGORY_7[:34]) - {-1}) == list(range(7))
  assert cityscapes.TRAIN_ID[255] == cityscapes.CATEGORY_7[255] == -1


# ---------------------------------------------------------------- NYUv2


def test_nyuv2_builder_via_the_command_line(tmp_path, capsys):
  rng = np.random.default_rng(0)
  h, w = nyuv2.IMAGE_SIZE
  written = {}
  for folder, n in (('train', 2), ('val', 1)):
    for kind in ('image', 'label', 'depth', 'normal'):
      (tmp_path / 'manual' / folder / kind).mkdir(parents=True)
    for i in range(n):
      arrays = {
          'image': rng.random((h, w, 3)).astype(np.float32),
          'label': rng.integers(-1, 13, (h, w)).astype(np.float32),
          'depth': rng.random((h, w, 1)).astype(np.float32) * 10,
          'normal': rng.normal(size=(h, w, 3)).astype(np.float32),
      }
      for kind, a in arrays.items():
        np.save(tmp_path / 'manual' / folder / kind / f'{i}.npy', a)
      written.setdefault(folder, []).append(arrays)
  data.prepare.main(['nyuv2', '--data-dir', str(tmp_path / 'tfds'),
                     '--manual-dir', str(tmp_path / 'manual')])
  out = capsys.readouterr().out
  assert 'nyuv2_mtan train: 2 examples' in out
  assert 'nyuv2_mtan validation: 1 examples' in out
  got = _all_batches(data.load('nyuv2', 'train', data_dir=tmp_path / 'tfds',
                               batch_size=1, shuffle=False, num_epochs=1))
  assert set(got) == {'image', 'segmentation', 'depth', 'normals'}
  assert got['image'].shape == (2, h, w, 3)
  assert got['segmentation'].dtype == np.int32
  for i, arrays in enumerate(written['train']):
    np.testing.assert_allclose(got['image'][i], arrays['image'], atol=0.5 / 255
                               + 1e-6)
    np.testing.assert_array_equal(got['segmentation'][i], arrays['label'])
    np.testing.assert_array_equal(got['depth'][i], arrays['depth'])
    np.testing.assert_array_equal(got['normals'][i], arrays['normal'])
  assert data.num_examples('nyuv2', 'validation', data_dir=tmp_path / 'tfds') == 1
  with pytest.raises(ValueError, match='shape'):
    nyuv2.make_example(image=np.zeros((4, 4, 3)), label=np.zeros((4, 4)),
                       depth=np.zeros((4, 4)), normal=np.zeros((4, 4, 3)))


# ---------------------------------------------------------------- 7-Scenes


def _random_rotation(rng):
  q = rng.normal(size=4)
  w, x, y, z = q / np.linalg.norm(q)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_rotation_to_quaternion_matches_scipy():
  from scipy.spatial.transform import Rotation
  rng = np.random.default_rng(0)
  rotations = np.stack([_random_rotation(rng) for _ in range(50)])
  rotations = np.concatenate([rotations, [np.diag([1., -1, -1]),   # w = 0
                                          np.diag([-1., 1, -1])]])
  got = seven_scenes.rotation_to_quaternion(rotations)
  xyzw = Rotation.from_matrix(rotations).as_quat()
  want = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
  want = np.where(want[:, :1] < 0, -want, want)
  # At w = 0 both q and -q have w >= 0: compare up to sign there.
  sign = np.sign(np.sum(got * want, axis=1, keepdims=True))
  np.testing.assert_allclose(got, want * sign, atol=1e-9)
  assert (got[:, 0] >= 0).all()
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-12)
  # Slightly non-orthonormal input (as in the released pose files).
  noisy = rotations[:5] + 1e-4 * rng.normal(size=(5, 3, 3))
  np.testing.assert_allclose(
      np.abs(np.sum(seven_scenes.rotation_to_quaternion(noisy) * got[:5], 1)),
      1, atol=1e-6)


def test_seven_scenes_builder(tmp_path):
  rng = np.random.default_rng(0)
  scene = tmp_path / 'manual' / 'chess'
  frames = {}
  for seq in (1, 2, 3):
    (scene / f'seq-{seq:02d}').mkdir(parents=True)
    for f in range(2):
      image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
      pose = np.eye(4)
      pose[:3, :3] = _random_rotation(rng)
      pose[:3, 3] = rng.normal(size=3)
      Image.fromarray(image).save(scene / f'seq-{seq:02d}' /
                                  f'frame-{f:06d}.color.png')
      np.savetxt(scene / f'seq-{seq:02d}' / f'frame-{f:06d}.pose.txt', pose)
      frames[seq, f] = (image, pose)
  (scene / 'TrainSplit.txt').write_text('sequence1\nsequence3\n')
  (scene / 'TestSplit.txt').write_text('sequence2\n')
  config = seven_scenes.SevenScenesConfig(name='tiny', scene='chess',
                                          short_side=6, crop=4)
  builder = seven_scenes.SevenScenes(data_dir=tmp_path / 'tfds', config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=tmp_path / 'manual'))
  got = _all_batches(data.load('seven_scenes', 'train',
                               data_dir=tmp_path / 'tfds', scene=config,
                               batch_size=2, shuffle=False, num_epochs=1))
  assert set(got) == {'image', 'translation', 'orientation'}
  keys = [(1, 0), (1, 1), (3, 0), (3, 1)]
  assert got['image'].shape == (4, 4, 4, 3)
  for i, key in enumerate(keys):
    image, pose = frames[key]
    # 12x16 -> 6x8 (a factor 2), central 4x4 crop: rows 1..4, cols 2..5.
    want = np.rint(_block_mean(image, 2))[1:5, 2:6] / 255
    np.testing.assert_allclose(got['image'][i], want, atol=1e-6)
    np.testing.assert_allclose(got['translation'][i], pose[:3, 3], rtol=1e-6)
    q = got['orientation'][i]
    assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-6
    np.testing.assert_allclose(_rotation_from(q), pose[:3, :3], atol=1e-5)
  assert data.num_examples('seven_scenes', 'test', data_dir=tmp_path / 'tfds',
                           scene=config) == 2
  # The real geometry: 480x640 -> 256x341, central 224 crop.
  assert seven_scenes.resize_and_crop(np.zeros((480, 640, 3), np.uint8),
                                      short_side=256, crop=224).shape == (
                                          224, 224, 3)


def _rotation_from(q):
  w, x, y, z = np.asarray(q, np.float64)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ---------------------------------------------------------------- registry


def test_registry():
  assert data.tasks('multi_mnist') == ('left', 'right')
  assert data.tasks('cityscapes') == ('segmentation', 'instance', 'depth')
  assert data.tasks('cityscapes_mtan') == ('segmentation', 'depth')
  assert len(data.tasks('celeb_a')) == 40
  assert len(data.tasks('cifar100_mt')) == 20
  assert sorted(data.DATASETS) == sorted([
      'multi_mnist', 'celeb_a', 'cifar100_mt', 'cityscapes', 'cityscapes_mtan',
      'nyuv2', 'seven_scenes', 'office31', 'office_home'])
  with pytest.raises(KeyError, match='Unknown dataset'):
    data.load('mnist3', 'train', batch_size=2)


@pytest.mark.parametrize('name', sorted(prepare_module.BUILDERS))
def test_builders_leave_no_temporary_directory(name, tmp_path, monkeypatch):
  # tfds' DatasetInfo.initialize_from_bucket, which a builder made for an
  # unprepared directory calls, makes a temporary directory it never
  # removes; ours skip that look-up (no metadata of ours is on GCS).
  temp = tmp_path / 'temp'
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  builder = prepare_module.BUILDERS[name](data_dir=tmp_path / 'data')
  assert isinstance(builder.info, builder_base.DatasetInfo)
  assert not builder.is_prepared()
  assert list(temp.iterdir()) == []
  # The trap is real: tfds' own look-up leaves a directory behind.
  tfds.core.DatasetInfo.initialize_from_bucket(builder.info)
  assert [p.name.endswith('tfds') for p in temp.iterdir()] == [True]
