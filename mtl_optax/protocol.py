"""The evaluation protocol: single-task baselines, Δ_MTL and seed tables.

Chai et al. (2022, §IV-D) compare every method with a *single-task
baseline*: "the same backbone and task-specific head [trained] on each task
separately, where each task has its own set of parameters", and summarise a
method by Δ_MTL against it (``metrics.delta_mtl_of``). Papers also report
the mean ± std over seeds of the final metrics, or of the average of the last
evaluations (Senushkin et al.: "average of the last 10 epochs" on
Cityscapes).

Single-task baselines, by design the least invasive one: the baseline of task
``t`` is the config's own multi-task model trained by the same loop with the
``linear_scalarization`` method and one-hot weights ``e_t`` (at the parameter
level): the encoder and head ``t`` get exactly ``∇L_t``, every other head a
zero gradient (it is never updated by Adam/SGD; ``adamw``'s decoupled weight
decay only shrinks it), so the encoder and head ``t`` form a separately
trained single-task network; one model per task, each with its own
parameters. The evaluation runs all heads; the baseline reports task ``t``'s
metrics only. The cost is the multi-task step's (the Jacobian has all ``T``
rows), which is at most ``T`` times a single-task step's.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mtl_optax import training


def model_tasks(config: training.Config) -> tuple[str, ...]:
  """The tasks of ``config``'s model, in its order (builds the model)."""
  model, _ = training.create_model(config)
  return tuple(model.tasks)


def single_task_configs(config: training.Config, *,
                        tasks: Sequence[str] | None = None
                        ) -> dict[str, training.Config]:
  """One ``Config`` per task that trains ``config``'s model on that task alone.

  Task ``t``'s config is ``config`` with ``method='linear_scalarization'``,
  ``method_kwargs={'weights': e_t}`` (one-hot over the model's tasks) and
  ``level='parameter'``; everything else (model, data, optimizer, schedule,
  seed) is ``config``'s, so the baselines come from the same code path.

  Args:
    config: the multi-task run.
    tasks: the model's tasks in its order (default: read from the model,
      which ``model_tasks`` builds once).

  Returns:
    ``{task: Config}`` in the model's task order.

  Raises:
    ValueError: ``tasks`` empty or repeating a name.
  """
  tasks = tuple(model_tasks(config) if tasks is None else tasks)
  if not tasks or len(set(tasks)) != len(tasks):
    raise ValueError(f'tasks must be the model\'s distinct task names in its '
                     f'order, got {tasks!r}; leave tasks=None to read them '
                     'from the model.')
  return {task: config.replace(
      method='linear_scalarization', level='parameter',
      method_kwargs={'weights': tuple(float(s == task) for s in tasks)})
          for task in tasks}


def _final_task_metrics(result: training.TrainResult, task: str
                        ) -> dict[str, float]:
  if not result.evaluations:
    raise ValueError('the single-task run made no evaluation: give the '
                     'config an eval_split.')
  final = result.evaluations[-1]['metrics']
  if task not in final:
    raise ValueError(f'the evaluation reports {sorted(final)}, not task '
                     f'{task!r}: single-task baselines need one metric entry '
                     'per task (a dataset whose metric spans its tasks, such '
                     'as seven_scenes\' pose, has no per-task baseline).')
  return dict(final[task])


def single_task_baselines(config: training.Config, *,
                          data_fn: Callable[..., Any] | None = None,
                          workdir: str | os.PathLike | None = None,
                          tasks: Sequence[str] | None = None,
                          progress: bool = False
                          ) -> dict[str, dict[str, float]]:
  """Trains the single-task baselines of ``config`` and returns their metrics.

  Runs ``training.train`` on each of ``single_task_configs(config)`` in turn
  and keeps task ``t``'s metrics of its final evaluation.

  Args:
    config: the multi-task run (its ``eval_split`` must be set).
    data_fn: as ``training.train``'s.
    workdir: if given, task ``t`` trains (and resumes) in
      ``workdir/single_task_<t>``.
    tasks: as ``single_task_configs``'s.
    progress: show each run's progress bar.

  Returns:
    ``{task: {metric: value}}``: the form of ``training.evaluate``, ready
    for ``metrics.delta_mtl_of(method_metrics, baselines)``.
  """
  baselines = {}
  for task, task_config in single_task_configs(config, tasks=tasks).items():
    task_dir = (None if workdir is None
                else pathlib.Path(workdir) / f'single_task_{task}')
    result = training.train(task_config, workdir=task_dir, data_fn=data_fn,
                            progress=progress)
    baselines[task] = _final_task_metrics(result, task)
  return baselines


