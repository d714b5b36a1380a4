"""The synthetic two-task problem of the papers (Fig. 1 of 001, Fig. 2 of 000).

Every registered method (and the settings in ``VARIANTS``, e.g. MAMG's
Algorithm 1 next to its default one-sided rule) starts from the papers' five
points and runs 35 000 Adam steps (lr 1e-3) on the two-task objective below;
the whole run of one method is one jitted ``lax.scan``, ``vmap``-ed over the
starts. Methods that
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

Its Pareto set is the curve x2 ≈ -8.355 ... -8.435, x1 ∈ [-7, 7]; the
minimiser of ``s L1 + (1 - s) L2`` moves along it from x1 = -7 (s = 0) to 7
(s = 1). Both are computed in closed form (``weighted_optima``), not by
numerical minimisation, so that the "reached front" criterion does not depend
on a solver's tolerance or the platform.

Outputs (``--out-dir``, default ``runs/toy``; the committed results are
``--out-dir benchmarks/results``): ``toy.png`` (one panel per method:
contours of the weighted objective, the Pareto set, one trajectory per
start), ``toy_preferences.png`` (the preference sweep), and ``toy.md`` (final
points, distances to the weighted optimum and to the Pareto set, steps to get
within 0.1).

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
# The Pareto set runs over x1 ∈ [-7, 7]. A final point has reached it when
# it is within 1% of the set's length (0.14) of it. Along the set x2 is a
# flat direction (curvature ≈ 0.02), so points that reached it after 35 000
# Adam steps are still up to ~0.04 off in x2, and stalled ones end ≥ 0.4
# away: the tolerance sits far from both, and a change of a final point in
# its second decimal cannot flip the count.
PARETO_SET_LENGTH = 14.0
ON_FRONT = 0.01 * PARETO_SET_LENGTH
# Settings of a registered method run as methods of their own (after the
# registered ones): name -> (registered name, factory keywords). ``mamg`` is
# the paper's one-sided rule (its default); Algorithm 1 read literally is the
# mean gradient for two tasks.
VARIANTS = {
    'mamg:algorithm1': ('mamg', {'mode': 'algorithm1'}),
}


def build(name: str, preferences=None):
  """The aggregator called ``name`` (registered, or one of ``VARIANTS``)
  for the two tasks."""
  base, kwargs = VARIANTS.get(name, (name, {}))
  return mtl.registry.for_tasks(base, num_tasks=NUM_TASKS,
                                preferences=preferences, **kwargs)


def takes_preferences(name: str) -> bool:
  return VARIANTS.get(name, (name,))[0] in mtl.registry.TAKES_PREFERENCES


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


def _optimal_x2(shares: np.ndarray) -> np.ndarray:
  """x2 of the minimiser of ``s L1 + (1 - s) L2``, for each share ``s``.

  Below x2 = 0, ``c1 = 0`` and ``Li = qi c2``; with x1 at its optimum
  ``7 (2s - 1)``, ``s q1 + (1 - s) q2 = g(x2) = 19.6 s (1 - s) - 20 +
  0.01 (x2 + 8)²`` (negative), and the minimiser of ``c2(x2) g(x2)`` is the
  one root in (-10, -8) of its derivative, found here by bisection in
  float64 (60 halvings: exact to rounding).
  """
  shares = np.asarray(shares, np.float64)
  g0 = 19.6 * shares * (1 - shares) - 20

  def slope(x2):    # d/dx2 of tanh(-x2/2) (g0 + 0.01 (x2 + 8)²)
    c2 = np.tanh(-x2 / 2)
    return (-0.5 * (1 - c2 ** 2) * (g0 + 0.01 * (x2 + 8) ** 2)
            + c2 * 0.02 * (x2 + 8))

  low, high = np.full_like(g0, -10.0), np.full_like(g0, -8.0)
  for _ in range(60):
    mid = (low + high) / 2
    falling = slope(mid) < 0
    low, high = np.where(falling, mid, low), np.where(falling, high, mid)
  return (low + high) / 2


def weighted_optima(shares) -> np.ndarray:
  """Minimisers ``[S, 2]`` (float64) of ``s L1 + (1 - s) L2``, one per share.

  In closed form: the minimum lies below x2 = 0 (there the weighted loss
  gets to -15 ... -20; above, it is no lower than -6.2), where it is
  ``c2(x2) (s q1 + (1 - s) q2)``; ``c2 > 0`` does not depend on x1, so x1 =
  ``7 (2s - 1)`` minimises the quadratic, and x2 is a 1-D root
  (``_optimal_x2``). ``tests/test_toy.py`` checks that the result is
  stationary and below every point of a grid over [-10, 10]².

  Args:
    shares: the weights ``s`` of L1, in [0, 1].

  Returns:
    ``[[x1, x2], ...]``.
  """
  shares = np.atleast_1d(np.asarray(shares, np.float64))
  return np.stack([7 * (2 * shares - 1), _optimal_x2(shares)], -1)


def pareto_set(num: int = 401) -> np.ndarray:
  """Points ``[num, 2]`` of the Pareto set: the weighted optima for ``s``
  from 0 to 1 (its ends, x1 = ±7, included)."""
  return weighted_optima(np.linspace(0.0, 1.0, num))


def _distance_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
  """Euclidean distance from each point ``[..., 2]`` to a polyline ``[M, 2]``."""
  a, b = line[:-1], line[1:]
  ab = b - a
  ap = points[..., None, :] - a
  t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12),
              0, 1)
  closest = a + t[..., None] * ab
  return np.min(np.linalg.norm(points[..., None, :] - closest, axis=-1), -1)


def distance_to_front(points: np.ndarray,
                      front: np.ndarray | None = None) -> np.ndarray:
  """Distance (float64) from each point ``[..., 2]`` to the Pareto set."""
  front = pareto_set() if front is None else front
  return _distance_to_polyline(np.asarray(points, np.float64),
                               np.asarray(front, np.float64))


def reached_front(points: np.ndarray,
                  front: np.ndarray | None = None) -> np.ndarray:
  """Whether each final point ``[..., 2]`` is within ``ON_FRONT`` of the
  Pareto set (see ``ON_FRONT``)."""
  return distance_to_front(points, front) <= ON_FRONT


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
      # The objective is deterministic: an independent batch's gradients
      # (MoDo's and SDMGrad's second_grads) are these; others ignore them.
      updates, opt_state = tx.update(grads, opt_state, x, losses=losses,
                                     second_grads=grads)
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
  to_front = distance_to_front(path[:, -1], front)
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
        'reached_front': bool(to_front[i] <= ON_FRONT),
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


# One colour per start (tab10 without its green, the Pareto set's colour).
START_COLOURS = ('tab:blue', 'tab:orange', 'tab:red', 'tab:purple',
                 'tab:brown')
PARETO_COLOUR = 'tab:green'
TICKS = (-10, -5, 0, 5, 10)


def _contours(ax, share, front):
  value = _weighted_landscape(share)
  axis = np.linspace(-CONTOUR_EXTENT, CONTOUR_EXTENT, value.shape[0])
  ax.contourf(axis, axis, value, levels=30, cmap='Greys', alpha=0.6)
  ax.plot(front[:, 0], front[:, 1], color=PARETO_COLOUR, lw=3, alpha=0.8)
  ax.set_xlim(-CONTOUR_EXTENT, CONTOUR_EXTENT)
  ax.set_ylim(-CONTOUR_EXTENT, CONTOUR_EXTENT)
  ax.set_xticks(TICKS)
  ax.set_yticks(TICKS)
  ax.tick_params(labelsize=7, length=2, pad=1)


def _legend_entries():
  """Handles and labels of everything a panel draws."""
  from matplotlib.lines import Line2D
  from matplotlib.patches import Patch

  entries = [(Line2D([], [], color=colour, lw=1.2, marker='o', ms=4),
              f'start ({x1:g}, {x2:g}) and its trajectory')
             for colour, (x1, x2) in zip(START_COLOURS, STARTS)]
  entries += [
      (Line2D([], [], ls='', marker='x', color='k', ms=5), 'final point'),
      (Line2D([], [], ls='', marker='*', color='gold', mec='k', ms=10),
       'minimiser of s L1 + (1 - s) L2'),
      (Line2D([], [], color=PARETO_COLOUR, lw=3, alpha=0.8), 'Pareto set'),
      (Patch(facecolor='0.6', alpha=0.6),
       'contours of s L1 + (1 - s) L2\n(s = 0.5 unless the title says)'),
  ]
  return [h for h, _ in entries], [l for _, l in entries]


def plot(panels: list[tuple[str, float, np.ndarray]], front: np.ndarray,
         optima: dict[float, np.ndarray], path: pathlib.Path,
         columns: int) -> None:
  """One panel per run, axes x1 (horizontal) and x2, and one legend.

  Args:
    panels: ``(title, share, thinned paths [starts, points, 2])`` each.
    front: the Pareto set ``[M, 2]``.
    optima: share -> the weighted optimum ``[2]``.
    path: the PNG to write.
    columns: panels per row.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows = math.ceil(len(panels) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows),
                           squeeze=False)
  for k, (ax, (title, share, thinned)) in enumerate(zip(axes.flat, panels)):
    _contours(ax, share, front)
    for i, trajectory in enumerate(thinned):
      colour = START_COLOURS[i % len(START_COLOURS)]
      ax.plot(trajectory[:, 0], trajectory[:, 1], color=colour, lw=1.2)
      ax.plot(*STARTS[i], 'o', color=colour, ms=4)
      ax.plot(*trajectory[-1], 'x', color='k', ms=5)
    ax.plot(*optima[share], '*', color='gold', ms=10, mec='k')
    ax.set_title(title, fontsize=9)
    # Tick labels on the outer panels: the first column, and the panels
    # with no panel below.
    column = k % columns
    ax.tick_params(labelleft=column == 0,
                   labelbottom=k + columns >= len(panels))
    if column == 0:
      ax.set_ylabel('x2', fontsize=8, labelpad=1)
    if k + columns >= len(panels):
      ax.set_xlabel('x1', fontsize=8, labelpad=1)
  empty = list(axes.flat)[len(panels):]
  for ax in empty:
    ax.axis('off')
  handles, labels = _legend_entries()
  if empty:       # the legend fills the empty panels of the last row
    fig.tight_layout()
    boxes = [ax.get_position() for ax in empty]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    fig.legend(handles, labels, loc='center', fontsize=9, frameon=False,
               ncol=1 if len(empty) < 3 else 2,
               bbox_to_anchor=((x0 + x1) / 2, (y0 + y1) / 2))
  else:           # or a row below the panels
    fig.legend(handles, labels, loc='lower center', fontsize=9,
               frameon=False, ncol=3)
    fig.tight_layout(rect=(0, 1.3 / (2.6 * rows + 1.3), 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _margins(rows: list[dict]) -> str:
  """How far the distances to the Pareto set are from ``ON_FRONT``."""
  inside = [r['distance_to_front'] for r in rows if r['reached_front']]
  outside = [r['distance_to_front'] for r in rows if not r['reached_front']]
  parts = []
  if inside:
    parts.append(f'the final points that reached it are at most '
                 f'{max(inside):.3f} from it')
  if outside:
    parts.append(f'the others at least {min(outside):.2f}')
  return ', '.join(parts) or 'no final points'


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
                      help='comma-separated names (default: all registered, '
                      'then the VARIANTS)')
  parser.add_argument('--out-dir', type=pathlib.Path,
                      default=pathlib.Path('runs/toy'),
                      help='where the figures and the table go (default '
                      'runs/toy; the committed ones: benchmarks/results)')
  args = parser.parse_args(argv)
  names = (args.methods.split(',') if args.methods
           else list(mtl.available()) + list(VARIANTS))
  record_every = max(args.steps // 700, 1)

  begin = time.perf_counter()
  front = pareto_set()
  optima = dict(zip(PREFERENCE_SHARES, np.asarray(
      weighted_optima(jnp.array(PREFERENCE_SHARES)))))
  runs = [(name, 0.5, None) for name in names]
  runs += [(name, s, (s, 1 - s)) for name in names
           if takes_preferences(name)
           for s in PREFERENCE_SHARES if s != 0.5]

  rows, panels, preference_panels = [], [], []
  try:
    from tqdm import tqdm
    progress = tqdm(runs, desc='toy', unit='run')
  except ImportError:
    progress = runs
  for name, share, preferences in progress:
    aggregator = build(
        name, None if preferences is None else jnp.array(preferences))
    path, thinned = run(aggregator, STARTS, steps=args.steps, lr=args.lr,
                        record_every=record_every)
    rows += evaluate(name, share, path, front, optima[share])
    if preferences is None:
      panels.append((name, share, thinned))
    if takes_preferences(name):
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
      f'final point is within {ON_FRONT:.2f} (1% of its length, '
      f'{PARETO_SET_LENGTH:g}) of the Pareto set, both computed in closed '
      f'form; {_margins(rows)}. Steps: the first step within {NEAR} of the '
      'weighted optimum, per start (— = never). '
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
