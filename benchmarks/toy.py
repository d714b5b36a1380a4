"""The synthetic two-task problem of the papers (Fig. 1 of 001, Fig. 2 of 000).

Every registered method starts from the papers' five points and runs 35 000
Adam steps (lr 1e-3) on the two-task objective below; the whole run of one
method is one jitted ``lax.scan``, ``vmap``-ed over the starts. Methods that
take task preferences also run with weights ``(s, 1 - s)`` for
``s ∈ {0.2, 0.5, 0.8}``.

The objective, in the form used by the public code of the works the papers
cite (the supplement typesets it with two sign slips)::

    f1 = log(max(|0.5(-x1-7) - tanh(-x2)|, 5e-6)) + 6
    f2 = log(max(|0.5(-x1+3) + tanh(-x2) + 2|, 5e-6)) + 6
    c1 = max(tanh(x2/2), 0)          c2 = max(tanh(-x2/2), 0)
    q1 = ((-x1+7)^2 + 0.1(-x2-8)^2)/10 - 20
    q2 = ((-x1-7)^2 + 0.1(-x2-8)^2)/10 - 20
    L1 = f1 c1 + q1 c2               L2 = f2 c1 + q2 c2

Its Pareto set is the curve x2 ≈ -8.355, x1 ∈ [-7, 7]; the minimiser of
``s L1 + (1 - s) L2`` moves along it from x1 ≈ -7 (s → 0) to 7 (s → 1).

Outputs (``--out-dir``, default ``benchmarks/results``): ``toy.png`` (one
panel per method: contours of the weighted objective, the Pareto set, one
trajectory per start), ``toy_preferences.png`` (the preference sweep), and
``toy.md`` (final points, distances to the weighted optimum and to the Pareto
set, steps to get within 0.1).

Run:  python benchmarks/toy.py [--steps 35000] [--methods a,b] [--out-dir D]
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl

STARTS = np.array([[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5],
                   [9.0, -1.0]], np.float32)
PREFERENCE_SHARES = (0.2, 0.5, 0.8)
NUM_TASKS = 2
NEAR = 0.1           # "within 0.1" of the weighted optimum
ON_FRONT = 0.05      # distance to the Pareto set that counts as reaching it


def task_losses(x: jax.Array) -> jax.Array:
  """``[L1, L2]`` at the point ``x = (x1, x2)``."""
  x1, x2 = x[0], x[1]
  f1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), 5e-6)) + 6
  f2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2),
                           5e-6)) + 6
  c1 = jnp.maximum(jnp.tanh(x2 / 2), 0)
  c2 = jnp.maximum(jnp.tanh(-x2 / 2), 0)
  q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  return jnp.stack([f1 * c1 + q1 * c2, f2 * c1 + q2 * c2])


@jax.jit
def weighted_optima(shares: jax.Array) -> jax.Array:
  """Minimisers ``[S, 2]`` of ``s L1 + (1 - s) L2``, one per share ``s``.

  A grid search over [-10, 10]² finds the basin, 2 000 gradient steps polish
  the point (the objective is smooth near its minimisers).
  """
  axis = jnp.linspace(-10, 10, 801)
  grid = jnp.stack(jnp.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  grid_losses = jax.vmap(task_losses)(grid)                     # [N, 2]

  def one(share):
    weights = jnp.stack([share, 1 - share])
    objective = lambda x: weights @ task_losses(x)
    x = grid[jnp.argmin(grid_losses @ weights)]
    return jax.lax.fori_loop(
        0, 2000, lambda _, x: x - 0.05 * jax.grad(objective)(x), x)

  return jax.vmap(one)(shares)


def pareto_set(num: int = 199) -> np.ndarray:
  """Points of the Pareto set: the weighted optima for ``s`` in (0, 1)."""
  return np.asarray(weighted_optima(jnp.linspace(0.001, 0.999, num)))


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
  """Euclidean distance from each point ``[..., 2]`` to a polyline ``[M, 2]``."""
  a, b = line[:-1], line[1:]
  ab = b - a
  ap = points[..., None, :] - a
  t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12),
              0, 1)
  closest = a + t[..., None] * ab
  return np.min(np.linalg.norm(points[..., None, :] - closest, axis=-1), -1)


def run(aggregator, starts: np.ndarray, *, steps: int, lr: float,
        record_every: int) -> tuple[np.ndarray, np.ndarray]:
  """Trains from every start at once; returns the full and thinned paths.

  Returns:
    ``(path [S, steps, 2], thinned [S, steps // record_every, 2])``.
  """
  tx = optax.chain(aggregator, optax.adam(lr))

  def train_one(x0):
    def body(carry, _):
      x, opt_state = carry
      losses, grads = mtl.value_and_jacobian(task_losses)(x)
      updates, opt_state = tx.update(grads, opt_state, x, losses=losses)
      x = optax.apply_updates(x, updates)
      return (x, opt_state), x
    _, path = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return path

  path = np.asarray(jax.jit(jax.vmap(train_one))(jnp.asarray(starts)))
  return path, path[:, record_every - 1::record_every]


def _first_step_within(distances: np.ndarray, radius: float) -> list:
  """First step (1-based) at which each row gets within ``radius``, or None."""
  hits = distances < radius
  return [int(np.argmax(h)) + 1 if h.any() else None for h in hits]


def evaluate(name: str, share: float, path: np.ndarray, front: np.ndarray,
             optimum: np.ndarray) -> list[dict]:
  to_optimum = np.linalg.norm(path - optimum, axis=-1)   # [S, steps]
  to_front = _distance_to_polyline(path[:, -1], front)
  within = _first_step_within(to_optimum, NEAR)
  rows = []
  for i, start in enumerate(STARTS):
    final = path[i, -1]
    rows.append({
        'method': name, 'share': share, 'start': start.tolist(),
        'final': final.tolist(),
        'final_losses': np.asarray(task_losses(jnp.asarray(final))).tolist(),
        'distance_to_optimum': float(to_optimum[i, -1]),
        'distance_to_front': float(to_front[i]),
        'reached_front': bool(to_front[i] < ON_FRONT),
        'steps_within_0.1': within[i],
    })
  return rows


CONTOUR_EXTENT = 10.0


@functools.lru_cache(maxsize=None)
def _weighted_landscape(share: float, num: int = 200) -> np.ndarray:
  axis = np.linspace(-CONTOUR_EXTENT, CONTOUR_EXTENT, num)
  grid = np.stack(np.meshgrid(axis, axis, indexing='xy'), -1).reshape(-1, 2)
  losses = np.asarray(jax.jit(jax.vmap(task_losses))(jnp.asarray(grid)))
  return (share * losses[:, 0] + (1 - share) * losses[:, 1]).reshape(num, num)


def _contours(ax, share, front):
  value = _weighted_landscape(share)
  axis = np.linspace(-CONTOUR_EXTENT, CONTOUR_EXTENT, value.shape[0])
  ax.contourf(axis, axis, value, levels=30, cmap='Greys', alpha=0.6)
  ax.plot(front[:, 0], front[:, 1], color='tab:green', lw=3, alpha=0.8)
  ax.set_xlim(-CONTOUR_EXTENT, CONTOUR_EXTENT)
  ax.set_ylim(-CONTOUR_EXTENT, CONTOUR_EXTENT)
  ax.set_xticks([])
  ax.set_yticks([])


def plot(panels: list[tuple[str, float, np.ndarray]], front: np.ndarray,
         optima: dict[float, np.ndarray], path: pathlib.Path,
         columns: int) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows = math.ceil(len(panels) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows),
                           squeeze=False)
  colours = plt.get_cmap('tab10')
  for ax, (title, share, thinned) in zip(axes.flat, panels):
    _contours(ax, share, front)
    for i, trajectory in enumerate(thinned):
      ax.plot(trajectory[:, 0], trajectory[:, 1], color=colours(i), lw=1.2)
      ax.plot(*STARTS[i], 'o', color=colours(i), ms=4)
      ax.plot(*trajectory[-1], 'x', color='k', ms=5)
    ax.plot(*optima[share], '*', color='gold', ms=10, mec='k')
    ax.set_title(title, fontsize=9)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _table(rows: list[dict]) -> list[str]:
  lines = ['| method | s | reached front | final points (x1, x2) | '
           'mean dist. to optimum | steps to within 0.1 |',
           '|---|---|---|---|---|---|']
  groups: dict[tuple[str, float], list[dict]] = {}
  for row in rows:
    groups.setdefault((row['method'], row['share']), []).append(row)
  for (name, share), group in groups.items():
    reached = sum(r['reached_front'] for r in group)
    finals = ' '.join(f'({r["final"][0]:.2f}, {r["final"][1]:.2f})'
                      for r in group)
    mean_distance = np.mean([r['distance_to_optimum'] for r in group])
    steps = ', '.join('—' if r['steps_within_0.1'] is None
                      else str(r['steps_within_0.1']) for r in group)
    lines.append(f'| {name} | {share:g} | {reached}/{len(group)} | {finals} | '
                 f'{mean_distance:.2f} | {steps} |')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=35_000)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--methods', default=None,
                      help='comma-separated names (default: all registered)')
  parser.add_argument('--out-dir', type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / 'results')
  args = parser.parse_args(argv)
  names = args.methods.split(',') if args.methods else list(mtl.available())
  record_every = max(args.steps // 700, 1)

  begin = time.perf_counter()
  front = pareto_set()
  optima = dict(zip(PREFERENCE_SHARES, np.asarray(
      weighted_optima(jnp.array(PREFERENCE_SHARES)))))
  runs = [(name, 0.5, None) for name in names]
  runs += [(name, s, (s, 1 - s)) for name in names
           if name in mtl.registry.TAKES_PREFERENCES
           for s in PREFERENCE_SHARES if s != 0.5]

  rows, panels, preference_panels = [], [], []
  try:
    from tqdm import tqdm
    progress = tqdm(runs, desc='toy', unit='run')
  except ImportError:
    progress = runs
  for name, share, preferences in progress:
    aggregator = mtl.registry.for_tasks(
        name, num_tasks=NUM_TASKS,
        preferences=None if preferences is None else jnp.array(preferences))
    path, thinned = run(aggregator, STARTS, steps=args.steps, lr=args.lr,
                        record_every=record_every)
    rows += evaluate(name, share, path, front, optima[share])
    if preferences is None:
      panels.append((name, share, thinned))
    if name in mtl.registry.TAKES_PREFERENCES:
      preference_panels.append((f'{name}, s={share:g}', share, thinned))
  seconds = time.perf_counter() - begin

  args.out_dir.mkdir(parents=True, exist_ok=True)
  plot(panels, front, optima, args.out_dir / 'toy.png', columns=6)
  preference_panels.sort(key=lambda p: p[0])
  if preference_panels:
    plot(preference_panels, front, optima,
         args.out_dir / 'toy_preferences.png', columns=6)
  header = [
      '# Synthetic two-task problem (Fig. 1 of 001 / Fig. 2 of 000)',
      '',
      f'{len(names)} methods, {len(runs)} runs × {len(STARTS)} starts, '
      f'Adam lr {args.lr:g}, {args.steps} steps, on {jax.default_backend()}: '
      f'{seconds:.0f} s in all (compile included).',
      '',
      'Without preferences a method runs with s = 0.5 (equal weights), and '
      'its distance is to the minimiser of (L1 + L2)/2. "Reached front": the '
      f'final point is within {ON_FRONT} of the Pareto set. Steps: the first '
      f'step within {NEAR} of the weighted optimum, per start (— = never). '
      'Starts: ' + ', '.join(f'({a:g}, {b:g})' for a, b in STARTS) + '.',
      '',
      'Weighted optima: ' + ', '.join(
          f's={s:g}: ({o[0]:.2f}, {o[1]:.3f})' for s, o in optima.items()) +
      '.',
      '',
  ]
  table = '\n'.join(header + _table(rows))
  (args.out_dir / 'toy.md').write_text(table + '\n')
  print(table)


if __name__ == '__main__':
  main()
