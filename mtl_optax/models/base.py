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

Multi-input (each task has its own examples, e.g. the Office domains): the
loss and representation functions take ``multi_input=True`` and then read
``{task: batch_t}``, task ``t``'s loss computed on its own batch alone
(``FunctionalModel.apply_tasks``).
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


# The non-parameter state the functional view carries in ``batch_stats``:
# BatchNorm's statistics and the random streams of dropout layers
# (``nnx.Dropout(rate, rngs=rngs)``: a key and a counter per layer).
MUTABLE = (nnx.BatchStat, nnx.RngState)


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)


def _pure_state(state) -> PyTree:
  """A plain dict of ``state`` with typed PRNG keys as their raw ``uint32``
  data, so that checkpoints, sweeps and ``jax.tree`` maps see only plain
  arrays."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      nnx.to_pure_dict(state))


def _merge(graphdef, params, stats):
  """``nnx.merge`` of plain-dict states; the dropout streams' raw keys
  (``_pure_state``) are wrapped back into typed keys."""
  module = nnx.merge(graphdef, params, stats)
  _wrap_keys(module)
  return module


def _wrap_keys(module: nnx.Module) -> None:
  keys = nnx.state(module, nnx.RngKey)
  if jax.tree.leaves(keys):
    nnx.update(module, jax.tree.map(
        lambda x: x if _is_key(x) else jax.random.wrap_key_data(x), keys))


def _mutable_state(module: nnx.Module) -> PyTree:
  return _pure_state(nnx.state(module, MUTABLE))


def _split(module: nnx.Module):
  graphdef, params, stats, rest = nnx.split(module, nnx.Param, MUTABLE, ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        'functional() supports modules whose state is nnx.Param, '
        'nnx.BatchStat and dropout\'s random streams (nnx.RngState) only; '
        f'found other state: {rest}. Keep other values out of the model '
        '(plain Python attributes, or inputs of the loss).')
  return graphdef, nnx.to_pure_dict(params), _pure_state(stats)


def _mode_graphdefs(module: nnx.Module) -> dict[bool, Any]:
  """Graph definitions of ``module`` in train (True: batch statistics,
  dropout on) and eval (False: running averages, dropout off) mode."""
  return {
      train: nnx.graphdef(nnx.view(module, use_running_average=not train,
                                   deterministic=not train,
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


def task_images(batches: Mapping[str, Mapping[str, Any]],
                tasks: tuple[str, ...]) -> jax.Array:
  """The tasks' images stacked on a leading task axis, ``[T, B, ...]``.

  Args:
    batches: ``{task: batch}``, one batch per task, each with ``'image'``.
    tasks: the task order.

  Returns:
    ``stack([batches[t]['image'] for t in tasks])``.

  Raises:
    ValueError: ``batches`` lacks a task or has one the model has not, or
      the tasks' images differ in shape (the message names the fix).

  Example:
    >>> import jax.numpy as jnp
    >>> task_images({'b': {'image': jnp.ones((2, 3))},
    ...              'a': {'image': jnp.zeros((2, 3))}}, ('a', 'b')).shape
    (2, 2, 3)
  """
  if not isinstance(batches, Mapping) or set(batches) != set(tasks):
    have = sorted(batches) if isinstance(batches, Mapping) else type(batches)
    raise ValueError(
        f'multi_input=True reads one batch per task, {{task: batch}}, with '
        f'the tasks {sorted(tasks)}; got {have}. Feed the tasks\' batches of '
        'a multi-input loader (mtl_optax.data.MultiInputLoader), or use '
        'multi_input=False for one batch holding every task\'s target.')
  shapes = {t: tuple(jnp.shape(batches[t]['image'])) for t in tasks}
  if len(set(shapes.values())) > 1:
    raise ValueError(
        f'multi_input=True needs the same image shape in every task\'s batch '
        f'(one batch size per task); got {shapes}. Use equal per-task batch '
        'sizes (the training stream drops incomplete batches: '
        'drop_remainder=True).')
  return jnp.stack([jnp.asarray(batches[t]['image']) for t in tasks])


def _select(tree: PyTree, i: int) -> PyTree:
  return jax.tree.map(lambda a: a[i], tree)


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
    batch_stats: the model's other state, same two keys: BatchNorm's
      statistics and dropout layers' random streams (a raw ``uint32`` key
      and a counter each: a training-mode pass draws its masks from them
      and returns the counters advanced, so every step gets fresh masks,
      reproducible from the seed and restored with a checkpoint; every
      task's loss of one pass sees the same masks; eval mode draws none).
      Empty dicts for parts with neither.
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
    encoder = _merge(self._graphdefs['encoder'][train], encoder_params,
                     encoder_stats)
    z = encoder(x)
    return z, _mutable_state(encoder)

  def decode(self, head_params, head_stats, z, *, train: bool):
    """``({task: output}, new_head_stats)``."""
    heads = _merge(self._graphdefs['heads'][train], head_params, head_stats)
    outputs = decode_heads(heads, self.tasks, z)
    return outputs, _mutable_state(heads)

  def apply(self, params, batch_stats, x, *, train: bool):
    """``({task: output}, new_batch_stats)``: the model's forward pass."""
    z, encoder_stats = self.encode(params['encoder'], batch_stats['encoder'],
                                   x, train=train)
    outputs, head_stats = self.decode(params['heads'], batch_stats['heads'],
                                      z, train=train)
    return outputs, {'encoder': encoder_stats, 'heads': head_stats}

  # -- multi-input forward passes ----------------------------------------------

  def encode_tasks(self, encoder_params, encoder_stats, images, *,
                   train: bool):
    """Each task's images through the encoder alone: ``(z, new_stats)``.

    ``images`` ``[T, B, ...]`` holds task ``t``'s batch at ``t``; the encoder
    runs on each in turn (a ``lax.scan`` over the task axis, tasks in
    order), so BatchNorm normalises every task's batch with that batch's
    own statistics and ``z_t`` depends on task ``t``'s images only. In
    train mode the running averages are updated once per task, in task
    order: LibMTL's multi-input loop (one PyTorch forward pass per task)
    exactly.

    Returns:
      ``(z, new_encoder_stats)``, every leaf of ``z`` with the leading task
      axis; in eval mode the statistics come back as given.
    """
    def one_task(stats, x):
      z, new_stats = self.encode(encoder_params, stats, x, train=train)
      return (new_stats if train else stats), z

    stats, z = jax.lax.scan(one_task, encoder_stats, images)
    return z, stats

  def decode_tasks(self, head_params, head_stats, z, *, train: bool):
    """Each task's head on its own representation: ``({task: output},
    new_head_stats)``, ``heads[t](z[t])`` for ``z`` with a leading task axis
    in ``tasks`` order."""
    heads = _merge(self._graphdefs['heads'][train], head_params, head_stats)
    outputs = {t: heads[t](_select(z, i)) for i, t in enumerate(self.tasks)}
    return outputs, _mutable_state(heads)

  def apply_tasks(self, params, batch_stats, images, *, train: bool):
    """Multi-input forward pass: task ``t``'s head on task ``t``'s images.

    Args:
      params: ``{'encoder': ..., 'heads': ...}``.
      batch_stats: the same keys.
      images: ``[T, B, ...]``, task ``t``'s batch at ``t`` (``task_images``).
      train: BatchNorm mode.

    Returns:
      ``({task: output of its head on its own batch}, new_batch_stats)``.
    """
    z, encoder_stats = self.encode_tasks(params['encoder'],
                                         batch_stats['encoder'], images,
                                         train=train)
    outputs, head_stats = self.decode_tasks(params['heads'],
                                            batch_stats['heads'], z,
                                            train=train)
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
    return self._stack_losses(
        [task_losses[t](outputs[t], batch) for t in self.tasks])

  def task_loss_vector_multi_input(self, task_losses: Mapping[str, TaskLoss],
                                   outputs, batches) -> jax.Array:
    """``[T]`` losses, task ``t``'s on its own batch ``batches[t]``."""
    return self._stack_losses(
        [task_losses[t](outputs[t], batches[t]) for t in self.tasks])

  @staticmethod
  def _stack_losses(values) -> jax.Array:
    values = [jnp.asarray(v) for v in values]
    dtype = jnp.result_type(jnp.float32, *[v.dtype for v in values])
    return jnp.stack([v.astype(dtype) for v in values])

  def loss_fn(self, task_losses: Mapping[str, TaskLoss], *,
              train: bool = True, multi_input: bool = False) -> Callable:
    """The parameter-level loss for ``mtl.value_and_jacobian(..., has_aux=True)``.

    ``mtl.value_and_jacobian`` needs nothing more for multi-input tasks: it
    differentiates any function of the parameters that returns the ``[T]``
    losses, whatever the batches, so with ``multi_input=True`` row ``t`` of
    the Jacobian is the gradient of task ``t``'s loss on its own batch.

    Args:
      task_losses: task -> ``fn(output, batch) -> scalar``.
      train: BatchNorm mode.
      multi_input: the batch is ``{task: batch_t}`` (one batch per task, the
        same batch size): task ``t``'s loss is its head's on
        ``batch_t['image']`` against ``batch_t`` (``apply_tasks``).

    Returns:
      ``loss_fn(params, batch_stats, batch) -> (losses [T], new_batch_stats)``,
      the input image read from ``batch['image']`` (multi-input: from each
      task's ``batch[t]['image']``).
    """
    self._check_task_losses(task_losses)

    if multi_input:
      def multi_input_loss_fn(params, batch_stats, batches):
        outputs, new_stats = self.apply_tasks(
            params, batch_stats, task_images(batches, self.tasks),
            train=train)
        return (self.task_loss_vector_multi_input(task_losses, outputs,
                                                  batches), new_stats)
      return multi_input_loss_fn

    def loss_fn(params, batch_stats, batch):
      outputs, new_stats = self.apply(params, batch_stats, batch['image'],
                                      train=train)
      return self.task_loss_vector(task_losses, outputs, batch), new_stats

    return loss_fn

  def representation_fns(self, task_losses: Mapping[str, TaskLoss], *,
                         train: bool = True, multi_input: bool = False
                         ) -> tuple[Callable, Callable]:
    """``(encode, heads_losses)`` for ``mtl.representation_grads``.

    Use with ``encoder_has_aux=True, heads_has_aux=True`` and call the step
    as ``step(params['encoder'], params['heads'], agg_state,
    (batch_stats['encoder'], batch['image']), (batch_stats['heads'],
    batch))``; the new statistics are ``out.encoder_aux`` and
    ``out.heads_aux``. ``representation_step`` does exactly this.

    With ``multi_input=True`` the inputs are ``(encoder_stats, images)``,
    ``images = task_images(batches, tasks)`` ``[T, B, ...]``, and the batch
    ``(head_stats, batches)``: ``z`` is the stack of every task's own
    batch's representation, ``z_t = encode(x_t)``, and task ``t``'s loss
    reads ``z_t`` only. So ``∂L_s/∂z`` is zero outside slice ``s``, and the
    z-level Gramian is **diagonal**, ``K_z = diag(‖∂L_t/∂z_t‖²)``: the
    "-UB" step is well defined (``Σ_t c_t ∂L_t/∂z`` is the cotangent of the
    stacked ``z``, and MGDA-UB's bound ``‖∇_θ Σ c_t L_t‖ ≤ ‖∂z/∂θ‖ ‖Σ_t c_t
    ∂L_t/∂z‖`` holds for it), but the tasks never conflict at ``z``: the
    methods reduce to rescaling the tasks' z-gradients by their norms
    (Aligned-MTL-UB: ``c_t = w_t·λ_min^½/‖∂L_t/∂z_t‖``; MGDA-UB: ``c_t ∝
    1/‖∂L_t/∂z_t‖²``). Conflicts between the tasks arise in the shared
    encoder's parameters only; the parameter level sees them.

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

    if multi_input:
      def encode_tasks(encoder_params, inputs):
        encoder_stats, images = inputs
        return self.encode_tasks(encoder_params, encoder_stats, images,
                                 train=train)

      def heads_losses_tasks(head_params, z, batch):
        head_stats, batches = batch
        outputs, new_stats = self.decode_tasks(head_params, head_stats, z,
                                               train=train)
        return (self.task_loss_vector_multi_input(task_losses, outputs,
                                                  batches), new_stats)

      return encode_tasks, heads_losses_tasks

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
                          preferences: jax.Array | None = None,
                          multi_input: bool = False) -> Callable:
    """The representation-level ("-UB") step on ``params``/``batch_stats``.

    Args:
      task_losses: task -> ``fn(output, batch) -> scalar``.
      aggregator: any mtl_optax aggregator (``mtl.aligned_mtl()`` gives
        Aligned-MTL-UB); initialise its state with ``aggregator.init(None)``.
      train: BatchNorm mode.
      preferences: ``[T]`` weights of the heads' gradient (default ones).
      multi_input: the batch is ``{task: batch_t}``; ``z`` stacks every
        task's own representation and its Gramian is diagonal (see
        ``representation_fns``).

    Returns:
      ``step(params, batch_stats, aggregator_state, batch, **extra) ->
      RepresentationStep(losses, grads, batch_stats, aggregator_state)``,
      ``grads`` with ``params``' structure.
    """
    encode, heads_losses = self.representation_fns(
        task_losses, train=train, multi_input=multi_input)
    inner = jacobian_lib.representation_grads(
        encode, heads_losses, aggregator, preferences=preferences,
        encoder_has_aux=True, heads_has_aux=True)
    images = self._images_fn(multi_input)

    def step(params, batch_stats, aggregator_state, batch, **extra):
      out = inner(params['encoder'], params['heads'], aggregator_state,
                  (batch_stats['encoder'], images(batch)),
                  (batch_stats['heads'], batch), **extra)
      return RepresentationStep(
          losses=out.losses,
          grads={'encoder': out.encoder_grads, 'heads': out.head_grads},
          batch_stats={'encoder': out.encoder_aux, 'heads': out.heads_aux},
          aggregator_state=out.aggregator_state)

    return step

  def _images_fn(self, multi_input: bool) -> Callable:
    """``batch -> the encoder's input``: ``batch['image']``, or the tasks'
    stacked images (``task_images``) for multi-input batches."""
    if multi_input:
      return lambda batches: task_images(batches, self.tasks)
    return lambda batch: batch['image']

  def representation_gramians(self, task_losses: Mapping[str, TaskLoss], *,
                              train: bool = True,
                              multi_input: bool = False) -> Callable:
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
      multi_input: the batch is ``{task: batch_t}`` (``K_z`` is then
        diagonal, see ``representation_fns``).

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
    encode, heads_losses = self.representation_fns(
        task_losses, train=train, multi_input=multi_input)
    inner = jacobian_lib.representation_gramians(
        encode, heads_losses, encoder_has_aux=True, heads_has_aux=True)
    images = self._images_fn(multi_input)

    def fn(params, batch_stats, batch):
      return inner(params['encoder'], params['heads'],
                   (batch_stats['encoder'], images(batch)),
                   (batch_stats['heads'], batch))

    return fn

  # -- back to the stateful model ---------------------------------------------

  def merge(self, params, batch_stats, *, train: bool = False
            ) -> MultiTaskModel:
    """A new ``MultiTaskModel`` holding ``params`` and ``batch_stats``."""
    return MultiTaskModel(
        _merge(self._graphdefs['encoder'][train], params['encoder'],
               batch_stats['encoder']),
        _merge(self._graphdefs['heads'][train], params['heads'],
               batch_stats['heads']),
        tasks=self.tasks)

  @staticmethod
  def update_model(model: MultiTaskModel, params, batch_stats) -> None:
    """Writes ``params`` and ``batch_stats`` into ``model`` in place."""
    for part in PARTS:
      module = getattr(model, part)
      nnx.update(module, params[part], batch_stats[part])
      _wrap_keys(module)


def functional(model: MultiTaskModel) -> FunctionalModel:
  """The functional view of ``model`` (its current values as the defaults).

  Args:
    model: a ``MultiTaskModel`` (``encoder``, ``heads``, ``tasks``) whose
      state is ``nnx.Param``, ``nnx.BatchStat`` and dropout's random
      streams (``nnx.Dropout(rate, rngs=rngs)``) only; its optional
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
