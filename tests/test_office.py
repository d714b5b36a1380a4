"""The Office-31 and Office-Home builders, prepared from tiny images the tests
write in the layouts users download; references computed here (Pillow for
the resized pixels, the class folders for the labels)."""

import numpy as np
import pytest
from PIL import Image

from mtl_optax import data
from mtl_optax.data import office
from mtl_optax.data import prepare

CLASSES = ('mug', 'back_pack', 'Bike')       # sorted: Bike, back_pack, mug
SORTED = tuple(sorted(CLASSES))
SIZE = 8


def _write(root, dataset, counts, *, seed=0, suffix='.png', folders=None):
  """Writes ``counts[domain]`` 32×32 images per class; returns
  ``{domain: {relative path: (pixels, class name)}}``."""
  rng = np.random.default_rng(seed)
  written = {}
  for domain, per_class in counts.items():
    folder_name = (folders or {}).get(domain, domain)
    base = (root / folder_name / 'images' if dataset == 'office31'
            else root / folder_name)
    written[domain] = {}
    for name in CLASSES:
      (base / name).mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = base / name / f'frame_{i:04d}{suffix}'
        Image.fromarray(pixels).save(path)
        written[domain][path.relative_to(root).as_posix()] = (pixels, name)
  return written


def _config(**kwargs):
  return office.OfficeConfig(name='tiny', image_size=SIZE, num_classes=3,
                             **kwargs)


def _prepare(dataset, manual, data_dir, config=None):
  return prepare.prepare(dataset, data_dir=data_dir, manual_dir=manual,
                         config=config or _config())


def _records(dataset, data_dir, domain, split, config=None):
  source = office.data_source(split, task=domain, dataset=dataset,
                              data_dir=data_dir, config=config or _config())
  return [source[i] for i in range(len(source))]


COUNTS31 = {'amazon': 7, 'dslr': 3, 'webcam': 5}


def test_office31_builder_splits_labels_and_pixels(tmp_path):
  written = _write(tmp_path / 'manual', 'office31', COUNTS31)
  builder = _prepare('office31', tmp_path / 'manual', tmp_path / 'tfds')
  for domain, per_class in COUNTS31.items():
    n = 3 * per_class
    sizes = office.split_sizes(n)
    records = {split: _records('office31', tmp_path / 'tfds', domain, split)
               for split in office.SPLITS}
    assert [len(records[s]) for s in office.SPLITS] == list(sizes)
    assert [builder.info.splits[f'{domain}_{s}'].num_examples
            for s in office.SPLITS] == list(sizes)
    # Every image in exactly one split, with its class's sorted index and
    # Pillow's bilinear resize of its pixels.
    found = []
    for split in office.SPLITS:
      for record in records[split]:
        matches = [path for path, (pixels, _) in written[domain].items()
                   if np.array_equal(record['image'], np.asarray(
                       Image.fromarray(pixels).resize((SIZE, SIZE),
                                                      Image.BILINEAR)))]
        assert len(matches) == 1
        found.append(matches[0])
        name = written[domain][matches[0]][1]
        assert record['label'] == SORTED.index(name)
        assert record['image'].shape == (SIZE, SIZE, 3)
    assert sorted(found) == sorted(written[domain])
  # Stratified: with 7 images of each class, train holds 4 or 5 of each.
  train = _records('office31', tmp_path / 'tfds', 'amazon', 'train')
  assert set(np.bincount([r['label'] for r in train])) <= {4, 5}


def test_split_is_deterministic_and_seeded(tmp_path):
  _write(tmp_path / 'manual', 'office31', COUNTS31)

  def membership(data_dir, config):
    _prepare('office31', tmp_path / 'manual', data_dir, config)
    return [r['image'].tobytes() for r in _records(
        'office31', data_dir, 'amazon', 'test', config)]

  first = membership(tmp_path / 'a', _config())
  again = membership(tmp_path / 'b', _config())
  other = membership(tmp_path / 'c', _config(split_seed=1))
  assert first == again
  assert sorted(first) != sorted(other)


def test_split_assignment():
  labels = np.repeat(np.arange(4), [10, 7, 3, 1])
  a = office.split_assignment(labels, seed=5)
  np.testing.assert_array_equal(np.bincount(a), office.split_sizes(21))
  np.testing.assert_array_equal(a, office.split_assignment(labels, seed=5))
  assert not np.array_equal(a, office.split_assignment(labels, seed=6))
  for c, n in enumerate([10, 7, 3, 1]):
    share = np.bincount(a[labels == c], minlength=3)
    assert (np.abs(share - np.array(office.FRACTIONS) * n) <= 1).all()
  assert office.split_sizes(10, (0.5, 0.5, 0.0)) == (5, 5, 0)
  with pytest.raises(ValueError, match='summing to 1'):
    office.split_sizes(10, (0.6, 0.3, 0.3))


