"""Office-31 and Office-Home: each domain is a task (multi-input MTL).

Every domain is a task with its own images and its own classifier over a
shared encoder (LibMTL's multi-input set-up): Office-31 has the domains
``amazon``, ``dslr``, ``webcam`` and 31 classes; Office-Home ``Art``,
``Clipart``, ``Product``, ``Real_World`` and 65 classes. A training step
takes one batch from every domain (``mtl_optax.data.MultiInputLoader``).

Builders ``office31`` and ``office_home`` over a manual directory holding
the images as the datasets are downloaded (nothing is downloaded here)::

    Office-31:    <root>/<domain>/images/<class>/<file>.jpg
    Office-Home:  <root>/<Domain>/<class>/<file>.jpg

(Office-Home's ``Real_World`` folder may also be spelled ``Real World``, as
in the released archive). Image files are ``.jpg``, ``.jpeg`` or ``.png``
(any case); every domain must have the same class folders, as many as the
dataset has classes. Labels are the class index in the **sorted** class
names (Python's ``sorted``, code-point order), the same in every domain.

Splits: per domain, a deterministic train / validation / test split of
``fractions`` (default 60 / 20 / 20 %, LibMTL's proportions; LibMTL ships
its own lists, which we do not copy), seeded by ``split_seed`` and
stratified by class (``split_assignment``): within each class the images
are shuffled, each gets its quantile ``(rank + ½) / n_class``, and the
domain's images sorted by quantile go to train, validation and test in
that order, so the split sizes are exact (``split_sizes``) and each class
takes its share to within one image. The tfds splits are named
``<domain>_<split>`` (``amazon_train``, ``Real_World_test``); ``data_source``
takes the domain as ``task=`` and the split as ``'train'`` /
``'validation'`` / ``'test'`` (tfds slicing such as ``'train[:50%]'``
works).

Stored records: ``image`` uint8 ``[s, s, 3]``, the whole image resized to
``s × s`` (``OfficeConfig.image_size``, default 224; the aspect ratio is not
kept, as LibMTL's ``transforms.Resize((224, 224))``) by Pillow's bilinear
resampling (antialiased when shrinking, what torchvision's ``Resize`` does
to a PIL image), and ``label`` int32, in path order within each split.

Batches (``preprocess``, one domain's): ``image`` float32 ``[B, s, s, 3]`` =
uint8 / 255 (range [0, 1]; LibMTL's ImageNet mean/std standardisation is
done by the model, ``resnet18_office``), and the label int32 ``[B]`` keyed
by the domain's name (the task), the batch convention of every dataset.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import ClassVar, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops
from mtl_optax.data import task_names

DOMAINS = task_names.OFFICE_DOMAINS
NUM_CLASSES = task_names.OFFICE_CLASSES
IMAGE_SIZE = 224
FRACTIONS = (0.6, 0.2, 0.2)
SPLITS = ('train', 'validation', 'test')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
LAYOUTS = {
    'office31': '<root>/<domain>/images/<class>/<file>.jpg with the domains '
                + ', '.join(DOMAINS['office31']),
    'office_home': '<root>/<Domain>/<class>/<file>.jpg with the domains '
                   + ', '.join(DOMAINS['office_home'])
                   + " ('Real World' also accepted)",
}


# -- the split ------------------------------------------------------------------


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  """``fractions`` as three floats ≥ 0 summing to 1, or a ``ValueError``.

  Example:
    >>> check_fractions([0.6, 0.2, 0.2])
    (0.6, 0.2, 0.2)
  """
  try:
    values = tuple(float(f) for f in fractions)
  except (TypeError, ValueError):
    values = ()
  if (len(values) != 3 or min(values) < 0
      or not np.isclose(sum(values), 1.0, rtol=0, atol=1e-9)):
    raise ValueError(
        f'fractions must be three numbers >= 0 (train, validation, test) '
        f'summing to 1, got {fractions!r}; e.g. fractions=(0.6, 0.2, 0.2).')
  return values


def split_sizes(num_examples: int, fractions: Sequence[float] = FRACTIONS
                ) -> tuple[int, int, int]:
  """Train, validation and test sizes of ``num_examples`` examples.

  The boundaries are the cumulative fractions times ``n``, rounded half up:
  ``b1 = ⌊f_train·n + ½⌋``, ``b2 = ⌊(f_train + f_val)·n + ½⌋``; the sizes are
  ``b1``, ``b2 − b1`` and ``n − b2`` (they always add up to ``n``).

  Example:
    >>> split_sizes(498), split_sizes(5)
    ((299, 99, 100), (3, 1, 1))
  """
  f = check_fractions(fractions)
  b1 = int(np.floor(f[0] * num_examples + 0.5))
  b2 = int(np.floor((f[0] + f[1]) * num_examples + 0.5))
  b2 = min(max(b2, b1), num_examples)
  return b1, b2 - b1, num_examples - b2


def split_assignment(labels: Sequence[int], *,
                     fractions: Sequence[float] = FRACTIONS,
                     seed: int | Sequence[int] = 0) -> np.ndarray:
  """The split of every example (0 train, 1 validation, 2 test), by class.

  Within each class (ascending) the examples are shuffled by
  ``np.random.default_rng(seed)`` and the ``r``-th gets the quantile
  ``(r + ½) / n_class``; the examples sorted by quantile (ties in a random
  order from the same generator) fill train, validation and test with
  ``split_sizes(n, fractions)`` examples. A class of ``n_c`` examples thus
  puts within one example of ``f·n_c`` in each split.

  Args:
    labels: the class of each example.
    fractions: train, validation and test fractions (summing to 1).
    seed: the generator's seed (an int or a sequence of ints).

  Returns:
    int8 ``[n]`` split ids, a pure function of ``labels``, ``fractions`` and
    ``seed``.

  Example:
    >>> a = split_assignment([0] * 5 + [1] * 5, seed=0)
    >>> np.bincount(a).tolist(), np.bincount(a[:5]).tolist()
    ([6, 2, 2], [3, 1, 1])
  """
  labels = np.asarray(labels)
  n = len(labels)
  sizes = split_sizes(n, fractions)
  rng = np.random.default_rng(seed)
  quantile = np.empty(n, np.float64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    ranks = rng.permutation(len(members))
    quantile[members] = (ranks + 0.5) / len(members)
  order = np.lexsort((rng.random(n), quantile))
  out = np.empty(n, np.int8)
  start = 0
  for split, size in enumerate(sizes):
    out[order[start:start + size]] = split
    start += size
  return out


# -- the manual directory ----------------------------------------------------------


def _layout_error(dataset: str, root, problem: str) -> FileNotFoundError:
  """The error for a manual directory of the wrong layout: the problem, the
  layout expected and what the directory holds."""
  if os.path.isdir(root):
    entries = sorted(p.name for p in pathlib.Path(root).iterdir())
    holds = f'holds {entries[:10]}' if entries else 'is empty'
  else:
    holds = 'does not exist'
  return FileNotFoundError(
      f'{dataset}: {problem} The manual directory must hold '
      f'{LAYOUTS[dataset]}; {os.fspath(root)!r} {holds}.')


def domain_dir(root: str | os.PathLike, dataset: str, domain: str
               ) -> pathlib.Path:
  """The folder of ``domain``'s class folders under the manual directory.

  Office-31: ``<root>/<domain>/images``; Office-Home: ``<root>/<Domain>``
  (``Real_World`` also found as ``Real World``).

  Raises:
    FileNotFoundError: the folder is missing; the message names the expected
      layout and what ``root`` holds.
  """
  root = pathlib.Path(root)
  names = [domain]
  if '_' in domain:
    names.append(domain.replace('_', ' '))
  for name in names:
    path = root / name / 'images' if dataset == 'office31' else root / name
    if path.is_dir():
      return path
  where = f'{domain}/images' if dataset == 'office31' else domain
  raise _layout_error(dataset, root, f'no folder {where!r} for the domain '
                      f'{domain!r}.')


def _images_of(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir()
                if p.is_file() and not p.name.startswith('.')
                and p.suffix.lower() in IMAGE_SUFFIXES)


def list_images(root: str | os.PathLike, dataset: str, *,
                num_classes: int | None = None
                ) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
  """The class names and every domain's images with their labels.

  Args:
    root: the manual directory (see the module doc for the layout).
    dataset: ``'office31'`` or ``'office_home'``.
    num_classes: the number of class folders every domain must have
      (default the dataset's, 31 or 65).

  Returns:
    ``(class_names, {domain: [(path relative to root, label), ...]})``: the
    sorted class names, and each domain's images in path order, the label
    being the index of the image's class in ``class_names``.

  Raises:
    FileNotFoundError: a domain folder is missing, or a domain has no
      class folder or a class folder no image; the message names the
      expected layout.
    ValueError: the domains have different class folders, or not
      ``num_classes`` of them.
  """
  if dataset not in DOMAINS:
    raise ValueError(f'dataset must be one of {sorted(DOMAINS)}, got '
                     f'{dataset!r}.')
  root = pathlib.Path(root)
  if not root.is_dir():
    raise _layout_error(dataset, root, 'the manual directory does not exist.')
  num_classes = NUM_CLASSES[dataset] if num_classes is None else num_classes
  folders = {d: domain_dir(root, dataset, d) for d in DOMAINS[dataset]}
  classes = {}
  for domain, folder in folders.items():
    classes[domain] = sorted(p.name for p in folder.iterdir() if p.is_dir()
                             and not p.name.startswith('.'))
    if not classes[domain]:
      raise _layout_error(dataset, root, f'the domain {domain!r} '
                          f'({folder}) has no class folders.')
  first, names = next(iter(classes.items()))
  for domain, other in classes.items():
    if other != names:
      raise ValueError(
          f'{dataset}: the domains {first!r} and {domain!r} have different '
          f'class folders (only in {first!r}: '
          f'{sorted(set(names) - set(other))[:5]}; only in {domain!r}: '
          f'{sorted(set(other) - set(names))[:5]}). Every domain needs the '
          'same class folders.')
  if len(names) != num_classes:
    raise ValueError(
        f'{dataset}: {len(names)} class folders per domain, expected '
        f'{num_classes}. Give the complete dataset, or a builder config with '
        f'num_classes={len(names)} (office.OfficeConfig(name=..., '
        f'num_classes={len(names)})) for a subset.')
  images = {}
  for domain, folder in folders.items():
    items = []
    for label, name in enumerate(names):
      files = _images_of(folder / name)
      if not files:
        raise _layout_error(dataset, root, f'the class folder {name!r} of '
                            f'the domain {domain!r} holds no image '
                            f'({", ".join(IMAGE_SUFFIXES)}).')
      items.extend((p.relative_to(root).as_posix(), label) for p in files)
    images[domain] = items
  return tuple(names), images


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
  """An image file as RGB uint8 ``[size, size, 3]`` (Pillow, bilinear).

  Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> with tempfile.NamedTemporaryFile(suffix='.png') as f:
    ...   Image.new('L', (8, 6), 200).save(f.name)
    ...   image = load_image(f.name, 4)
    >>> image.shape, int(image[0, 0, 0])
    ((4, 4, 3), 200)
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as img:
    rgb = img.convert('RGB')
    if rgb.size != (size, size):
      rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, np.uint8)


