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
that a resumed run continues bit-identically::

    from mtl_optax import training
    config = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                             method='aligned_mtl', data_dir=DIR)
    result = training.train(config, workdir='/tmp/run')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mtl_optax import aggregators as aggregators_lib
from mtl_optax import metrics as metrics_lib
from mtl_optax import registry
from mtl_optax.data.task_names import SEGMENTATION_CLASSES
from mtl_optax.jacobian import value_and_jacobian

PyTree = Any
Batch = Mapping[str, Any]

LEVELS = ('parameter', 'representation')


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one run needs; configs under ``benchmarks/configs`` build one.

  Attributes:
    model: a name of ``mtl_optax.models.available()``.
    dataset: a name of ``mtl_optax.data.DATASETS``.
    method: a name of ``mtl_optax.available()``.
    level: ``'parameter'`` or ``'representation'`` (the "-UB" variants).
    model_kwargs: keyword arguments of ``models.create``.
    method_kwargs: keyword arguments of the method's factory.
    dataset_options: options of ``data.load`` (e.g. ``config=`` for
      cityscapes, ``scene=`` for 7-Scenes, ``image_size=`` for CelebA).
    data_dir: the tfds data directory holding the prepared dataset.
    train_split: split to train on.
    eval_split: split to evaluate on (None: no evaluation).
    batch_size: global training batch size.
    eval_batch_size: evaluation batch size (default ``batch_size``).
    optimizer: ``'adam'``, ``'adamw'`` or ``'sgd'`` (with ``momentum``).
    learning_rate: the initial learning rate.
    momentum: SGD momentum (ignored by Adam).
    weight_decay: decoupled weight decay (``adamw``) or L2 added to SGD.
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
    checkpoint_every_steps: save a checkpoint this often (and at the end);
      None: only at the end. Needs a ``workdir``.
  """

  model: str
  dataset: str
  method: str = 'aligned_mtl'
  level: str = 'parameter'
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data_dir: str | None = None
  train_split: str = 'train'
  eval_split: str | None = 'test'
  batch_size: int = 256
  eval_batch_size: int | None = None
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  lr_decay_epochs: tuple[float, ...] = ()
  lr_decay_factor: float = 0.1
  num_epochs: float = 1.0
  num_steps: int | None = None
  seed: int = 0
  log_every_steps: int = 50
  eval_every_epochs: float = 1.0
  max_eval_batches: int | None = None
  checkpoint_every_steps: int | None = None

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


class TrainResult(NamedTuple):
  state: TrainState
  history: dict[str, np.ndarray]   # per-step arrays: losses [S, T], ...
  evaluations: list[dict[str, Any]]
  seconds_per_step: float


# -- building blocks ----------------------------------------------------------


def learning_rate_schedule(config: Config, steps_per_epoch: int
                           ) -> optax.Schedule:
  """Constant, or multiplied by ``lr_decay_factor`` after each decay epoch."""
  boundaries = {int(round(e * steps_per_epoch)): config.lr_decay_factor
                for e in config.lr_decay_epochs}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_optimizer(config: Config, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """The optimizer a config names, with its learning-rate schedule."""
  if config.optimizer == 'adam':
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


def _on_task(task: str, metric: metrics_lib.Metric,
             mask: Callable[[Batch], Any] | None = None) -> EvalMetric:
  """``metric`` on the task's output and target (and optional mask)."""
  return EvalMetric(metric, lambda out, batch: (
      out[task], batch[task], None if mask is None else mask(batch)))


