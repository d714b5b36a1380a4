"""The MultiMNIST LeNet encoder (Sener & Koltun, NeurIPS 2018, App. C.1).

Conv 5×5 (10) → max-pool 2 → ReLU → Conv 5×5 (20) → max-pool 2 → ReLU →
flatten → FC (50) → ReLU. Convolutions are unpadded, so a 28×28 input leaves
4×4×20 = 320 features for the FC layer. The task heads (FC 10 each, as
Table 7 of Senushkin et al. 2023) are plain ``nnx.Linear`` layers on the 50
features.

Sener & Koltun's code (MultiLeNetR/MultiLeNetO) regularises this network:
channel dropout (p = 0.5) on the second convolution's output and heads FC 50
→ ReLU → dropout (p = 0.5) → FC 10. ``LeNet(dropout=0.5)`` and
``task_head(hidden=50, dropout=0.5)`` build that variant with standard
(inverted) dropout, a mask per example; their code draws the channel mask
once per batch and does not rescale, leaving eval-time activations twice the
training ones.
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
    dropout: rate of the channel dropout on the second convolution's output
      (``torch.nn.Dropout2d``: a channel of an example is zeroed with this
      probability, the others scaled by ``1/(1 - rate)``; in train mode
      only); 0 (the default): none.
    rngs: random streams for the initialisation and, with ``dropout``, the
      masks (stream ``'dropout'``, else the default stream).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax.models.lenet import LeNet
    >>> LeNet(rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 1))).shape
    (2, 50)
  """

  def __init__(self, *, input_shape: tuple[int, int, int] = (28, 28, 1),
               features: int = 50, init: str = 'flax',
               dropout: float = 0.0, rngs: nnx.Rngs):
    _check_rate(dropout)
    h, w, c = input_shape
    flat = _conv_pool_size(h) * _conv_pool_size(w) * 20
    self.conv1 = nnx.Conv(c, 10, (5, 5), padding='VALID', rngs=rngs,
                          **initializers(init, c * 25))
    self.conv2 = nnx.Conv(10, 20, (5, 5), padding='VALID', rngs=rngs,
                          **initializers(init, 10 * 25))
    self.fc = nnx.Linear(flat, features, rngs=rngs,
                         **initializers(init, flat))
    self.num_features = features
    # Channels of an example share their mask: broadcast over H and W.
    self.dropout = (nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)
                    if dropout else None)

  @staticmethod
  def _conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    # The nnx.Conv's parameters, computed by the CPU-fast formulation.
    return layers.conv_valid_small(x, conv.kernel[...], conv.bias[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(layers.max_pool(self._conv(self.conv1, x), 2, 2))
    x = self._conv(self.conv2, x)
    if self.dropout is not None:
      x = self.dropout(x)
    x = nnx.relu(layers.max_pool(x, 2, 2))
    return nnx.relu(self.fc(x.reshape(x.shape[0], -1)))


def task_head(features: int, num_classes: int, *, hidden: int | None = None,
              dropout: float = 0.0, init: str = 'flax',
              rngs: nnx.Rngs) -> nnx.Module:
  """A MultiMNIST task head: FC ``num_classes`` on the encoder's features.

  Args:
    features: the encoder's output width.
    num_classes: logits.
    hidden: None (the default, Table 7 of Senushkin et al.): one FC layer;
      an int: FC ``hidden`` → ReLU → dropout → FC ``num_classes`` (Sener &
      Koltun's MultiLeNetO with ``hidden=50``).
    dropout: rate of the dropout after the hidden layer (needs ``hidden``).
    init: as ``LeNet``'s.
    rngs: random streams for the initialisation and the masks.

  Returns:
    ``head(z) -> [B, num_classes]`` logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> head = task_head(50, 10, hidden=50, dropout=0.5, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((3, 50))).shape
    (3, 10)
  """
  _check_rate(dropout)
  if hidden is None:
    if dropout:
      raise ValueError(
          f'task_head(dropout={dropout}) drops the hidden layer\'s units; '
          'give hidden= (e.g. hidden=50, Sener & Koltun\'s head) or '
          'dropout=0.')
    return nnx.Linear(features, num_classes, rngs=rngs,
                      **initializers(init, features))
  if not isinstance(hidden, int) or hidden < 1:
    raise ValueError(f'hidden must be a positive int or None, got {hidden!r}.')
  parts = [nnx.Linear(features, hidden, rngs=rngs,
                      **initializers(init, features)), nnx.relu]
  if dropout:
    parts.append(nnx.Dropout(dropout, rngs=rngs))
  parts.append(nnx.Linear(hidden, num_classes, rngs=rngs,
                          **initializers(init, hidden)))
  return nnx.Sequential(*parts)


def _check_rate(rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout must be in [0, 1), got {rate!r}: the '
                     'probability of zeroing a unit (0: no dropout).')
