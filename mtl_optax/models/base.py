"""The multi-task model protocol and its functional view.

A ``MultiTaskModel`` is a shared ``encoder`` and one head per task::

    z = model.encode(x)            # any pytree (a feature vector, a tuple of maps)
    outputs = model.decode(z)      # {task: output}
    outputs = model(x)             # decode(encode(x))

``functional(model)`` splits it into graph definitions and plain-dict states
(``params``, ``batch_stats``, each ``{'encoder': ..., 'heads': ...}``) and
gives pure functions of them, for per-task gradients
(``mtl.value_and_jacobian``) and the representation-level step
(``mtl.representation_grads``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtl_optax import jacobian as jacobian_lib

PyTree = Any
TaskLoss = Callable[[Any, Mapping[str, Any]], jax.Array]
PARTS = ('encoder', 'heads')


class MultiTaskModel(nnx.Module):
  """A shared encoder and one head per task.

  Attributes:
    encoder: ``encoder(x) -> z`` (any pytree).
    heads: ``nnx.Dict`` task name -> head, ``head(z) -> output``. A head may
      hold a reference to a module shared with other heads (MTAN's attention
      convolutions); ``functional`` then marks its parameters as shared.
    tasks: task names in a fixed order (the order of the loss vector).

  BatchNorm follows the NNX modes: ``model.train()`` (batch statistics,
  running averages updated; the default after construction) and
  ``model.eval()`` (running averages), or ``nnx.view(model,
  use_running_average=...)``.

  Two optional hooks, read by ``functional``, serve encoders whose output is
  not one representation that every task reads (soft parameter sharing,
  ``mtl_optax.models.architectures``): a method
  ``encoder_shared_mask(encoder_params) -> bools`` (which encoder
  parameters more than one task depends on; default: all of them) and an
  attribute ``representation_error`` (a message; when set, the
  representation-level functions raise it).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mtl_optax import models
    >>> rngs = nnx.Rngs(0)
    >>> model = models.MultiTaskModel(
    ...     nnx.Linear(3, 4, rngs=rngs),
    ...     {'a': nnx.Linear(4, 2, rngs=rngs), 'b': nnx.Linear(4, 1, rngs=rngs)})
    >>> {t: y.shape for t, y in model(jnp.ones((5, 3))).items()}
    {'a': (5, 2), 'b': (5, 1)}
  """

  def __init__(self, encoder: nnx.Module, heads: Mapping[str, nnx.Module], *,
               tasks: tuple[str, ...] | None = None):
    self.encoder = encoder
    self.heads = nnx.Dict(dict(heads))
    self.tasks = tuple(heads) if tasks is None else tuple(tasks)
    if set(self.tasks) != set(heads) or len(self.tasks) != len(heads):
      raise ValueError(f'tasks {self.tasks} do not match the heads '
                       f'{tuple(heads)}.')

  def encode(self, x: jax.Array) -> PyTree:
    return self.encoder(x)

  def decode(self, z: PyTree) -> dict[str, Any]:
    return decode_heads(self.heads, self.tasks, z)

  def __call__(self, x: jax.Array) -> dict[str, Any]:
    return self.decode(self.encode(x))


def decode_heads(heads, tasks: tuple[str, ...], z: PyTree) -> dict[str, Any]:
  """``{task: heads[task](z)}`` in ``tasks`` order."""
  return {t: heads[t](z) for t in tasks}


def num_params(module: nnx.Module) -> int:
  """Number of scalar parameters (``nnx.Param``; BatchNorm statistics are not
  parameters). Works on abstract modules from ``nnx.eval_shape``.

  Example:
    >>> from flax import nnx
    >>> from mtl_optax import models
    >>> models.num_params(nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0))))
    16
  """
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))


def _split(module: nnx.Module):
  graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat,
                                            ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        'functional() supports modules whose state is nnx.Param and '
        f'nnx.BatchStat only; found other state: {rest}')
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def _mode_graphdefs(module: nnx.Module) -> dict[bool, Any]:
  """Graph definitions of ``module`` in train (True) and eval (False) mode."""
  return {
      train: nnx.graphdef(nnx.view(module, use_running_average=not train,
                                   raise_if_not_found=False))
      for train in (True, False)
  }


def _shared_head_mask(heads: nnx.Dict, tasks: tuple[str, ...],
                      head_params: PyTree) -> PyTree:
  """True for head parameters reachable from more than one task's head."""
  owners: dict[int, set[str]] = {}
  for task in tasks:
    for _, node in nnx.iter_graph(heads[task]):
      if isinstance(node, nnx.Param):
        owners.setdefault(id(node), set()).add(task)
  shared_paths = set()
  for path, node in nnx.iter_graph(heads):
    if isinstance(node, nnx.Param) and len(owners.get(id(node), ())) > 1:
      shared_paths.add(tuple(path))

  def is_shared(path, _):
    keys = tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)
    return keys in shared_paths

  return jax.tree_util.tree_map_with_path(is_shared, head_params)


