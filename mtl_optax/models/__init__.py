"""Flax NNX model zoo for multi-task learning: shared encoder, task heads.

Protocol. A ``MultiTaskModel`` has an ``encoder`` (``z = encode(x)``, any
pytree) and ``heads`` (``nnx.Dict`` task -> head, ``decode(z) -> {task:
output}``) with the task order ``tasks``; ``model(x) = decode(encode(x))``.
BatchNorm trains with batch statistics (``model.train()``, the default) and
evaluates with running averages (``model.eval()``); dropout
(``nnx.Dropout(rate, rngs=rngs)``) masks in train mode only.

Functional view. ``fm = functional(model)`` holds the graph definitions and
the states as plain nested dicts, ``fm.params`` and ``fm.batch_stats`` (the
BatchNorm statistics and the dropout layers' random streams, which a
training-mode pass advances: fresh masks each step), each ``{'encoder': ...,
'heads': {task: ...}}``:

- ``fm.apply(params, batch_stats, x, *, train) -> (outputs, new_batch_stats)``;
  ``fm.encode(encoder_params, encoder_stats, x, *, train) -> (z, stats)``,
  ``fm.decode(head_params, head_stats, z, *, train) -> (outputs, stats)``;
- ``fm.loss_fn(task_losses)``: ``loss_fn(params, batch_stats, batch) ->
  (losses [T], new_batch_stats)`` for ``mtl.value_and_jacobian(loss_fn,
  has_aux=True)``;
- ``fm.representation_fns(task_losses)``: ``(encode, heads_losses)`` for
  ``mtl.representation_grads(..., encoder_has_aux=True,
  heads_has_aux=True)`` with ``inputs = (encoder_stats, image)`` and
  ``batch = (head_stats, batch)``; ``fm.representation_step(task_losses,
  aggregator)`` wraps it on ``params``/``batch_stats``;
- ``fm.shared_mask``: the ``shared=`` mask (True on the encoder);
- ``fm.update_model(model, params, batch_stats)`` writes values back,
  ``fm.merge(params, batch_stats)`` builds a new model.

Batches are dicts ``{'image': float32 [B, H, W, C], <task>: target, ...}``;
``task_losses`` maps each task to ``fn(output, batch) -> scalar``
(``default_task_losses(name)`` for the registry's models, ``losses`` for the
building blocks). ``create(name, rngs=..., **kwargs)`` builds a registered
model; ``available()`` lists them. ``from_torchvision(model, weights)`` loads
a torchvision ResNet / VGG-16-BN checkpoint into a model's encoder.

Example (per-task gradients and Aligned-MTL on MultiMNIST's LeNet):

  >>> import jax, jax.numpy as jnp, optax
  >>> import mtl_optax as mtl
  >>> from mtl_optax import models
  >>> model = models.create('lenet_multimnist', rngs=0)
  >>> fm = models.functional(model)
  >>> batch = {'image': jnp.zeros((4, 28, 28, 1)),
  ...          'left': jnp.array([0, 1, 2, 3]), 'right': jnp.array([4, 5, 6, 7])}
  >>> loss_fn = fm.loss_fn(models.default_task_losses('lenet_multimnist'))
  >>> tx = optax.chain(mtl.aligned_mtl(shared=fm.shared_mask), optax.adam(1e-3))
  >>> @jax.jit
  ... def step(params, batch_stats, opt_state, batch):
  ...   (losses, batch_stats), grads = mtl.value_and_jacobian(
  ...       loss_fn, has_aux=True)(params, batch_stats, batch)  # grads: [T, ...]
  ...   updates, opt_state = tx.update(grads, opt_state, params)
  ...   return optax.apply_updates(params, updates), batch_stats, opt_state, losses
  >>> params, stats, opt_state, losses = step(fm.params, fm.batch_stats,
  ...                                         tx.init(fm.params), batch)
  >>> losses.shape
  (2,)
  >>> fm.update_model(model, params, stats)   # back into the nnx model
"""

from mtl_optax._extras import _require

_require('flax', 'zoo', 'mtl_optax.models')

# pylint: disable=g-import-not-at-top,wrong-import-position
from mtl_optax.models import architectures
from mtl_optax.models import heads
from mtl_optax.models import layers
from mtl_optax.models import lenet
from mtl_optax.models import losses
from mtl_optax.models import mtan
from mtl_optax.models import resnet
from mtl_optax.models import torchvision_weights
from mtl_optax.models import vgg
from mtl_optax.models.base import FunctionalModel
from mtl_optax.models.base import functional
from mtl_optax.models.base import MultiTaskModel
from mtl_optax.models.base import num_params
from mtl_optax.models.base import RepresentationStep
from mtl_optax.models.registry import available
from mtl_optax.models.registry import CELEBA_ATTRIBUTES
from mtl_optax.models.registry import CIFAR100_COARSE_CLASSES
from mtl_optax.models.registry import create
from mtl_optax.models.registry import default_task_losses
from mtl_optax.models.registry import ModelSpec
from mtl_optax.models.registry import spec
from mtl_optax.models.torchvision_weights import from_torchvision

__all__ = [
    'architectures',
    'available',
    'CELEBA_ATTRIBUTES',
    'CIFAR100_COARSE_CLASSES',
    'create',
    'default_task_losses',
    'functional',
    'from_torchvision',
    'FunctionalModel',
    'heads',
    'layers',
    'lenet',
    'losses',
    'ModelSpec',
    'mtan',
    'MultiTaskModel',
    'num_params',
    'RepresentationStep',
    'resnet',
    'spec',
    'torchvision_weights',
    'vgg',
]
