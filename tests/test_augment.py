"""Tests of mtl_optax.data.augment and the augmented streams of data.load.

Known answers on synthetic images: flips against np.flip, 90° rotations
against np.rot90, marked pixels moved where the rotation sends them, the
fills outside the image, zooms of ramps and constant depth, instance offsets
against cityscapes.instance_offsets of the transformed instance map; and the
stream's determinism: per-example draws, resume, prefetch, processes,
threads, and the untouched evaluation path.
"""

import functools

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mtl_optax import data
from mtl_optax.data import augment
from mtl_optax.data import cityscapes
from mtl_optax.data import image_ops
from mtl_optax.data import loader as loader_lib
from mtl_optax.data import nyuv2
from mtl_optax.data import seven_scenes

CITY = {'image': 'image', 'segmentation': 'label', 'instance': 'offsets',
        'instance_mask': 'mask', 'depth': 'disparity'}
NYU = {'image': 'image', 'segmentation': 'label', 'depth': 'depth',
       'normals': 'normals'}


def _instances(h, w):
  """A Cityscapes-style instance-id map with three instances."""
  ids = np.zeros((h, w), np.int64)
  ids[2:9, 3:12] = 26000
  ids[10:h - 1, 14:w - 2] = 24001
  ids[0:4, w - 5:w] = 26002        # touches the border
  return ids


