"""Time of the weighting solves alone: the ``T×T`` problems on the Gramian.

Every Gramian method spends its step in two places: the Gramian and the
weighted sum (memory-bound passes over the gradients, ``benchmarks/speed.py``)
and the *weighting*, a small problem on the ``T×T`` Gramian. This script
times the weighting functions ``mtl_optax.weightings.*`` on their own,
jitted, at ``T ∈ {10, 40, 64}`` on three kinds of Gramian (normalised to a
largest diagonal entry of 1, as the aggregators pass it):

- ``random``: Gaussian gradients, ``P = 25 T`` (linearly independent);
- ``conflict``: Gaussian gradients in ``P = 3T/4`` dimensions (0 is in the
  hull: Pareto-stationary, many active constraints);
- ``aligned``: a shared component plus noise (few conflicts).

The functions are timed round-robin (every round times each once; the
machine's load hits all alike) and the median over rounds is reported.

Run it on the code to measure; ``--json`` writes the numbers, ``--before
F.json`` adds a column from an earlier run (e.g. of an older checkout,
``PYTHONPATH=<old checkout> python benchmarks/solve_time.py --json old.json``),
and ``--out F.md`` writes the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtl_optax import weightings as W

METHODS = {
    'mgda': lambda k: W.mgda(k),
    'upgrad': lambda k: W.upgrad(k),
    'dualproj': lambda k: W.dualproj(k),
    'cagrad': lambda k: W.cagrad(k, 0.4),
    'nash_mtl': lambda k: W.nash_mtl(k),
    'fairgrad': lambda k: W.fairgrad(k),
    'imtl_g': lambda k: W.imtl_g(k),
    'aligned': lambda k: W.aligned(k),
    'conflict_free': lambda k: W.conflict_free(k),
}
KINDS = ('random', 'conflict', 'aligned')


def gramian(kind: str, t: int, rng: np.random.Generator) -> np.ndarray:
  if kind == 'random':
    g = rng.standard_normal((t, 25 * t))
  elif kind == 'conflict':
    g = rng.standard_normal((t, max(1, 3 * t // 4)))
  else:
    p = 25 * t
    g = rng.standard_normal(p) + 0.5 * rng.standard_normal((t, p))
  k = g @ g.T
  return k / np.max(np.diag(k))


def measure(tasks, rounds: int, seed: int) -> dict[str, float]:
  rng = np.random.default_rng(seed)
  calls = {}
  for t in tasks:
    for kind in KINDS:
      k = jnp.asarray(gramian(kind, t, rng), jnp.float32)
      for name, fn in METHODS.items():
        compiled = jax.jit(fn).lower(k).compile()
        jax.block_until_ready(compiled(k))
        calls[f'{name}|{kind}|{t}'] = (compiled, k)
  times = {key: [] for key in calls}
  for _ in range(rounds):
    for key, (compiled, k) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(k))
      times[key].append(time.perf_counter() - start)
  return {key: float(np.median(v)) for key, v in times.items()}


def table(now: dict[str, float], before: dict[str, float] | None,
          tasks) -> str:
  head = ['method']
  for t in tasks:
    for kind in KINDS:
      head.append(f'T={t} {kind}')
  lines = ['| ' + ' | '.join(head) + ' |',
           '|---|' + '---:|' * (len(head) - 1)]
  for name in METHODS:
    row = [name]
    for t in tasks:
      for kind in KINDS:
        key = f'{name}|{kind}|{t}'
        cell = f'{now[key] * 1e3:.3f}'
        if before and key in before:
          cell = f'{before[key] * 1e3:.3f} → {cell}'
        row.append(cell)
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', type=int, nargs='+', default=[10, 40, 64])
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='write the medians (seconds) here')
  parser.add_argument('--before', help='a --json file of an earlier run')
  parser.add_argument('--out', help='write the Markdown table here')
  parser.add_argument('--quick', action='store_true',
                      help='T = 10 only, 3 rounds (a smoke test)')
  args = parser.parse_args(argv)
  if args.quick:
    args.tasks, args.rounds = [10], 3
  load = os.getloadavg()
  now = measure(args.tasks, args.rounds, args.seed)
  before = None
  if args.before:
    with open(args.before) as f:
      before = json.load(f)
  text = '\n'.join([
      '## Weighting solve time (ms, median, float32, jitted)',
      '',
      f'- {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} cores; jax {jax.__version__}; load average at start '
      f'{load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; '
      f'{args.rounds} interleaved rounds',
      '- `a → b`: before → after, when an earlier run is given',
      '',
      table(now, before, args.tasks),
      '',
  ])
  print(text)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(now, f, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  sys.exit(main())
