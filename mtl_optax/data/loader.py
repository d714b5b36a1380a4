"""A deterministic, resumable, shardable batch iterator over random-access data.

The iterator works on any *random-access source*: a ``tfds`` data source
(``tfds.data_source(...)``, ``builder.as_data_source(split)``), anything with
``__len__`` and ``__getitem__`` returning one record (a possibly nested dict
of arrays), or an in-memory ``ArraySource`` (a dict of numpy arrays sharing
their leading axis). Which examples go into which batch is a pure function of
``(seed, epoch, step)``:

* **order**: epoch ``e`` visits the examples in the order
  ``np.random.default_rng((seed, e)).permutation(n)`` (``arange(n)`` when
  ``shuffle=False``); a new permutation every epoch, the same one for the same
  ``(seed, e)`` on every run and every process.
* **batches**: global step ``s`` of an epoch takes positions
  ``[s·B, (s+1)·B)`` of that order, ``B = batch_size`` (the **global** batch
  size, summed over processes). With ``drop_remainder=False`` the last global
  batch holds the ``n mod B`` remaining examples.
* **processes** (multi-host): process ``p`` of ``P`` takes the contiguous block
  ``[p·B/P, (p+1)·B/P)`` of every global batch (``B`` must be divisible by
  ``P``), so each process sees a disjoint ``1/P`` of every epoch and all
  processes run the same number of steps. A last partial batch is split with
  ``np.array_split`` (sizes differ by at most one and can be zero).
* **state**: ``{'epoch': e, 'step': s}``, the next batch to deliver. Restoring
  a state (``set_state`` or ``state=``) resumes exactly the stream an
  uninterrupted run would have produced; prefetching does not change it (the
  state counts batches handed to the caller, not batches prepared).

A ``transform`` maps each gathered batch (a dict of numpy arrays with a
leading batch axis) to the batch the caller sees; the dataset modules use it
for their preprocessing. An ``augment`` function, applied to the gathered
records before ``transform``, also receives one ``np.random.Generator`` per
example: ``example_rng(seed, epoch, i)`` for source index ``i``, a pure
function of the stream's seed, the epoch and the example, so that an
augmented stream is as reproducible as the order (the same on a resumed run,
with or without prefetching, and whichever process reads the example). With
``prefetch > 0`` batches are gathered and transformed in one background
thread (numpy releases the GIL in the copies and arithmetic that dominate),
``prefetch`` batches ahead.

``MultiInputLoader`` serves multi-input multi-task learning (each task has
its own examples, e.g. the Office domains): one ``Loader`` per task and
``{task: batch}`` per step, an epoch being one pass over the largest task
(the smaller ones cycle; see its doc).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

Batch = dict[str, Any]
Transform = Callable[[Batch], Batch]
Augment = Callable[[Batch, Sequence[np.random.Generator]], Batch]

# Entropy word that keeps the augmentation streams apart from the shuffling
# stream ``default_rng((seed, epoch))`` ('augm' in ASCII).
_AUGMENT_TAG = 0x6175676D


# --------------------------------------------------------------------------
# Pure index arithmetic.


def epoch_order(num_examples: int, *, seed: int, epoch: int,
                shuffle: bool = True) -> np.ndarray:
  """The order in which epoch ``epoch`` visits ``range(num_examples)``.

  Args:
    num_examples: size ``n`` of the source.
    seed: the stream's seed.
    epoch: epoch number (0-based).
    shuffle: ``False`` returns ``arange(n)`` for every epoch.

  Returns:
    int64 permutation ``np.random.default_rng((seed, epoch)).permutation(n)``.

  Example:
    >>> a = epoch_order(5, seed=0, epoch=0)
    >>> sorted(a.tolist()), bool((a == epoch_order(5, seed=0, epoch=0)).all())
    ([0, 1, 2, 3, 4], True)
  """
  if not shuffle:
    return np.arange(num_examples, dtype=np.int64)
  if seed < 0 or epoch < 0:
    raise ValueError(f'seed and epoch must be >= 0, got {seed}, {epoch}.')
  rng = np.random.default_rng((int(seed), int(epoch)))
  return rng.permutation(num_examples).astype(np.int64)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The random generator of example ``index`` (source index) in ``epoch``.

  ``np.random.default_rng((0x6175676D, seed, epoch, index))``: a pure
  function of its arguments, independent of the batch, the position in the
  epoch and the process, and a different stream from the epoch's shuffling.

  Example:
    >>> a = example_rng(0, 1, 5).random()
    >>> a == example_rng(0, 1, 5).random(), a == example_rng(0, 1, 6).random()
    (True, False)
  """
  if seed < 0 or epoch < 0 or index < 0:
    raise ValueError(f'seed, epoch and index must be >= 0, got {seed}, '
                     f'{epoch}, {index}.')
  return np.random.default_rng((_AUGMENT_TAG, int(seed), int(epoch),
                                int(index)))


