"""Tests of mtl_optax.data.loader (the batch iterator) and data.image_ops."""

import math

import numpy as np
import pytest

from mtl_optax.data import image_ops
from mtl_optax.data import loader as loader_lib


def _source(n):
  return loader_lib.ArraySource({'idx': np.arange(n), 'x': np.arange(n) * 2.0})


def _make(n=23, **kw):
  kw.setdefault('batch_size', 4)
  kw.setdefault('process_index', 0)
  kw.setdefault('process_count', 1)
  kw.setdefault('prefetch', 0)
  return loader_lib.Loader(_source(n), **kw)


def _take(it, k):
  return [next(it)['idx'].tolist() for _ in range(k)]


def _epochs(n, epochs, **kw):
  """Index batches of each epoch, from a loader run for `epochs` epochs."""
  it = _make(n, num_epochs=epochs, **kw)
  per_epoch = [[] for _ in range(epochs)]
  while True:
    epoch = it.get_state()['epoch']
    try:
      batch = next(it)
    except StopIteration:
      break
    per_epoch[epoch].append(batch['idx'].tolist())
  return per_epoch


# ---------------------------------------------------------------- ordering


def test_same_seed_same_stream_and_prefetch_does_not_change_it():
  a = _take(_make(seed=3), 15)
  b = _take(_make(seed=3), 15)
  c = _take(_make(seed=3, prefetch=3), 15)
  assert a == b == c


def test_other_seed_and_other_epoch_give_other_orders():
  e = _epochs(23, 2, seed=0, drop_remainder=False)
  f = _epochs(23, 2, seed=1, drop_remainder=False)
  assert sum(e[0], []) != sum(f[0], [])
  assert sum(e[0], []) != sum(e[1], [])


def test_order_is_the_documented_permutation():
  got = sum(_epochs(23, 2, seed=7, drop_remainder=False)[1], [])
  assert got == np.random.default_rng((7, 1)).permutation(23).tolist()


def test_no_shuffle_is_source_order():
  got = _epochs(10, 1, shuffle=False, batch_size=4, drop_remainder=False)[0]
  assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize('n,batch', [(23, 4), (24, 4), (5, 8), (1, 1)])
def test_every_example_exactly_once_per_epoch(n, batch):
  for epoch in _epochs(n, 3, batch_size=batch, drop_remainder=False):
    flat = sum(epoch, [])
    assert sorted(flat) == list(range(n))
    assert len(epoch) == math.ceil(n / batch)


def test_drop_remainder_gives_full_distinct_batches():
  for epoch in _epochs(23, 2, batch_size=4, drop_remainder=True):
    assert len(epoch) == 5 and all(len(b) == 4 for b in epoch)
    flat = sum(epoch, [])
    assert len(set(flat)) == 20


def test_empty_epoch_is_rejected():
  with pytest.raises(ValueError, match='No batch'):
    _make(3, batch_size=4, drop_remainder=True)


# ---------------------------------------------------------------- processes


