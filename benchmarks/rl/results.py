"""MT10 results: the table, JSON and figure from the runs' logs.

``render(runs, out)`` reads ``RUNS/METHOD/seedS/log.jsonl`` and writes
``OUT.md``, ``OUT.json`` and ``OUT.png``: per method the evaluation curve
(mean success rate over the seeds, with its standard error), the papers'
summary number on it (the highest seed-mean success over the run, CAGrad
App. B.3 following CARE), the last evaluation, per-task success, the
measured throughput and what the full protocol (2M steps × 10 seeds) costs
at that speed; the papers' MT10 numbers beside them.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics

import numpy as np

FULL_STEPS = 2_000_000
FULL_SEEDS = 10

# MT10 success rate, mean ± standard error over 10 seeds, 2M steps, the
# highest of the seed-mean curve over training. The rows both tables share
# are CAGrad's numbers (Aligned-MTL and Nash-MTL copy them).
PAPERS = {
    'cagrad': {
        'source': 'Liu et al. 2021 (CAGrad), Table 3',
        'rows': {
            'Multi-task SAC': (0.49, 0.073),
            'Multi-task SAC + task encoder': (0.54, 0.047),
            'Multi-headed SAC': (0.61, 0.036),
            'PCGrad': (0.72, 0.022),
            'Soft Modularization': (0.73, 0.043),
            'CAGrad': (0.83, 0.045),
            'CAGrad-Fast': (0.82, 0.039),
            'CARE': (0.84, 0.051),
            'One SAC agent per task (upper bound)': (0.90, 0.032),
        },
    },
    'aligned_mtl': {
        'source': 'Senushkin et al. 2023 (Aligned-MTL), Table 5',
        'rows': {
            'STL SAC': (0.90, 0.032),
            'MTL SAC': (0.49, 0.073),
            'MTL SAC + TE': (0.54, 0.047),
            'MH SAC': (0.61, 0.036),
            'SM': (0.73, 0.043),
            'CARE': (0.84, 0.051),
            'PCGrad': (0.72, 0.022),
            'CAGrad': (0.83, 0.045),
            'Nash-MTL': (0.91, 0.031),
            'Aligned-MTL': (0.97, 0.045),
        },
    },
}
# Our method -> the papers' row (linear scalarization, the plain sum of the
# task losses, is multi-task SAC with a one-hot task id).
PAPER_ROW = {
    'linear_scalarization': ('Multi-task SAC', 'MTL SAC'),
    'pcgrad': ('PCGrad', 'PCGrad'),
    'cagrad': ('CAGrad', 'CAGrad'),
    'nash_mtl': (None, 'Nash-MTL'),
    'aligned_mtl': (None, 'Aligned-MTL'),
}


def read_run(path: pathlib.Path) -> dict | None:
  """A run's config, evaluations and throughput from its ``log.jsonl``."""
  config, evals, rates, last_step = None, [], [], 0
  tasks = None
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if 'config' in record:
      config, tasks = record['config'], record.get('tasks')
      continue
    last_step = max(last_step, int(record.get('step', 0)))
    if 'eval' in record:
      evals.append((int(record['step']), record['eval']))
    # Throughput: the episodes with one update per step (not the random
    # warm-up, nor the episode of the warm-up's burst of updates).
    if ('steps_per_s' in record and config is not None
        and record.get('updates') == config['episode_length']):
      rates.append(float(record['steps_per_s']))
  if config is None or not evals:
    return None
  done = (path.parent / 'result.json').exists()
  return {'config': config, 'tasks': tasks, 'evals': evals,
          'steps_per_s': statistics.median(rates) if rates else None,
          'last_step': last_step, 'done': done}


def _sem(values) -> float:
  values = np.asarray(values, float)
  if len(values) < 2:
    return float('nan')
  return float(values.std(ddof=1) / math.sqrt(len(values)))


