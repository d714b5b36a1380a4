"""Building blocks shared by the model zoo (NHWC throughout).

Convolutions are padded explicitly (``dilation * (k - 1) // 2`` on each side),
as in the PyTorch definitions the papers used, so strided layers see the same
pixels. BatchNorm uses ``momentum=0.9`` (PyTorch's 0.1) and ``epsilon=1e-5``;
its running variance averages the biased batch variance (Flax's convention)
unless ``unbiased_running_variance(model)`` switches it to PyTorch's
(``n / (n - 1)`` times it, ``n`` values per channel).
Resizing and adaptive pooling are small matrices applied along H and W
(built with numpy at trace time, so shapes stay static).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_optax import gramians as gram_lib

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal, fan-out (torchvision's ResNet/VGG convolution initialisation).
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_default_init(fan_in: int) -> dict[str, Callable]:
  """PyTorch's default initialisation of ``nn.Linear`` / ``nn.Conv2d``.

  Weights and biases both uniform on ``±1/sqrt(fan_in)`` (the weights'
  ``kaiming_uniform_(a=sqrt(5))``), ``fan_in`` = input features × kernel
  area. Flax's default is LeCun-normal weights (√3 × the standard
  deviation) and zero biases.

  Args:
    fan_in: the layer's input features times its kernel's area.

  Returns:
    ``kernel_init`` and ``bias_init`` for an ``nnx.Linear`` / ``nnx.Conv``.

  Example:
    >>> from flax import nnx
    >>> layer = nnx.Linear(4, 2, rngs=nnx.Rngs(0), **torch_default_init(4))
    >>> bool(abs(layer.bias[...]).max() <= 0.5)
    True
  """
  if fan_in < 1:
    raise ValueError(f'fan_in must be a positive integer, got {fan_in}.')
  bound = 1.0 / np.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return dict(kernel_init=nnx.initializers.variance_scaling(
      1.0 / 3.0, 'fan_in', 'uniform'), bias_init=bias_init)


def conv(in_features: int, out_features: int, kernel_size: int, *,
         stride: int = 1, dilation: int = 1, use_bias: bool = False,
         kernel_init: Callable = he_normal_fan_out,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A square convolution with PyTorch-style symmetric padding.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: ``k`` of the ``k×k`` kernel.
    stride: spatial stride.
    dilation: kernel dilation (atrous rate).
    use_bias: whether the convolution has a bias.
    kernel_init: the kernel's initializer.
    rngs: random streams for the initialisation.

  Returns:
    An ``nnx.Conv`` padded by ``dilation * (k - 1) // 2`` on every side.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models import layers
    >>> c = layers.conv(3, 8, 3, stride=2, rngs=nnx.Rngs(0))
    >>> c.padding, nnx.eval_shape(lambda: c(jnp.zeros((1, 7, 8, 3)))).shape
    (((1, 1), (1, 1)), (1, 4, 4, 8))
  """
  pad = dilation * (kernel_size - 1) // 2
  return nnx.Conv(
      in_features, out_features, (kernel_size, kernel_size),
      strides=stride, padding=((pad, pad), (pad, pad)),
      kernel_dilation=dilation, use_bias=use_bias, kernel_init=kernel_init,
      rngs=rngs)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` whose running variance may follow PyTorch, and whose
  training step traces in linear time.

  In train mode both normalise with the biased batch variance; the running
  average differs. Flax averages the biased variance, PyTorch
  (``nn.BatchNorm2d``) the unbiased one, ``n / (n - 1)`` times it for ``n``
  values per channel (batch × height × width). With
  ``unbiased_running_var=True`` (or ``unbiased_running_variance(model)``)
  this module updates its ``var`` as PyTorch does, so that a network
  converted from PyTorch keeps computing the same function after training
  steps. The difference matters where ``n`` is small: a 1×1 pyramid-pooling
  branch at batch 8 (``n = 8``) stores a variance 8/7 times Flax's.

  Train mode computes what ``nnx.BatchNorm`` computes, operation for
  operation (the same values, bit for bit; ``tests/test_layers.py``), but
  stores the running averages with ``Variable.set_value``: Flax's
  ``self.mean[...] = ...`` asks each traced value for its ``sharding``,
  which JAX answers by searching the whole program traced so far for the
  value's origin, so a network's trace time grew with the square of its
  BatchNorm count (MTAN's SegNet: 15 s to trace its forward pass, now
  3 s). Masked statistics (``mask=``) and ``axis_name=`` go to
  ``nnx.BatchNorm``'s own code.

  Args:
    num_features: channels.
    unbiased_running_var: PyTorch's running-variance update.
    **kwargs: ``nnx.BatchNorm``'s.
  """

  def __init__(self, num_features: int, *, unbiased_running_var: bool = False,
               **kwargs):
    super().__init__(num_features, **kwargs)
    self.unbiased_running_var = unbiased_running_var

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    running = (use_running_average if use_running_average is not None
               else self.use_running_average)
    if running is None or running:
      return super().__call__(x, use_running_average, mask=mask)
    if mask is not None or self.axis_name is not None:
      if self.unbiased_running_var:
        raise NotImplementedError(
            'BatchNorm(unbiased_running_var=True) supports neither mask= nor '
            'axis_name=; use unbiased_running_var=False.')
      return super().__call__(x, use_running_average, mask=mask)
    return self._train(x)

  def _train(self, x: jax.Array) -> jax.Array:
    """Normalises with the batch statistics and updates the running ones."""
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    feature_axes = tuple(sorted({a % x.ndim for a in axis}))
    axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    # The running averages update from the stored values (not the ones
    # promoted to the compute dtype), as nnx.BatchNorm's do.
    running_mean, running_var = self.mean[...], self.var[...]
    x, _, _, scale, bias = self.promote_dtype(
        (x, running_mean, running_var, scale, bias), dtype=self.dtype)
    # Statistics in at least float32 (float64 stays float64).
    stats_dtype = jnp.promote_types(
        self.dtype if self.dtype is not None else jnp.result_type(x),
        jnp.float32)
    xs = jnp.asarray(x, stats_dtype)
    mean = xs.mean(axes)
    if self.use_fast_variance:
      var = jnp.maximum(0.0, jax.lax.square(xs).mean(axes)
                        - jax.lax.square(mean))
    else:
      var = jax.lax.square(xs - jnp.expand_dims(mean, axes)).mean(axes)
    if self.unbiased_running_var:
      n = int(np.prod([x.shape[a] for a in axes]))
      running_update = jnp.var(xs, axis=axes) * (n / max(n - 1, 1))
    else:
      running_update = var
    # Stored in the variables' own dtype, as nnx.BatchNorm's in-place
    # assignment does.
    m = self.momentum
    for variable, running, new in ((self.mean, running_mean, mean),
                                   (self.var, running_var, running_update)):
      variable.set_value(jax.lax.stop_gradient(
          m * running + (1 - m) * new).astype(running.dtype))
    stats_shape = [1 if a in axes else x.shape[a] for a in range(x.ndim)]
    y = x - mean.reshape(stats_shape)
    mul = jax.lax.rsqrt(var.reshape(stats_shape) + self.epsilon)
    args = [x]
    if scale is not None:
      mul = mul * scale.reshape(stats_shape)
      args.append(scale)
    y = y * mul
    if bias is not None:
      y = y + bias.reshape(stats_shape)
      args.append(bias)
    return jnp.asarray(y, nnx.nn.dtypes.canonicalize_dtype(*args,
                                                            dtype=self.dtype))


def unbiased_running_variance(module: nnx.Module, enabled: bool = True
                              ) -> int:
  """Sets PyTorch's running-variance update on every ``BatchNorm`` in
  ``module`` (see ``BatchNorm``); returns how many it set.

  Example:
    >>> from flax import nnx
    >>> from mtl_optax import models
    >>> model = models.create('resnet18_celeba', width=8, rngs=0)
    >>> models.layers.unbiased_running_variance(model)   # 20 in the encoder
    20
  """
  count = 0
  for _, m in nnx.iter_modules(module):
    if isinstance(m, BatchNorm):
      m.unbiased_running_var = bool(enabled)
      count += 1
  return count


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there, 0.9 here)."""
  return BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                   rngs=rngs)


class ConvBN(nnx.Module):
  """Convolution followed by BatchNorm (no activation)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, dilation: int = 1, use_bias: bool = False,
               kernel_init: Callable = he_normal_fan_out, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, kernel_size, stride=stride,
                     dilation=dilation, use_bias=use_bias,
                     kernel_init=kernel_init, rngs=rngs)
    self.norm = batch_norm(out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


# ImageNet's per-channel RGB mean and standard deviation (torchvision's
# transforms.Normalize values for its pretrained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Standardize(nnx.Module):
  """``(x − mean) / std`` over the last (channel) axis; no parameters.

  The default constants are ImageNet's, what torchvision's pretrained
  networks expect of images in [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> y = Standardize()(jnp.full((1, 3), 0.485))
    >>> round(float(y[0, 0]), 6)
    0.0
  """

  def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN,
               std: tuple[float, ...] = IMAGENET_STD):
    if len(mean) != len(std) or min(std) <= 0:
      raise ValueError(f'mean and std need one value per channel and std > 0; '
                       f'got mean={mean}, std={std}.')
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = jnp.result_type(x.dtype, jnp.float32)
    return ((x - jnp.asarray(self.mean, dtype)) /
            jnp.asarray(self.std, dtype))


class UnitNormalized(nnx.Module):
  """Wraps a head and scales its output to unit L2 norm on the last axis.

  Used for surface normals. ``eps`` keeps the gradient finite at zero.
  """

  def __init__(self, head: nnx.Module, *, eps: float = 1e-12):
    self.head = head
    self.eps = eps

  def __call__(self, z):
    out = self.head(z)
    sq = jnp.sum(jnp.square(out), axis=-1, keepdims=True)
    return out * jax.lax.rsqrt(jnp.maximum(sq, self.eps))


def _reshape_keeping_batch(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``x.reshape(shape)`` for a reshape that leaves axis 0 (the batch) alone.

  Under ``Explicit`` mesh axes the batch axis carries the sharding, and JAX
  wants the output's sharding spelled out: axis 0 keeps it, the rest are
  replicated as in ``x``.
  """
  sharding = gram_lib.explicit_sharding(x)
  if sharding is None:
    return x.reshape(shape)
  spec = sharding.spec
  if any(p is not None for p in spec[1:]):
    raise ValueError(
        f'layers: only the batch axis may be sharded here; got {spec}.')
  out = jax.sharding.PartitionSpec(spec[0], *([None] * (len(shape) - 1)))
  return jnp.reshape(x, shape, out_sharding=out)


def _band_matrix(kernel: jax.Array, width: int) -> jax.Array:
  """``kernel [kh, kw, ci, co]`` as ``[kh * width * ci, (width - kw + 1) * co]``:
  row ``(i, a, c)``, column ``(b, o)`` holds ``kernel[i, a - b, c, o]`` when
  ``0 <= a - b < kw``, else 0 (a banded, Toeplitz-like layout)."""
  kh, kw, ci, co = kernel.shape
  width_out = width - kw + 1
  shift = np.zeros((kw, width, width_out), np.float32)
  for j in range(kw):
    shift[j, np.arange(width_out) + j, np.arange(width_out)] = 1.0
  band = jnp.einsum('jab,ijco->iacbo', jnp.asarray(shift, kernel.dtype), kernel,
                    precision=jax.lax.Precision.HIGHEST)
  return band.reshape(kh * width * ci, width_out * co)


def _output_group(width_out: int, kw: int) -> int:
  """Output columns per banded product: half the row when it is wide.

  A band over the whole row does ``(width_out + kw - 1) / kw`` times the
  minimal multiply-adds; two halves nearly halve that for LeNet's first
  convolution (24 columns, 5 wide): its step 7-10% faster. Narrow rows
  (its second, 8 columns) stay whole: smaller products were slower.
  """
  return width_out // 2 if width_out % 2 == 0 and width_out >= 4 * kw else (
      width_out)


def _conv_valid_banded(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A VALID stride-1 convolution as matmuls with a banded kernel matrix:
  each group of ``g`` output columns is ONE product of the ``kh`` stacked
  input rows (``g + kw - 1`` columns of them) with the same band."""
  b, h, w, ci = x.shape
  kh, kw, _, co = kernel.shape
  oh, ow = h - kh + 1, w - kw + 1
  g = _output_group(ow, kw)
  groups, width = ow // g, g + kw - 1
  rows = jnp.stack([x[:, i:i + oh] for i in range(kh)], axis=2)
  if groups > 1:   # [b, oh, groups, kh, width, ci]
    rows = jnp.stack([rows[:, :, :, q * g:q * g + width]
                      for q in range(groups)], axis=2)
  band = _band_matrix(kernel, width)
  k = kh * width * ci
  if gram_lib.explicit_sharding(rows) is None:
    # One 2-D product (batch and rows merged): 20% faster than the 3-D
    # contraction below for LeNet's gradient on XLA:CPU.
    out = rows.reshape(b * oh * groups, k) @ band
    return out.reshape(b, oh, ow, co)
  # Under Explicit mesh axes the batch axis is sharded and a reshape may not
  # merge it with another: keep it apart.
  rows = _reshape_keeping_batch(rows, (b, oh * groups, k))
  out = jnp.einsum('bhk,kn->bhn', rows, band)
  return _reshape_keeping_batch(out, (b, oh, ow, co))


def _conv_valid_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv_valid_small(x: jax.Array, kernel: jax.Array,
                     bias: jax.Array | None = None) -> jax.Array:
  """VALID stride-1 convolution for few channels (LeNet's), fast on CPU.

  On CPU it is one matrix product of the ``kh`` stacked input rows with a
  banded matrix built from the kernel (``(W - kw + 1)``-fold redundant
  multiply-adds, but a dense GEMM with a GEMM's gradients): XLA:CPU's
  convolution kernels, tuned for many channels, spend 2× more on LeNet's
  1→10 and 10→20 5×5 convolutions and their gradients (the weight gradient
  of the first one most). Elsewhere (GPU, TPU) it is XLA's convolution. Both
  compute the same function; the gradients agree to float rounding.

  Args:
    x: ``[B, H, W, C_in]``.
    kernel: ``[kh, kw, C_in, C_out]`` (an ``nnx.Conv`` kernel).
    bias: optional ``[C_out]``.

  Returns:
    ``[B, H - kh + 1, W - kw + 1, C_out]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import layers
    >>> x = jnp.arange(16.).reshape(1, 4, 4, 1)
    >>> layers.conv_valid_small(x, jnp.ones((3, 3, 1, 1)))[0, :, :, 0].tolist()
    [[45.0, 54.0], [81.0, 90.0]]
  """
  out = jax.lax.platform_dependent(
      x, kernel, cpu=_conv_valid_banded, default=_conv_valid_xla)
  return out if bias is None else out + bias


@jax.custom_jvp
def _window_max(windows: jax.Array) -> jax.Array:
  """``windows [B, H, s, W, s, C]`` maximised over its two window axes."""
  return windows.max(axis=(2, 4))


@_window_max.defjvp
def _window_max_jvp(primals, tangents):
  # jnp.max's own rule, with the tie count kept >= 1: it divides by the number
  # of window entries equal to the maximum, which is 0 (so 0/0 = NaN) when
  # XLA recomputes the input in two fusions with different rounding (seen at
  # -O0). Here such a window passes no gradient instead of NaN.
  (windows,), (tangent,) = primals, tangents
  out = windows.max(axis=(2, 4))
  hits = (windows == out[:, :, None, :, None]).astype(tangent.dtype)
  count = jnp.maximum(hits.sum(axis=(2, 4)), 1)
  return out, (tangent * hits).sum(axis=(2, 4)) / count


def _max_pool_axis(x: jax.Array, axis: int, window: int, stride: int,
                   padding: int) -> jax.Array:
  """1-D max pooling of ``x`` along ``axis`` (``-inf`` padding, floor)."""
  if padding:
    pads = [(0, 0)] * x.ndim
    pads[axis] = (padding, padding)
    x = jnp.pad(x, pads, constant_values=-jnp.inf)
  out = (x.shape[axis] - window) // stride + 1
  if out < 1:
    raise ValueError(
        f'max_pool: a window of {window} does not fit in size '
        f'{x.shape[axis] - 2 * padding} (+ {padding} padding on each side); '
        'use a smaller window or a larger input.')
  taps = [jax.lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride,
                               axis=axis) for i in range(window)]
  result = taps[0]
  for tap in taps[1:]:
    result = jnp.maximum(result, tap)
  return result


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0):
  """Max pooling of ``[B, H, W, C]`` over H and W (``-inf`` padding, floor).

  The same values as ``nnx.max_pool(x, (window, window), (stride, stride),
  padding=((padding, padding),) * 2)``, without ``reduce_window``, whose
  gradient is a select-and-scatter that XLA:CPU runs 5× slower: windows that
  tile the input (``window == stride``, no padding) are a reshape and a
  ``max`` over the two window axes; overlapping ones a separable maximum of
  strided slices (rows, then columns). Both gradients are elementwise
  selects that XLA fuses. At exact ties the gradient is shared between the
  tied inputs (``jnp.max``'s rule) instead of going to the first one.

  Args:
    x: ``[B, H, W, C]``.
    window: side of the square window.
    stride: step between windows.
    padding: ``-inf`` rows/columns added on each side.

  Returns:
    ``[B, (H + 2p - window) // stride + 1, (W + 2p - window) // stride + 1,
    C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import layers
    >>> x = jnp.arange(16.).reshape(1, 4, 4, 1)
    >>> layers.max_pool(x, 2, 2)[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
  """
  b, h, w, c = x.shape
  if window == stride and not padding and h >= window and w >= window:
    h, w = h // window, w // window
    x = x[:, :h * window, :w * window]
    return _window_max(_reshape_keeping_batch(x, (b, h, window, w, window,
                                                  c)))
  x = _max_pool_axis(x, 1, window, stride, padding)
  return _max_pool_axis(x, 2, window, stride, padding)


def global_average_pool(x: jax.Array) -> jax.Array:
  """``[B, H, W, C] -> [B, C]``."""
  return jnp.mean(x, axis=(1, 2))


def _linear_interpolation_matrix(size_in: int, size_out: int,
                                 align_corners: bool) -> np.ndarray:
  """``[size_out, size_in]`` weights of 1-D linear interpolation."""
  out = np.arange(size_out, dtype=np.float64)
  if align_corners:
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = out * scale
  else:
    src = (out + 0.5) * size_in / size_out - 0.5
    src = np.clip(src, 0.0, size_in - 1)
  lo = np.floor(src).astype(np.int64)
  lo = np.clip(lo, 0, size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in), np.float64)
  np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(size_out), hi), frac)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int], *,
                    align_corners: bool = True) -> jax.Array:
  """Bilinear resize of ``[B, H, W, C]`` to ``size = (H', W')``.

  ``align_corners=True`` maps corner pixels onto corner pixels (PyTorch's
  ``interpolate(..., align_corners=True)``, used by PSPNet and MTAN);
  ``False`` uses half-pixel centres.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import layers
    >>> x = jnp.array([0., 3.]).reshape(1, 1, 2, 1)
    >>> layers.resize_bilinear(x, (1, 4))[0, 0, :, 0].tolist()
    [0.0, 1.0, 2.0, 3.0]
  """
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(_linear_interpolation_matrix(h, size[0], align_corners),
                   x.dtype)
  mw = jnp.asarray(_linear_interpolation_matrix(w, size[1], align_corners),
                   x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', mh, x)
  return jnp.einsum('pw,bowc->bopc', mw, x)


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Rows average ``[floor(i n / m), ceil((i + 1) n / m))`` (PyTorch's bins)."""
  m = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_average_pool(x: jax.Array, size: int) -> jax.Array:
  """Average-pools ``[B, H, W, C]`` to ``[B, size, size, C]`` (adaptive bins).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import layers
    >>> x = jnp.arange(4.).reshape(1, 1, 4, 1)
    >>> layers.adaptive_average_pool(x, 1)[0, 0, 0, 0].item()
    1.5
  """
  h, w = x.shape[1:3]
  mh = jnp.asarray(_adaptive_pool_matrix(h, size), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(w, size), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', mh, x)
  return jnp.einsum('pw,bowc->bopc', mw, x)


def max_pool_2x2_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """2×2 stride-2 max pooling that also returns the argmax in each window.

  Args:
    x: ``[B, H, W, C]`` with even ``H`` and ``W``.

  Returns:
    ``(pooled [B, H/2, W/2, C], argmax [B, H/2, W/2, C])``, the argmax in
    ``0..3`` (row-major in the window; the first maximum on ties). The
    gradient flows to the selected element only, as in SegNet.
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_2x2_with_argmax needs even H and W; got {h}x{w}.')
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  windows = windows.reshape(b, h // 2, w // 2, c, 4)
  argmax = jnp.argmax(windows, axis=-1)
  pooled = jnp.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]
  return pooled, argmax


def max_unpool_2x2(x: jax.Array, argmax: jax.Array) -> jax.Array:
  """Inverse of ``max_pool_2x2_with_argmax``: values back at their argmax,
  zeros elsewhere (SegNet's upsampling).

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax.models import layers
    >>> x = jnp.array([[1., 5.], [2., 0.]]).reshape(1, 2, 2, 1)
    >>> p, i = layers.max_pool_2x2_with_argmax(x)
    >>> layers.max_unpool_2x2(p, i)[0, :, :, 0].tolist()
    [[0.0, 5.0], [0.0, 0.0]]
  """
  b, h, w, c = x.shape
  windows = x[..., None] * jax.nn.one_hot(argmax, 4, dtype=x.dtype)
  windows = windows.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return windows.reshape(b, 2 * h, 2 * w, c)