@pytest.mark.parametrize('count', [1, 2, 4])
@pytest.mark.parametrize('drop', [False, True])
def test_process_shards_are_disjoint_and_cover_each_epoch(count, drop):
  n, batch = 37, 8
  shards = [_epochs(n, 2, batch_size=batch, drop_remainder=drop, seed=5,
                    process_index=p, process_count=count)
            for p in range(count)]
  for epoch in range(2):
    steps = {len(s[epoch]) for s in shards}
    assert len(steps) == 1                     # same number of steps
    seen = [i for s in shards for b in s[epoch] for i in b]
    assert len(seen) == len(set(seen))         # disjoint
    order = np.random.default_rng((5, epoch)).permutation(n)
    expected = order if not drop else order[:(n // batch) * batch]
    assert sorted(seen) == sorted(expected.tolist())   # covering
    for s in shards:                           # local batch = B / P
      assert all(len(b) == batch // count for b in s[epoch][:n // batch])


def test_process_blocks_are_contiguous_parts_of_the_global_batch():
  single = _epochs(16, 1, batch_size=8, seed=2)[0]
  parts = [_epochs(16, 1, batch_size=8, seed=2, process_index=p,
                   process_count=2)[0] for p in range(2)]
  for step, global_batch in enumerate(single):
    assert parts[0][step] + parts[1][step] == global_batch


def test_bad_process_arguments():
  with pytest.raises(ValueError, match='multiple'):
    _make(batch_size=6, process_count=4)
  with pytest.raises(ValueError, match='process_index'):
    loader_lib.process_batches(np.arange(8), batch_size=4,
                               drop_remainder=True, process_index=2,
                               process_count=2)


def test_default_process_is_jax_process():
  import jax
  it = loader_lib.Loader(_source(8), batch_size=4, prefetch=0)
  assert (it.process_index, it.process_count) == (jax.process_index(),
                                                  jax.process_count())


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize('prefetch', [0, 2])
@pytest.mark.parametrize('stop_after', [1, 5, 6, 13])
def test_resume_equals_uninterrupted(prefetch, stop_after):
  # 23 examples, batch 4, drop_remainder: 5 steps per epoch, so 5 and 13
  # cross epoch boundaries.
  full = _take(_make(seed=11, prefetch=prefetch), 20)
  first = _make(seed=11, prefetch=prefetch)
  head = _take(first, stop_after)
  state = first.get_state()
  first.close()
  assert state == {'epoch': stop_after // 5, 'step': stop_after % 5}
  resumed = _make(seed=11, prefetch=prefetch, state=state)
  assert head + _take(resumed, 20 - stop_after) == full


def test_set_state_rewinds_a_running_loader():
  it = _make(seed=4, prefetch=2)
  start = _take(it, 3)
  it.set_state({'epoch': 0, 'step': 1})
  assert _take(it, 2) == start[1:3]
  with pytest.raises(ValueError, match='Invalid state'):
    it.set_state({'epoch': 0, 'step': 99})
  it.close()


def test_num_epochs_stops_and_state_points_past_the_end():
  for prefetch in (0, 2):
    it = _make(10, batch_size=4, num_epochs=2, prefetch=prefetch)
    assert len(list(it)) == 4
    assert it.get_state() == {'epoch': 2, 'step': 0}
    with pytest.raises(StopIteration):
      next(it)


# ---------------------------------------------------------------- sources


class _RecordSource:
  """A record-by-record source whose __getitems__ is broken (like mocks)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'idx': i, 'nested': {'v': np.full((2,), i, np.float32)}}

  def __getitems__(self, keys, missing):   # wrong signature on purpose
    raise AssertionError


def test_record_source_matches_array_source_and_transform_applies():
  def transform(batch):
    return {'idx': batch['idx'], 'v': batch['nested']['v'] + 1}

  it = loader_lib.Loader(_RecordSource(9), batch_size=3, seed=1, prefetch=1,
                         transform=transform, process_index=0, process_count=1)
  ref = _make(9, batch_size=3, seed=1)
  for _ in range(4):
    got, want = next(it), next(ref)
    assert got['idx'].tolist() == want['idx'].tolist()
    np.testing.assert_array_equal(got['v'][:, 0], want['idx'] + 1.0)
    assert got['v'].dtype == np.float32 and got['v'].shape == (3, 2)
  it.close()


def test_empty_last_block_keeps_structure():
  # 9 examples, global batch 8 over 4 processes: the last global batch has
  # one example, so processes 1..3 get an empty block.
  it = loader_lib.Loader(_RecordSource(9), batch_size=8, shuffle=False,
                         drop_remainder=False, num_epochs=1, prefetch=0,
                         process_index=3, process_count=4)
  batches = list(it)
  assert [b['idx'].tolist() for b in batches] == [[6, 7], []]
  assert batches[1]['nested']['v'].shape == (0, 2)


def test_errors_in_the_prefetch_thread_reach_the_caller():
  def bad(batch):
    if batch['idx'].min() >= 0:
      raise RuntimeError('boom')
    return batch

  it = _make(transform=bad, prefetch=2)
  with pytest.raises(RuntimeError, match='boom'):
    next(it)


def test_read_into_memory_equals_records():
  mem = loader_lib.read_into_memory(_RecordSource(7), chunk_size=3)
  assert mem.arrays['idx'].tolist() == list(range(7))
  np.testing.assert_array_equal(mem.arrays['nested']['v'][:, 1], np.arange(7))
  with pytest.raises(ValueError, match='leading axis'):
    loader_lib.ArraySource({'a': np.zeros(3), 'b': np.zeros(4)})


# ---------------------------------------------------------------- image ops


def _area_reference(x, out_h, out_w):
  """Exact area resize by supersampling to a common grid (independent)."""
  h, w = x.shape[:2]
  fy, fx = out_h // math.gcd(h, out_h), out_w // math.gcd(w, out_w)
  # Upsample by (out/gcd) so that each output pixel covers whole sub-pixels.
  up = np.repeat(np.repeat(x.astype(np.float64), fy, 0), fx, 1)
  by, bx = up.shape[0] // out_h, up.shape[1] // out_w
  return up.reshape(out_h, by, out_w, bx, *x.shape[2:]).mean(axis=(1, 3))


@pytest.mark.parametrize('shape,size', [((36, 36, 1), (28, 28)),
                                        ((7, 5, 3), (3, 4)),
                                        ((4, 6, 2), (8, 9)),
                                        ((22, 18, 3), (8, 8))])
def test_resize_area_matches_supersampling(shape, size):
  x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  got = image_ops.resize_area(x, size)
  np.testing.assert_allclose(got, _area_reference(x, *size), rtol=1e-5,
                             atol=1e-3)
  # Batched input gives the same per image.
  batched = image_ops.resize_area(np.stack([x, x[::-1]]), size)
  np.testing.assert_allclose(batched[1], image_ops.resize_area(x[::-1], size),
                             rtol=1e-6, atol=1e-4)


def test_nearest_reads_the_pixel_under_the_centre():
  x = np.arange(12 * 20).reshape(12, 20)
  got = image_ops.resize_nearest(x, (3, 5))
  for i in range(3):
    for j in range(5):
      yc, xc = (i + 0.5) * 12 / 3, (j + 0.5) * 20 / 5
      assert got[i, j] == x[int(yc), int(xc)]


def test_dropping_a_loader_stops_its_thread():
  import gc
  import threading
  import time

  def loader_threads():
    return [t for t in threading.enumerate()
            if t.name == 'mtl_optax.data.Loader' and t.is_alive()]

  before = len(loader_threads())
  it = _make(prefetch=2)
  next(it)
  assert len(loader_threads()) == before + 1
  del it
  gc.collect()
  deadline = time.time() + 5
  while len(loader_threads()) > before and time.time() < deadline:
    time.sleep(0.05)
  assert len(loader_threads()) == before