class RepresentationStep(NamedTuple):
  """Result of ``FunctionalModel.representation_step``'s step."""
  losses: jax.Array          # [T]
  grads: PyTree              # {'encoder': ..., 'heads': ...}
  batch_stats: PyTree        # new {'encoder': ..., 'heads': ...}
  aggregator_state: Any


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionalModel:
  """Pure functions of a ``MultiTaskModel``'s parameters and statistics.

  Built by ``functional(model)``. ``params`` and ``batch_stats`` hold the
  model's values at that time as nested plain dicts,
  ``{'encoder': ..., 'heads': {task: ...}}``; the functions take any values
  of that structure.

  Attributes:
    tasks: the task order of every loss vector.
    params: initial parameters ``{'encoder': ..., 'heads': ...}``.
    batch_stats: initial BatchNorm statistics, same two keys (empty dicts
      for parts without BatchNorm).
    shared_mask: bools with ``params``' structure for the aggregators'
      ``shared=``: True on the encoder and on head parameters shared by
      several tasks' heads (MTAN's attention convolutions, stored under the
      alphabetically first task), False on the task-specific heads. A model
      with an ``encoder_shared_mask`` method sets the encoder's part.
    representation_error: None, or why the model has no single shared
      representation (the model's ``representation_error``); then
      ``representation_fns``, ``representation_step`` and
      ``representation_gramians`` raise ``ValueError`` with it.
  """
  tasks: tuple[str, ...]
  params: PyTree
  batch_stats: PyTree
  shared_mask: PyTree
  _graphdefs: Mapping[str, Mapping[bool, Any]]
  representation_error: str | None = None

  # -- forward passes -------------------------------------------------------

  def encode(self, encoder_params, encoder_stats, x, *, train: bool):
    """``(z, new_encoder_stats)``; in eval mode the stats come back as given."""
    encoder = nnx.merge(self._graphdefs['encoder'][train], encoder_params,
                        encoder_stats)
    z = encoder(x)
    return z, nnx.to_pure_dict(nnx.state(encoder, nnx.BatchStat))

  def decode(self, head_params, head_stats, z, *, train: bool):
    """``({task: output}, new_head_stats)``."""
    heads = nnx.merge(self._graphdefs['heads'][train], head_params, head_stats)
    outputs = decode_heads(heads, self.tasks, z)
    return outputs, nnx.to_pure_dict(nnx.state(heads, nnx.BatchStat))

  def apply(self, params, batch_stats, x, *, train: bool):
    """``({task: output}, new_batch_stats)``: the model's forward pass."""
    z, encoder_stats = self.encode(params['encoder'], batch_stats['encoder'],
                                   x, train=train)
    outputs, head_stats = self.decode(params['heads'], batch_stats['heads'],
                                      z, train=train)
    return outputs, {'encoder': encoder_stats, 'heads': head_stats}

  # -- losses ---------------------------------------------------------------

  def _check_task_losses(self, task_losses: Mapping[str, TaskLoss]):
    if set(task_losses) != set(self.tasks):
      raise ValueError(
          f'task_losses has tasks {sorted(task_losses)}; the model has '
          f'{sorted(self.tasks)}.')

  def task_loss_vector(self, task_losses: Mapping[str, TaskLoss], outputs,
                       batch) -> jax.Array:
    """``[T]`` losses in ``tasks`` order, in float32 (float64 when a task's
    loss is float64)."""
    values = [jnp.asarray(task_losses[t](outputs[t], batch))
              for t in self.tasks]
    dtype = jnp.result_type(jnp.float32, *[v.dtype for v in values])
    return jnp.stack([v.astype(dtype) for v in values])

  def loss_fn(self, task_losses: Mapping[str, TaskLoss], *,
              train: bool = True) -> Callable:
    """The parameter-level loss for ``mtl.value_and_jacobian(..., has_aux=True)``.

    Args:
      task_losses: task -> ``fn(output, batch) -> scalar``.
      train: BatchNorm mode.

    Returns:
      ``loss_fn(params, batch_stats, batch) -> (losses [T], new_batch_stats)``,
      the input image read from ``batch['image']``.
    """
    self._check_task_losses(task_losses)

    def loss_fn(params, batch_stats, batch):
      outputs, new_stats = self.apply(params, batch_stats, batch['image'],
                                      train=train)
      return self.task_loss_vector(task_losses, outputs, batch), new_stats

    return loss_fn

  def representation_fns(self, task_losses: Mapping[str, TaskLoss], *,
                         train: bool = True) -> tuple[Callable, Callable]:
    """``(encode, heads_losses)`` for ``mtl.representation_grads``.

    Use with ``encoder_has_aux=True, heads_has_aux=True`` and call the step
    as ``step(params['encoder'], params['heads'], agg_state,
    (batch_stats['encoder'], batch['image']), (batch_stats['heads'],
    batch))``; the new statistics are ``out.encoder_aux`` and
    ``out.heads_aux``. ``representation_step`` does exactly this.

    Returns:
      ``encode(encoder_params, (encoder_stats, x)) -> (z, new_encoder_stats)``
      and ``heads_losses(head_params, z, (head_stats, batch)) -> (losses [T],
      new_head_stats)``.

    Raises:
      ValueError: the model has no single shared representation
        (``representation_error``).
    """
    if self.representation_error is not None:
      raise ValueError(self.representation_error)
    self._check_task_losses(task_losses)

    def encode(encoder_params, inputs):
      encoder_stats, x = inputs
      return self.encode(encoder_params, encoder_stats, x, train=train)

    def heads_losses(head_params, z, batch):
      head_stats, data = batch
      outputs, new_stats = self.decode(head_params, head_stats, z, train=train)
      return self.task_loss_vector(task_losses, outputs, data), new_stats

    return encode, heads_losses

  def representation_step(self, task_losses: Mapping[str, TaskLoss],
                          aggregator, *, train: bool = True,
                          preferences: jax.Array | None = None) -> Callable:
    """The representation-level ("-UB") step on ``params``/``batch_stats``.

    Args:
      task_losses: task -> ``fn(output, batch) -> scalar``.
      aggregator: any mtl_optax aggregator (``mtl.aligned_mtl()`` gives
        Aligned-MTL-UB); initialise its state with ``aggregator.init(None)``.
      train: BatchNorm mode.
      preferences: ``[T]`` weights of the heads' gradient (default ones).

    Returns:
      ``step(params, batch_stats, aggregator_state, batch, **extra) ->
      RepresentationStep(losses, grads, batch_stats, aggregator_state)``,
      ``grads`` with ``params``' structure.
    """
    encode, heads_losses = self.representation_fns(task_losses, train=train)
    inner = jacobian_lib.representation_grads(
        encode, heads_losses, aggregator, preferences=preferences,
        encoder_has_aux=True, heads_has_aux=True)

    def step(params, batch_stats, aggregator_state, batch, **extra):
      out = inner(params['encoder'], params['heads'], aggregator_state,
                  (batch_stats['encoder'], batch['image']),
                  (batch_stats['heads'], batch), **extra)
      return RepresentationStep(
          losses=out.losses,
          grads={'encoder': out.encoder_grads, 'heads': out.head_grads},
          batch_stats={'encoder': out.encoder_aux, 'heads': out.heads_aux},
          aggregator_state=out.aggregator_state)

    return step

  def representation_gramians(self, task_losses: Mapping[str, TaskLoss], *,
                              train: bool = True) -> Callable:
    """Both levels' Gramians and the Jacobian isotropy, for one batch.

    ``mtl.representation_gramians`` on this model: ``K_z`` of the per-task
    gradients with respect to the encoder's output ``z`` (flattened over
    the batch), ``K_θ`` of those with respect to the encoder's parameters,
    and ``mtl.diagnostics.jacobian_isotropy(K_θ, K_z)`` (1 when the
    encoder's Jacobian is isotropic on the tasks' span, the condition under
    which the representation-level step conflicts with no task; see
    ``mtl.representation_grads``). Costs about a parameter-level step.

    Args:
      task_losses: task -> ``fn(output, batch) -> scalar``.
      train: BatchNorm mode (batch statistics in train mode; the new
        statistics are discarded).

    Returns:
      ``fn(params, batch_stats, batch) -> mtl.RepresentationGramians``, a
      pure function to ``jax.jit``.

    Example:
      >>> import jax, numpy as np
      >>> from mtl_optax import models
      >>> model = models.create('lenet_multimnist', rngs=0)
      >>> fm = models.functional(model)
      >>> rng = np.random.default_rng(0)
      >>> batch = {'image': rng.uniform(size=(4, 28, 28, 1)).astype(np.float32),
      ...          'left': rng.integers(0, 10, 4), 'right': rng.integers(0, 10, 4)}
      >>> fn = fm.representation_gramians(
      ...     models.default_task_losses('lenet_multimnist'))
      >>> out = jax.jit(fn)(fm.params, fm.batch_stats, batch)
      >>> out.gram_theta.shape, bool(out.jacobian_isotropy >= 1)
      ((2, 2), True)
    """
    encode, heads_losses = self.representation_fns(task_losses, train=train)
    inner = jacobian_lib.representation_gramians(
        encode, heads_losses, encoder_has_aux=True, heads_has_aux=True)

    def fn(params, batch_stats, batch):
      return inner(params['encoder'], params['heads'],
                   (batch_stats['encoder'], batch['image']),
                   (batch_stats['heads'], batch))

    return fn

  # -- back to the stateful model ---------------------------------------------

  def merge(self, params, batch_stats, *, train: bool = False
            ) -> MultiTaskModel:
    """A new ``MultiTaskModel`` holding ``params`` and ``batch_stats``."""
    return MultiTaskModel(
        nnx.merge(self._graphdefs['encoder'][train], params['encoder'],
                  batch_stats['encoder']),
        nnx.merge(self._graphdefs['heads'][train], params['heads'],
                  batch_stats['heads']),
        tasks=self.tasks)

  @staticmethod
  def update_model(model: MultiTaskModel, params, batch_stats) -> None:
    """Writes ``params`` and ``batch_stats`` into ``model`` in place."""
    for part in PARTS:
      nnx.update(getattr(model, part), params[part], batch_stats[part])