def _mean_std(values: Sequence[float]) -> dict[str, float]:
  arr = np.asarray(values, np.float64)
  std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
  return {'mean': float(np.mean(arr)), 'std': std}


def seed_summary(evaluations_per_seed: Sequence[Sequence[Mapping[str, Any]]],
                 *, last_k: int = 10,
                 baselines: Mapping[str, Mapping[str, float]] | None = None,
                 lower_is_better: Mapping[str, bool] | None = None
                 ) -> dict[str, Any]:
  """Mean ± std over seeds of the final metrics and of the last-``K`` average.

  Per seed, "final" is the last evaluation's metrics and "last-``K``
  average" the mean of each metric over the last ``K`` evaluations (as
  "the average of the last 10 epochs" that Senushkin et al. report for
  Cityscapes); a seed with fewer evaluations averages all it has, and
  ``last_k_used`` records the count actually used (the fewest of any seed).
  Then the mean and the sample standard deviation (``ddof=1``; 0 for one
  seed) over the seeds. ``count`` entries are left out.

  With ``baselines`` (the single-task baselines' metrics,
  ``single_task_baselines``), each seed's Δ_MTL (``metrics.delta_mtl_of``)
  of its final metrics and of its last-``K`` averages is summarised too.

  Args:
    evaluations_per_seed: each seed's ``TrainResult.evaluations`` (a list of
      ``{'step', 'metrics': {task: {metric: value}}}``; single runs, not a
      sweep's).
    last_k: ``K >= 1``.
    baselines: ``{task: {metric: value}}`` of the single-task baselines, or
      None (no Δ_MTL).
    lower_is_better: as ``metrics.delta_mtl_of``'s.

  Returns:
    ``{'num_seeds', 'last_k', 'last_k_used', 'final': {task: {metric:
    {'mean', 'std'}}}, 'last_k_average': {...}}``, and with ``baselines``
    ``'delta_mtl': {'final': {'mean', 'std'}, 'last_k_average': {...}}``
    (percent).

  Raises:
    ValueError: no seed, a seed without evaluations, a sweep's evaluations,
      seeds reporting different metrics, or ``last_k < 1``.
  """
  if not isinstance(last_k, int) or last_k < 1:
    raise ValueError(f'last_k must be an integer >= 1, got {last_k!r}.')
  runs = [list(evals) for evals in evaluations_per_seed]
  if not runs:
    raise ValueError('no seed: give one list of evaluations per seed.')
  for i, evals in enumerate(runs):
    if not evals:
      raise ValueError(f'seed {i} has no evaluation: give the config an '
                       'eval_split.')
    if any(not isinstance(e['metrics'], Mapping) for e in evals):
      raise ValueError('a sweep\'s evaluations (one metrics dict per run): '
                       'split them with TrainResult.run(r) first.')
  keys = [sorted((t, m) for t, v in evals[-1]['metrics'].items()
                 for m in v if m != 'count') for evals in runs]
  if any(k != keys[0] for k in keys):
    raise ValueError('the seeds report different metrics: summarise runs of '
                     'the same config only.')
  used = min(last_k, *(len(evals) for evals in runs))
  final: dict[str, dict[str, Any]] = {}
  average: dict[str, dict[str, Any]] = {}
  for task, metric in keys[0]:
    finals = [evals[-1]['metrics'][task][metric] for evals in runs]
    means = [float(np.mean([e['metrics'][task][metric]
                            for e in evals[-used:]])) for evals in runs]
    final.setdefault(task, {})[metric] = _mean_std(finals)
    average.setdefault(task, {})[metric] = _mean_std(means)
  summary = {'num_seeds': len(runs), 'last_k': last_k, 'last_k_used': used,
             'final': final, 'last_k_average': average}
  if baselines is not None:
    from mtl_optax import metrics as metrics_lib
    delta = lambda m: metrics_lib.delta_mtl_of(
        m, baselines, lower_is_better=lower_is_better)
    finals = [evals[-1]['metrics'] for evals in runs]
    averages = [{task: {metric: float(np.mean([e['metrics'][task][metric]
                                                for e in evals[-used:]]))
                        for metric in values}
                 for task, values in final.items()} for evals in runs]
    summary['delta_mtl'] = {
        'final': _mean_std([delta(m) for m in finals]),
        'last_k_average': _mean_std([delta(m) for m in averages])}
  return summary


