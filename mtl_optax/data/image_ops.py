"""Small numpy image operations shared by the builders and the loaders.

Everything here is plain numpy on host memory (no TensorFlow, no JAX), batched
over any leading axes, and deterministic.

* ``area_matrix`` / ``resize_area``: resizing by pixel-area averaging (a box
  filter). Output pixel ``i`` of a 1-D signal of length ``n`` resized to ``m``
  covers the input interval ``[i·n/m, (i+1)·n/m)`` and is the average of the
  input pixels over it, each weighted by the length of its overlap. Resizing
  a 2-D image applies this along the rows and then the columns (the filter is
  separable), i.e. ``out = A_h · img · A_wᵀ`` per channel. For an integer
  factor ``k`` this is the mean of each ``k×k`` block; for downsampling it is
  anti-aliased; a constant image stays constant.
* ``nearest_indices``: nearest-neighbour sampling for label maps, which must
  not be averaged. Output index ``i`` reads input index
  ``floor((i + 0.5)·n/m)``, the input pixel under the output pixel's centre.
* ``to_float``: ``uint8`` images to ``float32`` in ``[0, 1]`` (``x / 255``):
  the normalisation of every image this package produces.
"""

from __future__ import annotations

import numpy as np


def area_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The ``[out_size, in_size]`` matrix of 1-D resizing by area averaging.

  Args:
    in_size: input length ``n``.
    out_size: output length ``m``.

  Returns:
    A float64 matrix ``A`` whose rows sum to one; ``A @ x`` resizes ``x``.
    ``A[i, j]`` is the overlap of input pixel ``[j, j+1)`` with the output
    pixel's footprint ``[i·n/m, (i+1)·n/m)``, divided by ``n/m``.

  Example:
    >>> area_matrix(4, 2)
    array([[0.5, 0.5, 0. , 0. ],
           [0. , 0. , 0.5, 0.5]])
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f'Sizes must be positive, got {in_size} -> {out_size}.')
  scale = in_size / out_size
  lo = np.arange(out_size)[:, None] * scale          # footprint start
  hi = lo + scale                                    # footprint end
  j = np.arange(in_size)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
  return overlap / scale


def resize_area(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes ``[..., H, W, C]`` images to ``[..., h, w, C]`` by area averaging.

  Args:
    images: array of shape ``[..., H, W, C]`` (any real dtype).
    size: ``(h, w)``.

  Returns:
    float32 array of shape ``[..., h, w, C]`` (not rounded or clipped).

  Example:
    >>> x = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    >>> resize_area(x, (2, 2))[..., 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
  """
  h_in, w_in = images.shape[-3], images.shape[-2]
  a_h = area_matrix(h_in, size[0]).astype(np.float32)
  a_w = area_matrix(w_in, size[1]).astype(np.float32)
  x = np.asarray(images, np.float32)
  # Rows: [h, H] x [..., H, W, C]; then columns: [w, W] x [..., h, W, C].
  x = np.einsum('hH,...HWc->...hWc', a_h, x, optimize=True)
  return np.einsum('wW,...hWc->...hwc', a_w, x, optimize=True)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Input indices ``floor((i + 0.5)·in_size/out_size)`` for ``i < out_size``.

  Args:
    in_size: input length.
    out_size: output length.

  Returns:
    int64 array of ``out_size`` indices into ``[0, in_size)``.

  Example:
    >>> nearest_indices(8, 2)
    array([2, 6])
  """
  idx = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size))
  return np.minimum(idx.astype(np.int64), in_size - 1)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a map of shape ``[H, W, ...]`` to ``[h, w, ...]``.

  For label maps, instance ids and sparse depth, which must not be averaged.

  Args:
    labels: array whose first two axes are height and width.
    size: ``(h, w)``.

  Returns:
    The sampled map (same dtype), element ``[i, j]`` read from input pixel
    ``[nearest_indices(H, h)[i], nearest_indices(W, w)[j]]``.

  Example:
    >>> resize_nearest(np.arange(16).reshape(4, 4), (2, 2))
    array([[ 5,  7],
           [13, 15]])
  """
  labels = np.asarray(labels)
  rows = nearest_indices(labels.shape[0], size[0])
  cols = nearest_indices(labels.shape[1], size[1])
  return labels[rows[:, None], cols[None, :]]


def to_float(images: np.ndarray) -> np.ndarray:
  """``uint8`` images to float32 in ``[0, 1]``: ``x / 255``.

  Example:
    >>> to_float(np.array([0, 51, 255], np.uint8))
    array([0. , 0.2, 1. ], dtype=float32)
  """
  return np.asarray(images, np.float32) / np.float32(255)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Rounds to the nearest integer and clips to ``[0, 255]`` as uint8.

  Example:
    >>> to_uint8(np.array([-3.0, 0.5, 1.5, 254.6, 300.0]))
    array([  0,   0,   2, 255, 255], dtype=uint8)
  """
  return np.clip(np.rint(images), 0, 255).astype(np.uint8)