def steps_per_epoch(num_examples: int, *, batch_size: int,
                    drop_remainder: bool) -> int:
  """Number of (global) batches in one epoch.

  Example:
    >>> steps_per_epoch(10, batch_size=4, drop_remainder=True)
    2
    >>> steps_per_epoch(10, batch_size=4, drop_remainder=False)
    3
  """
  if drop_remainder:
    return num_examples // batch_size
  return math.ceil(num_examples / batch_size)


def process_batches(order: np.ndarray, *, batch_size: int, drop_remainder: bool,
                    process_index: int = 0,
                    process_count: int = 1) -> list[np.ndarray]:
  """Splits an epoch's order into this process's index batches.

  Args:
    order: the epoch's order of example indices (``epoch_order``).
    batch_size: global batch size ``B``, divisible by ``process_count``.
    drop_remainder: drop the last global batch when it has fewer than ``B``
      examples.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes ``P``.

  Returns:
    One int64 index array per global step: block ``p`` of ``P`` equal blocks
    of each global batch (``np.array_split`` blocks for a last partial one).

  Example:
    >>> [b.tolist() for b in process_batches(np.arange(10), batch_size=4,
    ...      drop_remainder=False, process_index=1, process_count=2)]
    [[2, 3], [6, 7], [9]]
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} is the global batch size and '
                     f'must be divisible by process_count={process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in '
                     f'[0, {process_count}).')
  local = batch_size // process_count
  n_full = len(order) // batch_size
  full = order[:n_full * batch_size].reshape(n_full, process_count, local)
  batches = list(full[:, process_index])
  rest = order[n_full * batch_size:]
  if len(rest) and not drop_remainder:
    batches.append(np.array_split(rest, process_count)[process_index])
  return batches


# --------------------------------------------------------------------------
# Sources.


def _tree_map(fn, tree):
  if isinstance(tree, Mapping):
    return {k: _tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


def stack_records(records: Sequence[Mapping[str, Any]]) -> Batch:
  """Stacks a list of (nested) record dicts into one dict of batched arrays.

  Example:
    >>> b = stack_records([{'x': np.zeros(2), 'y': {'z': 1}},
    ...                    {'x': np.ones(2), 'y': {'z': 2}}])
    >>> b['x'].shape, b['y']['z'].tolist()
    ((2, 2), [1, 2])
  """
  first = records[0]
  if isinstance(first, Mapping):
    return {k: stack_records([r[k] for r in records]) for k in first}
  return np.stack([np.asarray(r) for r in records])


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory source: a (nested) dict of arrays sharing the leading axis.

  ``source.gather(indices)`` returns the batch ``{k: v[indices]}`` with one
  fancy-indexing copy per array, which is what makes small datasets fast.

  Example:
    >>> src = ArraySource({'x': np.arange(6).reshape(3, 2), 'y': np.arange(3)})
    >>> len(src), src[1]['x'].tolist(), src.gather(np.array([2, 0]))['y'].tolist()
    (3, [2, 3], [2, 0])
  """

  arrays: Mapping[str, Any]

  def __post_init__(self):
    sizes = set()
    _tree_map(lambda a: sizes.add(len(a)), self.arrays)
    if len(sizes) != 1:
      raise ValueError(f'Arrays disagree on their leading axis: {sizes}.')

  def __len__(self) -> int:
    out = []
    _tree_map(out.append, self.arrays)
    return len(out[0])

  def __getitem__(self, index: int) -> Batch:
    return _tree_map(lambda a: a[index], self.arrays)

  def gather(self, indices: np.ndarray) -> Batch:
    return _tree_map(lambda a: a[indices], self.arrays)


