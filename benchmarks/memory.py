"""Peak memory and step time: materialised vs Jacobian-free Gramian.

What it measures
----------------
ResNet-18-CelebA at 64×64 (``mtl_optax.models.create('resnet18_celeba',
tasks=first T attributes)``, BatchNorm in training mode), for each number of
tasks ``T``, three jitted training steps on the same batch, each ending with
an Adam update of the parameters:

* ``single-loss``: ``jax.value_and_grad`` of the summed losses (an ordinary
  training step; what the targets are measured against);
* ``materialised``: ``mtl.value_and_jacobian`` (the ``[T, P]`` per-task
  gradients) then ``mtl.aligned_mtl(shared=fm.shared_mask)``;
* ``jacobian-free``: ``mtl_optax.jacobian.jacobian_free_grads`` with the same
  aggregator: the Gramian by forward-over-reverse products,
  ``--chunk`` tasks at a time, then one VJP with the coefficients.

Peak memory is the compiled executable's (``jax.jit(step).lower(...)
.compile().memory_analysis()``): arguments + outputs + XLA's temporary
buffer (the heap simulator's peak of the live temporaries), minus aliased
bytes. It is deterministic and independent of other processes. Step time is
the median of ``--repeats`` runs after one warm-up (``time.perf_counter`` and
``jax.block_until_ready``), all three modes timed in the same process.

Step time vs device count (for information): the same training steps
(``--scaling-tasks`` tasks, ``--scaling-width``, batch ``--scaling-batch``)
data-parallel on a ``jax.make_mesh`` of N simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, one child process
per N), the batch sharded over the mesh and the parameters replicated. All
simulated devices share the same cores, so this shows the cost of the
partitioned program, not a speed-up.

Targets (issue 8): at ``T = 40`` the Jacobian-free step's peak memory is at
most 1.5× the single-loss step's, and its time at most 3× the materialised
step's.

How to run
----------
From the repository root::

    python benchmarks/memory.py                          # T 2 10 40 (see below)
    python benchmarks/memory.py --tasks 2 10 --no-time   # memory only (compiles)
    python benchmarks/memory.py --quick                  # smoke test: T 2 3, width 8
    python benchmarks/memory.py --devices                # device scaling only

On CPU the Jacobian-free step unrolls its chunks, and XLA:CPU compiles
that superlinearly in T (96 s at T = 2, 27 min at T = 10 on 2 busy
cores; T = 40 did not finish): measure T = 40 on a GPU, or pass
``--tasks 2 10``.

Options: ``--tasks``, ``--batch`` (8), ``--width`` (64, the ResNet-18 width),
``--chunk`` (1), ``--repeats`` (3), ``--no-time``, ``--devices`` (device
counts for the scaling table, default 1 2 4 8; ``--devices`` alone skips
the memory table, ``--no-scaling`` skips the scaling table),
``--out`` (Markdown,
default ``benchmarks/results/memory.md``; the raw numbers go to the same stem
with ``.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl
from mtl_optax import models
from mtl_optax import sharding
from mtl_optax.jacobian import jacobian_free_grads

MIB = 1 << 20
MODES = ('single-loss', 'materialised', 'jacobian-free')


def _problem(t: int, batch: int, width: int):
  tasks = models.CELEBA_ATTRIBUTES[:t]
  model = models.create('resnet18_celeba', tasks=tasks, width=width, rngs=0)
  fm = models.functional(model)
  loss_fn = fm.loss_fn(models.default_task_losses('resnet18_celeba',
                                                  tasks=tasks))
  rng = np.random.default_rng(0)
  data = {'image': jnp.asarray(rng.normal(size=(batch, 64, 64, 3)),
                               jnp.float32)}
  for task in tasks:
    data[task] = jnp.asarray(rng.integers(0, 2, size=batch), jnp.int32)
  return fm, loss_fn, data


def _steps(fm, loss_fn, chunk: int):
  """The three training steps, ``step(params, stats, opt_state, agg_state,
  batch) -> (params, stats, opt_state, agg_state, losses)``."""
  tx = optax.adam(1e-3)
  agg = mtl.aligned_mtl(shared=fm.shared_mask)

  def apply(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def single(params, stats, opt_state, agg_state, batch):
    def total(p):
      losses, new_stats = loss_fn(p, stats, batch)
      return jnp.sum(losses), (losses, new_stats)
    (_, (losses, stats)), grads = jax.value_and_grad(total, has_aux=True)(
        params)
    params, opt_state = apply(params, opt_state, grads)
    return params, stats, opt_state, agg_state, losses

  def materialised(params, stats, opt_state, agg_state, batch):
    (losses, stats), jac = mtl.value_and_jacobian(loss_fn, has_aux=True)(
        params, stats, batch)
    grads, agg_state = agg.update(jac, agg_state, params)
    params, opt_state = apply(params, opt_state, grads)
    return params, stats, opt_state, agg_state, losses

  free_fn = jacobian_free_grads(loss_fn, agg, shared=fm.shared_mask,
                                chunk_size=chunk, has_aux=True)

  def jacobian_free(params, stats, opt_state, agg_state, batch):
    out = free_fn(params, agg_state, stats, batch)
    params, opt_state = apply(params, opt_state, out.grads)
    return params, out.aux, opt_state, out.aggregator_state, out.losses

  return tx, agg, {'single-loss': single, 'materialised': materialised,
                   'jacobian-free': jacobian_free}


def _peak_bytes(compiled) -> dict:
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes +
          m.temp_size_in_bytes - m.alias_size_in_bytes)
  return {'peak': peak, 'argument': m.argument_size_in_bytes,
          'output': m.output_size_in_bytes, 'temp': m.temp_size_in_bytes}


def _time(compiled, args, repeats: int) -> float:
  jax.block_until_ready(compiled(*args))   # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(t: int, batch: int, width: int, chunk: int, repeats: int,
            timed: bool) -> dict:
  """Memory (and time) of the three steps at ``T = t``."""
  fm, loss_fn, data = _problem(t, batch, width)
  tx, agg, steps = _steps(fm, loss_fn, chunk)
  args = (fm.params, fm.batch_stats, tx.init(fm.params), agg.init(None), data)
  row = {'tasks': t, 'params': int(sum(x.size for x in
                                       jax.tree.leaves(fm.params)))}
  for mode in MODES:
    start = time.perf_counter()
    compiled = jax.jit(steps[mode]).lower(*args).compile()
    entry = {'compile_s': time.perf_counter() - start, **_peak_bytes(compiled)}
    if timed:
      entry['step_s'] = _time(compiled, args, repeats)
    row[mode] = entry
    print(f'T={t:3d} {mode:14s} peak {entry["peak"] / MIB:9.1f} MiB'
          + (f'  step {entry["step_s"]:8.3f} s' if timed else '')
          + f'  (compile {entry["compile_s"]:.1f} s)', flush=True)
    del compiled
  return row


def _table(rows: list[dict], timed: bool) -> list[str]:
  lines = ['| T | P | single-loss peak (MiB) | materialised peak (MiB) | '
           'Jacobian-free peak (MiB) | JF / single-loss peak | '
           'materialised / single-loss peak |'
           + (' single-loss step (s) | materialised step (s) | '
              'Jacobian-free step (s) | JF / materialised time |'
              if timed else ''),
           '|---:|---:|---:|---:|---:|---:|---:|'
           + ('---:|---:|---:|---:|' if timed else '')]
  for r in rows:
    s, m, f = (r[k] for k in MODES)
    line = (f'| {r["tasks"]} | {r["params"]:,} | {s["peak"] / MIB:.1f} | '
            f'{m["peak"] / MIB:.1f} | {f["peak"] / MIB:.1f} | '
            f'{f["peak"] / s["peak"]:.2f}× | {m["peak"] / s["peak"]:.2f}× |')
    if timed:
      line += (f' {s["step_s"]:.3f} | {m["step_s"]:.3f} | {f["step_s"]:.3f} |'
               f' {f["step_s"] / m["step_s"]:.2f}× |')
    lines.append(line)
  return lines


def _targets(rows: list[dict], timed: bool) -> list[str]:
  out = []
  for r in rows:
    if r['tasks'] != 40:
      continue
    s, m, f = (r[k] for k in MODES)
    ratio = f['peak'] / s['peak']
    out.append(f'- T = 40, Jacobian-free peak memory / single-loss step: '
               f'{ratio:.2f}× (target ≤ 1.5×): '
               f'{"PASS" if ratio <= 1.5 else "FAIL"}')
    if timed:
      ratio = f['step_s'] / m['step_s']
      out.append(f'- T = 40, Jacobian-free step time / materialised: '
                 f'{ratio:.2f}× (target ≤ 3×): '
                 f'{"PASS" if ratio <= 3 else "FAIL"}')
  return out


SCALING_CHILD = '--scaling-child'


def scaling_row(t: int, batch: int, width: int, chunk: int,
                repeats: int) -> dict:
  """Step times of the three modes, data-parallel on all devices.

  Runs in a process started with N simulated devices; the mesh is
  ``jax.make_mesh((N,), ('data',))`` (``Explicit`` axes), the batch sharded
  over it and everything else replicated.
  """
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ('data',))
  fm, loss_fn, data = _problem(t, batch, width)
  tx, agg, steps = _steps(fm, loss_fn, chunk)
  row = {'devices': n, 'tasks': t, 'batch': batch, 'width': width}
  with jax.set_mesh(mesh):
    replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())
    state = jax.device_put((fm.params, fm.batch_stats, tx.init(fm.params),
                            agg.init(None)), replicated)
    args = (*state, sharding.shard_batch(data, mesh))
    for mode in MODES:
      start = time.perf_counter()
      compiled = jax.jit(steps[mode]).lower(*args).compile()
      row[mode] = {'compile_s': time.perf_counter() - start,
                   'step_s': _time(compiled, args, repeats)}
      del compiled
  return row


def run_scaling(devices: list[int], args) -> list[dict]:
  """One child process per device count; their rows."""
  rows = []
  for n in devices:
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={n}')
    env['JAX_PLATFORMS'] = 'cpu'
    cmd = [sys.executable, os.path.abspath(__file__), SCALING_CHILD,
           '--scaling-tasks', str(args.scaling_tasks), '--scaling-batch',
           str(args.scaling_batch), '--scaling-width', str(args.scaling_width),
           '--chunk', str(args.chunk), '--repeats', str(args.repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(f'devices={n}: ' + '  '.join(
        f'{m} {row[m]["step_s"]:.3f} s' for m in MODES), flush=True)
    rows.append(row)
  return rows


def _scaling_table(rows: list[dict]) -> list[str]:
  r0 = rows[0]
  lines = [f'## Step time vs simulated device count (T = {r0["tasks"]}, '
           f'width {r0["width"]}, global batch {r0["batch"]})', '',
           'Data parallel on `jax.make_mesh((N,), (\'data\',))` '
           '(Explicit axes), batch sharded, parameters replicated. The N '
           'simulated devices share the same CPU cores: this is the cost of '
           'the partitioned program, not a speed-up.', '',
           '| devices | ' + ' | '.join(f'{m} step (s)' for m in MODES) +
           ' | ' + ' | '.join(f'{m} compile (s)' for m in MODES) + ' |',
           '|---:|' + '---:|' * (2 * len(MODES))]
  for r in rows:
    lines.append(f'| {r["devices"]} | ' + ' | '.join(
        f'{r[m]["step_s"]:.3f}' for m in MODES) + ' | ' + ' | '.join(
            f'{r[m]["compile_s"]:.1f}' for m in MODES) + ' |')
  return lines


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', type=int, nargs='+', default=[2, 10, 40])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--chunk', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--no-time', action='store_true')
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--devices', type=int, nargs='*', default=None)
  parser.add_argument('--no-scaling', action='store_true')
  parser.add_argument('--scaling-tasks', type=int, default=10)
  parser.add_argument('--scaling-batch', type=int, default=16)
  parser.add_argument('--scaling-width', type=int, default=32)
  parser.add_argument(SCALING_CHILD, action='store_true',
                      help=argparse.SUPPRESS)
  parser.add_argument('--out', default='benchmarks/results/memory.md')
  args = parser.parse_args(argv)
  if args.scaling_child:
    print(json.dumps(scaling_row(args.scaling_tasks, args.scaling_batch,
                                 args.scaling_width, args.chunk,
                                 args.repeats)))
    return
  scaling_only = args.devices is not None and not args.no_scaling
  devices = [] if args.no_scaling else (args.devices or [1, 2, 4, 8])
  if args.quick:
    args.tasks, args.width, args.repeats = [2, 3], 8, 1
    args.scaling_tasks, args.scaling_width, args.scaling_batch = 2, 8, 8
    devices = devices and [1, 8]
  timed = not args.no_time

  header = [
      '# Peak memory and step time: materialised vs Jacobian-free Gramian',
      '',
      f'- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}',
      f'- platform: {platform.platform()} (python {platform.python_version()}),'
      f' cpu_count={os.cpu_count()}',
      f'- jax {jax.__version__} (backend {jax.default_backend()}), optax '
      f'{optax.__version__}',
      f'- load average at start: {[round(x, 2) for x in os.getloadavg()]}',
      f'- model: ResNet-18-CelebA (`resnet18_celeba`, width {args.width}), '
      f'64×64 inputs, batch {args.batch}, first T attributes as tasks; '
      'Adam update in every step',
      f'- method: `aligned_mtl(shared=fm.shared_mask)`; Jacobian-free chunk '
      f'size {args.chunk}',
      '- peak = arguments + outputs + temporaries of the compiled step '
      '(`memory_analysis()`); time = median of '
      f'{args.repeats} runs after a warm-up',
      '- command: `python benchmarks/memory.py '
      + ' '.join(sys.argv[1:] if argv is None else argv) + '`',
      '',
  ]
  print('\n'.join(header), flush=True)
  rows = [] if scaling_only else [
      measure(t, args.batch, args.width, args.chunk, args.repeats, timed)
      for t in args.tasks]
  body = (_table(rows, timed) + [''] + _targets(rows, timed) + ['']
          if rows else [])
  scaling = run_scaling(devices, args) if devices else []
  if scaling:
    body += _scaling_table(scaling) + ['']
  print('\n'.join(body))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text('\n'.join(header + body))
  out.with_suffix('.json').write_text(json.dumps(
      {'memory': rows, 'scaling': scaling}, indent=1))


if __name__ == '__main__':
  main()
