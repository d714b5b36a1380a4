"""Data-parallel multi-task training on every device, with ``jax.sharding``.

LeNet on MultiMNIST-shaped random batches (two tasks, left and right
digit), Aligned-MTL + Adam. The batch is split over a one-axis mesh of all
devices; the parameters are replicated (``--fsdp``: sharded FSDP-style).
Nothing else changes from a single-device step: under ``jit``,
``mtl.value_and_jacobian`` gives the *global*-batch per-task gradients (JAX
inserts the cross-device sums) and the aggregator's Gramian is reduced
across devices, so the update is the one a single device would compute.

Try it on one machine with simulated devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python benchmarks/data_parallel.py --steps 20

Several hosts (e.g. a TPU pod slice or GPU nodes): run this same script on
every host. ``jax.distributed.initialize()`` must come before any other JAX
call; on Cloud TPU, and on GPU clusters under SLURM or Open MPI, it finds
the coordinator and its own process id by itself, elsewhere pass
``coordinator_address='host0:1234', num_processes=N, process_id=i``.
``jax.devices()`` then lists every host's devices, the mesh spans them, and
each process feeds only its own slice of the global batch
(``shard_batch`` assembles the global array with
``jax.make_array_from_process_local_data``). Use ``--distributed`` for that.

Do NOT aggregate per device and average (the ``pmap`` habit of "compute
locally, ``pmean`` at the end"): nonlinear methods (Aligned-MTL, MGDA,
PCGrad, ...) must see the global per-task gradients. With ``jax.shard_map``,
``pmean`` the per-task gradients first, then aggregate.

Run:  python benchmarks/data_parallel.py [--steps 20] [--batch 64] [--fsdp]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mtl_optax as mtl
from mtl_optax import models
from mtl_optax import sharding
from mtl_optax.data import synthetic


def make_train_step(fm, loss_fn, tx):
  """The usual jitted step; nothing in it is specific to several devices."""

  @jax.jit
  def train_step(params, opt_state, batch):
    (losses, _), grads = mtl.value_and_jacobian(loss_fn, has_aux=True)(
        params, fm.batch_stats, batch)        # grads: [T, ...] global-batch
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  return train_step


def local_batch(step: int, global_batch: int) -> dict:
  """This process's part of the global batch (random data here)."""
  per_process = global_batch // jax.process_count()
  return synthetic.random_batch('multi_mnist', per_process,
                                seed=step * jax.process_count() +
                                jax.process_index())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--batch', type=int, default=64,
                      help='global batch size (a multiple of the devices)')
  parser.add_argument('--fsdp', action='store_true',
                      help='shard the parameters too (FSDP-style)')
  parser.add_argument('--distributed', action='store_true',
                      help='multi-host: call jax.distributed.initialize()')
  args = parser.parse_args(argv)
  if args.distributed:
    jax.distributed.initialize()   # before any other JAX call

  # One mesh axis over every device of every process. jax.make_mesh's axes
  # are Explicit by default (shardings in the types); Auto works the same.
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  fm = models.functional(models.create('lenet_multimnist', rngs=0))
  task_loss = fm.loss_fn(models.default_task_losses('lenet_multimnist'))

  def loss_fn(params, batch_stats, batch):
    # FSDP: make sharded parameters whole before use (a no-op otherwise).
    return task_loss(sharding.gather(params), batch_stats, batch)

  tx = optax.chain(mtl.aligned_mtl(shared=fm.shared_mask), optax.adam(1e-3))
  train_step = make_train_step(fm, loss_fn, tx)

  with jax.set_mesh(mesh):
    layout = (sharding.fsdp_sharding(fm.params, mesh) if args.fsdp
              else NamedSharding(mesh, P()))
    params = jax.device_put(fm.params, layout)
    opt_state = jax.jit(tx.init)(params)   # laid out like the parameters
    start = time.perf_counter()
    for step in range(args.steps):
      batch = sharding.shard_batch(local_batch(step, args.batch), mesh)
      params, opt_state, losses = train_step(params, opt_state, batch)
      if step == 0:
        jax.block_until_ready(losses)
        start = time.perf_counter()   # exclude compilation
      if jax.process_index() == 0 and (step % 5 == 0 or
                                       step == args.steps - 1):
        print(f'step {step:3d}  losses {np.round(np.asarray(losses), 4)}')
    jax.block_until_ready(params)
  if jax.process_index() == 0:
    per_step = (time.perf_counter() - start) / max(args.steps - 1, 1)
    print(f'{jax.device_count()} devices ({jax.process_count()} processes), '
          f'global batch {args.batch}, {"FSDP" if args.fsdp else "replicated"}'
          f' parameters: {per_step * 1e3:.1f} ms/step')


if __name__ == '__main__':
  main()