def seed_table_markdown(summary: Mapping[str, Any]) -> str:
  """``seed_summary``'s result as a markdown table (one row per metric)."""
  k = summary['last_k_used']
  lines = [f"Mean ± std over {summary['num_seeds']} seed(s).", '',
           f'| task | metric | final | average of the last {k} evaluations |',
           '|---|---|---|---|']
  for task, values in summary['final'].items():
    for metric, f in values.items():
      a = summary['last_k_average'][task][metric]
      lines.append(f"| {task} | {metric} | {f['mean']:.4f} ± {f['std']:.4f} "
                   f"| {a['mean']:.4f} ± {a['std']:.4f} |")
  if 'delta_mtl' in summary:
    f, a = summary['delta_mtl']['final'], summary['delta_mtl']['last_k_average']
    lines.append(f"| all | Δ_MTL (%) | {f['mean']:.2f} ± {f['std']:.2f} "
                 f"| {a['mean']:.2f} ± {a['std']:.2f} |")
  return '\n'.join(lines) + '\n'


def train_seeds(config: training.Config, seeds: Sequence[int], *,
                data_fn: Callable[..., Any] | None = None,
                workdir: str | os.PathLike | None = None,
                last_k: int = 10,
                baselines: Mapping[str, Mapping[str, float]] | None = None,
                progress: bool = False) -> dict[str, Any]:
  """Trains ``config`` once per seed and summarises them (``seed_summary``).

  The runs are separate (``config.replace(seed=s)``, trained in turn), so
  a seed varies the initialisation, the data order and the methods'
  randomness (a ``--sweep seed=...`` shares one data order).

  Args:
    config: the run.
    seeds: distinct integer seeds.
    data_fn: as ``training.train``'s.
    workdir: if given, seed ``s`` trains (and resumes) in
      ``workdir/seed_<s>``, and the summary is written to
      ``workdir/seeds.json`` and ``workdir/seeds.md``.
    last_k: as ``seed_summary``'s.
    baselines: as ``seed_summary``'s (adds Δ_MTL over the seeds).
    progress: show each run's progress bar.

  Returns:
    ``seed_summary``'s dict, with ``'seeds'``.
  """
  seeds = list(seeds)
  if (not seeds or len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool)
                 for s in seeds)):
    raise ValueError(f'seeds must be distinct integers, got {seeds!r}; e.g. '
                     'seeds=range(3).')
  runs = []
  for seed in seeds:
    run_dir = (None if workdir is None
               else pathlib.Path(workdir) / f'seed_{seed}')
    result = training.train(config.replace(seed=seed), workdir=run_dir,
                            data_fn=data_fn, progress=progress)
    runs.append(result.evaluations)
  summary = {'seeds': seeds,
             **seed_summary(runs, last_k=last_k, baselines=baselines)}
  if workdir is not None:
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'seeds.json').write_text(json.dumps(summary, indent=1))
    (out / 'seeds.md').write_text(seed_table_markdown(summary))
  return summary