@dataclasses.dataclass(frozen=True)
class SubsetSource:
  """The records of ``source`` at ``indices``, as a random-access source.

  ``subset[i]`` is ``source[indices[i]]``; batches are read through the
  source's own batched reads (``gather``).

  Example:
    >>> sub = SubsetSource(ArraySource({'x': np.arange(10)}), np.array([7, 2]))
    >>> len(sub), sub[0]['x'].item(), sub.gather(np.array([1, 0]))['x'].tolist()
    (2, 7, [2, 7])
  """

  source: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Batch:
    return self.source[int(self.indices[index])]

  def gather(self, indices: np.ndarray) -> Batch:
    return gather(self.source, self.indices[np.asarray(indices, np.int64)])


def holdout_indices(size: int, count: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random hold-out of ``count`` of ``size`` records.

  Args:
    size: the split's number of records.
    count: how many to hold out (``0 < count < size``).
    seed: the draw's seed.

  Returns:
    ``(held_out, rest)``, each in increasing order, together every index
    once: ``numpy.random.default_rng(seed).permutation(size)``'s first
    ``count`` entries and the others.

  Raises:
    ValueError: ``count`` is not in ``(0, size)``.

  Example:
    >>> held, rest = holdout_indices(10, 3)
    >>> len(held), len(rest), sorted(held.tolist() + rest.tolist()) == list(range(10))
    (3, 7, True)
  """
  if not 0 < count < size:
    raise ValueError(
        f'cannot hold out {count} of {size} records: the hold-out must keep '
        f'some records on each side (0 < count < {size}).')
  order = np.random.default_rng(seed).permutation(size)
  return np.sort(order[:count]), np.sort(order[count:])


def gather(source: Any, indices: np.ndarray) -> Batch:
  """Reads the records at ``indices`` from ``source`` as one stacked batch.

  Uses ``source.gather`` (``ArraySource``), else the batched
  ``source.__getitems__`` (tfds' ArrayRecord sources read a batch in one
  call), else one ``source[i]`` per index.

  Example:
    >>> gather([{'x': 0}, {'x': 10}, {'x': 20}], np.array([2, 0]))['x'].tolist()
    [20, 0]
  """
  if hasattr(source, 'gather'):
    return source.gather(indices)
  keys = [int(i) for i in indices]
  records = None
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None and keys:
    try:
      records = getitems(keys)
    except TypeError:
      # E.g. the sources of `tfds.testing.mock_data`, whose __getitems__ is
      # broken; a genuine error is raised again by the per-record path.
      records = None
  if not keys:
    # An empty block of a last partial batch: the structure of record 0, with
    # a batch axis of length zero.
    return _tree_map(lambda a: a[:0], stack_records([source[0]]))
  if records is None:
    records = [source[k] for k in keys]
  return stack_records(records)


def read_into_memory(source: Any, *, chunk_size: int = 4096,
                     keys: Sequence[str] | None = None) -> ArraySource:
  """Reads a whole random-access source into an in-memory ``ArraySource``.

  Args:
    source: a random-access source (e.g. a tfds data source).
    chunk_size: records read per batched call.
    keys: keep only these top-level features (saves memory).

  Returns:
    An ``ArraySource`` with the records in source order.

  Example:
    >>> read_into_memory([{'x': i, 'y': -i} for i in range(5)],
    ...                  chunk_size=2, keys=['x']).arrays['x'].tolist()
    [0, 1, 2, 3, 4]
  """
  n = len(source)
  chunks = []
  for start in range(0, n, chunk_size):
    batch = gather(source, np.arange(start, min(start + chunk_size, n)))
    if keys is not None:
      batch = {k: batch[k] for k in keys}
    chunks.append(batch)
  if not chunks:
    raise ValueError('The source is empty.')

  def concat(parts):
    if isinstance(parts[0], Mapping):
      return {k: concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)

  return ArraySource(concat(chunks))


# --------------------------------------------------------------------------
# The iterator.


def _default_process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  return int(process_index), int(process_count)


_END = object()


class _Error:

  def __init__(self, exc: BaseException):
    self.exc = exc


def _index_stream(*, num_examples, batch_size, seed, shuffle, drop_remainder,
                  num_epochs, process_index, process_count, start):
  """Yields ``(indices, epoch, state after this batch)`` from ``start`` on."""
  steps = steps_per_epoch(num_examples, batch_size=batch_size,
                          drop_remainder=drop_remainder)
  epoch, step = start
  while num_epochs is None or epoch < num_epochs:
    order = epoch_order(num_examples, seed=seed, epoch=epoch, shuffle=shuffle)
    batches = process_batches(order, batch_size=batch_size,
                              drop_remainder=drop_remainder,
                              process_index=process_index,
                              process_count=process_count)
    for s in range(step, len(batches)):
      yield batches[s], epoch, ((epoch, s + 1) if s + 1 < steps
                                else (epoch + 1, 0))
    epoch, step = epoch + 1, 0


def _make_batch(source, transform, indices, augment=None, seed=0, epoch=0):
  batch = gather(source, indices)
  if augment is not None:
    batch = augment(batch, [example_rng(seed, epoch, i) for i in indices])
  return batch if transform is None else transform(batch)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
  """Puts ``item`` unless ``stop`` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      out.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _produce(stream, make_batch, out: queue.Queue, stop: threading.Event):
  """Background thread: batches of ``stream`` into ``out`` until ``stop``."""
  try:
    for indices, epoch, next_state in stream:
      if not _put(out, (make_batch(indices, epoch), next_state), stop):
        return
    item = _END
  except BaseException as exc:  # pylint: disable=broad-except
    item = _Error(exc)
  _put(out, item, stop)


class Loader:
  """Iterator of batches over a random-access source (see the module doc).

  Args:
    source: a random-access source (tfds data source, ``ArraySource``, any
      sequence of record dicts).
    batch_size: **global** batch size ``B``; each of the ``P`` processes
      yields ``B / P`` examples per step.
    seed: seed of the shuffling; epoch ``e`` uses ``(seed, e)``.
    shuffle: shuffle every epoch (``False``: source order).
    drop_remainder: drop the last, incomplete global batch of each epoch.
    num_epochs: stop after this many epochs; ``None`` repeats forever.
    transform: function applied to every batch (dict of numpy arrays).
    augment: ``fn(batch, rngs) -> batch`` applied to every gathered batch
      before ``transform``, with ``rngs[k] = example_rng(seed, epoch, i_k)``
      the generator of its ``k``-th example (source index ``i_k``); e.g.
      ``mtl_optax.data.augment.augmentation(name)``.
    prefetch: number of batches prepared ahead in a background thread; ``0``
      prepares them in the calling thread.
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    state: a state from ``get_state()`` to resume from (default: the start).

  Attributes:
    num_examples: number of examples in the source (all processes).
    steps_per_epoch: batches per epoch (the same on every process).
    local_batch_size: ``batch_size // process_count``.

  Example:
    >>> src = ArraySource({'x': np.arange(10)})
    >>> it = Loader(src, batch_size=4, seed=0, num_epochs=1, prefetch=0,
    ...             process_index=0, process_count=1)
    >>> [b['x'].shape for b in it], it.get_state()
    ([(4,), (4,)], {'epoch': 1, 'step': 0})
  """

  def __init__(self, source: Any, *, batch_size: int, seed: int = 0,
               shuffle: bool = True, drop_remainder: bool = True,
               num_epochs: int | None = None,
               transform: Transform | None = None, prefetch: int = 2,
               process_index: int | None = None,
               process_count: int | None = None,
               state: Mapping[str, int] | None = None,
               augment: Augment | None = None):
    self.source = source
    self.num_examples = len(source)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.drop_remainder = bool(drop_remainder)
    self.num_epochs = num_epochs
    self.transform = transform
    self.augment = augment
    self.prefetch = int(prefetch)
    self.process_index, self.process_count = _default_process(
        process_index, process_count)
    if self.batch_size <= 0 or self.batch_size % self.process_count:
      raise ValueError(
          f'batch_size={batch_size} must be a positive multiple of '
          f'process_count={self.process_count} (it is the global batch size).')
    self.local_batch_size = self.batch_size // self.process_count
    self.steps_per_epoch = steps_per_epoch(
        self.num_examples, batch_size=self.batch_size,
        drop_remainder=self.drop_remainder)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f'No batch of {self.batch_size} in {self.num_examples} examples with '
          'drop_remainder=True.')
    self._state = (0, 0)
    self._thread = None
    self._queue = None
    self._stop = None
    self._sync = None
    if state is not None:
      self.set_state(state)

  # State ---------------------------------------------------------------

  def get_state(self) -> dict[str, int]:
    """``{'epoch': e, 'step': s}``: the next batch is step ``s`` of epoch ``e``."""
    return {'epoch': self._state[0], 'step': self._state[1]}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves the stream to ``state`` (from ``get_state``); stops prefetching."""
    epoch, step = int(state['epoch']), int(state['step'])
    if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
      raise ValueError(f'Invalid state {dict(state)} for an epoch of '
                       f'{self.steps_per_epoch} steps.')
    self._shutdown()
    self._state = self._normalise(epoch, step)

  def _normalise(self, epoch, step):
    if step >= self.steps_per_epoch:
      return epoch + 1, 0
    return epoch, step

  # Producing batches -----------------------------------------------------

  def _stream(self, state):
    return _index_stream(
        num_examples=self.num_examples, batch_size=self.batch_size,
        seed=self.seed, shuffle=self.shuffle,
        drop_remainder=self.drop_remainder, num_epochs=self.num_epochs,
        process_index=self.process_index, process_count=self.process_count,
        start=state)

  def _batch_maker(self):
    # A closure over the loader's settings, not over `self` (see __next__).
    source, transform, augment, seed = (self.source, self.transform,
                                        self.augment, self.seed)
    return lambda indices, epoch: _make_batch(source, transform, indices,
                                              augment, seed, epoch)

  def _shutdown(self):
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
    self._thread = self._queue = self._stop = None
    self._sync = None

  def close(self) -> None:
    """Stops the background thread (if any)."""
    self._shutdown()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self._shutdown()
    except Exception:  # pylint: disable=broad-except
      pass

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self.prefetch <= 0:
      if self._sync is None:
        self._sync = self._stream(self._state)
      try:
        indices, epoch, next_state = next(self._sync)
      except StopIteration:
        self._sync = None
        raise
      batch = self._batch_maker()(indices, epoch)
    else:
      if self._thread is None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        # The thread holds no reference to `self`, so that dropping the
        # loader runs __del__, which stops the thread.
        self._thread = threading.Thread(
            target=_produce,
            args=(self._stream(self._state), self._batch_maker(),
                  self._queue, self._stop),
            daemon=True, name='mtl_optax.data.Loader')
        self._thread.start()
      item = self._queue.get()
      if item is _END or isinstance(item, _Error):
        self._thread.join()
        self._thread = self._queue = self._stop = None
        if item is _END:
          raise StopIteration
        raise item.exc
      batch, next_state = item
    self._state = next_state
    return batch


# --------------------------------------------------------------------------
# Multi-input: one batch per task per step, each task from its own source.


class MultiInputLoader:
  """One batch of every task per step, each task from its own source.

  For multi-input multi-task learning (LibMTL's ``multi_input`` mode: the
  Office domains), where task ``t`` has its own examples: every step yields
  ``{task: batch_t}``, ``batch_t`` the next batch of task ``t``'s own stream,
  a ``Loader`` over ``sources[t]`` with this loader's settings (same seed,
  shuffling, batch size and processes).

  **Epochs.** One epoch is one pass over the **largest** task: it has
  ``steps_per_epoch = max_t steps_t`` steps (``steps_t`` a task's batches per
  epoch); a task with fewer batches cycles through its own stream, reshuffled
  at each of its own epochs, as LibMTL does (it runs ``max_t len(loader_t)``
  steps an epoch and restarts an exhausted task's loader). At global step
  ``g`` task ``t`` delivers batch ``g mod steps_t`` of its own epoch
  ``g // steps_t``: a pure function of the seed and ``g``, so the state
  ``{'epoch': e, 'step': s}`` (``g = e·steps_per_epoch + s``, in the
  largest task's epochs) is all a checkpoint needs, as for ``Loader``.
  ``num_examples`` is the largest task's size (the training loop's epoch
  arithmetic, ``num_examples // batch_size``, then counts the largest
  task's steps).

  **Evaluation.** ``per_task()`` yields every task's own stream once (one of
  its own epochs, from the start), in task order, as ``{task: batch}``: build
  the loader with ``shuffle=False, drop_remainder=False`` for it.

  Args:
    sources: ``{task: random-access source}`` in task order.
    batch_size: the global batch size of **every task's** batch.
    seed: shuffling seed of every task's stream.
    shuffle: shuffle every epoch.
    drop_remainder: drop each task's last incomplete batch of an epoch.
    num_epochs: stop after this many epochs of the largest task; ``None``
      repeats forever.
    transforms: ``{task: fn(batch) -> batch}`` applied to that task's batches
      (e.g. its preprocessing), or None.
    augment: ``fn(batch, rngs) -> batch`` applied to every task's gathered
      batches (see ``Loader``), or ``{task: fn}``.
    prefetch: batches each task's stream prepares ahead (one thread per task).
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    state: a ``get_state()`` to resume from.

  Attributes:
    tasks: the task names, in order.
    loaders: ``{task: Loader}``, each task's endless stream.
    num_examples: the largest task's number of examples.
    num_examples_per_task: ``{task: number of examples}``.
    steps_per_epoch: the largest task's batches per epoch.
    local_batch_size: ``batch_size // process_count`` (per task).

  Example:
    >>> sources = {'a': ArraySource({'x': np.arange(8)}),
    ...            'b': ArraySource({'x': np.arange(100, 104)})}
    >>> it = MultiInputLoader(sources, batch_size=2, shuffle=False, num_epochs=1,
    ...                       prefetch=0, process_index=0, process_count=1)
    >>> [(b['a']['x'].tolist(), b['b']['x'].tolist()) for b in it]
    [([0, 1], [100, 101]), ([2, 3], [102, 103]), ([4, 5], [100, 101]), ([6, 7], [102, 103])]
    >>> it.get_state()
    {'epoch': 1, 'step': 0}
  """

  def __init__(self, sources: Mapping[str, Any], *, batch_size: int,
               seed: int = 0, shuffle: bool = True,
               drop_remainder: bool = True, num_epochs: int | None = None,
               transforms: Mapping[str, Transform] | None = None,
               augment: Augment | Mapping[str, Augment] | None = None,
               prefetch: int = 2, process_index: int | None = None,
               process_count: int | None = None,
               state: Mapping[str, int] | None = None):
    if not isinstance(sources, Mapping) or not sources:
      raise ValueError('sources must be a non-empty dict {task: source}, got '
                       f'{type(sources).__name__}.')
    transforms = dict(transforms or {})
    unknown = sorted(set(transforms) - set(sources))
    if unknown:
      raise ValueError(f'transforms has tasks {unknown} that sources has not '
                       f'({list(sources)}).')
    self.tasks = tuple(sources)
    self.num_epochs = num_epochs
    process_index, process_count = _default_process(process_index,
                                                    process_count)
    self._settings = dict(
        batch_size=batch_size, seed=seed, shuffle=shuffle,
        drop_remainder=drop_remainder, prefetch=prefetch,
        process_index=process_index, process_count=process_count)
    self._sources = dict(sources)
    self._transforms = transforms
    self._augment = (dict(augment) if isinstance(augment, Mapping)
                     else {t: augment for t in self.tasks})
    self.loaders = {t: self._loader(t, num_epochs=None) for t in self.tasks}
    first = self.loaders[self.tasks[0]]
    self.batch_size = first.batch_size
    self.local_batch_size = first.local_batch_size
    self.num_examples_per_task = {t: it.num_examples
                                  for t, it in self.loaders.items()}
    self.num_examples = max(self.num_examples_per_task.values())
    self.steps_per_epoch = max(it.steps_per_epoch
                               for it in self.loaders.values())
    self._step = 0            # the global step of the next batch
    if state is not None:
      self.set_state(state)

  def _loader(self, task: str, *, num_epochs: int | None) -> Loader:
    return Loader(self._sources[task], num_epochs=num_epochs,
                  transform=self._transforms.get(task),
                  augment=self._augment.get(task), **self._settings)

  # State ---------------------------------------------------------------

  def get_state(self) -> dict[str, int]:
    """``{'epoch': e, 'step': s}`` in the largest task's epochs."""
    epoch, step = divmod(self._step, self.steps_per_epoch)
    return {'epoch': epoch, 'step': step}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves every task's stream to the global position ``state``."""
    epoch, step = int(state['epoch']), int(state['step'])
    if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
      raise ValueError(f'Invalid state {dict(state)} for an epoch of '
                       f'{self.steps_per_epoch} steps.')
    self._step = epoch * self.steps_per_epoch + step
    for loader in self.loaders.values():
      loader.set_state(dict(zip(('epoch', 'step'),
                                divmod(self._step, loader.steps_per_epoch))))

  # Batches -------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Batch]:
    if (self.num_epochs is not None
        and self._step >= self.num_epochs * self.steps_per_epoch):
      raise StopIteration
    batches = {t: next(it) for t, it in self.loaders.items()}
    self._step += 1
    return batches

  def per_task(self, max_batches: int | None = None
               ) -> Iterator[dict[str, Batch]]:
    """Every task's stream once, in task order, as ``{task: batch}``.

    One epoch of each task's own stream (its epoch 0, whatever this loader's
    position), e.g. for evaluation with ``shuffle=False,
    drop_remainder=False``: every example of every task once.

    Args:
      max_batches: at most this many batches of each task (None: all).

    Yields:
      ``{task: batch}`` with a single task, the tasks in order.
    """
    for task in self.tasks:
      with self._loader(task, num_epochs=1) as loader:
        for i, batch in enumerate(loader):
          if max_batches is not None and i >= max_batches:
            break
          yield {task: batch}

  def close(self) -> None:
    """Stops every task's background thread."""
    for loader in self.loaders.values():
      loader.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
