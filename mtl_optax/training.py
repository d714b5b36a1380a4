"""One training loop for every benchmark and config.

A ``Config`` names a model of the zoo (``mtl_optax.models``), a dataset
(``mtl_optax.data``), a method (``mtl_optax.get_aggregator``) and the level it
runs at:

- ``level='parameter'``: per-task gradients of all parameters
  (``mtl.value_and_jacobian``), the aggregator chained in front of the
  optimizer; the aggregator's state lives in the optimizer state.
- ``level='representation'``: the "-UB" step (``mtl.representation_grads``):
  per-task gradients of the shared representation, one backward pass through
  the encoder; the aggregator's state is kept next to the optimizer's.

``train`` runs the jitted step, logs the task losses, the method's weights and
the Gramian diagnostics (dominance rate, ...) of every step, evaluates with
``mtl_optax.metrics`` and checkpoints parameters, BatchNorm statistics,
optimizer and aggregator state and the input stream's position with orbax, so
that a resumed run continues bit-identically. Checkpoints are written every
``checkpoint_every_steps`` steps, every ``checkpoint_every_seconds`` seconds,
at the end, and when SIGTERM or SIGINT arrives (the loop saves at the next
step boundary and returns with ``interrupted`` set); ``log.jsonl`` gets one
line per step, flushed as it goes, and a resumed run drops the lines after
its checkpoint, so that a run killed any way and resumed logs every step
exactly once::

    from mtl_optax import training
    config = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                             method='aligned_mtl', data_dir=DIR)
    result = training.train(config, workdir='/tmp/run')

Multi-input datasets (``office31``, ``office_home``: each task has its own
examples, LibMTL's multi-input mode) train the same way: every step reads
``{task: batch_t}`` (a ``data.MultiInputLoader``), task ``t``'s loss is its
head's on its own batch, an epoch is one pass over the largest task, and
evaluation runs every task on its own split and adds the tasks' average
(see ``Config.multi_input``).

A learning-rate (and seed) grid of one method runs as one program:
``train(config, sweep={'learning_rate': [1e-3, 3e-3]})`` stacks the runs'
states and ``jax.vmap``s the step over them, the batches shared (see
``build_sweep``); it checkpoints and resumes like a single run.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import inspect
import itertools
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time
from typing import (Any, Callable, Iterable, Iterator, Mapping, NamedTuple,
                    Sequence)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_optax._extras import _require

# The training loop needs the model zoo, the data pipelines, orbax for the
# checkpoints and tqdm for the progress bar: the 'train' extra.
_require('flax', 'train', 'mtl_optax.training')
_require('tensorflow_datasets', 'train', 'mtl_optax.training')
_require('orbax.checkpoint', 'train', 'mtl_optax.training')
_require('tqdm', 'train', 'mtl_optax.training')

# pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx

from mtl_optax import compiler
from mtl_optax import metrics as metrics_lib
from mtl_optax import registry
from mtl_optax.data.task_names import SEGMENTATION_CLASSES
from mtl_optax.jacobian import value_and_jacobian
from mtl_optax.methods._core import aggregator_state

PyTree = Any
Batch = Mapping[str, Any]

LEVELS = ('parameter', 'representation')

# The Config fields a sweep may vary: they change the runs' initial states
# only (a run's learning rate lives in its optimizer state), never the
# compiled step.
SWEEPABLE = ('learning_rate', 'seed')


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs; ``mtl_optax.configs`` builds the papers' ones.

  Attributes:
    model: a name of ``mtl_optax.models.available()``, or your own model as
      ``'module:callable'`` (e.g. ``'my_pkg.my_module:make_model'``): a
      factory called as ``callable(rngs=nnx.Rngs(seed), **model_kwargs)``
      that returns a ``mtl_optax.models.MultiTaskModel`` or a pair
      ``(model, task_losses)`` (see ``create_model``).
    dataset: a name of ``mtl_optax.data.DATASETS``.
    method: a name of ``mtl_optax.available()``.
    level: ``'parameter'`` or ``'representation'`` (the "-UB" variants).
    model_kwargs: keyword arguments of ``models.create`` (or of your
      factory).
    loss_kwargs: options of the zoo model's losses
      (``models.default_task_losses``): ``{'regression': 'mse'}`` for
      squared depth and instance errors (Sener & Koltun's Cityscapes),
      ``{'norm': 'l1'}`` for L1 pose losses. Your own factory returns its
      losses, so it takes none.
    method_kwargs: keyword arguments of the method's factory.
    dataset_options: options of ``data.load`` (e.g. ``config=`` for
      cityscapes, ``scene=`` for 7-Scenes, ``image_size=`` for CelebA).
    data_dir: the tfds data directory holding the prepared dataset.
    train_split: split to train on.
    eval_split: split to evaluate on (None: no evaluation).
    extra_eval_splits: more splits evaluated at the same times (e.g. the
      test set beside a validation split, to report the test accuracy of
      the evaluation with the best validation accuracy); their metrics are
      in each evaluation's ``'extra_metrics'``, by split.
    batch_size: global training batch size (multi-input: of every task's
      batch).
    eval_batch_size: evaluation batch size (default ``batch_size``).
    optimizer: ``'adam'``, ``'adamw'`` or ``'sgd'`` (with ``momentum``).
    learning_rate: the initial learning rate.
    momentum: SGD momentum (ignored by Adam).
    weight_decay: decoupled weight decay (``adamw``), or L2 added to the
      gradient (``sgd``; ``adam``, as ``torch.optim.Adam``'s
      ``weight_decay``).
    learning_rate_scales: per-part factors of the learning rate,
      ``{'encoder': f, 'heads': g}`` (a part left out: 1), e.g. Chai et
      al.'s 1e-2 for the backbone and 1e-3 for the heads:
      ``learning_rate=1e-2, learning_rate_scales={'heads': 0.1}``. The
      optimizer's update is multiplied by the part's factor: exactly a
      per-group learning rate for ``'sgd'``, ``'adam'`` and ``'adamw'``
      (whose decoupled decay is scaled with it, as in torch).
    lr_decay_epochs: epochs after which the learning rate is multiplied by
      ``lr_decay_factor`` (a step schedule; empty = constant).
    lr_decay_factor: the factor of each decay.
    num_epochs: training length in epochs (may be fractional).
    num_steps: training length in steps; overrides ``num_epochs``.
    seed: seeds the model initialisation, the data order and the methods'
      randomness.
    log_every_steps: how often the progress bar and the log file are
      updated (every step's values are kept either way).
    eval_every_epochs: evaluate after every this many epochs and at the end.
    max_eval_batches: evaluate on at most this many batches (None: all).
    checkpoint_every_steps: save a checkpoint every this many steps (and
      at the end and on SIGTERM/SIGINT); None: no step interval. Needs a
      ``workdir``. Saves are asynchronous (orbax): training goes on while
      the checkpoint is written.
    checkpoint_every_seconds: also save when this many seconds of wall time
      have passed since the last save; None: no time interval. A run killed
      without warning (SIGKILL, a lost machine) recomputes at most the steps
      of one interval, identically.
    fast_cpu_convolutions: on CPU, compile the steps with
      ``compiler.cpu_compiler_options()`` (XLA's own convolutions instead
      of YNNPACK's, 2-3× faster; a per-step option, never a global flag).
      No effect on GPU/TPU.
    multi_input: each task has its own examples (LibMTL's multi-input mode,
      e.g. the Office domains); None (the default): the dataset's
      (``data.is_multi_input``; False for a name ``data`` does not know).
      The training stream then yields ``{task: batch_t}`` (``data_fn``
      returns a ``data.MultiInputLoader``), task ``t``'s loss is its head's
      on ``batch_t`` (``FunctionalModel.loss_fn(multi_input=True)``),
      ``batch_size`` is every task's and an epoch one pass over the largest
      task (the smaller ones cycle). Evaluation runs each task's head on its
      own split (``MultiInputLoader.per_task``, ``max_eval_batches`` per
      task) and adds ``'average'``, the mean over the tasks of each metric.
      At the representation level ``z`` stacks the tasks' own
      representations: its Gramian is diagonal (the tasks meet only in the
      encoder's parameters), so the "-UB" methods only rescale the tasks'
      z-gradients (see ``FunctionalModel.representation_fns``).
  """

  model: str
  dataset: str
  method: str = 'aligned_mtl'
  level: str = 'parameter'
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  loss_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data_dir: str | None = None
  train_split: str = 'train'
  eval_split: str | None = 'test'
  extra_eval_splits: tuple[str, ...] = ()
  batch_size: int = 256
  eval_batch_size: int | None = None
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  learning_rate_scales: Mapping[str, float] = dataclasses.field(
      default_factory=dict)
  lr_decay_epochs: tuple[float, ...] = ()
  lr_decay_factor: float = 0.1
  num_epochs: float = 1.0
  num_steps: int | None = None
  seed: int = 0
  log_every_steps: int = 50
  eval_every_epochs: float = 1.0
  max_eval_batches: int | None = None
  checkpoint_every_steps: int | None = 1000
  checkpoint_every_seconds: float | None = 300.0
  fast_cpu_convolutions: bool = True
  multi_input: bool | None = None

  def replace(self, **changes) -> 'Config':
    """A copy with ``changes`` (unknown names raise ``TypeError``)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class TrainState(NamedTuple):
  """What a checkpoint holds (with the input stream's position)."""
  step: jax.Array              # int32 scalar
  params: PyTree               # {'encoder': ..., 'heads': ...}
  batch_stats: PyTree          # same keys
  opt_state: PyTree            # the optimizer's (and, at the parameter
                               # level, the aggregator's) state
  aggregator_state: PyTree     # representation level only; () otherwise


class StepLog(NamedTuple):
  """Per-step values a training step returns (all device arrays)."""
  losses: jax.Array            # [T]
  weights: jax.Array           # [T] the method's coefficients (NaN if none)
  diagnostics: Any             # mtl.Diagnostics of the step's Gramian
  skipped: jax.Array           # bool: the step was skipped (non-finite)
  learning_rate: jax.Array


class EvalMetric(NamedTuple):
  """A metric and how to read its inputs from a batch and the outputs."""
  metric: metrics_lib.Metric
  inputs: Callable[[Mapping[str, Any], Batch], tuple[Any, Any, Any]]


class Experiment(NamedTuple):
  """A built ``Config``: the model, the step functions and their state."""
  config: Config
  model: Any                   # the FunctionalModel
  tasks: tuple[str, ...]
  init_state: TrainState
  train_step: Callable[[TrainState, Batch], tuple[TrainState, StepLog]]
  eval_metrics: Mapping[str, EvalMetric]
  eval_step: Callable[[Any, TrainState, Batch], Any]
  steps_per_epoch: int
  num_steps: int
  # A sweep's runs (``build_sweep``): each run's Config overrides, in the
  # order of the state's leading run axis; None for a single run.
  runs: tuple[dict[str, Any], ...] | None = None
  # Each task has its own batch (``Config.multi_input``): the steps take
  # ``{task: batch}``.
  multi_input: bool = False


# The vmap axes of a sweep's stacked ``TrainState``: the step is shared.
RUN_AXES = TrainState(step=None, params=0, batch_stats=0, opt_state=0,
                      aggregator_state=0)


class TrainResult(NamedTuple):
  """What ``train`` returns.

  For a sweep (``train(..., sweep=...)``) every array of ``state`` but
  ``step`` has a leading run axis ``R``, the per-step ``history`` arrays
  have it after the step axis (``losses`` ``[S, R, T]``, ``dominance_rate``
  ``[S, R]``, ...), each evaluation's ``'metrics'`` (and each split of
  ``'extra_metrics'``) is a list of ``R`` per-run dicts, and ``runs[r]`` is
  run ``r``'s overrides (``{'learning_rate': ..., 'seed': ...}``);
  ``run(r)`` gives run ``r`` alone, shaped as a single run's result.
  """
  state: TrainState
  history: dict[str, np.ndarray]   # per-step arrays: losses [S, T], ...
  evaluations: list[dict[str, Any]]
  seconds_per_step: float          # per step of all the runs together
  # The signal ('SIGTERM', 'SIGINT') that stopped the run early, after a
  # checkpoint at ``state.step``; None when the run reached its end (or
  # ``stop_after``).
  interrupted: str | None = None
  runs: tuple[dict[str, Any], ...] | None = None

  def run(self, r: int) -> 'TrainResult':
    """Run ``r`` of a sweep, as a single run's ``TrainResult``.

    Args:
      r: the run's index in ``runs``.

    Returns:
      The result with run ``r``'s state, history and evaluations (its
      ``opt_state`` holds the run's ``RunLearningRateState`` too);
      ``seconds_per_step`` stays that of the whole sweep.

    Raises:
      ValueError: the result is not a sweep's.
    """
    if self.runs is None:
      raise ValueError('run(r) selects a run of a sweep; this result is a '
                       "single run's (train(..., sweep=None)): use it as is.")
    return self._replace(
        state=select_run(self.state, r),
        history={k: v[:, r] for k, v in self.history.items()},
        evaluations=[_evaluation_of_run(e, r) for e in self.evaluations],
        runs=None)


def select_run(state: TrainState, r: int) -> TrainState:
  """Run ``r``'s state in a sweep's stacked ``TrainState``."""
  pick = lambda x: x[r]
  return TrainState(state.step, *(jax.tree.map(pick, getattr(state, f))
                                  for f in TrainState._fields[1:]))


def _evaluation_of_run(evaluation: Mapping[str, Any], r: int
                       ) -> dict[str, Any]:
  """A sweep's evaluation record reduced to run ``r`` (a single run's)."""
  out = {'step': evaluation['step'], 'metrics': evaluation['metrics'][r]}
  if 'extra_metrics' in evaluation:
    out['extra_metrics'] = {split: metrics[r] for split, metrics
                            in evaluation['extra_metrics'].items()}
  return out


def _sweep_values(field: str, values: Any) -> list[Any]:
  """One sweep axis's values, checked and as Python numbers."""
  example = "e.g. sweep={'learning_rate': [1e-3, 3e-3], 'seed': [0, 1]}"
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ValueError(f'sweep[{field!r}] must be a list of values, got '
                     f'{values!r}; {example}.')
  if not values:
    raise ValueError(f'sweep[{field!r}] is empty: give it at least one '
                     f'value, or leave {field!r} out; {example}.')
  out = []
  for value in values:
    number = isinstance(value, (int, float, np.integer, np.floating)
                        ) and not isinstance(value, (bool, np.bool_))
    if field == 'seed':
      if not number or isinstance(value, (float, np.floating)):
        raise ValueError(f"sweep['seed'] values must be integers, got "
                         f'{value!r}; {example}.')
      out.append(int(value))
    else:
      if not number or not math.isfinite(value) or value <= 0:
        raise ValueError(f"sweep['learning_rate'] values must be positive "
                         f'finite numbers, got {value!r}; {example}.')
      out.append(float(value))
  if len(set(out)) < len(out):
    raise ValueError(f'sweep[{field!r}] repeats a value ({values!r}): the '
                     'runs would be identical; give each value once.')
  return out


def sweep_axes(sweep: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
  """``sweep`` checked, its values as Python numbers (its order kept).

  Args:
    sweep: ``{field: values}`` with ``field`` one of ``SWEEPABLE``
      (``'learning_rate'``: positive finite numbers; ``'seed'``:
      integers), each list non-empty, without repeats.

  Returns:
    ``{field: [values]}``.

  Raises:
    ValueError: another field, an empty or repeating list, or a value of the
      wrong kind; the message says what to give.
  """
  if not isinstance(sweep, Mapping) or not sweep:
    raise ValueError(f'sweep must be a non-empty dict {{field: values}} of '
                     f'the fields {", ".join(SWEEPABLE)}, got {sweep!r}.')
  unknown = [k for k in sweep if k not in SWEEPABLE]
  if unknown:
    raise ValueError(
        f'cannot sweep {", ".join(map(repr, unknown))}: the sweepable fields '
        f'are {", ".join(SWEEPABLE)} (they change only the initial state). '
        'Train other settings as separate runs (Config.replace).')
  return {field: _sweep_values(field, values)
          for field, values in sweep.items()}


def sweep_runs(sweep: Mapping[str, Sequence[Any]]
               ) -> tuple[dict[str, Any], ...]:
  """The runs of ``sweep``: the product of its axes, in lexicographic order.

  Args:
    sweep: ``{field: values}`` (see ``sweep_axes``).

  Returns:
    One ``{field: value}`` dict per run, the axes in ``sweep``'s order, its
    last axis varying fastest.

  Raises:
    ValueError: an invalid sweep (see ``sweep_axes``).

  Example:
    >>> sweep_runs({'learning_rate': [1e-3, 1e-2], 'seed': [0, 1]})[:2]
    ({'learning_rate': 0.001, 'seed': 0}, {'learning_rate': 0.001, 'seed': 1})
  """
  axes = sweep_axes(sweep)
  return tuple(dict(zip(axes, values))
               for values in itertools.product(*axes.values()))


# -- building blocks ----------------------------------------------------------


def learning_rate_schedule(config: Config, steps_per_epoch: int
                           ) -> optax.Schedule:
  """Constant, or multiplied by ``lr_decay_factor`` after each decay epoch."""
  boundaries = {int(round(e * steps_per_epoch)): config.lr_decay_factor
                for e in config.lr_decay_epochs}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_optimizer(config: Config, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """The optimizer a config names, with its learning-rate schedule.

  ``weight_decay`` is decoupled for ``'adamw'`` and an L2 term added to the
  gradient for ``'sgd'`` and ``'adam'`` (``torch.optim.Adam``'s
  ``weight_decay``, which LibMTL's configs use).
  """
  if config.optimizer == 'adam':
    if config.weight_decay:    # L2 in the gradient, as torch.optim.Adam
      return optax.chain(optax.add_decayed_weights(config.weight_decay),
                         optax.adam(schedule))
    return optax.adam(schedule)
  if config.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  if config.optimizer == 'sgd':
    tx = optax.sgd(schedule, momentum=config.momentum or None)
    if config.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
    return tx
  raise ValueError(f"Unknown optimizer {config.optimizer!r}; use 'adam', "
                   "'adamw' or 'sgd'.")


def scale_by_part(scales: Mapping[str, float]
                  ) -> optax.GradientTransformation:
  """Multiplies the updates of each top-level part (``'encoder'``,
  ``'heads'``) by its factor in ``scales`` (1 for a part left out).

  Chained after an optimizer that ends with its learning rate, it gives
  each part its own learning rate (``Config.learning_rate_scales``).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_part({'heads': 0.1})
    >>> u, _ = tx.update({'encoder': jnp.ones(2), 'heads': jnp.ones(2)},
    ...                  tx.init(None))
    >>> u['encoder'].tolist(), u['heads'].tolist()
    ([1.0, 1.0], [0.10000000149011612, 0.10000000149011612])
  """
  scales = dict(scales)

  def scale(updates, params=None):
    del params
    return {part: jax.tree.map(
        lambda u, f=scales.get(part, 1.0): (u * f).astype(u.dtype), value)
            for part, value in updates.items()}

  return optax.stateless(scale)


class RunLearningRateState(NamedTuple):
  """The learning rate of one run (``scale_by_run_learning_rate``)."""
  learning_rate: jax.Array     # float32 scalar


def scale_by_run_learning_rate(learning_rate: float
                               ) -> optax.GradientTransformation:
  """Multiplies the updates by a learning rate that its state holds.

  ``init`` stores ``learning_rate``; ``update`` reads the rate from the
  state only. So the states of runs with different rates, stacked, share
  one update function: ``jax.vmap`` runs a learning-rate grid. Chained after
  an optimizer built at rate 1 (``make_optimizer`` with the schedule at
  ``learning_rate=1``), it gives that optimizer at ``learning_rate``:
  ``make_optimizer``'s optimizers all end with the learning-rate scaling.

  Args:
    learning_rate: the rate ``init`` puts in the state.

  Returns:
    An ``optax.GradientTransformation`` with a ``RunLearningRateState``.
  """

  def init(params):
    del params
    return RunLearningRateState(jnp.asarray(learning_rate, jnp.float32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: state.learning_rate.astype(u.dtype) * u,
                        updates), state

  return optax.GradientTransformation(init, update)


def _run_learning_rate(opt_state: PyTree) -> jax.Array:
  """The ``RunLearningRateState``'s rate inside an optimizer state."""
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, RunLearningRateState))
           if isinstance(x, RunLearningRateState)]
  return found[0].learning_rate


def _on_task(task: str, metric: metrics_lib.Metric,
             mask: Callable[[Batch], Any] | None = None) -> EvalMetric:
  """``metric`` on the task's output and target (and optional mask)."""
  return EvalMetric(metric, lambda out, batch: (
      out[task], batch[task], None if mask is None else mask(batch)))


def default_eval_metrics(dataset: str, tasks: tuple[str, ...], *,
                         capacity: int) -> dict[str, EvalMetric]:
  """The papers' metrics for ``dataset``'s tasks, keyed by task.

  Classification tasks report accuracy; segmentation mIoU and pixel
  accuracy; depth (or disparity) absolute/relative error and δ, and for
  Cityscapes' disparities (``'cityscapes'``) also their MAE, MSE and MSE up
  to scale (``metrics.disparity``); normals the
  angle statistics; instance offsets their masked L1/L2 error; 7-Scenes the
  median translation and orientation errors (one ``pose`` entry).

  Args:
    dataset: the dataset name.
    tasks: its tasks (the model's order).
    capacity: the most evaluation examples (the pose medians' buffer).

  Returns:
    ``{name: EvalMetric}``.
  """
  if dataset == 'seven_scenes':
    return {'pose': EvalMetric(
        metrics_lib.pose(capacity),
        lambda out, batch: ((out['translation'], out['orientation']),
                            (batch['translation'], batch['orientation']),
                            None))}
  dense = {
      'segmentation': lambda: metrics_lib.segmentation(
          SEGMENTATION_CLASSES[dataset]),
      'depth': metrics_lib.depth,
      'normals': metrics_lib.normals,
      'instance': metrics_lib.regression,
  }
  if dataset == 'cityscapes':
    # Sener & Koltun's set-up regresses disparity: its papers report the
    # disparity MSE (Senushkin et al.: "up to scale"), beside the depth
    # errors that the MTAN-style tables use.
    dense['depth'] = lambda: metrics_lib.merged(metrics_lib.depth(),
                                                metrics_lib.disparity())
  masks = {'instance': lambda batch: batch['instance_mask'][..., None] > 0}
  result = {}
  for task in tasks:
    metric = dense.get(task, metrics_lib.classification)()
    result[task] = _on_task(task, metric, masks.get(task))
  return result


def _weights_and_diagnostics(agg_state, t):
  if agg_state.weights is None:
    weights = jnp.full((t,), jnp.nan, jnp.float32)
  else:
    weights = agg_state.weights.astype(jnp.float32)
  return weights, agg_state.diagnostics, agg_state.last_skipped


# -- the model ----------------------------------------------------------------


def load_model_factory(spec: str) -> Callable[..., Any]:
  """The callable that a ``'module:callable'`` model spec names.

  Args:
    spec: ``'package.module:callable'``; the part after the colon may be
      dotted (``'my_module:MyModel.create'``).

  Returns:
    The callable.

  Raises:
    ValueError: ``spec`` is not of the form ``'module:callable'``.
    ModuleNotFoundError: the module is not on the Python path (the message
      says where to put it).
    AttributeError: the module has no such attribute.
    TypeError: the attribute is not callable.
  """
  module_name, _, attribute = spec.partition(':')
  if not module_name or not attribute or ':' in attribute:
    raise ValueError(
        f"model {spec!r} is neither a registered name nor 'module:callable' "
        "(e.g. 'my_pkg.my_module:make_model').")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    parts = module_name.split('.')
    if e.name not in {'.'.join(parts[:i]) for i in range(1, len(parts) + 1)}:
      raise      # the module exists; something it imports does not
    raise ModuleNotFoundError(
        f'model {spec!r}: no module named {module_name!r} on the Python '
        f'path. Put the directory that holds {parts[0]!r} on PYTHONPATH (or '
        'sys.path; the training command line also looks in the current '
        'directory), or pip install its package.', name=e.name) from e
  target = module
  for name in attribute.split('.'):
    if not hasattr(target, name):
      raise AttributeError(
          f'model {spec!r}: {module_name!r} ({getattr(module, "__file__", "")})'
          f' has no attribute {attribute!r}. Define it there, or name an '
          'existing factory after the colon.')
    target = getattr(target, name)
  if not callable(target):
    raise TypeError(f'model {spec!r}: {attribute!r} is a '
                    f'{type(target).__name__}, not a callable that builds a '
                    'MultiTaskModel.')
  return target


def task_losses_by_name(tasks: Iterable[str]) -> dict[str, Any]:
  """The zoo's losses, chosen by task name, for a model outside the zoo.

  ``segmentation``: cross-entropy (label -1 ignored); ``depth``: L1 on
  valid (non-zero) targets; ``normals``: cosine loss; ``instance``: L1 under
  ``batch['instance_mask']``; ``translation`` / ``orientation``: the pose
  losses; any other task: softmax cross-entropy against ``batch[task]``
  (integer labels, -1 ignored). The target is ``batch[task]`` in each case,
  the datasets' batch convention.

  Args:
    tasks: the model's task names.

  Returns:
    ``{task: fn(output, batch) -> scalar}``.
  """
  from mtl_optax.models import losses   # pylint: disable=g-import-not-at-top

  by_name = {
      'segmentation': (losses.softmax_cross_entropy, {}),
      'depth': (losses.depth_l1_loss, {}),
      'normals': (losses.normal_cosine_loss, {}),
      'instance': (losses.l1_loss, {'mask_key': 'instance_mask'}),
      'translation': (losses.pose_translation_loss, {}),
      'orientation': (losses.pose_orientation_loss, {}),
  }
  result = {}
  for task in tasks:
    loss, kwargs = by_name.get(task, (losses.softmax_cross_entropy, {}))
    result[task] = losses.target_loss(loss, task, **kwargs)
  return result


def _takes_rngs(factory: Callable[..., Any]) -> bool:
  try:
    parameters = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):    # no signature to read: just call it
    return True
  return any(p.name == 'rngs' or p.kind is inspect.Parameter.VAR_KEYWORD
             for p in parameters)