def summarize(runs_root) -> dict:
  """Per method: the seed-mean evaluation curve and its summaries."""
  root = pathlib.Path(runs_root)
  methods = {}
  for log in sorted(root.glob('*/seed*/log.jsonl')):
    run = read_run(log)
    if run is None:
      continue
    methods.setdefault(log.parent.parent.name, []).append(
        (log.parent.name, run))
  out = {}
  for method, runs in methods.items():
    # The evaluation steps every seed has reached.
    common = set.intersection(*[{s for s, _ in run['evals']}
                                for _, run in runs])
    steps = sorted(common)
    if not steps:
      continue
    curves = np.array([[dict(run['evals'])[s]['mean'] for s in steps]
                       for _, run in runs])
    per_task = np.array([[dict(run['evals'])[s]['success'] for s in steps]
                         for _, run in runs])      # [seeds, evals, T]
    mean = curves.mean(0)
    sem = [(_sem(curves[:, i])) for i in range(len(steps))]
    best = int(np.argmax(mean))
    rates = [run['steps_per_s'] for _, run in runs if run['steps_per_s']]
    rate = statistics.median(rates) if rates else None
    out[method] = {
        'seeds': [name for name, _ in runs],
        'method_kwargs': runs[0][1]['config'].get('method_kwargs', {}),
        'tasks': runs[0][1]['tasks'],
        'steps': steps,
        'mean': mean.tolist(),
        'sem': sem,
        'best': {'step': steps[best], 'mean': float(mean[best]),
                 'sem': sem[best]},
        'last': {'step': steps[-1], 'mean': float(mean[-1]),
                 'sem': sem[-1]},
        'last_per_task': per_task[:, -1].mean(0).tolist(),
        'done': all(run['done'] for _, run in runs),
        'target_steps': runs[0][1]['config']['steps'],
        'eval_every': runs[0][1]['config']['eval_every'],
        'steps_per_s': rate,
        'full_protocol_cpu_hours': (FULL_STEPS * FULL_SEEDS / rate / 3600
                                    if rate else None),
    }
  return out


def _fmt(mean: float, sem: float) -> str:
  if math.isnan(sem):
    return f'{mean:.2f}'
  return f'{mean:.2f} ± {sem:.3f}'


def paper_cells(method: str) -> tuple[str, str]:
  rows = PAPER_ROW.get(method, (None, None))
  cells = []
  for paper, row in zip(('cagrad', 'aligned_mtl'), rows):
    if row is None:
      cells.append('–')
    else:
      m, s = PAPERS[paper]['rows'][row]
      cells.append(f'{m:.2f} ± {s:.3f} ({row})')
  return tuple(cells)