def default_eval_metrics(dataset: str, tasks: tuple[str, ...], *,
                         capacity: int) -> dict[str, EvalMetric]:
  """The papers' metrics for ``dataset``'s tasks, keyed by task.

  Classification tasks report accuracy; segmentation mIoU and pixel
  accuracy; depth (or disparity) absolute/relative error and δ; normals the
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


def _check_config(config: Config) -> None:
  if config.level not in LEVELS:
    raise ValueError(f'level must be one of {LEVELS}, got {config.level!r}.')
  if config.method not in registry.available():
    raise ValueError(f'Unknown method {config.method!r}; available: '
                     f'{", ".join(registry.available())}.')


def build(config: Config, *, num_train_examples: int) -> Experiment:
  """Builds the model, optimizer, aggregator and jitted steps of ``config``.

  Args:
    config: the run's ``Config``.
    num_train_examples: size of the training split (for epochs → steps).

  Returns:
    An ``Experiment``.
  """
  from mtl_optax import models   # the zoo imports flax layers: import late

  _check_config(config)
  model = models.create(config.model, rngs=nnx.Rngs(config.seed),
                        **config.model_kwargs)
  fm = models.functional(model)
  tasks = fm.tasks
  task_losses = models.default_task_losses(config.model,
                                           **config.model_kwargs)
  t = len(tasks)

  steps_per_epoch = max(num_train_examples // config.batch_size, 1)
  num_steps = config.num_steps or max(
      int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  optimizer = make_optimizer(config, schedule)

  method_kwargs = dict(config.method_kwargs)
  if config.level == 'parameter':
    method_kwargs.setdefault('shared', fm.shared_mask)
  if config.method in ('pcgrad', 'random_weighting', 'graddrop'):
    method_kwargs.setdefault('seed', config.seed)
  aggregator = registry.for_tasks(config.method, num_tasks=t, **method_kwargs)

  if config.level == 'parameter':
    tx = optax.chain(aggregator, optimizer)
    loss_fn = fm.loss_fn(task_losses, train=True)
    init_state = TrainState(jnp.zeros((), jnp.int32), fm.params,
                            fm.batch_stats, tx.init(fm.params), ())

    def train_step(state: TrainState, batch: Batch):
      (losses, batch_stats), grads = value_and_jacobian(
          loss_fn, has_aux=True)(state.params, state.batch_stats, batch)
      updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                     losses=losses)
      agg_state = aggregators_lib.aggregator_state(opt_state)
      params, opt_state = _apply_unless_skipped(
          agg_state.last_skipped, state.params, updates, opt_state,
          state.opt_state)
      new = TrainState(state.step + 1, params, batch_stats, opt_state, ())
      return new, _log(losses, agg_state, schedule(state.step), t)

  else:
    rep_step = fm.representation_step(task_losses, aggregator, train=True)
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
                       schedule(state.step), t)

  eval_metrics = default_eval_metrics(
      config.dataset, tasks, capacity=_eval_capacity(config))

  def eval_step(metric_states, state: TrainState, batch: Batch):
    outputs, _ = fm.apply(state.params, state.batch_stats, batch['image'],
                          train=False)
    new = {}
    for name, spec in eval_metrics.items():
      pred, target, mask = spec.inputs(outputs, batch)
      new[name] = spec.metric.update(metric_states[name], pred, target, mask)
    return new

  return Experiment(
      config=config, model=fm, tasks=tasks, init_state=init_state,
      train_step=jax.jit(train_step, donate_argnums=0),
      eval_metrics=eval_metrics, eval_step=jax.jit(eval_step),
      steps_per_epoch=steps_per_epoch, num_steps=num_steps)


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


def evaluate(experiment: Experiment, state: TrainState,
             batches: Iterable[Batch]) -> dict[str, dict[str, float]]:
  """The evaluation metrics over ``batches`` (BatchNorm in eval mode).

  Returns:
    ``{name: {metric: value}}`` as Python floats.
  """
  metric_states = {name: spec.metric.init()
                   for name, spec in experiment.eval_metrics.items()}
  for i, batch in enumerate(batches):
    if (experiment.config.max_eval_batches is not None
        and i >= experiment.config.max_eval_batches):
      break
    metric_states = experiment.eval_step(metric_states, state, batch)
  return {name: {k: float(v) for k, v in
                 spec.metric.compute(metric_states[name]).items()}
          for name, spec in experiment.eval_metrics.items()}


# -- checkpoints ----------------------------------------------------------------


def _checkpoint_manager(workdir: str | os.PathLike):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      pathlib.Path(workdir).absolute() / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def save_checkpoint(manager, state: TrainState, data_state: Mapping[str, int]
                    ) -> None:
  """Saves ``state`` and the input stream's position at ``state.step``."""
  import orbax.checkpoint as ocp
  manager.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(dict(data_state))), force=True)
  manager.wait_until_finished()