def create_model(config: Config) -> tuple[Any, dict[str, Any]]:
  """The model that ``config.model`` names, and its task losses.

  A registered name builds the zoo's model (``models.create``) with its
  losses (``models.default_task_losses``). ``'module:callable'`` imports
  ``module`` and calls ``callable(rngs=nnx.Rngs(config.seed),
  **config.model_kwargs)``, which returns either a ``MultiTaskModel`` (its
  losses are then chosen by task name, ``task_losses_by_name``) or a pair
  ``(model, task_losses)`` with ``task_losses`` mapping each task to
  ``fn(output, batch) -> scalar``.

  Args:
    config: the run's ``Config``.

  Returns:
    ``(model, task_losses)``.

  Raises:
    ValueError: an unknown name.
    ModuleNotFoundError, AttributeError, TypeError: a ``'module:callable'``
      that cannot be imported or called, or that returns something else;
      each message says what to fix.
  """
  from mtl_optax import models   # pylint: disable=g-import-not-at-top

  name = config.model
  if ':' not in name:
    if name not in models.available():
      raise ValueError(
          f'Unknown model {name!r}: use a name of mtl_optax.models.available()'
          f' ({", ".join(models.available())}) or your own factory as '
          "'module:callable' (e.g. 'my_pkg.my_module:make_model').")
    return (models.create(name, rngs=nnx.Rngs(config.seed),
                          **config.model_kwargs),
            models.default_task_losses(name, **{**config.model_kwargs,
                                                **config.loss_kwargs}))
  if config.loss_kwargs:
    raise ValueError(
        f'loss_kwargs={dict(config.loss_kwargs)!r} configure the zoo\'s '
        f'losses; the model {name!r} is your own factory: return '
        '(model, task_losses) from it with the losses you want.')
  factory = load_model_factory(name)
  if not _takes_rngs(factory):
    raise TypeError(
        f'model {name!r} must take the keyword argument rngs (an nnx.Rngs '
        'seeded with Config.seed), like the zoo\'s factories: '
        'def make_model(*, rngs, **model_kwargs) -> MultiTaskModel.')
  out = factory(rngs=nnx.Rngs(config.seed), **config.model_kwargs)
  if isinstance(out, models.MultiTaskModel):
    return out, task_losses_by_name(out.tasks)
  if (isinstance(out, tuple) and len(out) == 2
      and isinstance(out[0], models.MultiTaskModel)
      and isinstance(out[1], Mapping)):
    return out[0], dict(out[1])
  raise TypeError(
      f'model {name!r} returned {type(out).__name__}; it must return a '
      'mtl_optax.models.MultiTaskModel (a shared encoder and one head per '
      'task: MultiTaskModel(encoder, {task: head})) or a pair (model, '
      'task_losses).')