def _city_example(h=16, w=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = _instances(h, w)
  offsets, mask = cityscapes.instance_offsets(ids)
  return ids, {
      'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      'segmentation': rng.integers(-1, 19, (h, w)).astype(np.int32),
      'instance': offsets,
      'instance_mask': mask,
      'depth': rng.uniform(1, 50, (h, w, 1)).astype(np.float32),
  }


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _nyu_example(h=12, w=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      'segmentation': rng.integers(-1, 13, (h, w)).astype(np.int8),
      'depth': rng.uniform(0.5, 10, (h, w, 1)).astype(np.float32),
      'normals': _unit(rng.normal(size=(h, w, 3))),
  }


# ---------------------------------------------------------------- flips


def test_flip_is_np_flip_and_negates_horizontal_vectors():
  ids, ex = _city_example()
  out = augment.flip(ex, CITY)
  for key in ('image', 'segmentation', 'instance_mask', 'depth'):
    np.testing.assert_array_equal(out[key], np.flip(ex[key], axis=1))
    assert out[key].dtype == ex[key].dtype
  want = np.flip(ex['instance'], axis=1) * np.array([-1, 1], np.float32)
  np.testing.assert_array_equal(out['instance'], want)
  # The same as the offsets of the mirrored instance map.
  np.testing.assert_allclose(
      out['instance'], cityscapes.instance_offsets(np.flip(ids, axis=1))[0],
      atol=1e-5)

  nyu = _nyu_example()
  out = augment.flip(nyu, NYU)
  want = np.flip(nyu['normals'], axis=1) * np.array([-1, 1, 1], np.float32)
  np.testing.assert_array_equal(out['normals'], want)
  np.testing.assert_array_equal(out['depth'], np.flip(nyu['depth'], axis=1))
  assert out['segmentation'].dtype == np.int8


def test_random_flip_draws_once_with_probability_p():
  ex = {'x': np.arange(6.0).reshape(2, 3), 'pose': np.arange(3.0)}
  fields = {'x': 'image', 'pose': 'keep'}
  flips = []
  for i in range(400):
    rng = np.random.default_rng(i)
    out = augment.random_flip(ex, rng, fields=fields)
    flips.append(bool(out['x'][0, 0] == 2))
    np.testing.assert_array_equal(out['pose'], ex['pose'])
    ref = np.random.default_rng(i)
    ref.random()
    assert rng.random() == ref.random()            # exactly one draw taken
  assert 0.4 < np.mean(flips) < 0.6
  assert augment.random_flip(ex, np.random.default_rng(0), fields=fields,
                             p=0)['x'][0, 0] == 0


# ---------------------------------------------------------------- rotations


def test_rotation_by_90_degrees_is_rot90():
  n = 12
  ids, ex = _city_example(n, n)
  out = augment.rotate(ex, CITY, 90)
  for key in ('segmentation', 'instance_mask', 'depth'):
    np.testing.assert_array_equal(out[key], np.rot90(ex[key]))
    assert out[key].dtype == ex[key].dtype
  np.testing.assert_allclose(out['image'], np.rot90(ex['image']), atol=1e-4)
  assert out['image'].dtype == np.float32
  np.testing.assert_allclose(
      out['instance'], cityscapes.instance_offsets(np.rot90(ids))[0],
      atol=1e-5)
  # Clockwise is the inverse.
  back = augment.rotate(out, CITY, -90)
  np.testing.assert_array_equal(back['segmentation'], ex['segmentation'])


def test_positive_angles_turn_counter_clockwise():
  h, w = 64, 64
  lab = np.full((h, w), 0, np.int32)
  lab[32, 52] = 5                                  # right of the centre
  out = augment.rotate({'s': lab}, {'s': 'label'}, 90)['s']
  assert list(zip(*np.nonzero(out == 5))) == [(11, 32)]     # above it


@pytest.mark.parametrize('degrees', [7.0, -10.0, 30.0])
def test_a_marked_pixel_lands_where_the_rotation_sends_it(degrees):
  h, w = 40, 56
  r, c = 14, 35
  lab = np.zeros((h, w), np.int32)
  lab[r - 1:r + 2, c - 1:c + 2] = 7                # a 3x3 mark
  lab[r, c] = 9                                    # its centre pixel
  out = augment.rotate({'s': lab}, {'s': 'label'}, degrees)['s']
  t = np.deg2rad(degrees)
  dx, dy = c + 0.5 - w / 2, r + 0.5 - h / 2
  x = np.cos(t) * dx + np.sin(t) * dy + w / 2      # counter-clockwise as
  y = -np.sin(t) * dx + np.cos(t) * dy + h / 2     # displayed (y down)
  # The output pixel containing the rotated centre reads a pixel of the mark
  # (its own centre maps back to within sqrt(2)/2 of the mark's centre).
  assert out[int(y), int(x)] in (7, 9)
  # Nearest neighbour: only input values, the mark about the same size.
  assert set(np.unique(out)) <= {-1, 0, 7, 9}
  assert 6 <= np.isin(out, (7, 9)).sum() <= 12


def test_rotation_fills_what_comes_from_outside():
  _, ex = _city_example(32, 32)
  ex['segmentation'][:] = 3
  ex['instance_mask'][:] = 1
  ex['instance'][:] = 0.0           # one instance centred on each pixel...
  ex['image'][:] = 200
  out = augment.rotate(ex, CITY, 10)
  # Corner (0, 0) maps to y < 0: outside the input.
  assert out['segmentation'][0, 0] == -1
  assert out['instance_mask'][0, 0] == 0
  assert out['depth'][0, 0, 0] == 0
  np.testing.assert_array_equal(out['image'][0, 0], 0)
  np.testing.assert_array_equal(out['instance'][0, 0], 0)
  # The centre stays inside.
  assert out['segmentation'][16, 16] == 3
  np.testing.assert_allclose(out['image'][16, 16], 200)
  # Fills are the kinds' defaults or the field's own.
  lab = np.zeros((32, 32), np.uint8)
  got = augment.rotate({'l': lab}, {'l': ('label', 255)}, 10)['l']
  assert got[0, 0] == 255 and got.dtype == np.uint8


def test_rotated_offsets_point_to_the_new_centres():
  ids, ex = _city_example(32, 48)
  out = augment.rotate(ex, CITY, 8.0)
  new_ids = augment.instance_ids(out['instance'], out['instance_mask'])
  assert new_ids.max() + 1 == 3                   # three instances remain
  np.testing.assert_array_equal(new_ids >= 0, out['instance_mask'] == 1)
  # Each offset points to the mean position of its instance's pixels.
  np.testing.assert_allclose(out['instance'],
                             augment.offsets_from_ids(new_ids), atol=1e-5)
  # Well inside the image the centre moved with the rotation.
  m = augment.rotation_matrix(8.0)
  rows, cols = np.nonzero(ids == 26000)
  centre = np.array([cols.mean() + 0.5 - 24, rows.mean() + 0.5 - 16])
  x, y = m @ centre + [24, 16]
  r, c = np.nonzero(new_ids == new_ids[int(y), int(x)])
  assert abs(c.mean() + 0.5 - x) < 0.5 and abs(r.mean() + 0.5 - y) < 0.5


def test_normals_rotate_in_their_declared_frame():
  h = w = 8
  right = np.zeros((h, w, 3), np.float32)
  right[..., 0] = 1.0                                # pointing right
  out = augment.rotate({'n': right}, {'n': 'normals_down'}, 90)['n']
  np.testing.assert_allclose(out[2:6, 2:6], np.broadcast_to([0, -1, 0],
                                                            (4, 4, 3)),
                             atol=1e-12)             # up is -y when y is down
  out = augment.rotate({'n': right}, {'n': 'normals_up'}, 90)['n']
  np.testing.assert_allclose(out[2:6, 2:6], np.broadcast_to([0, 1, 0],
                                                            (4, 4, 3)),
                             atol=1e-12)             # up is +y when y is up
  with pytest.raises(ValueError, match='in-plane frame'):
    augment.rotate({'n': right}, {'n': 'normals'}, 5)
  # A flip needs no frame.
  np.testing.assert_array_equal(
      augment.flip({'n': right}, {'n': 'normals'})['n'][..., 0], -1)


def test_random_rotation_angles_are_uniform_in_the_range():
  lab = np.zeros((8, 8), np.int32)
  angles = []
  for i in range(200):
    rng = np.random.default_rng(i)
    want = np.random.default_rng(i).uniform(-10, 10)
    angles.append(want)
    np.testing.assert_array_equal(
        augment.random_rotation({'s': lab}, rng, fields={'s': 'label'})['s'],
        augment.rotate({'s': lab}, {'s': 'label'}, want)['s'])
  assert -10 <= min(angles) < -9 and 9 < max(angles) <= 10


# ---------------------------------------------------------------- zooms


def test_scale_crop_divides_depth_and_multiplies_disparity():
  h, w = 12, 16
  ex = {'depth': np.full((h, w, 1), 3.0, np.float32),
        'disp': np.full((h, w, 1), 2.0, np.float32),
        'normals': np.broadcast_to(_unit(np.array([1.0, 2, 2])),
                                   (h, w, 3)).copy()}
  fields = {'depth': 'depth', 'disp': 'disparity', 'normals': 'normals'}
  for s in augment.MTAN_SCALES:
    out = augment.scale_crop(ex, fields, scale=s, top=0, left=0,
                             height=int(h / s), width=int(w / s))
    np.testing.assert_allclose(out['depth'], 3.0 / s, rtol=1e-6)
    np.testing.assert_allclose(out['disp'], 2.0 * s, rtol=1e-6)
    np.testing.assert_array_equal(out['normals'], ex['normals'])
    assert out['depth'].shape == (h, w, 1)
    assert out['depth'].dtype == np.float32


def test_scale_crop_samples_the_window():
  h, w = 12, 16
  cols = np.broadcast_to(np.arange(w), (h, w))
  ex = {'image': (cols + 0.5).astype(np.float32)[..., None] * np.ones(3),
        'seg': cols.astype(np.int16)}
  fields = {'image': 'image', 'seg': 'label'}
  top, left, height, width = 2, 3, 8, 8          # a 1.5x zoom (12/8, 16/8)
  out = augment.scale_crop(ex, fields, scale=1.5, top=top, left=left,
                           height=height, width=width)
  # Labels: nearest within the window.
  want = left + image_ops.nearest_indices(width, w)
  np.testing.assert_array_equal(out['seg'], np.broadcast_to(want, (h, w)))
  assert out['seg'].dtype == np.int16
  # Image: a linear ramp is resampled exactly (here c + 1/2 at x = c + 1/2).
  x = left + (np.arange(w) + 0.5) * width / w
  np.testing.assert_allclose(out['image'][..., 0], np.broadcast_to(x, (h, w)),
                             atol=1e-5)
  # Scale 1 on the whole image is the identity.
  same = augment.scale_crop(ex, fields, scale=1.0, top=0, left=0, height=h,
                            width=w)
  np.testing.assert_array_equal(same['seg'], ex['seg'])
  np.testing.assert_allclose(same['image'], ex['image'], atol=1e-6)
  with pytest.raises(ValueError, match='not inside'):
    augment.scale_crop(ex, fields, scale=1.0, top=5, left=0, height=h,
                       width=w)


def test_scale_crop_windows_are_mtans_and_inside_the_image():
  seen = set()
  tops = set()
  for i in range(600):
    p = augment.scale_crop_params((288, 384), np.random.default_rng(i))
    assert p['scale'] in (1.0, 1.2, 1.5)
    assert (p['height'], p['width']) == (int(288 / p['scale']),
                                         int(384 / p['scale']))
    assert 0 <= p['top'] <= 288 - p['height']
    assert 0 <= p['left'] <= 384 - p['width']
    seen.add(p['scale'])
    if p['scale'] == 1.5:
      tops.add(p['top'])
  assert seen == {1.0, 1.2, 1.5}
  assert min(tops) < 10 and max(tops) > 86           # spans [0, 96]


def test_zoomed_offsets_are_in_output_pixels():
  ids, ex = _city_example(16, 24)
  out = augment.scale_crop(ex, CITY, scale=2.0, top=0, left=0, height=8,
                           width=12)
  # The window's instance map, upsampled by nearest neighbour, then offsets.
  rows = image_ops.nearest_indices(8, 16)
  cols = image_ops.nearest_indices(12, 24)
  want = cityscapes.instance_offsets(ids[:8, :12][rows[:, None],
                                                  cols[None, :]])[0]
  np.testing.assert_allclose(out['instance'], want, atol=1e-5)
  np.testing.assert_allclose(out['depth'], 2.0 * ex['depth'][:8, :12][
      rows[:, None], cols[None, :]], rtol=1e-6)        # disparity times 2


# ---------------------------------------------------------------- crops


def test_crop_is_a_slice_and_keeps_the_pose():
  rng = np.random.default_rng(0)
  ex = {'image': rng.integers(0, 256, (10, 14, 3), dtype=np.uint8),
        'translation': np.array([1.0, 2, 3], np.float32),
        'orientation': np.array([1.0, 0, 0, 0], np.float32)}
  fields = augment.SEVEN_SCENES_FIELDS
  out = augment.crop(ex, fields, top=2, left=5, height=4, width=4)
  np.testing.assert_array_equal(out['image'], ex['image'][2:6, 5:9])
  assert out['image'].dtype == np.uint8
  np.testing.assert_array_equal(out['translation'], ex['translation'])
  np.testing.assert_array_equal(out['orientation'], ex['orientation'])
  windows = set()
  for i in range(300):
    p = augment.crop_params((10, 14), np.random.default_rng(i), 4)
    assert 0 <= p['top'] <= 6 and 0 <= p['left'] <= 10
    windows.add((p['top'], p['left']))
    got = augment.random_crop(ex, np.random.default_rng(i), fields=fields,
                              size=4)
    np.testing.assert_array_equal(
        got['image'], ex['image'][p['top']:p['top'] + 4,
                                  p['left']:p['left'] + 4])
  assert len(windows) == 7 * 11                       # every position
  with pytest.raises(ValueError, match='larger'):
    augment.random_crop(ex, np.random.default_rng(0), fields=fields, size=11)


def test_cropped_offsets_are_recomputed_for_the_visible_pixels():
  ids, ex = _city_example(16, 24)
  out = augment.crop(ex, CITY, top=3, left=6, height=10, width=12)
  np.testing.assert_allclose(
      out['instance'], cityscapes.instance_offsets(ids[3:13, 6:18])[0],
      atol=1e-5)


# ---------------------------------------------------------------- fields


def test_every_key_needs_a_kind_and_drop_removes():
  ex = {'image': np.zeros((4, 4, 3)), 'extra': np.zeros((4, 4))}
  with pytest.raises(KeyError, match='extra'):
    augment.flip(ex, {'image': 'image'})
  with pytest.raises(ValueError, match='Unknown field kind'):
    augment.flip(ex, {'image': 'image', 'extra': 'labels'})
  out = augment.rotate(ex, {'image': 'image', 'extra': 'drop'}, 3)
  assert set(out) == {'image'}
  with pytest.raises(ValueError, match='disagree'):
    augment.flip({'a': np.zeros((4, 4)), 'b': np.zeros((4, 5))},
                 {'a': 'label', 'b': 'label'})
  with pytest.raises(KeyError, match='No augmentation'):
    augment.augmentation('multi_mnist')


def test_instance_ids_survive_float32_offsets_of_a_large_map():
  rng = np.random.default_rng(0)
  ids = np.zeros((256, 512), np.int64)
  for k in range(40):
    r, c = rng.integers(0, 240), rng.integers(0, 490)
    ids[r:r + rng.integers(2, 16), c:c + rng.integers(2, 22)] = 26000 + k
  offsets, mask = cityscapes.instance_offsets(ids)
  got = augment.instance_ids(offsets, mask)
  visible = len(np.unique(ids[ids >= 1000]))
  assert got.max() + 1 == visible
  # A one-to-one map between the found and the true instances.
  pairs = set(zip(got[mask == 1].tolist(), ids[mask == 1].tolist()))
  assert len(pairs) == visible


# ---------------------------------------------------------------- datasets


def _nyu_records(n, h=288, w=384, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
      'segmentation': rng.integers(-1, 13, (n, h, w)).astype(np.int8),
      'depth': rng.uniform(0.5, 10, (n, h, w, 1)).astype(np.float32),
      'normals': _unit(rng.normal(size=(n, h, w, 3))),
  }


def test_dataset_augmentations_keep_shapes_and_dtypes():
  rngs = [np.random.default_rng(i) for i in range(2)]
  recs = _nyu_records(2, 24, 32)
  out = augment.augmentation('nyuv2')(recs, rngs)
  for k, v in recs.items():
    assert out[k].shape == v.shape
    assert out[k].dtype == (np.float32 if k == 'image' else v.dtype)
  batch = nyuv2.preprocess(out)
  assert 0 <= batch['image'].min() and batch['image'].max() <= 1

  ids, ex = _city_example(16, 32)
  rec = {'image': ex['image'][None].repeat(2, 0),
         'label_ids': np.full((2, 16, 32), 26, np.uint8),
         'instance': ex['instance'][None].repeat(2, 0),
         'instance_mask': ex['instance_mask'][None].repeat(2, 0),
         'disparity': ex['depth'][None].repeat(2, 0)}
  rngs = [np.random.default_rng(i) for i in range(2)]
  out = augment.augmentation('cityscapes', max_degrees=20)(rec, rngs)
  assert {k: (v.shape, v.dtype) for k, v in out.items() if k != 'image'} == {
      k: (v.shape, v.dtype) for k, v in rec.items() if k != 'image'}
  seg = cityscapes.preprocess(out)['segmentation']
  assert set(np.unique(seg)) <= {-1, 13}                  # car, or filled
  rngs = [np.random.default_rng(i) for i in range(2)]
  mtan = augment.augmentation('cityscapes_mtan')(rec, rngs)
  assert set(mtan) == {'image', 'label_ids', 'disparity'}
  assert set(cityscapes.preprocess_mtan(mtan)) == {'image', 'segmentation',
                                                   'depth'}


def test_same_seed_same_draw_other_example_other_draw():
  recs = _nyu_records(1, 48, 64)
  aug = augment.augmentation('nyuv2', threads=1)

  def run(seed, epoch, index):
    return aug(recs, [loader_lib.example_rng(seed, epoch, index)])

  a, b = run(0, 0, 5), run(0, 0, 5)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  differ = [not np.array_equal(run(0, 0, 5)['segmentation'],
                               run(*other)['segmentation'])
            for other in ((0, 0, 6), (0, 1, 5), (1, 0, 5), (0, 0, 7),
                          (0, 2, 5))]
  assert sum(differ) >= 4        # a few may draw the same window by chance
  # Threads do not change the result.
  many = _nyu_records(6, 48, 64)
  rngs = lambda: [loader_lib.example_rng(0, 0, i) for i in range(6)]
  one = augment.augmentation('nyuv2', threads=1)(many, rngs())
  four = augment.augmentation('nyuv2', threads=4)(many, rngs())
  for k in one:
    np.testing.assert_array_equal(one[k], four[k])


def _augmented_loader(recs, **kw):
  kw.setdefault('process_index', 0)
  kw.setdefault('process_count', 1)
  return loader_lib.Loader(loader_lib.ArraySource(recs), batch_size=4, seed=3,
                           augment=augment.augmentation('nyuv2'),
                           transform=nyuv2.preprocess, **kw)


@pytest.mark.parametrize('prefetch', [0, 2])
def test_resume_mid_epoch_gives_the_same_augmented_batches(prefetch):
  recs = _nyu_records(10, 24, 32)
  it = _augmented_loader(recs, num_epochs=3, prefetch=prefetch)
  whole = [next(it) for _ in range(6)]          # 2 batches an epoch, 3 epochs
  it = _augmented_loader(recs, num_epochs=3, prefetch=prefetch)
  for _ in range(3):
    next(it)
  state = it.get_state()
  assert state == {'epoch': 1, 'step': 1}
  resumed = _augmented_loader(recs, num_epochs=3, prefetch=2 - prefetch,
                              state=state)
  rest = list(resumed)
  assert len(rest) == 3
  for got, want in zip(rest, whole[3:]):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # Epochs differ: the same examples are augmented anew.
  assert not np.array_equal(whole[0]['segmentation'], whole[2]['segmentation'])


def test_each_process_draws_what_a_single_process_draws():
  recs = _nyu_records(8, 24, 32)
  single = next(_augmented_loader(recs, prefetch=0))
  parts = [next(_augmented_loader(recs, prefetch=0, process_index=p,
                                  process_count=2)) for p in range(2)]
  for k in single:
    np.testing.assert_array_equal(
        single[k], np.concatenate([p[k] for p in parts]))


@pytest.fixture(scope='module')
def prepared_nyuv2(tmp_path_factory):
  root = tmp_path_factory.mktemp('nyuv2')
  rng = np.random.default_rng(0)
  h, w = nyuv2.IMAGE_SIZE
  for folder, n in (('train', 3), ('val', 2)):
    for kind in ('image', 'label', 'depth', 'normal'):
      (root / 'manual' / folder / kind).mkdir(parents=True)
    for i in range(n):
      arrays = {'image': rng.random((h, w, 3)).astype(np.float32),
                'label': rng.integers(-1, 13, (h, w)).astype(np.float32),
                'depth': rng.random((h, w, 1)).astype(np.float32) * 10,
                'normal': _unit(rng.normal(size=(h, w, 3)))}
      for kind, a in arrays.items():
        np.save(root / 'manual' / folder / kind / f'{i}.npy', a)
  data.prepare.prepare('nyuv2', data_dir=root / 'tfds',
                       manual_dir=root / 'manual')
  return root / 'tfds'


def _batches(it):
  return [b for b in it]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_load_augments_training_streams_only(prepared_nyuv2):
  kw = dict(data_dir=prepared_nyuv2, batch_size=1, num_epochs=1, seed=1)
  plain = _batches(data.load('nyuv2', 'train', **kw))
  aug = _batches(data.load('nyuv2', 'train', augment=True, **kw))
  assert not _same(plain, aug)
  for p, a in zip(plain, aug):
    assert {k: (v.shape, v.dtype) for k, v in p.items()} == {
        k: (v.shape, v.dtype) for k, v in a.items()}
  again = _batches(data.load('nyuv2', 'train', augment=True, **kw))
  assert _same(aug, again)
  # A resumed stream continues it exactly.
  it = data.load('nyuv2', 'train', augment=True, **kw)
  next(it)
  rest = _batches(data.load('nyuv2', 'train', augment=True,
                            state=it.get_state(), **kw))
  assert len(rest) == 2 and _same(rest, aug[1:])
  # Options pass through; evaluation streams are never augmented.
  flat = _batches(data.load('nyuv2', 'train',
                            augment={'scales': (1.0,), 'flip_p': 0.0}, **kw))
  assert _same(flat, plain)
  ev = dict(data_dir=prepared_nyuv2, batch_size=2, shuffle=False,
            num_epochs=1, drop_remainder=False)
  assert _same(_batches(data.load('nyuv2', 'validation', augment=True, **ev)),
               _batches(data.load('nyuv2', 'validation', **ev)))
  with pytest.raises(KeyError, match='No augmentation'):
    data.load('multi_mnist', 'train', augment=True, batch_size=2)
  assert data.num_examples('nyuv2', 'train', data_dir=prepared_nyuv2,
                           augment=True) == 3


def test_training_evaluates_on_unaugmented_batches(prepared_nyuv2):
  training = pytest.importorskip('mtl_optax.training')
  config = training.Config(model='mtan_segnet', dataset='nyuv2',
                           data_dir=str(prepared_nyuv2),
                           dataset_options={'augment': True})
  train = training._default_data(config, 'train', batch_size=1, seed=0,
                                 shuffle=True, num_epochs=1,
                                 drop_remainder=True)
  assert train.augment is not None
  ev = training._default_data(config, 'validation', batch_size=1, seed=0,
                              shuffle=False, num_epochs=1,
                              drop_remainder=False)
  assert ev.augment is None
  assert _same(_batches(ev), _batches(data.load(
      'nyuv2', 'validation', data_dir=prepared_nyuv2, batch_size=1,
      shuffle=False, num_epochs=1, drop_remainder=False)))


# ---------------------------------------------------------------- 7-Scenes


def _block_mean(a, k):
  h, w = a.shape[0] // k, a.shape[1] // k
  return a.astype(np.float64).reshape(h, k, w, k, -1).mean(axis=(1, 3))


def test_seven_scenes_random_crops_of_the_full_frames(tmp_path):
  rng = np.random.default_rng(0)
  scene = tmp_path / 'manual' / 'chess'
  frames = []
  for seq in (1, 2):
    (scene / f'seq-{seq:02d}').mkdir(parents=True)
    for f in range(3):
      image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
      pose = np.eye(4)
      pose[:3, 3] = rng.normal(size=3)
      Image.fromarray(image).save(scene / f'seq-{seq:02d}' /
                                  f'frame-{f:06d}.color.png')
      np.savetxt(scene / f'seq-{seq:02d}' / f'frame-{f:06d}.pose.txt', pose)
      if seq == 1:
        frames.append((image, pose))
  (scene / 'TrainSplit.txt').write_text('sequence1\n')
  (scene / 'TestSplit.txt').write_text('sequence2\n')
  configs = {
      'crop': seven_scenes.SevenScenesConfig(name='tiny', scene='chess',
                                             short_side=6, crop=4),
      'full': seven_scenes.SevenScenesConfig(name='tiny_full', scene='chess',
                                             short_side=6, crop=None,
                                             frame_size=(12, 16)),
  }
  for config in configs.values():
    seven_scenes.SevenScenes(
        data_dir=tmp_path / 'tfds', config=config).download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=tmp_path / 'manual'))
  kw = dict(data_dir=tmp_path / 'tfds', crop=4, num_epochs=1)
  # Evaluation on the full frames = the stored central crops, exactly.
  for split in ('train', 'test'):
    ev = dict(kw, batch_size=3, shuffle=False)
    full = _batches(data.load('seven_scenes', split, scene=configs['full'],
                              augment={'crop': 4}, **ev))
    crop = _batches(data.load('seven_scenes', split, scene=configs['crop'],
                              **ev))
    assert _same(full, crop) and full[0]['image'].shape == (3, 4, 4, 3)
  # Training: a 4x4 window of the 6x8 frame, the pose unchanged.
  it = data.load('seven_scenes', 'train', scene=configs['full'],
                 augment={'crop': 4}, batch_size=1, shuffle=True, seed=0,
                 num_epochs=8, data_dir=tmp_path / 'tfds', crop=4)
  offsets = set()
  for batch in it:
    t = batch['translation'][0]
    (image, pose), = [fp for fp in frames
                      if np.allclose(fp[1][:3, 3], t, rtol=1e-6)]
    stored = np.rint(_block_mean(image, 2)) / 255          # 6x8
    found = [(r, c) for r in range(3) for c in range(5)
             if np.allclose(stored[r:r + 4, c:c + 4], batch['image'][0],
                            atol=1e-6)]
    assert found
    offsets.update(found)
    np.testing.assert_array_equal(batch['orientation'][0], [1, 0, 0, 0])
  assert len(offsets) > 5                 # several positions over 24 draws
  # Random crops of frames no larger than the crop are refused.
  with pytest.raises(ValueError, match='frames="full"'):
    next(data.load('seven_scenes', 'train', scene=configs['crop'],
                   augment={'crop': 4}, batch_size=1, prefetch=0, **kw))
  assert data.num_examples('seven_scenes', 'train', data_dir=tmp_path / 'tfds',
                           scene=configs['full'], frames='full') == 3
