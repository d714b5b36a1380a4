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


class LeNet(nnx.Module):
  """LeNet encoder: ``[B, H, W, C] -> [B, features]``.

  Args:
    input_shape: ``(H, W, C)`` of the images (28×28×1 for MultiMNIST).
    features: width of the last (FC) layer.
    rngs: random streams for the initialisation.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models.lenet import LeNet
    >>> LeNet(rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
    (2, 50)
  """

  def __init__(self, *, input_shape: tuple[int, int, int] = (28, 28, 1),
               features: int = 50, rngs: nnx.Rngs):
    h, w, c = input_shape
    self.conv1 = nnx.Conv(c, 10, (5, 5), padding='VALID', rngs=rngs)
    self.conv2 = nnx.Conv(10, 20, (5, 5), padding='VALID', rngs=rngs)
    flat = _conv_pool_size(h) * _conv_pool_size(w) * 20
    self.fc = nnx.Linear(flat, features, rngs=rngs)
    self.num_features = features

  @staticmethod
  def _conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    # The nnx.Conv's parameters, computed by the CPU-fast formulation.
    return layers.conv_valid_small(x, conv.kernel[...], conv.bias[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(layers.max_pool(self._conv(self.conv1, x), 2, 2))
    x = nnx.relu(layers.max_pool(self._conv(self.conv2, x), 2, 2))
    return nnx.relu(self.fc(x.reshape(x.shape[0], -1)))