def test_office_home_layout_and_load(tmp_path):
  counts = {'Art': 2, 'Clipart': 3, 'Product': 2, 'Real_World': 4}
  # The released archive spells the last domain 'Real World'.
  _write(tmp_path / 'manual', 'office_home', counts, suffix='.jpg',
         folders={'Real_World': 'Real World'})
  builder = _prepare('office_home', tmp_path / 'manual', tmp_path / 'tfds')
  assert builder.info.splits['Real_World_train'].num_examples == (
      office.split_sizes(12)[0])
  it = data.load('office_home', 'train', data_dir=tmp_path / 'tfds',
                 config=_config(), batch_size=2, seed=0)
  assert isinstance(it, data.MultiInputLoader)
  assert it.tasks == office.DOMAINS['office_home']
  batch = next(it)
  assert set(batch) == set(it.tasks)
  for task, b in batch.items():
    assert set(b) == {'image', task}
    assert b['image'].shape == (2, SIZE, SIZE, 3)
    assert b['image'].dtype == np.float32 and b[task].dtype == np.int32
  evaluation = data.load('office_home', 'test', data_dir=tmp_path / 'tfds',
                         config=_config(), batch_size=2, shuffle=False,
                         drop_remainder=False, num_epochs=1)
  counts_seen = {}
  for b in evaluation.per_task():
    (task,) = b
    counts_seen[task] = counts_seen.get(task, 0) + len(b[task][task])
  assert counts_seen == {d: office.split_sizes(3 * n)[2]
                         for d, n in counts.items()}
  assert data.num_examples('office_home', 'test', data_dir=tmp_path / 'tfds',
                           config=_config()) == counts_seen


def test_wrong_layouts_are_clear_errors(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=r'<domain>/images/<class>'):
    office.list_images(missing, 'office31')
  # Office-Home's layout (no images/ level) where Office-31's is expected.
  flat = tmp_path / 'flat'
  _write(flat, 'office_home', {'amazon': 1, 'dslr': 1, 'webcam': 1})
  with pytest.raises(FileNotFoundError, match="'amazon/images'.*holds"):
    office.list_images(flat, 'office31', num_classes=3)
  partial = tmp_path / 'partial'
  _write(partial, 'office31', {'amazon': 1, 'dslr': 1})
  with pytest.raises(FileNotFoundError, match="domain 'webcam'"):
    office.list_images(partial, 'office31', num_classes=3)
  _write(partial, 'office31', {'webcam': 1})
  with pytest.raises(ValueError, match='expected 31'):
    office.list_images(partial, 'office31')
  (partial / 'webcam' / 'images' / 'desk').mkdir()
  with pytest.raises(ValueError, match='different class folders'):
    office.list_images(partial, 'office31', num_classes=3)
  (partial / 'webcam' / 'images' / 'desk').rmdir()
  for path in (partial / 'dslr' / 'images' / 'mug').iterdir():
    path.unlink()
  with pytest.raises(FileNotFoundError, match="'mug' of the domain 'dslr'"):
    office.list_images(partial, 'office31', num_classes=3)
  # The command line: an immediate error naming the layout, nothing written.
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(['office31', '--data-dir', str(tmp_path / 'tfds'),
                  '--manual-dir', str(missing)])
  assert exit_info.value.code == 2
  with pytest.raises(FileNotFoundError, match='<domain>/images/<class>'):
    prepare.prepare('office31', data_dir=tmp_path / 'tfds2',
                    manual_dir=flat, config=_config())


def test_data_source_errors(tmp_path):
  with pytest.raises(ValueError, match='domains'):
    office.data_source('train', task='Art', dataset='office31')
  with pytest.raises(ValueError, match='split must be one of'):
    office.tfds_split('val', 'amazon')
  with pytest.raises(FileNotFoundError, match='prepare office31'):
    office.data_source('train', task='amazon', data_dir=tmp_path)
  assert data.is_multi_input('office31') and data.is_multi_input('office_home')
  assert data.tasks('office_home') == ('Art', 'Clipart', 'Product',
                                       'Real_World')
  with pytest.raises(ValueError, match='in_memory'):
    data.load('office31', 'train', data_dir=tmp_path, batch_size=2,
              in_memory=True)
