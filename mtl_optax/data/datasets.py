"""The datasets by name, and ``load``: name + split -> iterator of batch dicts.

Every dataset yields ``{'image': float32 [B, H, W, C] in [0, 1], <task>: ...}``
with one entry per task (each module's doc gives targets and ignore values):

* ``multi_mnist``: ``left``, ``right`` (int32 in [0, 10)); 28×28×1.
* ``celeb_a``: 40 attributes (int32 in {0, 1}); 64×64×3.
* ``cifar100_mt``: 20 coarse classes (int32 in [0, 5), -1 off-task); 32×32×3.
* ``cityscapes``: ``segmentation`` (19 classes), ``instance`` (offsets, with
  ``instance_mask``), ``depth`` (disparity); 256×512×3.
* ``cityscapes_mtan``: ``segmentation`` (7 classes), ``depth``; 256×512×3.
* ``nyuv2``: ``segmentation`` (13 classes), ``depth``, ``normals``; 288×384×3.
* ``seven_scenes``: ``translation`` [3], ``orientation`` [4] (w ≥ 0);
  224×224×3.

Multi-input datasets (``DatasetSpec.multi_input``), whose tasks each have
their own examples, yield ``{task: batch_t}`` per step, ``batch_t`` =
``{'image': ..., task: target}`` (``load`` returns a ``MultiInputLoader``;
its ``batch_size`` is every task's):

* ``office31``: domains ``amazon``, ``dslr``, ``webcam`` (int32 in
  [0, 31)); 224×224×3.
* ``office_home``: domains ``Art``, ``Clipart``, ``Product``,
  ``Real_World`` (int32 in [0, 65)); 224×224×3.

``load(..., augment=True)`` augments the training stream of ``nyuv2``,
``cityscapes``, ``cityscapes_mtan`` and ``seven_scenes`` as their papers do
(``mtl_optax.data.augment``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Mapping, Union

from mtl_optax.data import augment as augment_lib
from mtl_optax.data import celeb_a
from mtl_optax.data import cifar100_mt
from mtl_optax.data import cityscapes
from mtl_optax.data import loader as loader_lib
from mtl_optax.data import multi_mnist
from mtl_optax.data import nyuv2
from mtl_optax.data import office
from mtl_optax.data import seven_scenes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to read and preprocess one dataset.

  Attributes:
    name: the name ``load`` takes.
    tasks: the task keys of its batches, in order.
    data_source: ``fn(split, *, data_dir, **source_options)`` -> random-access
      source of records.
    preprocess: ``fn(batch, **preprocess_options)`` -> batch dict (batched
      numpy, applied by the loader's ``transform``).
    in_memory: whether ``load`` reads the split into memory by default.
    memory_keys: record keys kept when reading into memory (``None``: all).
    preprocess_options: names of ``load`` options routed to ``preprocess``
      (the others go to ``data_source``).
    multi_input: each task has its own examples (LibMTL's multi-input
      mode): ``data_source`` and ``preprocess`` also take ``task=``, and
      ``load`` returns a ``MultiInputLoader`` of ``{task: batch}``.
  """

  name: str
  tasks: tuple[str, ...]
  data_source: Callable[..., Any]
  preprocess: Callable[..., dict]
  in_memory: bool = False
  memory_keys: tuple[str, ...] | None = None
  preprocess_options: tuple[str, ...] = ()
  multi_input: bool = False


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec('multi_mnist', multi_mnist.TASKS, multi_mnist.data_source,
                    multi_mnist.preprocess, in_memory=True,
                    preprocess_options=('normalize',)),
        DatasetSpec('celeb_a', celeb_a.TASKS, celeb_a.data_source,
                    celeb_a.preprocess, preprocess_options=('image_size',)),
        DatasetSpec('cifar100_mt', cifar100_mt.TASKS, cifar100_mt.data_source,
                    cifar100_mt.preprocess, in_memory=True,
                    memory_keys=('image', 'label')),
        DatasetSpec('cityscapes', cityscapes.TASKS, cityscapes.data_source,
                    cityscapes.preprocess),
        DatasetSpec('cityscapes_mtan', cityscapes.TASKS_MTAN,
                    cityscapes.data_source, cityscapes.preprocess_mtan),
        DatasetSpec('nyuv2', nyuv2.TASKS, nyuv2.data_source, nyuv2.preprocess),
        DatasetSpec('seven_scenes', seven_scenes.TASKS,
                    seven_scenes.data_source, seven_scenes.preprocess,
                    preprocess_options=('crop',)),
        DatasetSpec('office31', office.DOMAINS['office31'],
                    functools.partial(office.data_source, dataset='office31'),
                    office.preprocess, multi_input=True),
        DatasetSpec('office_home', office.DOMAINS['office_home'],
                    functools.partial(office.data_source,
                                      dataset='office_home'),
                    office.preprocess, multi_input=True),
    )
}


