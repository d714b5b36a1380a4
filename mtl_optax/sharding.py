"""Small helpers for data-parallel and FSDP-style training with ``jax.sharding``.

JAX's SPMD machinery is the distributed engine; these helpers only lay out
the arrays. The aggregators themselves need nothing special: under ``jit``
with a batch-sharded input the per-task gradients from
``mtl_optax.value_and_jacobian`` are the *global*-batch gradients (JAX's
autodiff inserts the cross-device sums), and ``mtl_optax.gramian`` contracts
sharded leaves in place, with a ``[T, T]`` all-reduce (see
``mtl_optax.gramians``). Both mesh axis types work: ``Explicit`` (the default
of ``jax.make_mesh``, shardings in the types) and ``Auto`` (the compiler
propagates shardings).

The one thing to get wrong: a nonlinear method (Aligned-MTL, MGDA, PCGrad,
...) must aggregate the global per-task gradients. Aggregating each device's
local gradients and averaging the updates (the ``pmap``/``shard_map`` habit of
"compute locally, ``pmean`` at the end") gives a different, wrong direction;
with ``shard_map``, ``pmean`` the per-task gradients first, then aggregate.

Typical step (replicated parameters, batch sharded over ``'data'``)::

    mesh = jax.make_mesh((jax.device_count(),), ('data',))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    batch = mtl.sharding.shard_batch(batch, mesh)
    # then the usual jitted step: value_and_jacobian, tx.update, apply_updates
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from mtl_optax.gramians import explicit_sharding

PyTree = Any


def shard_batch(batch: PyTree, mesh: Mesh, axis: str = 'data') -> PyTree:
  """Places every leaf of ``batch`` with its leading (batch) axis sharded.

  In a multi-process run (after ``jax.distributed.initialize()``) each
  process passes its own part of the global batch, and the global array is
  assembled with ``jax.make_array_from_process_local_data``.

  Args:
    batch: arrays whose leading axis is the batch (this process's part of it
      in a multi-process run).
    mesh: the device mesh, e.g. ``jax.make_mesh((8,), ('data',))``.
    axis: the mesh axis (or tuple of axes) to shard the batch over.

  Returns:
    ``batch`` as global ``jax.Array``s with ``NamedSharding(mesh, P(axis))``.

  Raises:
    ValueError: naming the leaf whose batch size the axis does not divide.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mtl_optax import sharding
    >>> mesh = jax.make_mesh((1,), ('data',))
    >>> x = sharding.shard_batch(jnp.ones((4, 3)), mesh)
    >>> x.sharding.spec
    P('data',)
  """
  size = int(np.prod([mesh.shape[a] for a in
                      (axis if isinstance(axis, tuple) else (axis,))]))

  processes = jax.process_count()

  def put(path, x):
    if np.ndim(x) == 0 or (np.shape(x)[0] * processes) % size:
      raise ValueError(
          f'Batch leaf {jax.tree_util.keystr(path)} of shape {np.shape(x)} '
          f'cannot be split over mesh axis {axis!r} of size {size}.')
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    if processes > 1:
      return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.device_put(x, sharding)

  return jax.tree_util.tree_map_with_path(put, batch)


def fsdp_sharding(params: PyTree, mesh: Mesh, axis: str = 'data',
                  min_size: int = 1024) -> PyTree:
  """FSDP-style shardings: each large leaf split over ``axis`` along one dim.

  A leaf with at least ``min_size`` elements is sharded along its largest
  dimension that the axis size divides; others are replicated. Apply with
  ``jax.device_put(params, fsdp_sharding(params, mesh))``. Under ``Explicit``
  axes the loss function must gather the parameters before use
  (``gather``); under ``Auto`` axes the compiler does.

  Args:
    params: the parameters (arrays or shape-dtype structs).
    mesh: the device mesh.
    axis: the mesh axis to shard over.
    min_size: leaves smaller than this are replicated.

  Returns:
    A pytree of ``NamedSharding`` with ``params``' structure.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mtl_optax import sharding
    >>> mesh = jax.make_mesh((1,), ('data',))
    >>> s = sharding.fsdp_sharding({'w': jnp.ones((8, 512))}, mesh)
    >>> s['w'].spec
    P(None, 'data')
  """
  size = mesh.shape[axis]

  def one(x):
    shape = np.shape(x)
    spec = [None] * len(shape)
    if int(np.prod(shape, dtype=np.int64)) >= min_size:
      fits = [d for d in range(len(shape)) if shape[d] % size == 0]
      if fits:
        spec[max(fits, key=lambda d: (shape[d], d))] = axis
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree.map(one, params)


def gather(tree: PyTree) -> PyTree:
  """All-gathers the leaves whose type says they are sharded (FSDP's gather).

  Under ``Explicit`` mesh axes a sharded parameter must be made whole before
  it meets a batch-sharded activation (``jax.sharding.reshard`` to a
  replicated sharding; its transpose, in the backward pass, is the
  reduce-scatter of the gradient). Call it at the top of the loss function.
  Leaves that are not sharded, and every leaf under ``Auto`` axes (where the
  compiler inserts the gathers), are returned as they are, so the same loss
  function runs on one device too.

  Args:
    tree: parameters (inside ``jit``) or any pytree of arrays.

  Returns:
    ``tree`` with every explicitly sharded leaf replicated.

  Example:
    >>> import jax.numpy as jnp
    >>> from mtl_optax import sharding
    >>> sharding.gather({'w': jnp.ones(2)})['w'].tolist()
    [1.0, 1.0]
  """

  def one(x):
    sharding = explicit_sharding(x)
    if sharding is None:
      return x
    return jax.sharding.reshard(
        x, NamedSharding(sharding.mesh, PartitionSpec()))

  return jax.tree.map(one, tree)


__all__ = ['fsdp_sharding', 'gather', 'shard_batch']
