"""Training-set augmentation: random flips, rotations, scale-crops and crops.

Plain numpy on one example at a time, with every random draw taken from a
``np.random.Generator`` handed in, so that an augmented stream is a pure
function of its seed: the ``Loader`` gives example ``i`` of epoch ``e`` the
generator ``loader.example_rng(seed, e, i)`` (see ``mtl_optax.data.loader``),
and ``data.load(..., augment=True)`` applies the dataset's augmentation of
``augmentation(name)`` to the stored records of a shuffled (training) stream,
before the dataset's preprocessing. Evaluation streams (``shuffle=False``)
are never augmented.

**Fields.** Every function takes ``fields``, a mapping from each key of the
example to its kind, which says how that array moves with the image:

====================  ========================================================
kind                  resampling, fill value outside the image, values
====================  ========================================================
``'image'``           bilinear; fill 0 (black); resampled images come back
                      float32, not rounded (``image_ops.to_float`` divides
                      them by 255 like the stored uint8).
``'label'``           nearest; fill ``-1`` (the ignore label) or the value of a
                      ``('label', fill)`` pair (Cityscapes' stored label ids:
                      255, which preprocessing maps to ignore).
``'mask'``            nearest; fill 0 (e.g. ``instance_mask``).
``'depth'``           nearest; fill 0 (invalid); divided by the scale factor
                      ``s`` of a zoom (MTAN's convention: zooming in by ``s``
                      shows the scene as if ``s`` times closer).
``'disparity'``       nearest; fill 0 (invalid); multiplied by ``s``
                      (``d = f·B/Z``: the same zoom read as ``Z/s``, or as a
                      focal length ``s·f``, gives ``s·d``).
``'normals'``         nearest (vectors stay unit, invalid zeros stay zero);
                      fill 0; channel 0 is the horizontal component, negated
                      by a horizontal flip; unchanged by an isotropic zoom; a
                      rotation needs the frame of the in-plane components and
                      so raises for this kind.
``'normals_down'``    as ``'normals'``, with channels (x, y) along the image's
                      columns and rows (x right, y down): an image rotation
                      rotates (x, y) as it rotates pixel offsets.
``'normals_up'``      as ``'normals'``, x right and y *up*: rotated by the
                      mirror-image matrix.
``'offsets'``         instance offsets ``centre − pixel`` (channel 0 x,
                      channel 1 y, pixels): recomputed on the transformed image,
                      as the builder computed them on the stored one. Instance
                      membership is read from the stored offsets (pixels of one
                      instance share ``pixel + offset``, to within 1e-2 pixel)
                      on the pixels of the example's ``'mask'`` field; the new
                      centre is the mean position of the instance's pixels
                      still in the image. A flip simply negates channel 0.
``'keep'``            unchanged (e.g. a camera pose).
``'drop'``            removed from the example (a key the preprocessing does
                      not read).
====================  ========================================================

Geometry: pixel ``(r, c)`` covers ``[r, r+1) × [c, c+1)``, its centre at
``(r + ½, c + ½)``; each output pixel reads the input at the input position
its centre maps to (nearest: the pixel containing it; bilinear: between the
four nearest centres, clamped at the border). A point outside the input
takes the fill value.

**Functions.** ``flip``, ``rotate``, ``scale_crop`` and ``crop`` apply given
parameters; ``random_flip``, ``random_rotation``, ``random_scale_crop`` and
``random_crop`` draw them from ``rng`` and call those. ``compose`` chains
random functions; ``batch_augment`` turns one into the loader's
``fn(batch, rngs)``; ``augmentation(name, **options)`` is each dataset's.

**The datasets** (readings in ``docs/data.md``):

* ``nyuv2`` (Senushkin et al. 2023 suppl. §D: "randomly scaled and cropped
  into 384×288"; parameters of the code it follows, CAGrad's
  ``RandomScaleCrop`` of MTAN issue 34): scale ``s`` uniform in
  ``{1.0, 1.2, 1.5}``, a window of ``int(288/s) × int(384/s)`` at a uniform
  integer position, resized back to 288×384, depth divided by ``s``; then a
  horizontal flip with probability ½ (the same code).
* ``cityscapes`` (the three-task set-up, suppl. §D: "random rotation and
  horizontal flips", following MGDA-UB whose code draws the angle uniformly
  in [−10°, 10°] and flips with probability ½): rotation about the image
  centre, then the flip.
* ``cityscapes_mtan`` (the two-task set-up, which follows CAGrad; its runs
  use ``--apply_augmentation``): scale-crop with ``{1.0, 1.2, 1.5}`` and the
  flip, the disparity multiplied by ``s``.
* ``seven_scenes`` (Aligned-MTL App. D.2 after PoseNet: "trained on random
  crops of 224×224 and evaluated on central crops"): a uniform 224×224
  window of the frame stored with its shorter side 256 (prepare the
  ``{scene}_full`` configs and load with ``frames='full'``). The pose
  targets are unchanged: a crop moves the principal point, not the camera
  (PoseNet and the paper keep the labels).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Example = dict[str, np.ndarray]
Fields = Mapping[str, Any]
RandomFn = Callable[[Mapping[str, np.ndarray], np.random.Generator], Example]

KINDS = ('image', 'label', 'mask', 'depth', 'disparity', 'normals',
         'normals_down', 'normals_up', 'offsets', 'keep', 'drop')
_FILLS = {'image': 0, 'label': -1, 'mask': 0, 'depth': 0, 'disparity': 0,
          'normals': 0, 'normals_down': 0, 'normals_up': 0, 'offsets': 0}
_NORMALS = ('normals', 'normals_down', 'normals_up')

# Scale factors of MTAN's / CAGrad's RandomScaleCrop (MTAN issue 34).
MTAN_SCALES = (1.0, 1.2, 1.5)
# MGDA-UB's RandomRotate(10): degrees, uniform in [-10, 10].
MGDA_MAX_DEGREES = 10.0
# PoseNet / Aligned-MTL App. D.2 crop.
SEVEN_SCENES_CROP = 224
# Tolerance (pixels) within which two stored instance centres are one.
_CENTRE_TOL = 1e-2

# Fields of the stored records (what `data.load` augments) of each dataset.
NYUV2_FIELDS = {'image': 'image', 'segmentation': 'label', 'depth': 'depth',
                'normals': 'normals'}
CITYSCAPES_FIELDS = {'image': 'image', 'label_ids': ('label', 255),
                     'instance': 'offsets', 'instance_mask': 'mask',
                     'disparity': 'disparity'}
CITYSCAPES_MTAN_FIELDS = {'image': 'image', 'label_ids': ('label', 255),
                          'instance': 'drop', 'instance_mask': 'drop',
                          'disparity': 'disparity'}
SEVEN_SCENES_FIELDS = {'image': 'image', 'translation': 'keep',
                       'orientation': 'keep'}


# --------------------------------------------------------------------------
# Fields.


def _kind_and_fill(spec) -> tuple[str, Any]:
  if isinstance(spec, str):
    kind, fill = spec, _FILLS.get(spec)
  else:
    kind, fill = spec
  if kind not in KINDS:
    raise ValueError(f'Unknown field kind {kind!r}; known: {KINDS}.')
  return kind, fill


def _parse(example: Mapping[str, np.ndarray], fields: Fields
           ) -> dict[str, tuple[str, Any]]:
  missing = set(example) - set(fields)
  if missing:
    raise KeyError(f'No field kind for {sorted(missing)}; give every key of '
                   f'the example a kind of {KINDS} (or "keep").')
  return {k: _kind_and_fill(fields[k]) for k in example}


def _size(example, parsed) -> tuple[int, int]:
  sizes = {tuple(np.shape(example[k])[:2]) for k, (kind, _) in parsed.items()
           if kind not in ('keep', 'drop')}
  if len(sizes) != 1:
    raise ValueError(f'The spatial fields disagree on (H, W): {sizes}.')
  return sizes.pop()


def _mask_key(parsed) -> str:
  masks = [k for k, (kind, _) in parsed.items() if kind == 'mask']
  if len(masks) != 1:
    raise ValueError("An 'offsets' field needs exactly one 'mask' field (the "
                     f'instance pixels), found {masks}.')
  return masks[0]


# --------------------------------------------------------------------------
# Instance offsets.


def _split_groups(groups: np.ndarray, values: np.ndarray,
                  tol: float) -> np.ndarray:
  """Refines ``groups``: a new group wherever sorted values jump by > tol."""
  order = np.lexsort((values, groups))
  g, v = groups[order], values[order]
  new = np.concatenate([[0], (np.diff(g) != 0) | (np.diff(v) > tol)])
  out = np.empty_like(groups)
  out[order] = np.cumsum(new)
  return out


def instance_ids(offsets: np.ndarray, mask: np.ndarray,
                 tol: float = _CENTRE_TOL) -> np.ndarray:
  """Instance index of each pixel from stored offsets (``-1`` off instances).

  Pixels of one instance share their centre ``(c + off_x, r + off_y)``;
  centres within ``tol`` pixels (per axis) are one instance.

  Args:
    offsets: float ``[H, W, 2]`` offsets (x, y) to the instance centre.
    mask: ``[H, W]``, nonzero on instance pixels.
    tol: centre tolerance in pixels.

  Returns:
    int64 ``[H, W]``: ``0, 1, ...`` per instance, ``-1`` elsewhere.

  Example:
    >>> off = np.array([[[1., 0], [0, 0], [-1, 0], [0, 0]]])   # centre x=1
    >>> instance_ids(off, np.array([[1, 1, 1, 1]])).tolist()   # x=3: alone
    [[0, 0, 0, 1]]
  """
  mask = np.asarray(mask) != 0
  ids = np.full(mask.shape, -1, np.int64)
  rows, cols = np.nonzero(mask)
  if not len(rows):
    return ids
  off = np.asarray(offsets, np.float64)[rows, cols]
  cx, cy = cols + off[:, 0], rows + off[:, 1]
  groups = np.zeros(len(rows), np.int64)
  for _ in range(2):     # alternate so that a chain along one axis is split
    groups = _split_groups(groups, cx, tol)
    groups = _split_groups(groups, cy, tol)
  ids[rows, cols] = groups
  return ids


def offsets_from_ids(ids: np.ndarray) -> np.ndarray:
  """Offsets ``centre − pixel`` (x, y) of an instance map (``-1``: none).

  The centre of an instance is the mean column and row of its pixels (the
  definition of ``cityscapes.instance_offsets``); zeros off instances.

  Example:
    >>> offsets_from_ids(np.array([[0, 0, 0, -1]]))[0, :, 0].tolist()
    [1.0, 0.0, -1.0, 0.0]
  """
  ids = np.asarray(ids)
  out = np.zeros(ids.shape + (2,), np.float32)
  rows, cols = np.nonzero(ids >= 0)
  if len(rows):
    _, inverse, counts = np.unique(ids[rows, cols], return_inverse=True,
                                   return_counts=True)
    inverse = inverse.reshape(-1)
    cx = np.bincount(inverse, weights=cols) / counts
    cy = np.bincount(inverse, weights=rows) / counts
    out[rows, cols, 0] = cx[inverse] - cols
    out[rows, cols, 1] = cy[inverse] - rows
  return out


# --------------------------------------------------------------------------
# Resampling.


def _nearest_index(y: np.ndarray, x: np.ndarray, h: int, w: int):
  """Flat index of the pixel containing each point, and whether inside."""
  r, c = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
  inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
  flat = np.clip(r, 0, h - 1) * w + np.clip(c, 0, w - 1)
  return flat, inside


def _take_nearest(a: np.ndarray, flat, inside, fill) -> np.ndarray:
  a = np.asarray(a)
  h, w = a.shape[:2]
  out = a.reshape((h * w,) + a.shape[2:])[flat]
  if not inside.all():
    out[~inside] = fill
  return out


def _take_bilinear(a: np.ndarray, y: np.ndarray, x: np.ndarray,
                   fill) -> np.ndarray:
  """Bilinear sample of ``a`` [H, W, ...] at points (y, x); float32."""
  a = np.asarray(a)
  h, w = a.shape[:2]
  flat_a = a.reshape((h * w,) + a.shape[2:])     # gathered in its own dtype
  u = np.asarray(x, np.float32) - np.float32(0.5)   # centre to the left
  v = np.asarray(y, np.float32) - np.float32(0.5)   # centre above
  c0, r0 = np.floor(u), np.floor(v)
  extra = (None,) * (a.ndim - 2)
  fx, fy = (u - c0)[(...,) + extra], (v - r0)[(...,) + extra]
  c0, r0 = c0.astype(np.int64), r0.astype(np.int64)
  c1, r1 = np.clip(c0 + 1, 0, w - 1), np.clip(r0 + 1, 0, h - 1) * w
  c0, r0 = np.clip(c0, 0, w - 1), np.clip(r0, 0, h - 1) * w

  def at(i):
    return flat_a[i].astype(np.float32, copy=False)

  p00, p01 = at(r0 + c0), at(r0 + c1)
  top = p00 + (p01 - p00) * fx
  p10, p11 = at(r1 + c0), at(r1 + c1)
  bottom = p10 + (p11 - p10) * fx
  out = top + (bottom - top) * fy
  inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
  if not inside.all():
    out[~inside] = fill
  return out


def _rotate_vectors(v: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """``matrix @ (v[..., 0], v[..., 1])``, other channels unchanged."""
  out = np.array(v, copy=True)
  x, y = v[..., 0].astype(np.float64), v[..., 1].astype(np.float64)
  out[..., 0] = matrix[0, 0] * x + matrix[0, 1] * y
  out[..., 1] = matrix[1, 0] * x + matrix[1, 1] * y
  return out


def _resample(example, fields, y, x, *, scale=1.0, matrix=None) -> Example:
  """Every field read at input positions ``(y, x)`` (arrays of the output).

  ``scale``: zoom factor for depth / disparity values; ``matrix``: the 2×2
  in-plane rotation (image axes, y down) for normals, ``None`` = identity.
  """
  parsed = _parse(example, fields)
  h, w = _size(example, parsed)
  flat, inside = _nearest_index(y, x, h, w)
  out = {}
  for key, (kind, fill) in parsed.items():
    a = np.asarray(example[key])
    if kind == 'drop':
      continue
    if kind == 'keep':
      out[key] = a
    elif kind == 'image':
      out[key] = _take_bilinear(a, y, x, fill)
    elif kind == 'offsets':
      ids = instance_ids(a, example[_mask_key(parsed)])
      new_ids = _take_nearest(ids, flat, inside, -1)
      out[key] = offsets_from_ids(new_ids).astype(a.dtype, copy=False)
    else:
      b = _take_nearest(a, flat, inside, fill)
      if kind == 'depth' and scale != 1:
        b = (b / scale).astype(a.dtype, copy=False)
      elif kind == 'disparity' and scale != 1:
        b = (b * scale).astype(a.dtype, copy=False)
      elif kind in _NORMALS and matrix is not None:
        if kind == 'normals':
          raise ValueError(
              f"Rotating the normals {key!r} needs their in-plane frame: "
              "declare them 'normals_down' (x right, y down) or "
              "'normals_up' (x right, y up).")
        m = matrix if kind == 'normals_down' else (
            np.diag([1.0, -1.0]) @ matrix @ np.diag([1.0, -1.0]))
        b = _rotate_vectors(b, m)
      out[key] = b
  return out


# --------------------------------------------------------------------------
# Deterministic transforms.


def flip(example: Mapping[str, np.ndarray], fields: Fields) -> Example:
  """Mirrors the example left-right (``np.flip`` along the width axis).

  Normals and offsets have their x component (channel 0) negated; depth,
  disparity, labels and masks are only mirrored; ``'keep'`` fields are
  unchanged. Exact (no resampling); dtypes are kept.

  Example:
    >>> ex = {'image': np.arange(3.).reshape(1, 3, 1),
    ...       'normals': np.array([[[1., 0, 0], [0, 1, 0], [0, 0, 1]]])}
    >>> out = flip(ex, {'image': 'image', 'normals': 'normals'})
    >>> out['image'][0, :, 0].tolist(), out['normals'][0, 2].tolist()
    ([2.0, 1.0, 0.0], [-1.0, 0.0, 0.0])
  """
  parsed = _parse(example, fields)
  _size(example, parsed)
  out = {}
  for key, (kind, _) in parsed.items():
    a = np.asarray(example[key])
    if kind == 'drop':
      continue
    if kind == 'keep':
      out[key] = a
      continue
    b = np.flip(a, axis=1).copy()
    if kind in _NORMALS or kind == 'offsets':
      b[..., 0] = -b[..., 0]
    out[key] = b
  return out


def rotation_matrix(degrees: float) -> np.ndarray:
  """Image-axes (x right, y down) matrix of a counter-clockwise rotation.

  Counter-clockwise *as displayed* (PIL's ``Image.rotate`` convention): a
  vector pointing right turns up, i.e. ``(1, 0) -> (cos θ, −sin θ)``.

  Example:
    >>> np.round(rotation_matrix(90), 12).tolist()
    [[0.0, 1.0], [-1.0, 0.0]]
  """
  t = np.deg2rad(degrees)
  c, s = np.cos(t), np.sin(t)
  return np.array([[c, s], [-s, c]])


def rotate(example: Mapping[str, np.ndarray], fields: Fields,
           degrees: float) -> Example:
  """Rotates the example counter-clockwise by ``degrees`` about its centre.

  The rotation is about the image centre ``(H/2, W/2)`` (continuous
  coordinates), the output keeps the size ``H × W``, and what comes from
  outside the input takes each field's fill (``-1`` for labels, 0 for
  images, masks, depth and disparity). Depth and disparity values are
  unchanged (a roll of the camera about its optical axis), normals of kind
  ``'normals_down'`` / ``'normals_up'`` have their in-plane components
  rotated with the image, offsets are recomputed.

  Args:
    example: one example (dict of arrays whose first axes are H, W).
    fields: kind of each key (module doc).
    degrees: the angle; positive = counter-clockwise as displayed.

  Returns:
    The rotated example.

  Example:
    >>> lab = np.array([[0, 1], [2, 3]], np.int8)
    >>> rotate({'s': lab}, {'s': 'label'}, 90)['s'].tolist()   # np.rot90
    [[1, 3], [0, 2]]
  """
  parsed = _parse(example, fields)
  h, w = _size(example, parsed)
  m = rotation_matrix(degrees)
  inv = m.T
  rows, cols = np.mgrid[0:h, 0:w]
  dx = cols + 0.5 - w / 2
  dy = rows + 0.5 - h / 2
  x = inv[0, 0] * dx + inv[0, 1] * dy + w / 2
  y = inv[1, 0] * dx + inv[1, 1] * dy + h / 2
  return _resample(example, fields, y, x, matrix=m)


def scale_crop(example: Mapping[str, np.ndarray], fields: Fields, *,
               scale: float, top: int, left: int, height: int, width: int,
               size: tuple[int, int] | None = None) -> Example:
  """Zooms in: the window ``[top, top+height) × [left, left+width)`` resized.

  Output pixel ``(r, c)`` reads the input at ``(top + (r+½)·height/h,
  left + (c+½)·width/w)`` for the output size ``(h, w)`` (images bilinear,
  the rest nearest, i.e. ``image_ops.nearest_indices`` within the window).
  Depth is divided by ``scale`` and disparity multiplied by it; normals are
  unchanged (an isotropic zoom does not turn surfaces); offsets are
  recomputed in output pixels.

  Args:
    example: one example.
    fields: kind of each key.
    scale: the zoom factor the values are corrected by (MTAN: ``s`` with
      ``height = int(H/s)``, ``width = int(W/s)``).
    top, left: the window's first row and column.
    height, width: the window's size.
    size: output ``(h, w)``; default the input's ``(H, W)``.

  Returns:
    The zoomed example.

  Example:
    >>> ex = {'d': np.full((4, 4, 1), 3.0, np.float32)}
    >>> out = scale_crop(ex, {'d': 'depth'}, scale=2, top=1, left=1,
    ...                  height=2, width=2)
    >>> out['d'].shape, float(out['d'][0, 0, 0])
    ((4, 4, 1), 1.5)
  """
  parsed = _parse(example, fields)
  h_in, w_in = _size(example, parsed)
  if not (0 <= top and top + height <= h_in and 0 <= left and
          left + width <= w_in and height > 0 and width > 0):
    raise ValueError(f'Window rows [{top}, {top + height}) x cols '
                     f'[{left}, {left + width}) not inside {h_in}x{w_in}.')
  h, w = (h_in, w_in) if size is None else size
  y = top + (np.arange(h) + 0.5) * (height / h)
  x = left + (np.arange(w) + 0.5) * (width / w)
  y, x = np.broadcast_to(y[:, None], (h, w)), np.broadcast_to(x[None], (h, w))
  return _resample(example, fields, y, x, scale=scale)


def crop(example: Mapping[str, np.ndarray], fields: Fields, *, top: int,
         left: int, height: int, width: int) -> Example:
  """The window ``[top, top+height) × [left, left+width)``, exactly.

  A slice of every spatial field (dtypes kept; values unchanged; offsets
  recomputed for the pixels left in the window); ``'keep'`` fields, such as
  a camera pose, are unchanged (a crop shifts the principal point, it does
  not move the camera).

  Example:
    >>> crop({'image': np.arange(16).reshape(4, 4, 1)}, {'image': 'image'},
    ...      top=1, left=2, height=2, width=2)['image'][..., 0].tolist()
    [[6, 7], [10, 11]]
  """
  parsed = _parse(example, fields)
  h_in, w_in = _size(example, parsed)
  if not (0 <= top and top + height <= h_in and 0 <= left and
          left + width <= w_in and height > 0 and width > 0):
    raise ValueError(f'Window rows [{top}, {top + height}) x cols '
                     f'[{left}, {left + width}) not inside {h_in}x{w_in}.')
  window = (slice(top, top + height), slice(left, left + width))
  out = {}
  for key, (kind, _) in parsed.items():
    a = np.asarray(example[key])
    if kind == 'drop':
      continue
    if kind == 'keep':
      out[key] = a
    elif kind == 'offsets':
      ids = instance_ids(a, example[_mask_key(parsed)])[window]
      out[key] = offsets_from_ids(ids).astype(a.dtype, copy=False)
    else:
      out[key] = a[window].copy()
  return out


# --------------------------------------------------------------------------
# Random transforms: (example, rng) -> example.


def random_flip(example: Mapping[str, np.ndarray], rng: np.random.Generator,
                *, fields: Fields, p: float = 0.5) -> Example:
  """``flip`` with probability ``p`` (one draw: ``rng.random() < p``)."""
  if rng.random() < p:
    return flip(example, fields)
  parsed = _parse(example, fields)
  return {k: np.asarray(v) for k, v in example.items()
          if parsed[k][0] != 'drop'}


def random_rotation(example: Mapping[str, np.ndarray],
                    rng: np.random.Generator, *, fields: Fields,
                    max_degrees: float = MGDA_MAX_DEGREES) -> Example:
  """``rotate`` by an angle uniform in ``[−max_degrees, max_degrees]``."""
  return rotate(example, fields, rng.uniform(-max_degrees, max_degrees))


def scale_crop_params(shape: tuple[int, int], rng: np.random.Generator,
                      scales: Sequence[float] = MTAN_SCALES) -> dict:
  """MTAN's draw: ``s`` from ``scales``, a window ``int(H/s) × int(W/s)``.

  Three draws, in this order: ``s = scales[rng.integers(len(scales))]``,
  ``top = rng.integers(0, H − height + 1)``, ``left`` likewise (uniform
  integer positions, the window inside the image).

  Returns:
    ``scale_crop``'s keyword arguments ``scale, top, left, height, width``.

  Example:
    >>> p = scale_crop_params((288, 384), np.random.default_rng(0))
    >>> s = p['scale']
    >>> p['height'] == int(288 / s), p['width'] == int(384 / s)
    (True, True)
  """
  h_in, w_in = shape
  s = float(scales[rng.integers(len(scales))])
  if s < 1:
    raise ValueError(f'Scales must be >= 1 (a zoom in), got {s}.')
  height, width = int(h_in / s), int(w_in / s)
  top = int(rng.integers(0, h_in - height + 1))
  left = int(rng.integers(0, w_in - width + 1))
  return dict(scale=s, top=top, left=left, height=height, width=width)


def crop_params(shape: tuple[int, int], rng: np.random.Generator,
                size: tuple[int, int] | int) -> dict:
  """A ``size`` window at a uniform integer position inside ``shape``.

  Two draws: ``top = rng.integers(0, H − h + 1)``, then ``left``.

  Returns:
    ``crop``'s keyword arguments ``top, left, height, width``.
  """
  h_in, w_in = shape
  height, width = (size, size) if np.isscalar(size) else size
  if height > h_in or width > w_in:
    raise ValueError(f'Crop {height}x{width} larger than the image '
                     f'{h_in}x{w_in}.')
  top = int(rng.integers(0, h_in - height + 1))
  left = int(rng.integers(0, w_in - width + 1))
  return dict(top=top, left=left, height=height, width=width)


def random_scale_crop(example: Mapping[str, np.ndarray],
                      rng: np.random.Generator, *, fields: Fields,
                      scales: Sequence[float] = MTAN_SCALES,
                      size: tuple[int, int] | None = None) -> Example:
  """MTAN's random scale-crop: ``scale_crop`` with ``scale_crop_params``.

  The output has size ``size`` (default the input's ``(H, W)``).
  """
  shape = _size(example, _parse(example, fields))
  return scale_crop(example, fields, size=size,
                    **scale_crop_params(shape, rng, scales))


def random_crop(example: Mapping[str, np.ndarray], rng: np.random.Generator,
                *, fields: Fields,
                size: tuple[int, int] | int = SEVEN_SCENES_CROP) -> Example:
  """``crop`` of ``size`` at a uniform position (``crop_params``)."""
  shape = _size(example, _parse(example, fields))
  return crop(example, fields, **crop_params(shape, rng, size))


def compose(*fns: RandomFn) -> RandomFn:
  """Applies random functions in order, all drawing from the same ``rng``.

  Example:
    >>> f = compose(functools.partial(random_flip, fields={'x': 'image'}, p=1),
    ...             functools.partial(random_flip, fields={'x': 'image'}, p=1))
    >>> f({'x': np.arange(3.).reshape(1, 3)}, np.random.default_rng(0))['x']
    array([[0., 1., 2.]])
  """
  def composed(example, rng):
    for fn in fns:
      example = fn(example, rng)
    return example
  return composed


def batch_augment(fn: RandomFn, *, threads: int | None = None
                  ) -> Callable[[Mapping[str, np.ndarray],
                                 Sequence[np.random.Generator]],
                                dict[str, np.ndarray]]:
  """``fn(example, rng)`` -> the loader's ``augment(batch, rngs)``.

  Example ``k`` of the batch (``{key: value[k]}``) is transformed with
  ``rngs[k]`` and the results are stacked again. An empty batch is returned
  as it is. The examples are independent, so ``threads`` (default
  ``min(8, os.cpu_count())``; numpy releases the GIL in the gathers and
  arithmetic) work on them at once without changing the result.

  Example:
    >>> aug = batch_augment(functools.partial(random_flip,
    ...                                       fields={'x': 'image'}, p=1))
    >>> aug({'x': np.arange(4.).reshape(2, 1, 2)},
    ...     [np.random.default_rng(0)] * 2)['x'][:, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
  """
  workers = min(8, os.cpu_count() or 1) if threads is None else int(threads)
  pool = []      # created on first use, shared by the calls

  def one(batch, rngs, i):
    return fn({k: v[i] for k, v in batch.items()}, rngs[i])

  def augment(batch, rngs):
    n = len(rngs)
    if n == 0:
      return dict(batch)
    if workers > 1 and n > 1:
      if not pool:
        pool.append(concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix='mtl_optax.data.augment'))
      examples = list(pool[0].map(functools.partial(one, batch, rngs),
                                  range(n)))
    else:
      examples = [one(batch, rngs, i) for i in range(n)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  return augment


# --------------------------------------------------------------------------
# The datasets.


def _nyuv2(*, scales=MTAN_SCALES, flip_p=0.5, fields=None):
  fields = NYUV2_FIELDS if fields is None else fields
  return compose(
      functools.partial(random_scale_crop, fields=fields, scales=scales),
      functools.partial(random_flip, fields=fields, p=flip_p))


def _cityscapes(*, max_degrees=MGDA_MAX_DEGREES, flip_p=0.5, fields=None):
  fields = CITYSCAPES_FIELDS if fields is None else fields
  return compose(
      functools.partial(random_rotation, fields=fields,
                        max_degrees=max_degrees),
      functools.partial(random_flip, fields=fields, p=flip_p))


def _cityscapes_mtan(*, scales=MTAN_SCALES, flip_p=0.5, fields=None):
  fields = CITYSCAPES_MTAN_FIELDS if fields is None else fields
  return compose(
      functools.partial(random_scale_crop, fields=fields, scales=scales),
      functools.partial(random_flip, fields=fields, p=flip_p))


def _seven_scenes(*, crop=SEVEN_SCENES_CROP, fields=None):
  fields = SEVEN_SCENES_FIELDS if fields is None else fields
  size = (crop, crop) if np.isscalar(crop) else tuple(crop)

  def fn(example, rng):
    if tuple(np.shape(example['image'])[:2]) == size:
      raise ValueError(
          f'seven_scenes: random {size[0]}x{size[1]} crops need frames '
          'larger than the crop; prepare the "{scene}_full" configs '
          '(shorter side 256) and load with frames="full".')
    return random_crop(example, rng, fields=fields, size=size)
  return fn


_DATASETS = {
    'nyuv2': _nyuv2,
    'cityscapes': _cityscapes,
    'cityscapes_mtan': _cityscapes_mtan,
    'seven_scenes': _seven_scenes,
}
NAMES = tuple(_DATASETS)


def example_augmentation(name: str, **options) -> RandomFn:
  """The per-example ``fn(record, rng)`` of dataset ``name`` (module doc).

  Args:
    name: ``'nyuv2'``, ``'cityscapes'``, ``'cityscapes_mtan'`` or
      ``'seven_scenes'``.
    **options: ``scales`` and ``flip_p`` (``nyuv2``, ``cityscapes_mtan``),
      ``max_degrees`` and ``flip_p`` (``cityscapes``), ``crop``
      (``seven_scenes``); ``fields`` to augment other keys than the stored
      records'.

  Raises:
    KeyError: no augmentation is defined for ``name``.
  """
  try:
    make = _DATASETS[name]
  except KeyError:
    raise KeyError(f'No augmentation for dataset {name!r}; defined for '
                   f'{list(_DATASETS)}.') from None
  return make(**options)


def augmentation(name: str, *, threads: int | None = None, **options):
  """Dataset ``name``'s augmentation as the loader's ``augment(batch, rngs)``.

  It works on the stored records (before the dataset's preprocessing), which
  is what ``data.load(name, split, augment=True)`` does with it. ``threads``
  as in ``batch_augment``; other options as in ``example_augmentation``.

  Example:
    >>> aug = augmentation('seven_scenes', crop=2)
    >>> batch = {'image': np.zeros((3, 4, 5, 3), np.uint8),
    ...          'translation': np.zeros((3, 3)),
    ...          'orientation': np.ones((3, 4))}
    >>> rngs = [np.random.default_rng(i) for i in range(3)]
    >>> aug(batch, rngs)['image'].shape
    (3, 2, 2, 3)
  """
  return batch_augment(example_augmentation(name, **options), threads=threads)