def get_spec(name: str) -> DatasetSpec:
  """The ``DatasetSpec`` of ``name`` (``KeyError`` listing the known names)."""
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f'Unknown dataset {name!r}; known: {sorted(DATASETS)}.'
                   ) from None


def tasks(name: str) -> tuple[str, ...]:
  """Task names of a dataset, in the order of its batches' keys.

  Example:
    >>> tasks('multi_mnist')
    ('left', 'right')
  """
  return get_spec(name).tasks


def _split_options(spec, options):
  options = {k: v for k, v in options.items() if k != 'augment'}
  source_opts = {k: v for k, v in options.items()
                 if k not in spec.preprocess_options}
  prep_opts = {k: v for k, v in options.items() if k in spec.preprocess_options}
  return source_opts, prep_opts


_HOLDOUT = re.compile(r'^(?P<base>.+)@(?P<part>holdout|rest)(?P<count>\d+)'
                      r'(?:_seed(?P<seed>\d+))?$')


def split_source(spec: 'DatasetSpec', split: str, *, data_dir, **source_opts):
  """``spec.data_source(split, ...)``, with the hold-out syntax.

  ``'SPLIT@holdoutN'`` is a seeded random choice of ``N`` records of
  ``SPLIT`` (any tfds split, slices included) and ``'SPLIT@restN'`` the
  other records, e.g. Sener & Koltun's Cityscapes protocol: hyper-parameters
  chosen on 275 random training images (``train_split='train@rest275'``,
  ``eval_split='train@holdout275'``), then retrained on ``'train'``. A
  suffix ``_seedS`` draws with seed ``S`` (default 0): ``'train@rest275_seed1'``.
  """
  match = _HOLDOUT.match(split)
  if match is None:
    return spec.data_source(split, data_dir=data_dir, **source_opts)
  source = spec.data_source(match['base'], data_dir=data_dir, **source_opts)
  held, rest = loader_lib.holdout_indices(
      len(source), int(match['count']), int(match['seed'] or 0))
  return loader_lib.SubsetSource(source,
                                 held if match['part'] == 'holdout' else rest)


def is_multi_input(name: str) -> bool:
  """Whether dataset ``name``'s tasks each have their own examples.

  Example:
    >>> is_multi_input('office31'), is_multi_input('multi_mnist')
    (True, False)
  """
  return get_spec(name).multi_input


def num_examples(name: str, split: str, *,
                 data_dir: str | os.PathLike | None = None,
                 **options) -> int | dict[str, int]:
  """Number of examples of a prepared split (over all processes); for a
  multi-input dataset ``{task: number}``."""
  spec = get_spec(name)
  source_opts, _ = _split_options(spec, options)
  if spec.multi_input:
    return {task: len(split_source(spec, split, data_dir=data_dir,
                                   task=task, **source_opts))
            for task in spec.tasks}
  return len(split_source(spec, split, data_dir=data_dir, **source_opts))


AugmentOption = Union[bool, Mapping[str, Any], Callable[..., dict], None]


def augment_fn(name: str, augment: AugmentOption):
  """The loader's ``augment(batch, rngs)`` that ``load``'s option names.

  ``None`` / ``False``: none; ``True``: ``augment.augmentation(name)``; a
  mapping: ``augment.augmentation(name, **augment)``; a callable: itself.
  """
  if augment is None or augment is False:
    return None
  if augment is True:
    return augment_lib.augmentation(name)
  if isinstance(augment, Mapping):
    return augment_lib.augmentation(name, **augment)
  if callable(augment):
    return augment
  raise TypeError(f'augment must be a bool, a mapping of options or a '
                  f'callable, got {augment!r}.')