def _check_config(config: Config) -> None:
  if config.level not in LEVELS:
    raise ValueError(f'level must be one of {LEVELS}, got {config.level!r}.')
  scales = config.learning_rate_scales
  if not isinstance(scales, Mapping) or set(scales) - {'encoder', 'heads'} \
      or not all(isinstance(f, (int, float)) and math.isfinite(f) and f >= 0
                 for f in scales.values()):
    raise ValueError(
        'learning_rate_scales maps the parts \'encoder\' and \'heads\' to '
        f'finite factors ≥ 0, got {scales!r}; e.g. {{\'heads\': 0.1}} for '
        'heads trained at a tenth of learning_rate.')
  if config.method not in registry.available():
    raise ValueError(f'Unknown method {config.method!r}; available: '
                     f'{", ".join(registry.available())}.')
  extra = config.extra_eval_splits
  if isinstance(extra, str) or not all(isinstance(x, str) for x in extra):
    raise ValueError(f'extra_eval_splits must be a tuple of split names, got '
                     f"{extra!r}; e.g. extra_eval_splits=('test',).")
  if extra and config.eval_split is None:
    raise ValueError('extra_eval_splits needs an eval_split: they are '
                     'evaluated with it; set eval_split too.')
  if config.multi_input not in (None, True, False):
    raise ValueError(f'multi_input must be None (the dataset\'s), True or '
                     f'False, got {config.multi_input!r}.')


