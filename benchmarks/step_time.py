"""Step time and peak memory of every method on the papers' real models.

For each model (LeNet-MultiMNIST, T = 2, batch 256; ResNet-18-CelebA at
64×64, T = 40, batch 32 on CPU) and each method, at the parameter level and
at the representation level, this times one jitted training step of
``mtl_optax.training`` (median of ``--repeats`` runs after warm-up) on a fixed
random batch, and reads the step's peak memory from XLA's compiled memory
analysis (arguments + outputs + temporaries, deterministic). Ratios are to
linear scalarization's parameter-level step, measured in the same run, and
to the plain single-loss step (``jax.grad`` of the summed losses + Adam), the
cost floor of any multi-task method.

The aggregation's share of a parameter-level step is measured directly: the
method's ``update`` alone on the step's stacked gradients, divided by the
whole step's time.

Run:  python benchmarks/step_time.py [--models lenet,resnet18] [--repeats 7]
      [--methods a,b] [--out benchmarks/results/step_time.md]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl
from mtl_optax import data
from mtl_optax import models
from mtl_optax import training

SETUPS = {
    'lenet': dict(model='lenet_multimnist', dataset='multi_mnist',
                  batch_size=256),
    'resnet18': dict(model='resnet18_celeba', dataset='celeb_a',
                     batch_size=32),
}
DEFAULT_METHODS = ('linear_scalarization', 'aligned_mtl', 'mgda', 'pcgrad',
                   'mamg', 'imtl_g', 'cagrad', 'nash_mtl', 'upgrad',
                   'dualproj', 'fairgrad', 'graddrop', 'uncertainty_weighting',
                   'gradnorm')


def random_batch(setup: dict) -> dict:
  return jax.device_put(data.random_batch(setup['dataset'],
                                          setup['batch_size']))


def interleaved_medians(calls: dict, repeats: int) -> dict[str, float]:
  """Median seconds of each ``name -> (fn, args)``, timed round-robin.

  Every call is compiled and warmed up first; then each round times every
  call once, so that a change in the machine's load (these machines are
  shared) affects all of them alike instead of whichever ran at that time.
  """
  for fn, args in calls.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, args) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def peak_bytes(jitted, *args) -> int:
  analysis = jitted.lower(*args).compile().memory_analysis()
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
             analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def _undonated(experiment):
  """The experiment's step without buffer donation (we time it repeatedly)."""
  step = experiment.train_step
  # Compiled as the training loop compiles it (fast CPU convolutions).
  return mtl.compiler.jit(getattr(step, '__wrapped__', step),
                         options=training.step_compiler_options(
                             experiment.config))


