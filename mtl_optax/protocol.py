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

Metrics = Mapping[str, Mapping[str, float]]


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
                          progress: bool = False) -> dict[str, dict[str, float]]:
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