def write_markdown(summary: dict, path: pathlib.Path) -> None:
  lines = [
      '# Meta-World MT10: multi-task SAC with mtl_optax methods',
      '',
      'Written by `python -m benchmarks.rl.mt10 --render` from the runs\' '
      'logs; the set-up and the command are in '
      '[docs/rl.md](../../docs/rl.md).',
      '',
      'Success rate: one deterministic episode per task at each evaluation '
      '(step 0, then once every '
      + ' / '.join(sorted({f'{s["eval_every"]:,}' for s in summary.values()}))
      + ' steps), mean over the ten tasks, '
      'then over the seeds (± standard error over seeds). *best*: the '
      'highest point of the seed-mean curve, the papers\' summary (CAGrad '
      'App. B.3, following CARE); *last*: the last evaluation. The papers '
      'train 2M steps with 10 seeds; the CPU runs here are far shorter '
      '(*steps*), so their numbers are points on the way, not the '
      'papers\' endpoint.',
      '',
      '| method | seeds | steps | best (at step) | last | CAGrad Table 3 '
      '| Aligned-MTL Table 5 |',
      '| --- | --- | --- | --- | --- | --- | --- |',
  ]
  for method, s in summary.items():
    name = method + (f' {s["method_kwargs"]}' if s['method_kwargs'] else '')
    cagrad, aligned = paper_cells(method)
    lines.append(
        f'| {name} | {len(s["seeds"])} | {s["last"]["step"]:,} of '
        f'{s["target_steps"]:,} | {_fmt(s["best"]["mean"], s["best"]["sem"])}'
        f' ({s["best"]["step"]:,}) | {_fmt(s["last"]["mean"], s["last"]["sem"])}'
        f' | {cagrad} | {aligned} |')
  lines += ['', 'Papers\' other MT10 rows (2M steps, 10 seeds): ' + '; '.join(
      f'{row} {m:.2f} ± {e:.3f}' for row, (m, e) in
      PAPERS['cagrad']['rows'].items()
      if row not in {r for r, _ in PAPER_ROW.values() if r}) + '.', '']
  tasks = next(iter(summary.values()))['tasks'] if summary else None
  if tasks:
    lines += ['## Per task, last evaluation (mean over seeds)', '',
              '| method | ' + ' | '.join(tasks) + ' |',
              '| --- |' + ' --- |' * len(tasks)]
    for method, s in summary.items():
      lines.append(f'| {method} | ' + ' | '.join(
          f'{v:.1f}' for v in s['last_per_task']) + ' |')
    lines.append('')
  lines += ['## Compute', '',
            '| method | steps/s (whole loop, median episode) | one 2M-step '
            'run | full protocol (2M steps × 10 seeds) |',
            '| --- | --- | --- | --- |']
  for method, s in summary.items():
    if s['steps_per_s']:
      run_h = FULL_STEPS / s['steps_per_s'] / 3600
      lines.append(f'| {method} | {s["steps_per_s"]:.2f} | {run_h:,.0f} h '
                   f'| {s["full_protocol_cpu_hours"]:,.0f} h '
                   f'({s["full_protocol_cpu_hours"] / 24:,.0f} days) |')
  lines.append('')
  path.write_text('\n'.join(lines))


def write_figure(summary: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, (method, s) in enumerate(summary.items()):
    color = colors[i % len(colors)]
    steps = np.asarray(s['steps'])
    mean = np.asarray(s['mean'])
    sem = np.nan_to_num(np.asarray(s['sem'], float))
    ax.plot(steps, mean, color=color,
            label=f'{method} ({len(s["seeds"])} seed'
                  f'{"s" if len(s["seeds"]) > 1 else ""})')
    ax.fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.2)
    rows = PAPER_ROW.get(method, (None, None))
    paper, row = (('aligned_mtl', rows[1]) if rows[1] else
                  ('cagrad', rows[0]))
    if row:
      value = PAPERS[paper]['rows'][row][0]
      ax.axhline(value, color=color, linestyle=':', linewidth=1)
      ax.annotate(f'{row}: {value:.2f} (paper, 2M steps)', (1.0, value),
                  xycoords=('axes fraction', 'data'), ha='right',
                  va='bottom', fontsize=7, color=color)
  ax.set_xlabel('steps (each: 10 environment steps + 1 update)')
  ax.set_ylabel('success rate (mean over the 10 tasks)')
  ax.set_ylim(-0.02, 1.02)
  ax.set_title('Meta-World MT10, multi-task SAC (dotted: the papers\' '
               'numbers after 2M steps)', fontsize=9)
  ax.legend(fontsize=8, loc='upper left')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def render(runs_root, out_prefix) -> dict:
  """Writes ``OUT.md``, ``OUT.json`` and ``OUT.png``; returns the summary."""
  summary = summarize(runs_root)
  if not summary:
    raise SystemExit(f'no runs with evaluations under {runs_root}')
  out = pathlib.Path(out_prefix)
  out.parent.mkdir(parents=True, exist_ok=True)
  payload = {'papers': {k: {'source': v['source'],
                            'rows': {r: list(x) for r, x in v['rows'].items()}}
                        for k, v in PAPERS.items()},
             'protocol': {'full_steps': FULL_STEPS, 'full_seeds': FULL_SEEDS},
             'methods': summary}
  out.with_suffix('.json').write_text(
      json.dumps(payload, indent=1, sort_keys=True) + '\n')
  write_markdown(summary, out.with_suffix('.md'))
  write_figure(summary, out.with_suffix('.png'))
  print(f'wrote {out}.md, .json, .png ({len(summary)} methods)')
  return summary