# -- the builders ---------------------------------------------------------------------


@dataclasses.dataclass
class OfficeConfig(tfds.core.BuilderConfig):
  """The stored image size and the split of every domain.

  Attributes:
    image_size: side ``s`` of the stored ``s × s`` images (224 as LibMTL).
    fractions: train, validation and test fractions of every domain.
    split_seed: seed of the split (domain ``k`` of the dataset's domains
      uses ``np.random.default_rng((split_seed, k))``).
    num_classes: the number of class folders every domain must have
      (None: the dataset's, 31 or 65; smaller for a subset).
  """
  image_size: int = IMAGE_SIZE
  fractions: tuple[float, float, float] = FRACTIONS
  split_seed: int = 0
  num_classes: int | None = None


class _OfficeBuilder(builder_base.ArrayRecordBuilder, skip_registration=True):
  """The common builder of Office-31 and Office-Home (module doc)."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [OfficeConfig(name='default')]
  DATASET: ClassVar[str] = ''

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    check_fractions(config.fractions)
    s = int(config.image_size)
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(s, s, 3), dtype=np.uint8),
            'label': t(shape=(), dtype=np.int32),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    try:
      root = dl_manager.manual_dir
    except AssertionError:    # no manual directory, or an empty one
      root = getattr(dl_manager, '_manual_dir', None) or 'MANUAL_DIR'
      raise _layout_error(self.DATASET, root,
                          'the manual directory is missing or empty.'
                          ) from None
    config = self.builder_config
    _, images = list_images(root, self.DATASET,
                            num_classes=config.num_classes)
    generators = {}
    for k, (domain, items) in enumerate(images.items()):
      splits = split_assignment([label for _, label in items],
                                fractions=config.fractions,
                                seed=(config.split_seed, k))
      for s, split in enumerate(SPLITS):
        chosen = [item for item, a in zip(items, splits) if a == s]
        generators[f'{domain}_{split}'] = self._generate_examples(
            root=root, items=chosen)
    return generators

  def _generate_examples(self, *, root, items):
    size = int(self.builder_config.image_size)
    for path, label in items:
      yield path, {'image': load_image(pathlib.Path(root) / path, size),
                   'label': np.int32(label)}


# Not registered when run as a script, where the module is imported twice.
class Office31(_OfficeBuilder, skip_registration=__name__ == '__main__'):
  """Office-31 (3 domains, 31 classes) as ArrayRecord, no TensorFlow."""

  name = 'office31'
  DATASET = 'office31'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put Office-31 in the manual directory as it is downloaded: '
      f'{LAYOUTS["office31"]}.')


class OfficeHome(_OfficeBuilder, skip_registration=__name__ == '__main__'):
  """Office-Home (4 domains, 65 classes) as ArrayRecord, no TensorFlow."""

  name = 'office_home'
  DATASET = 'office_home'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put Office-Home in the manual directory as it is downloaded: '
      f'{LAYOUTS["office_home"]}.')


BUILDERS = {'office31': Office31, 'office_home': OfficeHome}


def tfds_split(split: str, task: str) -> str:
  """The tfds split of ``task``'s ``split`` (slicing kept).

  Example:
    >>> tfds_split('train[:50%]', 'amazon'), tfds_split('test', 'Real_World')
    ('amazon_train[:50%]', 'Real_World_test')
  """
  name, bracket, rest = split.partition('[')
  if name not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS} (tfds slicing such as '
                     f"'train[:50%]' allowed), got {split!r}.")
  return f'{task}_{name}{bracket}{rest}'


def data_source(split: str, *, task: str, dataset: str = 'office31',
                data_dir: str | os.PathLike | None = None,
                config: str | OfficeConfig = 'default'):
  """One domain's prepared split as a random-access source.

  Args:
    split: ``'train'``, ``'validation'`` or ``'test'`` (tfds slicing
      allowed).
    task: the domain (``'amazon'``, ``'Art'``, ...).
    dataset: ``'office31'`` or ``'office_home'``.
    data_dir: the tfds data directory.
    config: a config name (``'default'``) or an ``OfficeConfig``.

  Raises:
    ValueError: an unknown dataset, domain or split (the message lists the
      known ones).
    FileNotFoundError: the dataset is not prepared in ``data_dir`` (the
      message gives the command that prepares it).
  """
  if dataset not in BUILDERS:
    raise ValueError(f'dataset must be one of {sorted(BUILDERS)}, got '
                     f'{dataset!r}.')
  if task not in DOMAINS[dataset]:
    raise ValueError(f'{dataset} has the domains {DOMAINS[dataset]}, not '
                     f'{task!r}.')
  builder = BUILDERS[dataset](
      data_dir=None if data_dir is None else os.fspath(data_dir),
      config=config)
  return builder.as_prepared_source(tfds_split(split, task))


def preprocess(batch: Mapping[str, np.ndarray], *,
               task: str) -> dict[str, np.ndarray]:
  """One domain's records -> ``{'image': float32 [B, s, s, 3], task: int32 [B]}``.

  Example:
    >>> b = preprocess({'image': np.zeros((2, 4, 4, 3), np.uint8),
    ...                 'label': np.array([3, 0])}, task='dslr')
    >>> sorted(b), b['image'].dtype, b['dslr'].tolist()
    (['dslr', 'image'], dtype('float32'), [3, 0])
  """
  return {'image': image_ops.to_float(batch['image']),
          task: np.asarray(batch['label']).astype(np.int32)}