def is_multi_input(config: Config) -> bool:
  """Whether ``config`` trains in the multi-input mode (``Config.multi_input``;
  None: the dataset's, False for a dataset ``mtl_optax.data`` does not know)."""
  if config.multi_input is not None:
    return bool(config.multi_input)
  from mtl_optax import data
  return (config.dataset in data.DATASETS
          and data.is_multi_input(config.dataset))


def build(config: Config, *, num_train_examples: int) -> Experiment:
  """Builds the model, optimizer, aggregator and jitted steps of ``config``.

  Args:
    config: the run's ``Config``.
    num_train_examples: size of the training split (for epochs → steps).

  Returns:
    An ``Experiment``.
  """
  return _build(config, num_train_examples=num_train_examples,
                rate_in_state=False)


def build_sweep(config: Config, sweep: Mapping[str, Sequence[Any]], *,
                num_train_examples: int) -> Experiment:
  """Builds the runs of ``sweep`` as one vmapped ``Experiment``.

  Run ``r`` is ``config.replace(**runs[r])`` (``runs = sweep_runs(sweep)``).
  The runs differ only in their initial state: each run's model is
  initialised with its seed (``create_model``), its method's PRNG key (in
  the aggregator state) is seeded with it, and its learning rate is held
  in its optimizer state (the optimizer is built at rate 1 and followed by
  ``scale_by_run_learning_rate``; the schedule's decays apply to every
  run). The states are stacked along a leading run axis (``RUN_AXES``: the
  step is shared) and the steps are ``jax.vmap``-ed over it, every batch
  shared by all runs. One step of ``R`` runs costs about one run's time
  where one run leaves the accelerator idle. On a CPU, which one run
  already fills, sequential runs are faster: on 2 cores, R = 6 MultiMNIST
  LeNet runs cost 1.3-1.5 times as much per run as sequential runs at the
  parameter level and 1.7-2.8 times at the representation level (whose
  single step is cheaper); XLA:CPU runs the batched matrix products that
  ``vmap`` makes of the banded convolutions' and dense layers' products
  1.2-1.8 times slower per run than one product.

  Args:
    config: the runs' common ``Config``.
    sweep: ``{field: values}`` of ``SWEEPABLE`` fields (``sweep_runs``).
    num_train_examples: size of the training split (for epochs → steps).

  Returns:
    An ``Experiment`` whose ``init_state`` is stacked, whose ``train_step``
    and ``eval_step`` take and return stacked states (and metric states)
    and whose ``runs`` are the runs' overrides.

  Raises:
    ValueError: an invalid sweep (``sweep_axes``) or config.
  """
  runs = sweep_runs(sweep)
  built = [_build(config.replace(**run), num_train_examples=num_train_examples,
                  rate_in_state=True) for run in runs]
  # Every run's step is the same function of its state (a method's seed
  # only seeds the key that its init puts in the state): run 0's serves all.
  first = built[0]
  stack = lambda *xs: jnp.stack(xs)
  init_state = TrainState(first.init_state.step, *(
      jax.tree.map(stack, *(getattr(e.init_state, field) for e in built))
      for field in TrainState._fields[1:]))
  options = step_compiler_options(config)
  train_step = jax.vmap(first.train_step.__wrapped__, in_axes=(RUN_AXES, None),
                        out_axes=(RUN_AXES, 0))
  eval_step = jax.vmap(first.eval_step.__wrapped__,
                       in_axes=(0, RUN_AXES, None))
  return first._replace(
      config=config, init_state=init_state,
      train_step=compiler.jit(train_step, options=options, donate_argnums=0),
      eval_step=compiler.jit(eval_step, options=options), runs=runs)


