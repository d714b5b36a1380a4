"""CelebA prepared from its published files without TensorFlow
(celeb_a.CelebAJpegs), on files the test writes."""

import numpy as np
import pytest
from PIL import Image

from mtl_optax import data
from mtl_optax.data import celeb_a
from mtl_optax.data import image_ops
from mtl_optax.data import prepare

PARTS = [0, 0, 0, 1, 2, 0, 1]     # list_eval_partition: train, val, test


def _write(root, *, parts=PARTS, names=celeb_a.TASKS, seed=0):
  rng = np.random.default_rng(seed)
  (root / celeb_a.IMAGES_DIR).mkdir(parents=True)
  files = [f'{i + 1:06d}.jpg' for i in range(len(parts))]
  attrs = rng.choice([-1, 1], size=(len(files), 40))
  for f in files:
    pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / celeb_a.IMAGES_DIR / f, quality=95)
  lines = [str(len(files)), ' '.join(names)]
  lines += [f + '  ' + ' '.join(f'{v:2d}' for v in row)
            for f, row in zip(files, attrs)]
  (root / celeb_a.ATTRIBUTES_FILE).write_text('\n'.join(lines) + '\n')
  (root / celeb_a.PARTITION_FILE).write_text(
      ''.join(f'{f} {p}\n' for f, p in zip(files, parts)))
  return files, attrs


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('celeba')
  files, attrs = _write(root / 'manual')
  prepare.prepare('celeb_a_jpegs', data_dir=root / 'tfds',
                  manual_dir=root / 'manual')
  return root, files, attrs


def _expected_image(path):
  with Image.open(path) as img:
    rgb = np.asarray(img.convert('RGB'), np.uint8)
  small = np.round(image_ops.resize_area(rgb, (64, 64)))
  return np.clip(small, 0, 255) / 255.0


def test_splits_labels_and_pixels(prepared):
  root, files, attrs = prepared
  for split, part in (('train', 0), ('validation', 1), ('test', 2)):
    chosen = [i for i, p in enumerate(PARTS) if p == part]
    assert data.num_examples('celeb_a', split, data_dir=root / 'tfds',
                             source='jpegs') == len(chosen)
    batch = next(iter(data.load(
        'celeb_a', split, data_dir=root / 'tfds', source='jpegs',
        batch_size=len(chosen), shuffle=False, num_epochs=1, prefetch=0,
        process_index=0, process_count=1)))
    assert batch['image'].shape == (len(chosen), 64, 64, 3)
    for j, i in enumerate(chosen):
      np.testing.assert_allclose(
          batch['image'][j],
          _expected_image(root / 'manual' / celeb_a.IMAGES_DIR / files[i]),
          atol=1e-6)
      for k, name in enumerate(celeb_a.TASKS):
        assert batch[name][j] == int(attrs[i, k] == 1), (name, i)


def test_missing_or_malformed_files_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    prepare.prepare('celeb_a_jpegs', data_dir=tmp_path / 'tfds',
                    manual_dir=tmp_path / 'nowhere')
  files, _ = _write(tmp_path / 'a')
  (tmp_path / 'a' / celeb_a.IMAGES_DIR / files[2]).unlink()
  with pytest.raises(FileNotFoundError, match=rf'1 images.*{files[2]}'):
    prepare.prepare('celeb_a_jpegs', data_dir=tmp_path / 'tfds_a',
                    manual_dir=tmp_path / 'a')
  _write(tmp_path / 'b', names=list(reversed(celeb_a.TASKS)))
  with pytest.raises(ValueError, match="not CelebA's 40"):
    prepare.prepare('celeb_a_jpegs', data_dir=tmp_path / 'tfds_b',
                    manual_dir=tmp_path / 'b')


def test_unprepared_and_unknown_sources_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare celeb_a_jpegs'):
    celeb_a.data_source('train', data_dir=tmp_path, source='jpegs')
  with pytest.raises(ValueError, match="source must be one of"):
    celeb_a.data_source('train', data_dir=tmp_path, source='jpeg')