def functional(model: MultiTaskModel) -> FunctionalModel:
  """The functional view of ``model`` (its current values as the defaults).

  Args:
    model: a ``MultiTaskModel`` (``encoder``, ``heads``, ``tasks``) whose
      state is ``nnx.Param`` and ``nnx.BatchStat`` only; its optional
      ``encoder_shared_mask`` and ``representation_error`` (see
      ``MultiTaskModel``) set ``shared_mask['encoder']`` and
      ``representation_error``.

  Returns:
    A ``FunctionalModel``; see ``mtl_optax.models`` for an example.
  """
  graphdefs, params, stats = {}, {}, {}
  for part in PARTS:
    module = getattr(model, part)
    _, params[part], stats[part] = _split(module)
    graphdefs[part] = _mode_graphdefs(module)
  encoder_mask = getattr(model, 'encoder_shared_mask', None)
  shared_mask = {
      'encoder': (jax.tree.map(lambda _: True, params['encoder'])
                  if encoder_mask is None else encoder_mask(params['encoder'])),
      'heads': _shared_head_mask(model.heads, model.tasks, params['heads']),
  }
  return FunctionalModel(
      tasks=tuple(model.tasks), params=params, batch_stats=stats,
      shared_mask=shared_mask, _graphdefs=graphdefs,
      representation_error=getattr(model, 'representation_error', None))