def _build(config: Config, *, num_train_examples: int,
           rate_in_state: bool) -> Experiment:
  """``build``; with ``rate_in_state``, the learning rate lives in the
  optimizer state (``scale_by_run_learning_rate``), for ``build_sweep``."""
  from mtl_optax import models   # the zoo imports flax layers: import late

  _check_config(config)
  multi_input = is_multi_input(config)
  model, task_losses = create_model(config)
  fm = models.functional(model)
  tasks = fm.tasks
  t = len(tasks)

  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  num_steps = config.num_steps or max(
      int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
  if rate_in_state:
    schedule = learning_rate_schedule(config.replace(learning_rate=1.0),
                                      steps_per_epoch)
    optimizer = optax.chain(make_optimizer(config, schedule),
                            scale_by_run_learning_rate(config.learning_rate))
    learning_rate = lambda state: (schedule(state.step) *
                                   _run_learning_rate(state.opt_state))
  else:
    schedule = learning_rate_schedule(config, steps_per_epoch)
    optimizer = make_optimizer(config, schedule)
    learning_rate = lambda state: schedule(state.step)
  if config.learning_rate_scales:
    optimizer = optax.chain(optimizer,
                            scale_by_part(config.learning_rate_scales))

  method_kwargs = dict(config.method_kwargs)
  if config.level == 'parameter':
    method_kwargs.setdefault('shared', fm.shared_mask)
  if registry.takes_keyword(config.method, 'seed'):   # the methods' PRNG key
    method_kwargs.setdefault('seed', config.seed)
  aggregator = registry.for_tasks(config.method, num_tasks=t, **method_kwargs)

  if config.level == 'parameter':
    tx = optax.chain(aggregator, optimizer)
    loss_fn = fm.loss_fn(task_losses, train=True, multi_input=multi_input)
    init_state = TrainState(jnp.zeros((), jnp.int32), fm.params,
                            fm.batch_stats, tx.init(fm.params), ())

    def train_step(state: TrainState, batch: Batch):
      (losses, batch_stats), grads = value_and_jacobian(
          loss_fn, has_aux=True)(state.params, state.batch_stats, batch)
      updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                     losses=losses)
      agg_state = aggregator_state(opt_state)
      params, opt_state = _apply_unless_skipped(
          agg_state.last_skipped, state.params, updates, opt_state,
          state.opt_state)
      new = TrainState(state.step + 1, params, batch_stats, opt_state, ())
      return new, _log(losses, agg_state, learning_rate(state), t)

  else:
    rep_step = fm.representation_step(task_losses, aggregator, train=True,
                                      multi_input=multi_input)
    init_state = TrainState(jnp.zeros((), jnp.int32), fm.params,
                            fm.batch_stats, optimizer.init(fm.params),
                            aggregator.init(None))

    def train_step(state: TrainState, batch: Batch):
      out = rep_step(state.params, state.batch_stats, state.aggregator_state,
                     batch)
      updates, opt_state = optimizer.update(out.grads, state.opt_state,
                                            state.params)
      params, opt_state = _apply_unless_skipped(
          out.aggregator_state.last_skipped, state.params, updates,
          opt_state, state.opt_state)
      new = TrainState(state.step + 1, params, out.batch_stats, opt_state,
                       out.aggregator_state)
      return new, _log(out.losses, out.aggregator_state,
                       learning_rate(state), t)

  eval_metrics = default_eval_metrics(
      config.dataset, tasks, capacity=_eval_capacity(config))
  if multi_input and set(eval_metrics) != set(tasks):
    raise ValueError(
        f'multi-input evaluation needs one metric per task ({sorted(tasks)}); '
        f'the metrics of {config.dataset!r} are {sorted(eval_metrics)}.')

  cpu_options = step_compiler_options(config)

  def eval_step(metric_states, state: TrainState, batch: Batch):
    outputs, _ = fm.apply(state.params, state.batch_stats, batch['image'],
                          train=False)
    new = {}
    for name, spec in eval_metrics.items():
      pred, target, mask = spec.inputs(outputs, batch)
      new[name] = spec.metric.update(metric_states[name], pred, target, mask)
    return new

  if multi_input:
    def eval_step(metric_states, state: TrainState, batch: Batch):  # pylint: disable=function-redefined
      # ``batch``: {task: batch_t} for some tasks (``per_task`` yields one);
      # each such task's metric is updated on its own batch.
      new = dict(metric_states)
      for task, task_batch in batch.items():
        outputs, _ = fm.apply(state.params, state.batch_stats,
                              task_batch['image'], train=False)
        spec = eval_metrics[task]
        pred, target, mask = spec.inputs(outputs, task_batch)
        new[task] = spec.metric.update(metric_states[task], pred, target,
                                       mask)
      return new

  return Experiment(
      config=config, model=fm, tasks=tasks, init_state=init_state,
      train_step=compiler.jit(train_step, options=cpu_options,
                              donate_argnums=0),
      eval_metrics=eval_metrics,
      eval_step=compiler.jit(eval_step, options=cpu_options),
      steps_per_epoch=steps_per_epoch, num_steps=num_steps,
      multi_input=multi_input)


def step_compiler_options(config: Config) -> dict[str, Any]:
  """The compiler options ``build`` compiles ``config``'s steps with."""
  return (dict(compiler.cpu_compiler_options())
          if config.fast_cpu_convolutions else {})


def _apply_unless_skipped(skipped, params, updates, opt_state, old_opt_state):
  """Applies ``updates``; on a skipped step (the aggregator saw NaN/Inf) the
  parameters AND the optimizer's state stay as they were, so that Adam's
  moments do not move the parameters with a zero gradient either."""
  keep = lambda new, old: jnp.where(skipped, old, new)
  params = jax.tree.map(keep, optax.apply_updates(params, updates), params)
  return params, jax.tree.map(keep, opt_state, old_opt_state)


def _eval_capacity(config: Config) -> int:
  batch = config.eval_batch_size or config.batch_size
  batches = config.max_eval_batches or 10_000
  return min(batch * batches, 200_000)


def _log(losses, agg_state, learning_rate, t) -> StepLog:
  weights, diagnostics, skipped = _weights_and_diagnostics(agg_state, t)
  return StepLog(losses, weights, diagnostics, skipped,
                 jnp.asarray(learning_rate, jnp.float32))


Metrics = dict[str, dict[str, float]]     # {name: {metric: value}}


def evaluate(experiment: Experiment, state: TrainState,
             batches: Iterable[Batch]) -> Metrics | list[Metrics]:
  """The evaluation metrics over ``batches`` (BatchNorm in eval mode).

  For a multi-input experiment the batches are ``{task: batch_t}`` (e.g.
  ``MultiInputLoader.per_task()``), ``max_eval_batches`` counts each task's,
  and the result has ``'average'``: each metric's mean over the tasks
  (``count`` left out).

  Returns:
    ``{name: {metric: value}}`` as Python floats; for a sweep's experiment
    (``build_sweep``) a list of them, one per run.
  """
  runs = experiment.runs
  limit = experiment.config.max_eval_batches
  metric_states = {name: spec.metric.init()
                   for name, spec in experiment.eval_metrics.items()}
  if runs is not None:
    metric_states = jax.tree.map(lambda x: jnp.stack([x] * len(runs)),
                                 metric_states)
  seen: collections.Counter = collections.Counter()
  for i, batch in enumerate(batches):
    if experiment.multi_input:
      key = tuple(batch)
      if limit is not None and seen[key] >= limit:
        continue
      seen[key] += 1
    elif limit is not None and i >= limit:
      break
    metric_states = experiment.eval_step(metric_states, state, batch)
  computed = {name: (spec.metric.compute if runs is None
                     else jax.vmap(spec.metric.compute))(metric_states[name])
              for name, spec in experiment.eval_metrics.items()}
  computed = jax.device_get(computed)
  finish = _with_average if experiment.multi_input else (lambda m: m)
  if runs is None:
    return finish({name: {k: float(v) for k, v in values.items()}
                   for name, values in computed.items()})
  return [finish({name: {k: float(v[r]) for k, v in values.items()}
                  for name, values in computed.items()})
          for r in range(len(runs))]


