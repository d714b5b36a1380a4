"""Microsoft 7-Scenes camera relocalisation: position and orientation tasks.

Builder ``seven_scenes`` (one config per scene: ``chess``, ``fire``,
``heads``, ``office``, ``pumpkin``, ``redkitchen``, ``stairs``) over a manual
directory holding the extracted scenes in the standard layout::

    {scene}/TrainSplit.txt, {scene}/TestSplit.txt   lines 'sequence{k}'
    {scene}/seq-{kk}/frame-{nnnnnn}.color.png         RGB 640×480
    {scene}/seq-{kk}/frame-{nnnnnn}.pose.txt          4×4 camera-to-world

(the per-sequence ``seq-XX.zip`` files of each scene extracted in place;
depth images are not read). tfds splits ``train`` / ``test`` are the frames
of the sequences listed in ``TrainSplit.txt`` / ``TestSplit.txt``, in
sequence then frame order.

Images: the shorter side resized to 256 by area averaging (640×480 → 341×256,
the longer side ``round(640·256/480)``), then the central 224×224 crop (rows
``[16, 240)``, columns ``[58, 282)``), stored as uint8. The ``{scene}_full``
configs (e.g. ``chess_full``) store the whole 256×341 frame instead, for the
random 224×224 training crops of Aligned-MTL App. D.2 (``data.load(...,
frames='full', augment=True)``, see ``mtl_optax.data.augment``); their
batches are central-cropped to 224×224 by ``preprocess``, pixel for pixel
the stored crops of the plain configs. Poses, from the 4×4
camera-to-world matrix ``[R t; 0 1]``: ``translation = t`` (metres, world
frame) and ``orientation`` = the unit quaternion ``(w, x, y, z)`` of ``R``,
**w first** and sign-fixed to ``w ≥ 0`` (``q`` and ``−q`` are the same
rotation). The quaternion is the eigenvector of the largest eigenvalue of
Bar-Itzhack's symmetric 4×4 matrix of ``R``, the nearest rotation's quaternion
when ``R`` is not exactly orthonormal (as in the released text files).

Batches (``preprocess``): ``image`` float32 ``[B, 224, 224, 3]`` = uint8 / 255
(range [0, 1]; the central 224×224 crop of a larger stored frame);
``translation`` float32 ``[B, 3]``; ``orientation`` float32
``[B, 4]``. PNGs are decoded with Pillow.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_optax.data import builder_base
from mtl_optax.data import image_ops

TASKS = ('translation', 'orientation')
SCENES = ('chess', 'fire', 'heads', 'office', 'pumpkin', 'redkitchen',
          'stairs')
SPLIT_FILES = {'train': 'TrainSplit.txt', 'test': 'TestSplit.txt'}
CROP = 224
FRAMES = ('crop', 'full')


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
  """Unit quaternion ``(w, x, y, z)``, ``w ≥ 0``, of a 3×3 rotation matrix.

  Robust to small deviations from orthonormality: returns the quaternion of
  the nearest rotation in Bar-Itzhack's sense (top eigenvector of a symmetric
  4×4 matrix built from ``rotation``).

  Args:
    rotation: ``[3, 3]`` (or ``[..., 3, 3]``) rotation matrices.

  Returns:
    float64 ``[..., 4]`` quaternions ``(w, x, y, z)`` with ``w ≥ 0``.

  Example:
    >>> rz90 = np.array([[0., -1, 0], [1, 0, 0], [0, 0, 1]])   # 90° about z
    >>> np.round(rotation_to_quaternion(rz90), 6).tolist()
    [0.707107, 0.0, 0.0, 0.707107]
  """
  m = np.asarray(rotation, np.float64)
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  # Symmetric K with (x, y, z, w) ordering; K q = q for an exact rotation.
  k = np.stack([
      np.stack([m00 - m11 - m22, m01 + m10, m02 + m20, m21 - m12], -1),
      np.stack([m01 + m10, m11 - m00 - m22, m12 + m21, m02 - m20], -1),
      np.stack([m02 + m20, m12 + m21, m22 - m00 - m11, m10 - m01], -1),
      np.stack([m21 - m12, m02 - m20, m10 - m01, m00 + m11 + m22], -1),
  ], -2) / 3.0
  _, vectors = np.linalg.eigh(k)
  xyzw = vectors[..., :, -1]
  q = np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  return np.where(q[..., :1] < 0, -q, q)


def pose_targets(pose: np.ndarray) -> dict[str, np.ndarray]:
  """4×4 camera-to-world matrix -> ``translation`` [3] and ``orientation`` [4].

  Example:
    >>> t = pose_targets(np.array([[1., 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3],
    ...                            [0, 0, 0, 1]]))
    >>> t['translation'].tolist(), t['orientation'].tolist()
    ([1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0])
  """
  pose = np.asarray(pose, np.float64)
  return {
      'translation': pose[:3, 3].astype(np.float32),
      'orientation': rotation_to_quaternion(pose[:3, :3]).astype(np.float32),
  }


def resized_shape(shape: tuple[int, int], short_side: int) -> tuple[int, int]:
  """``(H, W)`` with the shorter side ``short_side``, the longer rounded.

  Example:
    >>> resized_shape((480, 640), 256)
    (256, 341)
  """
  h, w = shape
  if h <= w:
    return short_side, int(round(w * short_side / h))
  return int(round(h * short_side / w)), short_side


def central_crop(images: np.ndarray, crop: int) -> np.ndarray:
  """The central ``crop × crop`` window of ``[..., H, W, C]`` images.

  It starts at ``(H − crop) // 2``, ``(W − crop) // 2``; images no larger
  than ``crop`` on both axes are returned as they are.

  Example:
    >>> central_crop(np.zeros((2, 256, 341, 3)), 224).shape
    (2, 224, 224, 3)
  """
  h, w = images.shape[-3], images.shape[-2]
  if h <= crop and w <= crop:
    return images
  if h < crop or w < crop:
    raise ValueError(f'Crop {crop} larger than the image {h}x{w}.')
  top, left = (h - crop) // 2, (w - crop) // 2
  return images[..., top:top + crop, left:left + crop, :]


def resize_and_crop(image: np.ndarray, *, short_side: int,
                    crop: int | None) -> np.ndarray:
  """Shorter side to ``short_side`` (area averaging), central ``crop``² crop.

  The longer side becomes ``round(long·short_side/short)``; the crop starts
  at ``(size − crop) // 2`` on each axis. ``crop=None``: no crop.

  Example:
    >>> resize_and_crop(np.zeros((480, 640, 3), np.uint8), short_side=256,
    ...                 crop=224).shape
    (224, 224, 3)
  """
  size = resized_shape(image.shape[:2], short_side)
  if crop is not None and min(size) < crop:
    raise ValueError(f'Crop {crop} larger than the resized image {size}.')
  resized = image_ops.to_uint8(image_ops.resize_area(image, size))
  if crop is None:
    return resized
  return central_crop(resized, crop)


def read_split_file(path) -> list[int]:
  """Sequence numbers listed in a 7-Scenes split file (``'sequence1'`` -> 1)."""
  numbers = []
  for line in open(path).read().splitlines():
    match = re.search(r'(\d+)', line)
    if match:
      numbers.append(int(match.group(1)))
  return numbers


@dataclasses.dataclass
class SevenScenesConfig(tfds.core.BuilderConfig):
  """A scene and the image geometry.

  ``crop=None`` stores the whole resized frame, of ``resized_shape(
  frame_size, short_side)`` (every frame of a scene must have
  ``frame_size``).
  """
  scene: str = 'chess'
  short_side: int = 256
  crop: int | None = 224
  frame_size: tuple[int, int] = (480, 640)

  def stored_size(self) -> tuple[int, int]:
    if self.crop is None:
      return resized_shape(self.frame_size, self.short_side)
    return self.crop, self.crop


# Not registered when run as a script, where the module is imported twice.
class SevenScenes(builder_base.ArrayRecordBuilder,
                  skip_registration=__name__ == '__main__'):
  """7-Scenes frames with camera poses, as ArrayRecord, no TensorFlow."""

  name = 'seven_scenes'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = (
      [SevenScenesConfig(name=s, scene=s) for s in SCENES] +
      [SevenScenesConfig(name=f'{s}_full', scene=s, crop=None)
       for s in SCENES])
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the 7-Scenes scenes (https://www.microsoft.com/en-us/research/'
      'project/rgb-d-dataset-7-scenes/), extract each {scene}.zip and its '
      'seq-XX.zip files in the manual directory: {scene}/seq-XX/frame-*.')

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.stored_size()
    t = tfds.features.Tensor
    return builder_base.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': t(shape=(h, w, 3), dtype=np.uint8),
            'translation': t(shape=(3,), dtype=np.float32),
            'orientation': t(shape=(4,), dtype=np.float32),
        }),
        homepage=('https://www.microsoft.com/en-us/research/project/'
                  'rgb-d-dataset-7-scenes/'),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir / self.builder_config.scene
    return {split: self._generate_examples(
        root=root, sequences=read_split_file(root / name))
            for split, name in SPLIT_FILES.items()}

  def _generate_examples(self, *, root, sequences):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    for seq in sequences:
      frames = sorted((root / f'seq-{seq:02d}').glob('frame-*.color.png'))
      if not frames:
        raise FileNotFoundError(f'No frames in {root / f"seq-{seq:02d}"}.')
      for path in frames:
        frame = path.name[:-len('.color.png')]
        with Image.open(path) as img:
          image = np.asarray(img.convert('RGB'))
        if config.crop is None and image.shape[:2] != tuple(config.frame_size):
          raise ValueError(f'{path}: frame of {image.shape[:2]}, the config '
                           f'{config.name!r} expects {config.frame_size}.')
        pose = np.loadtxt(path.parent / f'{frame}.pose.txt')
        yield f'{seq:02d}/{frame}', {
            'image': resize_and_crop(image, short_side=config.short_side,
                                     crop=config.crop),
            **pose_targets(pose),
        }


def data_source(split: str, *, data_dir: str | os.PathLike | None = None,
                scene: str | SevenScenesConfig = 'chess',
                frames: str = 'crop'):
  """The prepared scene's split as a random-access source.

  Args:
    split: ``'train'`` or ``'test'``.
    data_dir: the tfds data directory.
    scene: a scene name (or a ``SevenScenesConfig``, used as it is).
    frames: ``'crop'`` (config ``scene``: the stored central 224 crops) or
      ``'full'`` (config ``{scene}_full``: the 256×341 frames, for random
      crops).
  """
  if frames not in FRAMES:
    raise ValueError(f'frames must be one of {FRAMES}, got {frames!r}.')
  if frames == 'full' and isinstance(scene, str):
    scene = f'{scene}_full'
  builder = SevenScenes(
      data_dir=None if data_dir is None else os.fspath(data_dir), config=scene)
  return builder.as_prepared_source(split)


def preprocess(batch: Mapping[str, np.ndarray], *,
               crop: int = CROP) -> dict[str, np.ndarray]:
  """Records -> ``{'image', 'translation', 'orientation'}`` (module doc).

  Images larger than ``crop`` (the ``{scene}_full`` frames) are cropped to
  their central ``crop × crop`` window (``central_crop``).

  Example:
    >>> b = preprocess({'image': np.zeros((1, 4, 4, 3), np.uint8),
    ...                 'translation': np.zeros((1, 3)),
    ...                 'orientation': np.array([[1., 0, 0, 0]])})
    >>> b['image'].dtype, b['orientation'].dtype, b['translation'].shape
    (dtype('float32'), dtype('float32'), (1, 3))
  """
  return {
      'image': image_ops.to_float(central_crop(np.asarray(batch['image']),
                                               crop)),
      'translation': np.asarray(batch['translation'], np.float32),
      'orientation': np.asarray(batch['orientation'], np.float32),
  }
