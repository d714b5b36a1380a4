"""MultiMNIST benchmark: LeNet, two digits, every method at its level(s).

The protocol of Sener & Koltun (2018, App. C.1) and Senushkin et al. (2023,
§5.2): LeNet (``lenet_multimnist``), batch 256, SGD with momentum 0.9, the
learning rate halved every 30 epochs, 100 epochs
(``mtl_optax.configs.multi_mnist``).
For each method this reports the left/right test accuracy and the statistics
over training of the dominance rate D (Def. 1 of Senushkin et al.: the
condition number of the per-task gradients over the shared parameters, or
over the shared representation at the representation level), next to the
paper's Table 2.

Examples::

    # prepare MultiMNIST once from the four MNIST IDX files (or, where there
    # is internet, download them: --download instead of --mnist-dir)
    python -m mtl_optax.data.multi_mnist --mnist-dir MNIST_DIR --data-dir DATA
    # CPU-sized run of the default method list (what benchmarks/results holds)
    python benchmarks/multi_mnist.py --data-dir DATA --epochs 2
    # the papers' 100-epoch protocol with the learning-rate grid (GPU)
    python benchmarks/multi_mnist.py --data-dir DATA --epochs 100 --lr-grid

Methods are ``name`` (parameter level) or ``name:z`` (representation level,
the "-UB" variants), names from ``mtl_optax.available()``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from mtl_optax.configs import multi_mnist as mnist_config

RESULTS = pathlib.Path(__file__).resolve().parent / 'results'
DEFAULT_METHODS = ('linear_scalarization', 'aligned_mtl', 'aligned_mtl:z',
                   'mgda', 'mgda:z', 'pcgrad', 'mamg', 'imtl_g', 'cagrad',
                   'nash_mtl', 'uncertainty_weighting', 'gradnorm')
LEVELS = {'': 'parameter', 'z': 'representation'}

# Table 2 of Senushkin et al. (2023): D mean, std, max, min; left, right [%].
PAPER = {
    'mgda': (1.63, 1.45, 38.03, 1.004, 96.83, 95.06),
    'mgda:z': (1.41, 0.36, 4.00, 1.004, 96.76, 94.96),
    'pcgrad': (1.45, 0.37, 3.76, 1.005, 97.04, 95.29),
    'gradnorm': (3.12, 0.83, 8.91, 1.704, 96.51, 95.31),
    'uncertainty_weighting': (1.47, 0.44, 5.17, 1.007, 97.03, 95.06),
    'aligned_mtl': (1.00, 0.0, 1.00, 1.000, 97.10, 95.45),
    'aligned_mtl:z': (1.36, 0.29, 3.17, 1.005, 96.98, 95.45),
}
PAPER_NAMES = {'mgda:z': 'MGDA-UB', 'aligned_mtl': 'θ-aligned',
               'aligned_mtl:z': 'Z-aligned', 'mgda': 'MGDA',
               'pcgrad': 'PCGrad', 'gradnorm': 'GradNorm',
               'uncertainty_weighting': 'Uncertainty'}


def parse_method(spec: str) -> tuple[str, str]:
  """``'name'`` or ``'name:z'`` -> ``(name, level)``."""
  name, _, level = spec.partition(':')
  if level not in LEVELS:
    raise SystemExit(f'{spec!r}: the level suffix is ":z" or nothing.')
  return name, LEVELS[level]


def dominance_stats(dominance: np.ndarray) -> dict[str, float]:
  """Mean, std, max and min of the finite per-step dominance rates."""
  d = dominance[np.isfinite(dominance)]
  if d.size == 0:
    return dict.fromkeys(('mean', 'std', 'max', 'min'), float('nan'))
  return {'mean': float(d.mean()), 'std': float(d.std()),
          'max': float(d.max()), 'min': float(d.min())}


def run_one(spec: str, *, data_dir: str, epochs: float, learning_rate: float,
            seed: int, progress: bool) -> dict:
  """Trains one method; returns its accuracies, D statistics and timing."""
  from mtl_optax import training
  name, level = parse_method(spec)
  config = mnist_config.get_config(
      method=name, level=level, data_dir=data_dir, num_epochs=epochs,
      learning_rate=learning_rate, seed=seed, eval_every_epochs=epochs)
  start = time.perf_counter()
  result = training.train(config, progress=progress)
  wall = time.perf_counter() - start
  metrics = result.evaluations[-1]['metrics']
  history = result.history
  return {
      'method': spec, 'level': level, 'epochs': epochs,
      'learning_rate': learning_rate, 'seed': seed,
      'left': 100 * metrics['left']['accuracy'],
      'right': 100 * metrics['right']['accuracy'],
      'dominance': dominance_stats(np.asarray(history['dominance_rate'])),
      'mean_weights': np.nanmean(history['weights'], axis=0).tolist(),
      'skipped_steps': int(np.sum(history['skipped'])),
      'final_losses': history['losses'][-50:].mean(0).tolist(),
      'seconds_per_step': result.seconds_per_step,
      'wall_seconds': wall,
      'steps': int(result.state.step),
  }


def markdown(results: list[dict], *, epochs: float, header: str) -> str:
  """The results table next to the paper's Table 2."""
  lines = [header, '',
           f'Ours: {epochs:g} epoch(s) (paper: 100), LeNet, batch 256, SGD '
           'momentum 0.9. D = dominance rate of the per-task gradients the '
           'method receives (mean ± std, max, min over all steps).', '',
           '| method | level | left [%] | right [%] | D mean ± std | D max '
           '| D min | paper left / right | paper D mean ± std (max, min) '
           '| s/step |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in results:
    d = r['dominance']
    paper = PAPER.get(r['method'])
    paper_acc = f'{paper[4]:.2f} / {paper[5]:.2f}' if paper else '–'
    paper_d = (f'{paper[0]:.2f} ± {paper[1]:.2f} ({paper[2]:.2f}, '
               f'{paper[3]:.3f})' if paper else '–')
    name = r['method'].partition(':')[0]
    if r['method'] in PAPER_NAMES:
      name += f' ({PAPER_NAMES[r["method"]]})'
    lines.append(
        f'| {name} | {"z" if r["level"] == "representation" else "θ"} '
        f'| {r["left"]:.2f} | {r["right"]:.2f} '
        f'| {d["mean"]:.2f} ± {d["std"]:.2f} | {d["max"]:.2f} '
        f'| {d["min"]:.3f} | {paper_acc} | {paper_d} '
        f'| {r["seconds_per_step"]:.3f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data-dir', required=True,
                      help='tfds data directory holding (or to hold) '
                      'multi_mnist')
  parser.add_argument('--methods', default=','.join(DEFAULT_METHODS),
                      help='comma-separated; name or name:z')
  parser.add_argument('--epochs', type=float, default=2.0)
  parser.add_argument('--learning-rate', type=float, default=1e-2)
  parser.add_argument('--lr-grid', action='store_true',
                      help="the papers' grid, best test mean per method")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=str(RESULTS / 'multi_mnist'),
                      help='writes OUT.json and OUT.md')
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)

  methods = [m.strip() for m in args.methods.split(',') if m.strip()]
  for spec in methods:
    parse_method(spec)
  # Before any training: an unprepared --data-dir fails here, with the
  # command that prepares it.
  from mtl_optax import data
  data.num_examples('multi_mnist', 'test', data_dir=args.data_dir)
  rates = (mnist_config.LEARNING_RATE_GRID if args.lr_grid
           else (args.learning_rate,))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  results, all_runs = [], []
  for spec in methods:
    runs = []
    for lr in rates:
      run = run_one(spec, data_dir=args.data_dir, epochs=args.epochs,
                    learning_rate=lr, seed=args.seed,
                    progress=not args.no_progress)
      print(json.dumps({k: run[k] for k in ('method', 'learning_rate', 'left',
                                           'right', 'dominance',
                                           'seconds_per_step')}), flush=True)
      runs.append(run)
    all_runs += runs
    results.append(max(runs, key=lambda r: r['left'] + r['right']))
    # Written after every method, so that a long run keeps what it has.
    out.with_suffix('.json').write_text(json.dumps(
        {'epochs': args.epochs, 'best': results, 'runs': all_runs}, indent=1))
    out.with_suffix('.md').write_text(markdown(
        results, epochs=args.epochs,
        header='# MultiMNIST (LeNet): accuracy and dominance rate'))
  print(out.with_suffix('.md').read_text())


if __name__ == '__main__':
  main()