def _with_average(metrics: Metrics) -> Metrics:
  """``metrics`` and ``'average'``: each metric every task reports, averaged
  over the tasks (``count`` left out); unchanged if a task is named so."""
  if 'average' in metrics or not metrics:
    return metrics
  names = set.intersection(*(set(v) for v in metrics.values())) - {'count'}
  average = {name: float(np.mean([v[name] for v in metrics.values()]))
             for name in sorted(names)}
  return {**metrics, 'average': average}


# -- checkpoints ----------------------------------------------------------------


def _checkpoint_manager(workdir: str | os.PathLike):
  import orbax.checkpoint as ocp
  # Asynchronous saves: ``save`` returns once the arrays are copied to host
  # memory (so the next, donating step cannot touch them) and a background
  # thread writes them; a step directory appears only when complete, so a
  # kill mid-write leaves the previous checkpoint as the latest.
  # The items' handlers named up front: orbax then reads a checkpoint's
  # item list (``item_metadata``) without warning that it cannot restore
  # the items it was not yet told how to read.
  return ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / 'checkpoints',
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         data=ocp.JsonCheckpointHandler(),
                         meta=ocp.JsonCheckpointHandler()),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=True, enable_async_checkpointing=True))


def save_checkpoint(manager, state: TrainState, data_state: Mapping[str, int],
                    *, meta: Mapping[str, Any] | None = None,
                    wait: bool = True) -> None:
  """Saves ``state`` and the input stream's position at ``state.step``.

  Args:
    manager: the orbax ``CheckpointManager``.
    state: the ``TrainState``.
    data_state: the training stream's ``get_state()``.
    meta: JSON-able run record kept with the checkpoint (the evaluations so
      far and the step timing), read back by ``restore_checkpoint``.
    wait: block until the checkpoint is on disk; False returns once the
      arrays are on the host (``manager.wait_until_finished()`` later).
  """
  import orbax.checkpoint as ocp
  items = dict(state=ocp.args.StandardSave(state),
               data=ocp.args.JsonSave(dict(data_state)))
  if meta is not None:
    items['meta'] = ocp.args.JsonSave(dict(meta))
  manager.save(int(state.step), args=ocp.args.Composite(**items), force=True)
  if wait:
    manager.wait_until_finished()


def restore_checkpoint(manager, like: TrainState, *, with_meta: bool = False
                       ) -> tuple[Any, ...] | None:
  """The latest checkpoint as ``(state, data_state)``, or None if none.

  With ``with_meta=True``: ``(state, data_state, meta)``, ``meta`` the
  ``save_checkpoint`` record (``{}`` for a checkpoint saved without one).
  """
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  items = dict(state=ocp.args.StandardRestore(abstract),
               data=ocp.args.JsonRestore())
  has_meta = with_meta and 'meta' in _saved_items(manager, step)
  if has_meta:
    items['meta'] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if not with_meta:
    return restored.state, dict(restored.data)
  meta = dict(restored.meta) if has_meta else {}
  return restored.state, dict(restored.data), meta


def _saved_items(manager, step: int) -> set[str]:
  """The item names a checkpoint holds (its step directory's entries)."""
  return set(manager.item_metadata(step).keys())


def _saved_runs(manager) -> list[dict[str, Any]] | None:
  """The runs of the latest checkpoint's record (None: a single run)."""
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None or 'meta' not in _saved_items(manager, step):
    return None
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta.get('runs')


def _check_same_arrays(manager, like: TrainState, workdir: Any) -> None:
  """Raises unless the latest checkpoint's state holds arrays of the shapes
  of ``like``'s (compared as multisets: orbax stores tuples as lists and
  named tuples as dicts, so the trees' structures differ; dtypes may differ,
  the restore casts)."""
  step = manager.latest_step()
  saved = manager.item_metadata(step)['state']
  saved = getattr(saved, 'tree', saved)
  describe = lambda leaves: collections.Counter(
      tuple(getattr(x, 'shape', np.shape(x))) for x in leaves)
  have = describe(jax.tree.leaves(saved))
  want = describe(jax.tree.leaves(like))
  if have != want:
    extra, missing = have - want, want - have
    raise ValueError(
        f'{workdir} holds a checkpoint (step {step}) of another model, '
        'optimizer, method or sweep: its state has arrays of shapes '
        f'{sorted(extra)[:3]} that this config\'s has not, and lacks '
        f'{sorted(missing)[:3]}. Resume it with the config that wrote it, '
        'or use another workdir.')


def _check_same_runs(saved: list[dict[str, Any]] | None,
                     runs: tuple[dict[str, Any], ...] | None,
                     workdir: Any) -> None:
  """Raises unless a checkpoint of the runs ``saved`` (its record's; None:
  a single run) is one of ``runs``."""
  wanted = None if runs is None else [dict(r) for r in runs]
  if saved != wanted:
    describe = lambda x: ('a single run' if x is None
                          else f'the sweep runs {x}')
    raise ValueError(
        f'{workdir} holds a checkpoint of {describe(saved)}, not of '
        f'{describe(wanted)}: resume it with the same sweep (train(sweep=...)'
        ', --sweep, in the same order), or use another workdir.')


# -- the log, signals ---------------------------------------------------------------


def _record_step(record: Mapping[str, Any]) -> int | None:
  """The step a ``log.jsonl`` record belongs to (None: the config line)."""
  if 'step' in record:
    return int(record['step'])
  for value in record.values():
    if isinstance(value, Mapping) and 'step' in value:
      return int(value['step'])
  return None


def _truncate_log(path: pathlib.Path, step: int | None) -> None:
  """Keeps the records of ``path`` up to ``step`` (None: none at all).

  A resumed run restarts after its checkpoint's step: the lines a killed run
  wrote after that checkpoint are dropped, to be written again (identically)
  as the steps are recomputed; a line cut short by the kill is dropped too.
  """
  kept = []
  if step is not None and path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      at = _record_step(record) if isinstance(record, dict) else None
      if at is None or at <= step:
        kept.append(line + '\n')
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w') as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _floats(values) -> list[float]:
  """float32 values as the shortest decimals that read back the same."""
  return [float(str(v)) for v in np.asarray(values).reshape(-1)]


def _record_value(field: str, value: np.ndarray) -> Any:
  """One run's value of ``field`` at one step, for ``log.jsonl``."""
  if field == 'skipped':
    return bool(value)
  if field in ('losses', 'weights'):
    return _floats(value)
  return _floats(value)[0]       # the learning rate, the Gramian diagnostics


def _step_records(chunk: Mapping[str, np.ndarray], first: int,
                  sweep: bool = False) -> Iterator[dict[str, Any]]:
  """One ``log.jsonl`` record per step of ``chunk`` (steps first, ...); in
  a sweep every field holds a list of the runs' values."""
  for i in range(len(chunk['losses'])):
    record = {'step': first + i}
    for field, values in chunk.items():
      record[field] = ([_record_value(field, v) for v in values[i]] if sweep
                       else _record_value(field, values[i]))
    yield record


def _eval_summary(metrics: Mapping[str, Mapping[str, float]], limit: int = 4
                  ) -> str:
  """A short text of an evaluation for the progress bar.

  Two tasks or fewer: ``task/metric=value`` each; more: each metric's mean
  over the tasks that report it; at most ``limit`` entries (example counts
  left out).
  """
  if len(metrics) <= 2:
    items = [(f'{task}/{name}', value) for task, values in metrics.items()
             for name, value in values.items() if name != 'count']
  else:
    pooled: dict[str, list[float]] = {}
    for values in metrics.values():
      for name, value in values.items():
        if name != 'count':
          pooled.setdefault(name, []).append(value)
    items = [(f'mean/{name}', float(np.mean(v))) for name, v in pooled.items()]
  return ' '.join(f'{k}={v:.4g}' for k, v in items[:limit])


def _progress(chunk: Mapping[str, np.ndarray]) -> dict[str, str]:
  """The progress bar's loss and dominance entries at ``chunk``'s last
  step: the first tasks' losses, or in a sweep each run's summed loss."""
  losses, dominance = chunk['losses'][-1], chunk['dominance_rate'][-1]
  if losses.ndim == 1:
    return {'loss': ' '.join(f'{x:.3f}' for x in losses[:4]),
            'dominance': f'{float(dominance):.3g}'}
  return {'loss/run': ' '.join(f'{x:.3f}' for x in losses.sum(-1)[:8]),
          'dominance': f'{float(np.mean(dominance)):.3g}'}