def _compose(first, second):
  if second is None:
    return first
  return lambda batch: second(first(batch))


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         batch_size: int, seed: int = 0, shuffle: bool = True,
         drop_remainder: bool = True, num_epochs: int | None = None,
         in_memory: bool | None = None,
         transform: Callable[[dict], dict] | None = None, prefetch: int = 2,
         process_index: int | None = None, process_count: int | None = None,
         state: Mapping[str, int] | None = None,
         augment: AugmentOption = None,
         **options) -> loader_lib.Loader:
  """An iterator of batch dicts over a prepared dataset split.

  Args:
    name: a key of ``DATASETS`` (see the module doc).
    split: tfds split name (``'train'``, ``'test'``, ``'validation'``; tfds
      slicing such as ``'train[:90%]'`` works too), or a seeded random
      hold-out of one (``'train@holdout275'``, ``'train@rest275'``; see
      ``split_source``).
    data_dir: tfds data directory holding the prepared dataset.
    batch_size: **global** batch size (each of ``process_count`` processes
      yields ``batch_size // process_count`` examples per step).
    seed: shuffling seed; epoch ``e`` is ordered by ``(seed, e)``.
    shuffle: shuffle every epoch (use ``False`` for evaluation).
    drop_remainder: drop each epoch's last incomplete batch (use ``False``
      for evaluation).
    num_epochs: number of epochs, ``None`` = repeat forever (use ``1`` for
      evaluation).
    in_memory: read the whole split into numpy arrays first (default: for
      ``multi_mnist`` and ``cifar100_mt``).
    transform: applied to each batch after the dataset's preprocessing.
    prefetch: batches prepared ahead in a background thread (0: none).
    process_index: default ``jax.process_index()``.
    process_count: default ``jax.process_count()``.
    state: ``loader.get_state()`` of an earlier run, to resume its stream.
    augment: ``True`` augments a **shuffled** stream (training) with the
      dataset's ``augment.augmentation(name)``, a mapping passes its options
      (e.g. ``{'max_degrees': 5}``), a callable ``fn(records, rngs)`` is used
      as it is. Applied to the stored records before the preprocessing, with
      example ``i`` of epoch ``e`` drawing from
      ``loader.example_rng(seed, e, i)``: resuming from ``state`` gives the
      same augmented batches. With ``shuffle=False`` (evaluation) nothing is
      augmented, so one set of options serves both streams.
    **options: dataset options: ``scene=`` and ``frames=`` (``'crop'`` or
      ``'full'``, the frames random crops need) for ``seven_scenes``,
      ``config=`` for ``cityscapes*`` and ``office*``, ``image_size=`` for
      ``celeb_a``.

  Returns:
    A ``Loader`` (an iterator of batch dicts with ``num_examples``,
    ``steps_per_epoch``, ``get_state`` and ``set_state``); for a multi-input
    dataset (``office31``, ``office_home``) a ``MultiInputLoader`` of
    ``{task: batch}``, one stream per task, ``batch_size`` examples each, an
    epoch being one pass over the largest task (see its doc).
  """
  spec = get_spec(name)
  augment = augment_fn(name, augment)   # built (and checked) for any stream
  source_opts, prep_opts = _split_options(spec, options)
  if spec.multi_input:
    if in_memory:
      raise ValueError(f'in_memory=True is not supported for the multi-input '
                       f'dataset {name!r}; leave it at None.')
    sources = {task: split_source(spec, split, data_dir=data_dir, task=task,
                                  **source_opts) for task in spec.tasks}
    transforms = {task: _compose(functools.partial(spec.preprocess, task=task,
                                                   **prep_opts), transform)
                  for task in spec.tasks}
    return loader_lib.MultiInputLoader(
        sources, batch_size=batch_size, seed=seed, shuffle=shuffle,
        drop_remainder=drop_remainder, num_epochs=num_epochs,
        transforms=transforms, prefetch=prefetch,
        process_index=process_index, process_count=process_count,
        state=state, augment=augment if shuffle else None)
  source = split_source(spec, split, data_dir=data_dir, **source_opts)
  if spec.in_memory if in_memory is None else in_memory:
    source = loader_lib.read_into_memory(source, keys=spec.memory_keys)
  preprocess = (functools.partial(spec.preprocess, **prep_opts) if prep_opts
                else spec.preprocess)
  return loader_lib.Loader(
      source, batch_size=batch_size, seed=seed, shuffle=shuffle,
      drop_remainder=drop_remainder, num_epochs=num_epochs,
      transform=_compose(preprocess, transform), prefetch=prefetch,
      process_index=process_index, process_count=process_count, state=state,
      augment=augment if shuffle else None)