def single_loss_step(setup: dict, fm, task_losses, batch):
  """``jax.grad`` of the summed task losses, then Adam: the floor."""
  loss_fn = fm.loss_fn(task_losses)
  tx = optax.adam(1e-3)

  def step(params, batch_stats, opt_state, batch):
    def total(p):
      losses, stats = loss_fn(p, batch_stats, batch)
      return jnp.sum(losses), stats
    grads, stats = jax.grad(total, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  args = (fm.params, fm.batch_stats, tx.init(fm.params), batch)
  # Compiled as the training loop compiles its steps.
  return mtl.compiler.jit(step), args


def aggregation_only(method: str, fm, task_losses, batch, t: int):
  """The method's ``update`` alone on a step's stacked gradients."""
  agg = mtl.registry.for_tasks(method, num_tasks=t, shared=fm.shared_mask)
  loss_fn = fm.loss_fn(task_losses)
  (losses, _), grads = jax.jit(mtl.value_and_jacobian(loss_fn, has_aux=True))(
      fm.params, fm.batch_stats, batch)
  state = agg.init(fm.params)

  def update(grads, state, params, losses):
    return agg.update(grads, state, params, losses=losses)

  return jax.jit(update), (grads, state, fm.params, losses)


def measure(name: str, setup: dict, methods, repeats: int,
            levels=('parameter', 'representation')) -> list[dict]:
  config = training.Config(model=setup['model'], dataset=setup['dataset'],
                           batch_size=setup['batch_size'], seed=0)
  task_losses = models.default_task_losses(setup['model'])
  batch = random_batch(setup)
  rows, calls = [], {}
  fm = None
  for method in methods:
    for level in levels:
      experiment = training.build(config.replace(method=method, level=level),
                                  num_train_examples=10 * setup['batch_size'])
      fm = experiment.model
      step = _undonated(experiment)
      args = (experiment.init_state, batch)
      rows.append({'model': name, 'method': method, 'level': level,
                   'peak_bytes': peak_bytes(step, *args)})
      calls[(method, level)] = (step, args)
      if level == 'parameter':
        calls[(method, 'aggregation')] = aggregation_only(
            method, fm, task_losses, batch, len(fm.tasks))
  step, args = single_loss_step(setup, fm, task_losses, batch)
  rows.append({'model': name, 'method': 'single loss (jax.grad of Σ L)',
               'level': '—', 'peak_bytes': peak_bytes(step, *args)})
  calls[('single', '—')] = (step, args)
  seconds = interleaved_medians(calls, repeats)
  for row in rows:
    key = ('single', '—') if row['level'] == '—' else (row['method'],
                                                        row['level'])
    row['seconds'] = seconds[key]
    if row['level'] == 'parameter':
      row['aggregation_seconds'] = seconds[(row['method'], 'aggregation')]
    print(json.dumps(row), flush=True)
  return rows


def table(rows: list[dict]) -> list[str]:
  lines = []
  for name in dict.fromkeys(r['model'] for r in rows):
    group = [r for r in rows if r['model'] == name]
    setup = SETUPS[name]
    base = next((r for r in group if r['method'] == 'linear_scalarization'
                 and r['level'] == 'parameter'), None)
    floor = next(r for r in group if r['level'] == '—')
    lines += [
        f'### {setup["model"]}, batch {setup["batch_size"]}',
        '',
        '| method | level | ms/step | × LS (θ) | × single loss | '
        'aggregation ms | aggregation share | peak MiB |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in group:
      agg = r.get('aggregation_seconds')
      share = f'{agg / r["seconds"]:.1%}' if agg is not None else ''
      vs_ls = ('–' if base is None
               else f'{r["seconds"] / base["seconds"]:.2f}')
      lines.append(
          f'| {r["method"]} | {r["level"]} | {r["seconds"] * 1e3:.1f} | '
          f'{vs_ls} | '
          f'{r["seconds"] / floor["seconds"]:.2f} | '
          f'{"" if agg is None else f"{agg * 1e3:.2f}"} | {share} | '
          f'{r["peak_bytes"] / 2**20:.0f} |')
    lines.append('')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='lenet,resnet18')
  parser.add_argument('--methods', default=','.join(DEFAULT_METHODS))
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--levels', default='parameter,representation',
                      help='e.g. representation: skip the T backward passes '
                      '(ResNet-18 at T = 40 on a CPU)')
  parser.add_argument('--out', type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  methods = args.methods.split(',')
  if 'linear_scalarization' not in methods:
    methods.insert(0, 'linear_scalarization')

  rows = []
  for name in args.models.split(','):
    rows += measure(name, SETUPS[name], methods, args.repeats,
                    levels=tuple(args.levels.split(',')))
  header = [
      '# Step time and peak memory on the papers\' models',
      '',
      f'{jax.default_backend()} ({jax.device_count()} device), jax '
      f'{jax.__version__}; median of {args.repeats} jitted steps on a fixed '
      'random batch, all steps timed round-robin (one round times each '
      'once) so that load changes on this shared machine hit all alike. "× LS (θ)": to linear scalarization\'s parameter-level '
      'step in the same run; "× single loss": to `jax.grad` of the summed '
      'losses + Adam. Aggregation: the method\'s `update` alone on the '
      'step\'s stacked gradients, and its share of the parameter-level step. '
      'Peak: XLA\'s compiled memory analysis of the step (arguments + '
      'outputs + temporaries).',
      '',
  ]
  text = '\n'.join(header + table(rows))
  print(text)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + '\n')
    args.out.with_suffix('.json').write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
  main()