def restore_checkpoint(manager, like: TrainState
                       ) -> tuple[TrainState, dict[str, int]] | None:
  """The latest checkpoint as ``(state, data_state)``, or None if none."""
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  return restored.state, dict(restored.data)


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
          mesh: jax.sharding.Mesh | None = None) -> TrainResult:
  """Trains ``config``; resumes from ``workdir``'s latest checkpoint.

  Args:
    config: the run.
    workdir: where checkpoints and ``log.jsonl`` go (None: nowhere, no
      checkpoints).
    progress: show a tqdm progress bar with the live task losses.
    data_fn: ``data_fn(split, *, batch_size, seed, shuffle, num_epochs,
      drop_remainder, state=None)`` -> batch iterator with ``get_state()``;
      default ``mtl_optax.data.load`` on ``config.dataset``.
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

  Returns:
    A ``TrainResult``: the final state, the per-step history of this call
    (losses, weights, diagnostics, skipped, learning rate), the evaluations
    and the mean seconds per training step (the first two steps, evaluation
    and checkpoints excluded; the input pipeline included).
  """
  data_fn = data_fn or (lambda split, **kw: _default_data(config, split, **kw))
  manager = _checkpoint_manager(workdir) if workdir is not None else None

  def train_stream(state=None):
    return data_fn(config.train_split, batch_size=config.batch_size,
                   seed=config.seed, shuffle=True, num_epochs=None,
                   drop_remainder=True, state=state)

  stream = train_stream()
  if num_train_examples is None:
    num_train_examples = stream.num_examples
  experiment = build(config, num_train_examples=num_train_examples)
  # The step donates its input state: keep the experiment's own intact.
  state = jax.tree.map(jnp.copy, experiment.init_state)
  restored = restore_checkpoint(manager, state) if manager else None
  if restored is not None:
    state, data_state = restored
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

  log_file = None
  if workdir is not None:
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    log_file = open(pathlib.Path(workdir) / 'log.jsonl', 'a')
    if restored is None:
      log_file.write(json.dumps({'config': config.to_dict()},
                                default=str) + '\n')

  eval_every = max(int(round(config.eval_every_epochs *
                             experiment.steps_per_epoch)), 1)
  last_step = experiment.num_steps if stop_after is None else min(
      stop_after, experiment.num_steps)
  first_step = int(state.step)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=experiment.num_steps, initial=first_step,
               desc=f'{config.method} ({config.level})', unit='step')

  history: dict[str, list[np.ndarray]] = {}
  pending: list[StepLog] = []
  evaluations: list[dict[str, Any]] = []
  timing = {'start': None, 'steps': 0, 'excluded': 0.0}

  def flush():
    if not pending:
      return
    chunk = _to_host(pending)
    for k, v in chunk.items():
      history.setdefault(k, []).append(v)
    if bar is not None:
      bar.set_postfix(loss=' '.join(f'{x:.3f}' for x in chunk['losses'][-1]
                                    [:4]), dominance=float(
                                        chunk['dominance_rate'][-1]))
    if log_file is not None:
      log_file.write(json.dumps({
          'step': int(state.step),
          'losses': chunk['losses'][-1].tolist(),
          'weights': chunk['weights'][-1].tolist(),
          'dominance_rate': float(chunk['dominance_rate'][-1]),
          'skipped_in_window': int(chunk['skipped'].sum()),
      }) + '\n')
    pending.clear()

  def run_eval():
    if config.eval_split is None:
      return
    batches = data_fn(config.eval_split,
                      batch_size=config.eval_batch_size or config.batch_size,
                      seed=0, shuffle=False, num_epochs=1,
                      drop_remainder=False)
    result = {'step': int(state.step),
              'metrics': evaluate(experiment, state, map(place_eval, batches))}
    evaluations.append(result)
    if log_file is not None:
      log_file.write(json.dumps({'eval': result}) + '\n')

  try:
    for step in range(first_step, last_step):
      batch = place(next(stream))
      state, log = experiment.train_step(state, batch)
      pending.append(log)
      if (step + 1) % config.log_every_steps == 0 or step + 1 == last_step:
        flush()
      if step == first_step + 1:      # compiled and warm: start the clock
        jax.block_until_ready(state.step)
        timing['start'], timing['steps'] = time.perf_counter(), 0
      elif timing['start'] is not None:
        timing['steps'] += 1
      if bar is not None:
        bar.update(1)
      done = step + 1
      evaluate_now = done % eval_every == 0 or done == experiment.num_steps
      checkpoint_now = manager is not None and (
          (config.checkpoint_every_steps and
           done % config.checkpoint_every_steps == 0) or done == last_step)
      if evaluate_now or checkpoint_now:
        jax.block_until_ready(state)   # the steps so far count as training
        tick = time.perf_counter()
        if evaluate_now:
          flush()
          run_eval()
        if checkpoint_now:
          save_checkpoint(manager, state, stream.get_state())
        timing['excluded'] += time.perf_counter() - tick
    flush()
    jax.block_until_ready(state.step)
    seconds_per_step = math.nan
    if timing['start'] is not None and timing['steps']:
      seconds_per_step = (time.perf_counter() - timing['start'] -
                          timing['excluded']) / timing['steps']
  finally:
    if bar is not None:
      bar.close()
    if log_file is not None:
      log_file.close()
    if hasattr(stream, 'close'):
      stream.close()
  return TrainResult(state, _concat(history) if history else {}, evaluations,
                     seconds_per_step)
