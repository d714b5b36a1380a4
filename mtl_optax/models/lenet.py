"""The MultiMNIST LeNet encoder (Sener & Koltun, NeurIPS 2018, App. C.1).

Conv 5×5 (10) → max-pool 2 → ReLU → Conv 5×5 (20) → max-pool 2 → ReLU →
flatten → FC (50) → ReLU. Convolutions are unpadded, so a 28×28 input leaves
4×4×20 = 320 features for the FC layer. The task heads (FC 10 each) are
plain ``nnx.Linear`` layers on the 50 features.
"""

from __future__ import annotations

import jax
from flax import nnx

from mtl_optax.models import layers


def _conv_pool_size(size: int) -> int:
  # 5×5 valid convolution then 2×2 max-pool (floor), twice.
  for _ in range(2):
    size = (size - 4) // 2
  return size


INITS = ('flax', 'pytorch')


def initializers(init: str, fan_in: int) -> dict:
  """The ``kernel_init``/``bias_init`` of a layer for ``init`` (``{}``:
  Flax's defaults)."""
  if init not in INITS:
    raise ValueError(f"init must be one of {INITS}, got {init!r}: 'pytorch' "
                     "for the papers' PyTorch initialisation.")
  return layers.torch_default_init(fan_in) if init == 'pytorch' else {}


class LeNet(nnx.Module):
  """LeNet encoder: ``[B, H, W, C] -> [B, features]``.

  Args:
    input_shape: ``(H, W, C)`` of the images (28×28×1 for MultiMNIST).
    features: width of the last (FC) layer.
    init: ``'flax'`` (LeCun-normal weights, zero biases) or ``'pytorch'``
      (PyTorch's default, ``layers.torch_default_init``: what the papers'
      PyTorch code trained from).
    rngs: random streams for the initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models.lenet import LeNet
    >>> LeNet(rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
    (2, 50)
  """

  def __init__(self, *, input_shape: tuple[int, int, int] = (28, 28, 1),
               features: int = 50, init: str = 'flax', rngs: nnx.Rngs):
    h, w, c = input_shape
    flat = _conv_pool_size(h) * _conv_pool_size(w) * 20
    self.conv1 = nnx.Conv(c, 10, (5, 5), padding='VALID', rngs=rngs,
                          **initializers(init, c * 25))
    self.conv2 = nnx.Conv(10, 20, (5, 5), padding='VALID', rngs=rngs,
                          **initializers(init, 10 * 25))
    self.fc = nnx.Linear(flat, features, rngs=rngs,
                         **initializers(init, flat))
    self.num_features = features

  @staticmethod
  def _conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    # The nnx.Conv's parameters, computed by the CPU-fast formulation.
    return layers.conv_valid_small(x, conv.kernel[...], conv.bias[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(layers.max_pool(self._conv(self.conv1, x), 2, 2))
    x = nnx.relu(layers.max_pool(self._conv(self.conv2, x), 2, 2))
    return nnx.relu(self.fc(x.reshape(x.shape[0], -1)))