def _eval_lines(evaluation: Mapping[str, Any],
                runs: Sequence[Mapping[str, Any]] | None) -> list[str]:
  """The lines an evaluation writes above the progress bar (one per run)."""
  step, metrics = evaluation['step'], evaluation['metrics']
  if runs is None:
    return [f'step {step}: {_eval_summary(metrics, limit=1_000)}']
  return [f'step {step} run {r} ({_run_text(run)}): '
          f'{_eval_summary(m, limit=1_000)}'
          for r, (run, m) in enumerate(zip(runs, metrics))]


def _eval_postfix(metrics: Any) -> str:
  """The progress bar's latest evaluation (its first metric per run)."""
  if isinstance(metrics, Mapping):
    return _eval_summary(metrics)
  return ' | '.join(_eval_summary(m, limit=1) for m in metrics)


def _run_text(run: Mapping[str, Any]) -> str:
  return ' '.join(f'{k}={v:g}' for k, v in run.items())


class _StopSignals:
  """SIGTERM/SIGINT handlers for the loop: the first signal only records
  itself (the loop checkpoints at the next step boundary and returns); a
  second one stops at once (KeyboardInterrupt / SystemExit). The previous
  handlers are back on exit. With ``install=False``, or outside the main
  thread (where Python cannot install handlers), nothing is installed."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, install: bool = True):
    self.received: str | None = None
    self._install = install
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      raise SystemExit(128 + signum)
    self.received = signal.Signals(signum).name

  def __enter__(self):
    if self._install and threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
    return False


def _any_process(flags: tuple[bool, ...]) -> tuple[bool, ...]:
  """``flags`` or-ed over all processes (a collective when there are
  several), so that every process checkpoints and stops at the same step."""
  if jax.process_count() == 1:
    return flags
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
  return tuple(bool(x) for x in
               np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))


# -- the loop ---------------------------------------------------------------------


def _to_host(logs: list[StepLog]) -> dict[str, np.ndarray]:
  stacked = jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *logs))
  out = {'losses': stacked.losses, 'weights': stacked.weights,
         'skipped': stacked.skipped, 'learning_rate': stacked.learning_rate}
  for field, value in stacked.diagnostics._asdict().items():
    out[field] = value
  return out


def _concat(history: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate(v) for k, v in history.items()}


def _default_data(config: Config, split: str, **kwargs):
  from mtl_optax import data
  return data.load(config.dataset, split, data_dir=config.data_dir,
                   **config.dataset_options, **kwargs)


def train(config: Config, *, workdir: str | os.PathLike | None = None,
          progress: bool = True,
          data_fn: Callable[..., Iterator[Batch]] | None = None,
          num_train_examples: int | None = None,
          stop_after: int | None = None,
          mesh: jax.sharding.Mesh | None = None,
          sweep: Mapping[str, Sequence[Any]] | None = None) -> TrainResult:
  """Trains ``config``; resumes from ``workdir``'s latest checkpoint.

  With a ``workdir``, a run survives being killed: checkpoints are saved
  every ``config.checkpoint_every_steps`` steps and every
  ``config.checkpoint_every_seconds`` seconds (asynchronously), and SIGTERM
  or SIGINT (handlers installed for the call only, in the main thread) make
  the loop save at the next step boundary and return with
  ``interrupted`` set (a second signal stops at once). ``log.jsonl`` holds
  the config, one record per step (``step``, ``losses``, ``weights``,
  ``skipped``, ``learning_rate`` and the Gramian diagnostics), one per
  evaluation (``{'eval': {'step', 'metrics'}}``) and ``resumed`` /
  ``interrupted`` events, written and flushed every ``log_every_steps``
  steps; a resumed run first drops the records after its checkpoint's step,
  so the log holds every step exactly once however the run was stopped.

  With a ``sweep`` (e.g. ``{'learning_rate': [1e-3, 3e-3, 1e-2], 'seed':
  [0, 1]}``), the runs of the product of its axes (``sweep_runs``: in
  lexicographic order, the last axis fastest) train as one program
  (``build_sweep``): their states are stacked and the step is
  ``jax.vmap``-ed over them. All runs read the same batches, in the order
  that ``config.seed`` gives: a seed sweep varies the initialisation and
  the method's randomness, not the data order. Run ``r`` trains as
  ``config.replace(**runs[r])`` would, up to float rounding (the vmapped
  program computes the same values by other kernels). The history and the
  evaluations get a run axis (see ``TrainResult``; ``result.run(r)`` is run
  ``r`` alone); every ``log.jsonl`` step record holds the runs' values as
  lists (``losses`` ``[R][T]``, ``learning_rate`` ``[R]``: each run's rate
  × the schedule, ...), the config record has ``sweep`` and ``runs``. A
  checkpoint holds all the runs and resumes only with the same sweep. On a
  CPU, sequential runs are faster (one run fills its cores: R = 6 vmapped
  LeNet runs cost 1.3-2.8× as much per run, see ``build_sweep``); the grid
  pays off on an accelerator that one run leaves idle.

  Args:
    config: the run.
    workdir: where checkpoints and ``log.jsonl`` go (None: nowhere, no
      checkpoints).
    progress: show a tqdm progress bar with the live task losses, the
      dominance rate and the latest evaluation (also written above the bar
      at each evaluation).
    data_fn: ``data_fn(split, *, batch_size, seed, shuffle, num_epochs,
      drop_remainder, state=None)`` -> batch iterator with ``get_state()``;
      default ``mtl_optax.data.load`` on ``config.dataset``. Multi-input
      (``Config.multi_input``): an iterator of ``{task: batch}`` that also
      has ``per_task()`` for the evaluation, e.g. a
      ``data.MultiInputLoader``.
    num_train_examples: size of the training split (default: asked from
      the data iterator's ``num_examples``).
    stop_after: stop (with a checkpoint) after this global step, as if the
      run were interrupted there; for tests of resumption.
    mesh: data-parallel training over this device mesh (e.g.
      ``jax.make_mesh((jax.device_count(),), ('data',))``): the state is
      replicated, every batch is sharded over the mesh's first axis with
      ``mtl_optax.sharding.shard_batch``, and the same jitted step computes
      the global-batch per-task gradients (see ``mtl_optax.sharding``). In a
      multi-process run each process's loader yields its own part of the
      batch. None: the default device.
    sweep: ``{field: values}`` of the fields ``SWEEPABLE``
      (``'learning_rate'``, ``'seed'``) overriding ``config``'s; None: the
      single run ``config``.

  Returns:
    A ``TrainResult``: the final state, the per-step history of this call
    (losses, weights, diagnostics, skipped, learning rate), the evaluations
    of the whole run (those of earlier, resumed calls are kept with the
    checkpoint), the mean seconds per training step over the whole run (the
    first two steps of each call, evaluation and checkpoints excluded; the
    input pipeline included) and ``interrupted``: the signal's name if a
    signal stopped the run early; for a sweep, ``runs``, each run's
    overrides, and a run axis in the state, history and evaluations (see
    ``TrainResult``).

  Raises:
    ValueError: an invalid ``sweep`` (the message names the fix), or a
      ``workdir`` whose checkpoint is of other runs.
  """
  axes = None if sweep is None else sweep_axes(sweep)   # fail fast
  multi_input = is_multi_input(config)
  data_fn = data_fn or (lambda split, **kw: _default_data(config, split, **kw))
  manager = _checkpoint_manager(workdir) if workdir is not None else None

  def train_stream(state=None):
    return data_fn(config.train_split, batch_size=config.batch_size,
                   seed=config.seed, shuffle=True, num_epochs=None,
                   drop_remainder=True, state=state)

  stream = train_stream()
  if num_train_examples is None:
    num_train_examples = stream.num_examples
  if axes is None:
    experiment = build(config, num_train_examples=num_train_examples)
  else:
    experiment = build_sweep(config, axes,
                             num_train_examples=num_train_examples)
  runs = experiment.runs
  # The step donates its input state: keep the experiment's own intact.
  state = jax.tree.map(jnp.copy, experiment.init_state)
  restored = None
  if manager is not None:
    try:
      # Whether the checkpoint fits is read from its JSON record and array
      # metadata before any array is: a restore that fails part-way leaves
      # TensorStore reads in flight, whose callbacks can outlive orbax's
      # event loop.
      if manager.latest_step() is not None:
        _check_same_runs(_saved_runs(manager), runs, workdir)
        _check_same_arrays(manager, state, workdir)
        restored = restore_checkpoint(manager, state, with_meta=True)
    except BaseException:
      manager.close()
      if hasattr(stream, 'close'):
        stream.close()
      raise
  meta: dict[str, Any] = {}
  if restored is not None:
    state, data_state, meta = restored
    if hasattr(stream, 'close'):
      stream.close()
    stream = train_stream(state=data_state)
  place = place_eval = lambda batch: batch
  if mesh is not None:
    from mtl_optax import sharding
    # The loop lets the compiler propagate shardings (Auto axes): under
    # Explicit axes, vmap(vjp) of a convolution over a batch-sharded input
    # is not supported by JAX 0.10 (a reshape without an output sharding).
    mesh = jax.sharding.Mesh(
        mesh.devices, mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(state, replicated)
    place = lambda batch: sharding.shard_batch(batch, mesh, mesh.axis_names[0])

    def place_eval(batch):   # the last, partial evaluation batch: replicated
      size = len(next(iter(jax.tree.leaves(batch))))
      if size % mesh.shape[mesh.axis_names[0]] == 0 or jax.process_count() > 1:
        return place(batch)
      return jax.device_put(batch, replicated)

  first_step = int(state.step)
  main_process = jax.process_index() == 0
  log_file = None

  def write_log(record):
    if log_file is not None:
      log_file.write(json.dumps(record, default=str) + '\n')

  if workdir is not None and main_process:
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    log_path = pathlib.Path(workdir) / 'log.jsonl'
    # Records after the checkpoint's step (a run killed since) are dropped:
    # they are written again as those steps are recomputed.
    _truncate_log(log_path, None if restored is None else first_step)
    log_file = open(log_path, 'a')
    if restored is None:
      write_log({'config': config.to_dict()} if runs is None else
                {'config': config.to_dict(), 'sweep': axes,
                 'runs': list(runs)})
    else:
      write_log({'resumed': {'step': first_step, 'time': time.time()}})
      print(f'resumed from step {first_step}'
            + (' (the run is complete)' if first_step >= experiment.num_steps
               else ''), file=sys.stderr, flush=True)
    log_file.flush()

  eval_every = max(int(round(config.eval_every_epochs *
                             experiment.steps_per_epoch)), 1)
  last_step = experiment.num_steps if stop_after is None else min(
      stop_after, experiment.num_steps)
  evaluations: list[dict[str, Any]] = list(meta.get('evaluations', ()))
  bar = None
  if progress:
    from tqdm.auto import tqdm
    runs_text = '' if runs is None else f', {len(runs)} runs'
    bar = tqdm(total=experiment.num_steps, initial=first_step,
               desc=f'{config.method} ({config.level}{runs_text})',
               unit='step')
  postfix: dict[str, Any] = {}
  if evaluations:
    postfix['eval'] = _eval_postfix(evaluations[-1]['metrics'])

  history: dict[str, list[np.ndarray]] = {}
  pending: list[StepLog] = []
  logged = [first_step]        # the last step whose record is written
  # Seconds and steps timed by earlier calls of this run (kept with the
  # checkpoint), and this call's clock.
  timed_before = (float(meta.get('timed_seconds', 0.0)),
                  int(meta.get('timed_steps', 0)))
  timing = {'start': None, 'steps': 0, 'excluded': 0.0}

  def timed(now: float) -> tuple[float, int]:
    """Seconds and steps timed until ``now``, this call's and earlier's."""
    seconds, steps = timed_before
    if timing['start'] is not None and timing['steps']:
      seconds += now - timing['start'] - timing['excluded']
      steps += timing['steps']
    return seconds, steps

  def flush():
    """Hands the pending steps to the history, the bar and the log."""
    if not pending:
      return
    chunk = _to_host(pending)
    for k, v in chunk.items():
      history.setdefault(k, []).append(v)
    if bar is not None:
      postfix.update(_progress(chunk))
      bar.set_postfix(postfix, refresh=False)
    if log_file is not None:
      for record in _step_records(chunk, logged[0] + 1, runs is not None):
        write_log(record)
      log_file.flush()
    logged[0] += len(pending)
    pending.clear()

  def eval_split(split):
    batches = data_fn(split,
                      batch_size=config.eval_batch_size or config.batch_size,
                      seed=0, shuffle=False, num_epochs=1,
                      drop_remainder=False)
    if multi_input:
      if not hasattr(batches, 'per_task'):
        raise TypeError(
            'multi-input evaluation reads each task\'s split with per_task(); '
            f'data_fn returned a {type(batches).__name__}. Return a '
            'mtl_optax.data.MultiInputLoader (one source per task).')
      batches = batches.per_task(config.max_eval_batches)
    return evaluate(experiment, state, map(place_eval, batches))

  def run_eval():
    if config.eval_split is None:
      return
    result = {'step': int(state.step)}
    if runs is not None:
      result['runs'] = list(runs)
    result['metrics'] = eval_split(config.eval_split)
    if config.extra_eval_splits:
      result['extra_metrics'] = {split: eval_split(split)
                                 for split in config.extra_eval_splits}
    evaluations.append(result)
    if bar is not None:
      postfix['eval'] = _eval_postfix(result['metrics'])
      bar.set_postfix(postfix, refresh=False)
      for line in _eval_lines(result, runs):
        bar.write(line, file=sys.stderr)
    if log_file is not None:
      write_log({'eval': result})
      log_file.flush()

  saved_timing = {}       # step -> the timing a checkpoint stored

  def checkpoint(now: float):
    seconds, steps = timed(now)
    saved_timing[int(state.step)] = seconds, steps
    record = {'evaluations': list(evaluations), 'timed_seconds': seconds,
              'timed_steps': steps}
    if runs is not None:
      record['runs'] = list(runs)
    save_checkpoint(manager, state, stream.get_state(), wait=False,
                    meta=record)
    if log_file is not None:      # the log holds every step of the checkpoint
      os.fsync(log_file.fileno())

  interrupted = None
  # Without a workdir there is nothing to save: signals act as usual.
  stop = _StopSignals(install=manager is not None)
  every_steps = config.checkpoint_every_steps
  every_seconds = config.checkpoint_every_seconds
  last_save = time.monotonic()
  try:
    with stop:
      for step in range(first_step, last_step):
        batch = place(next(stream))
        state, log = experiment.train_step(state, batch)
        pending.append(log)
        done = step + 1
        log_now = done % config.log_every_steps == 0 or done == last_step
        if log_now:
          flush()
        if step == first_step + 1:      # compiled and warm: start the clock
          jax.block_until_ready(state.step)
          timing['start'], timing['steps'] = time.perf_counter(), 0
        elif timing['start'] is not None:
          timing['steps'] += 1
        if bar is not None:
          bar.update(1)
        # A signal, or the time interval: every process decides together
        # (at log steps when there are several: a collective).
        stop_now = time_due = False
        if log_now or jax.process_count() == 1:
          stop_now, time_due = _any_process((
              stop.received is not None,
              manager is not None and every_seconds is not None
              and time.monotonic() - last_save >= every_seconds))
        evaluate_now = done % eval_every == 0 or done == experiment.num_steps
        checkpoint_now = manager is not None and (
            bool(every_steps and done % every_steps == 0) or
            done == last_step or time_due or stop_now)
        if evaluate_now or checkpoint_now:
          jax.block_until_ready(state)   # the steps so far count as training
          tick = time.perf_counter()
          flush()
          if evaluate_now:
            run_eval()
          if checkpoint_now:
            checkpoint(tick)
            last_save = time.monotonic()
          timing['excluded'] += time.perf_counter() - tick
        if stop_now:
          interrupted = stop.received or 'a signal to another process'
          break
    flush()
    jax.block_until_ready(state.step)
    # As stored with the last checkpoint, so that the run reports the same
    # figure when it is run again, complete.
    seconds, steps = saved_timing.get(int(state.step)) or timed(
        time.perf_counter())
    seconds_per_step = seconds / steps if steps else math.nan
    if interrupted is not None:
      write_log({'interrupted': {'step': int(state.step),
                                 'signal': interrupted, 'time': time.time()}})
      if main_process:
        message = (f'interrupted by {interrupted} at step {int(state.step)}: '
                   'checkpoint saved; run again to resume')
        if bar is not None:
          bar.write(message, file=sys.stderr)
        else:
          print(message, file=sys.stderr, flush=True)
  finally:
    if bar is not None:
      bar.close()
    if manager is not None:      # the last (asynchronous) save is on disk
      manager.wait_until_finished()
      manager.close()
    if log_file is not None:
      log_file.close()
    if hasattr(stream, 'close'):
      stream.close()
  return TrainResult(state, _concat(history) if history else {}, evaluations,
                     seconds_per_step, interrupted, runs)
