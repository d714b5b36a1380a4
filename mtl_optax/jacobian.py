"""Gradient sources: where the stacked per-task gradients come from.

- ``value_and_jacobian``: parameter level. One forward pass, then the T
  vector-Jacobian products vmapped (what ``jax.jacrev`` does), so every leaf of
  the result carries a leading task axis ``T``.
- ``representation_grads``: representation level (the "-UB" methods). For an
  encoder-decoder ``z = encode(θ_enc, x)``, ``losses = heads(θ_heads, z)``, the
  per-task gradients are taken with respect to ``z``, any aggregator turns them
  into one cotangent for ``z``, and ONE VJP through the encoder maps it to the
  encoder's parameters: the cost of an ordinary training step.
- ``jacobian_free_gramian`` / ``jacobian_free_grads``: parameter level without
  the ``[T, P]`` Jacobian. Column ``j`` of ``K = J Jᵀ`` is ``J (Jᵀ e_j)``, a
  VJP followed by a JVP (forward-over-reverse) of the linearised loss
  function, computed for ``chunk_size`` tasks at a time; the update is then
  ONE VJP with the coefficients as cotangent. Memory is that of a training
  step plus ``chunk_size`` gradients, whatever ``T``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mtl_optax import _checks
from mtl_optax import diagnostics as diag_lib
from mtl_optax import gramians as gram_lib
from mtl_optax.methods._core import AggregatorState
from mtl_optax.methods._core import leaves_finite

PyTree = Any


def _cotangent(x: jax.Array, losses: jax.Array) -> jax.Array:
  """``x`` (``[..., T]``) typed like ``losses`` so it can be their cotangent.

  Inside ``jax.shard_map`` the losses of a batch shard vary across devices,
  and a VJP wants a cotangent that varies the same way; adding zeros of the
  losses' type gives ``x`` that type (and is a no-op elsewhere).
  """
  return x.astype(losses.dtype) + jnp.zeros_like(losses)


def _explicitly_sharded(tree: PyTree) -> bool:
  """Whether any array in ``tree`` is sharded over an ``Explicit`` mesh axis.

  Args:
    tree: any pytree (non-array leaves are ignored).

  Returns:
    True if some leaf's type carries a sharded dimension.
  """
  return any(gram_lib.explicit_sharding(x) is not None
             for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


def _map_rows(fn: Callable[[Any], Any], rows: jax.Array, sequential: bool
              ) -> Any:
  """``fn`` applied to each row of ``rows``, results stacked.

  ``jax.vmap`` normally. With ``sequential`` (inputs sharded over
  ``Explicit`` mesh axes) one call per row instead: the batching rules of
  some primitives (convolutions) merge the mapped axis into a batch-sharded
  one, a reshape that ``Explicit`` axes reject with a ``ShardingTypeError``.
  The calls are a ``jax.lax.map`` on GPU/TPU and straight-line code on CPU,
  where XLA runs convolutions in a loop body many times slower (measured
  80× for a ResNet's VJPs). Under ``Auto`` axes the types carry no sharding
  and ``vmap`` is kept.

  Args:
    fn: a function of one row (a VJP or JVP).
    rows: ``[n, ...]`` array, or a pytree of such arrays.
    sequential: one call per row rather than ``vmap``.

  Returns:
    ``fn``'s outputs with a leading axis of size ``n``.
  """
  if not sequential:
    return jax.vmap(fn)(rows)
  n = jax.tree.leaves(rows)[0].shape[0]
  unrolled = lambda r: stack_tasks(
      [fn(jax.tree.map(lambda x: x[i], r)) for i in range(n)])
  return jax.lax.platform_dependent(
      rows, cpu=unrolled, default=lambda r: jax.lax.map(fn, r))


def check_task_losses(losses, what: str = 'The loss function') -> int:
  """``T`` of a ``[T]`` loss vector; a ValueError naming ``what`` else."""
  if jnp.ndim(losses) != 1:
    raise ValueError(
        f'{what} must return a vector of task losses of shape [T]; '
        f'got shape {jnp.shape(losses)}.')
  return losses.shape[0]


def vjp_with_aux(fn: Callable[..., Any], *primals, has_aux: bool):
  """``jax.vjp`` that always returns ``(out, vjp_fn, aux)``; aux is None
  when ``has_aux`` is False."""
  if has_aux:
    return jax.vjp(fn, *primals, has_aux=True)
  out, vjp_fn = jax.vjp(fn, *primals)
  return out, vjp_fn, None


def value_and_jacobian(
    loss_fn: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any]]:
  """Task losses and their stacked per-task gradients from one forward pass.

  Args:
    loss_fn: returns the ``[T]`` vector of task losses (and an auxiliary value
      if ``has_aux``).
    argnums: which positional argument(s) to differentiate.
    has_aux: whether ``loss_fn`` returns ``(losses, aux)``.

  Returns:
    A function with ``loss_fn``'s arguments returning ``(losses, jac)``, or
    ``((losses, aux), jac)`` if ``has_aux``; ``jac`` has the structure of the
    differentiated argument(s) with a leading axis ``T`` on every leaf (a
    tuple of such trees if ``argnums`` is a sequence).

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> def losses(p, x):
    ...   return jnp.stack([jnp.sum(p['w'] * x), jnp.sum(p['w'] ** 2)])
    >>> l, g = mtl.value_and_jacobian(losses)({'w': jnp.ones(3)}, jnp.ones(3))
    >>> g['w'].shape
    (2, 3)
  """
  multiple = not isinstance(argnums, int)
  nums = tuple(argnums) if multiple else (argnums,)

  def wrapped(*args, **kwargs):
    for n in nums:
      if n >= len(args):
        raise ValueError(
            f'argnums={argnums} but only {len(args)} positional arguments.')

    def partial_fn(*diff_args):
      full = list(args)
      for n, a in zip(nums, diff_args):
        full[n] = a
      return loss_fn(*full, **kwargs)

    primals = tuple(args[n] for n in nums)
    losses, vjp_fn, aux = vjp_with_aux(partial_fn, *primals, has_aux=has_aux)
    t = check_task_losses(losses)
    jac = _map_rows(vjp_fn, _cotangent(jnp.eye(t), losses),
                    _explicitly_sharded((args, kwargs)))
    jac = jac if multiple else jac[0]
    return ((losses, aux), jac) if has_aux else (losses, jac)

  return wrapped


def _check_aggregated(update: PyTree, like: PyTree, where: str,
                      what: str) -> None:
  """Checks that an aggregator's output has ``like``'s structure and shapes.

  An optimizer (``optax.adam``) passed where an aggregator is expected keeps
  the leading task axis of what it receives; this says so instead of letting
  the next VJP fail on a cotangent of the wrong shape.
  """
  ok = jax.tree.structure(update) == jax.tree.structure(like) and all(
      jnp.shape(u) == jnp.shape(x)
      for u, x in zip(jax.tree.leaves(update), jax.tree.leaves(like)))
  if not ok:
    raise ValueError(
        f'{where}: the aggregator must map the stacked per-task gradients '
        f'(every leaf [T, ...]) to one update with the shapes of {what}: '
        f'expected {gram_lib.describe_shapes(like)}; it returned '
        f'{gram_lib.describe_shapes(update)}. Pass an mtl_optax aggregator '
        '(e.g. mtl.aligned_mtl()), not an optimizer such as optax.adam; '
        'chain the optimizer after this step, on its gradients.')


class RepresentationGrads(NamedTuple):
  """Result of one representation-level step."""
  losses: jax.Array               # [T]
  encoder_grads: PyTree           # the encoder parameters' structure
  head_grads: PyTree              # the head parameters' structure
  aggregator_state: Any           # the aggregator's new state
  encoder_aux: Any = None         # encode's aux (e.g. BatchNorm statistics)
  heads_aux: Any = None           # heads_losses's aux


def representation_grads(
    encode: Callable[..., Any],
    heads_losses: Callable[..., Any],
    aggregator: optax.GradientTransformationExtraArgs,
    *,
    preferences: jax.Array | None = None,
    encoder_has_aux: bool = False,
    heads_has_aux: bool = False,
) -> Callable[..., RepresentationGrads]:
  """The representation-level ("-UB") step for any aggregator.

  ``Aligned-MTL-UB`` (Z-aligned, Def. 3 of Senushkin et al.) is
  ``representation_grads(encode, heads, mtl.aligned_mtl())`` and ``MGDA-UB``
  (Sener & Koltun §3.3) is ``representation_grads(encode, heads, mtl.mgda())``:
  the same weighting code, applied to the Gramian of ``∂L_t/∂z`` (flattened
  over batch × features) instead of ``∂L_t/∂θ``.

  What carries over from the aggregator's guarantees. At ``z`` they hold as
  stated: MGDA's ``d_z`` has ``<d_z, ∂L_t/∂z> ≥ ‖d_z‖²`` for every task, a
  common descent direction of the task losses as functions of ``z``. The
  encoder's update ``Jᵀ d_z`` (``J = ∂z/∂θ_enc``) is the gradient of ``Σ_t
  c_t L_t`` with respect to ``θ_enc``, so it decreases that weighted sum to
  first order, but a single task's ``θ``-level inner product is ``<Jᵀ d_z,
  Jᵀ ∂L_t/∂z>``, of either sign. Sener & Koltun's Theorem 1(b) (no task
  increases) needs more than the full-rank ``J`` it assumes: its proof's
  step (9) ⇔ (10) holds when ``J Jᵀ`` is isotropic on the span of the
  tasks' z-gradients, ``mtl.diagnostics.jacobian_isotropy = 1`` (part (a),
  the agreement on Pareto stationarity, does hold for ``J`` of full row
  rank). A task cannot conflict while ``cos(d_z, ∂L_t/∂z) > (ι² - 1) / (ι²
  + 1)``; beyond, it can: in ``tests/test_isotropy.py`` (T = 2 tasks at
  cosine -0.9, ``Z = 10``, ``J``'s singular values log-uniform over a
  factor 10) MGDA-UB conflicted with a task at the θ level in about half of
  the random cases. Aligned-MTL-UB rests on the same assumption (Senushkin
  et al. assume ``JᵀJ = λI`` in their notation). ``representation_gramians``
  measures ``ι`` for a batch.

  Cost: one forward and ONE backward pass through the encoder (its VJP with
  the aggregated cotangent ``Σ_t c_t ∂L_t/∂z``); T backward passes through the
  heads only (for ``∂L_t/∂z``) plus one for the heads' own gradients.

  Args:
    encode: ``encode(encoder_params, inputs) -> z`` (any pytree ``z``), or
      ``(z, aux)`` if ``encoder_has_aux``.
    heads_losses: ``heads_losses(head_params, z, batch) -> [T] losses``, or
      ``(losses, aux)`` if ``heads_has_aux``.
    aggregator: any mtl_optax aggregator (or ``Aggregator``); it receives the
      stacked ``∂L_t/∂z`` and returns the cotangent for ``z``. Its state is
      initialised with ``aggregator.init(z)``-compatible structure: use
      ``aggregator.init(None)`` for mtl_optax aggregators.
    preferences: ``[T]`` weights of the heads' gradient ``Σ_t w_t ∇L_t``;
      default all ones.
    encoder_has_aux: whether ``encode`` returns ``(z, aux)``.
    heads_has_aux: whether ``heads_losses`` returns ``(losses, aux)``.

  Returns:
    ``step(encoder_params, head_params, aggregator_state, inputs, batch,
    **extra) -> RepresentationGrads``; ``extra`` (e.g. ``losses=``-free
    keywords) is passed on to the aggregator, which also receives the task
    losses as ``losses=``.

  Example:
    >>> import jax, jax.numpy as jnp, mtl_optax as mtl
    >>> encode = lambda w, x: jnp.tanh(x @ w)
    >>> def heads(h, z, y):
    ...   return jnp.stack([jnp.mean((z @ h[0] - y[:, 0]) ** 2),
    ...                     jnp.mean((z @ h[1] - y[:, 1]) ** 2)])
    >>> agg = mtl.aligned_mtl()
    >>> step = jax.jit(mtl.representation_grads(encode, heads, agg))
    >>> x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
    >>> out = step(jnp.ones((3, 4)) * .1, jnp.ones((2, 4)), agg.init(None),
    ...            x, y)
    >>> out.encoder_grads.shape, out.head_grads.shape
    ((3, 4), (2, 4))
  """

  def step(encoder_params, head_params, aggregator_state, inputs, batch,
           **extra):
    z, encoder_vjp, encoder_aux = vjp_with_aux(
        lambda p: encode(p, inputs), encoder_params, has_aux=encoder_has_aux)
    heads_fn = lambda h, zz: heads_losses(h, zz, batch)
    losses, heads_vjp, heads_aux = vjp_with_aux(
        heads_fn, head_params, z, has_aux=heads_has_aux)
    t = check_task_losses(losses)

    # ∂L_t/∂z for every task: T VJPs through the heads (the heads' parameter
    # cotangents are unused here and removed by XLA).
    z_jacobian = _map_rows(lambda e: heads_vjp(e)[1],
                           _cotangent(jnp.eye(t), losses),
                           _explicitly_sharded((z, head_params, batch)))
    w = jnp.ones((t,), losses.dtype) if preferences is None else jnp.asarray(
        preferences, losses.dtype)
    head_grads, _ = heads_vjp(_cotangent(w, losses))

    extra = dict(extra)
    extra.setdefault('losses', losses)
    z_cotangent, aggregator_state = aggregator.update(
        z_jacobian, aggregator_state, None, **extra)
    _check_aggregated(z_cotangent, z, 'representation_grads',
                      'the representation z')
    z_cotangent = jax.tree.map(lambda c, zz: c.astype(zz.dtype), z_cotangent,
                               z)
    (encoder_grads,) = encoder_vjp(z_cotangent)
    return RepresentationGrads(
        losses=losses,
        encoder_grads=encoder_grads,
        head_grads=head_grads,
        aggregator_state=aggregator_state,
        encoder_aux=encoder_aux,
        heads_aux=heads_aux,
    )

  return step


class RepresentationGramians(NamedTuple):
  """Result of ``representation_gramians``: both levels' Gramians."""
  losses: jax.Array               # [T]
  gram_z: jax.Array               # [T, T] of ∂L_t/∂z
  gram_theta: jax.Array           # [T, T] of ∂L_t/∂θ_enc
  jacobian_isotropy: jax.Array    # diagnostics.jacobian_isotropy of the two


def representation_gramians(
    encode: Callable[..., Any],
    heads_losses: Callable[..., Any],
    *,
    encoder_has_aux: bool = False,
    heads_has_aux: bool = False,
) -> Callable[..., RepresentationGramians]:
  """The Gramians of the per-task gradients at ``z`` and at ``θ_enc``.

  Measures, for one batch, how far the representation-level ("-UB") step is
  from the parameter-level one: ``K_z`` of ``∂L_t/∂z`` (what
  ``representation_grads`` gives its aggregator), ``K_θ`` of ``∂L_t/∂θ_enc
  = Jᵀ ∂L_t/∂z`` (what a parameter-level step would), and
  ``mtl.diagnostics.jacobian_isotropy(K_θ, K_z)``, 1 when the encoder's
  Jacobian is isotropic on the tasks' span (the condition of Theorem 1(b) of
  Sener & Koltun; see ``representation_grads``). The θ-level inner products
  of a z-level direction ``Σ_t c_t ∂L_t/∂z`` with the tasks are ``K_θ c``:
  ``K_θ @ mtl.weightings.mgda(K_z)`` has a negative entry exactly when
  MGDA-UB's step conflicts with that task.

  Cost: one forward pass, T backward passes through the heads and T through
  the encoder (vmapped), about a parameter-level ``value_and_jacobian``
  step; a diagnostic to run now and then, not at every step.

  Args:
    encode: ``encode(encoder_params, inputs) -> z`` (any pytree ``z``), or
      ``(z, aux)`` if ``encoder_has_aux``.
    heads_losses: ``heads_losses(head_params, z, batch) -> [T] losses``, or
      ``(losses, aux)`` if ``heads_has_aux``.
    encoder_has_aux: whether ``encode`` returns ``(z, aux)``.
    heads_has_aux: whether ``heads_losses`` returns ``(losses, aux)``.

  Returns:
    ``fn(encoder_params, head_params, inputs, batch) ->
    RepresentationGramians``, a pure function to ``jax.jit``; the aux values
    are discarded. ``θ_enc`` is all of ``encoder_params``.

  Example:
    >>> import jax, jax.numpy as jnp, mtl_optax as mtl
    >>> encode = lambda w, x: jnp.tanh(x @ w)
    >>> def heads(h, z, y):
    ...   return jnp.mean((z @ h.T - y) ** 2, axis=0)     # [T = 2]
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    >>> y = jnp.stack([x[:, 0], -x[:, 0] + x[:, 1]], axis=1)
    >>> w = jax.random.normal(jax.random.PRNGKey(1), (3, 4)) * .5
    >>> h = jax.random.normal(jax.random.PRNGKey(2), (2, 4))
    >>> out = jax.jit(mtl.representation_gramians(encode, heads))(w, h, x, y)
    >>> out.gram_z.shape, out.gram_theta.shape
    ((2, 2), (2, 2))
    >>> bool(out.jacobian_isotropy >= 1)
    True
  """
  method = 'representation_gramians'
  _checks.check_callable('encode', encode, method=method,
                         hint='encode(encoder_params, inputs) -> z')
  _checks.check_callable(
      'heads_losses', heads_losses, method=method,
      hint='heads_losses(head_params, z, batch) -> [T] losses')
  _checks.check_bool('encoder_has_aux', encoder_has_aux, method=method)
  _checks.check_bool('heads_has_aux', heads_has_aux, method=method)

  def fn(encoder_params, head_params, inputs, batch):
    z, encoder_vjp, _ = vjp_with_aux(
        lambda p: encode(p, inputs), encoder_params, has_aux=encoder_has_aux)
    losses, heads_vjp, _ = vjp_with_aux(
        lambda zz: heads_losses(head_params, zz, batch), z,
        has_aux=heads_has_aux)
    t = check_task_losses(losses)
    sequential = _explicitly_sharded((z, encoder_params, head_params, batch))
    z_jacobian = _map_rows(lambda e: heads_vjp(e)[0],
                           _cotangent(jnp.eye(t), losses), sequential)
    theta_jacobian = _map_rows(lambda c: encoder_vjp(c)[0], z_jacobian,
                               sequential)
    gram_z = gram_lib.gramian(z_jacobian)
    gram_theta = gram_lib.gramian(theta_jacobian)
    return RepresentationGramians(
        losses=losses, gram_z=gram_z, gram_theta=gram_theta,
        jacobian_isotropy=diag_lib.jacobian_isotropy(gram_theta, gram_z))

  return fn


class _Problem(NamedTuple):
  """``loss_fn`` at ``(params, *args)``, with the parameters as leaves."""
  loss_fn: Callable[..., Any]
  has_aux: bool
  leaves: list
  treedef: Any
  flags: list          # which leaves are shared
  args: tuple

  def losses(self, leaves, args):
    """``(losses, aux)`` at the given leaves and arguments."""
    out = self.loss_fn(jax.tree.unflatten(self.treedef, list(leaves)), *args)
    return out if self.has_aux else (out, None)

  def shared_fn(self, args):
    """The losses as a function of the shared leaves only."""
    def fn(*shared):
      it = iter(shared)
      leaves = [next(it) if m else x for x, m in zip(self.leaves, self.flags)]
      return self.losses(leaves, args)[0]
    return fn

  def shared(self):
    return [x for x, m in zip(self.leaves, self.flags) if m]


def _problem(loss_fn, params, args, has_aux, shared) -> _Problem:
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(gram_lib.resolve_shared_mask(shared, params))
  return _Problem(loss_fn, has_aux, leaves, treedef, flags, tuple(args))


def _after(token: jax.Array, tree: PyTree) -> PyTree:
  """``tree`` made to depend on ``token``: the identity, unless ``token`` is
  NaN (then NaN, which the step's finiteness checks catch anyway).

  XLA shares identical computations (CSE) and schedules independent ones in
  any order, so the phases of the Jacobian-free step (a chunk's VJP, its JVP,
  the next chunk, the final VJP) would otherwise share their forward passes
  and keep every intermediate alive from the first phase to the last. A
  phase whose inputs depend on the previous phase's result recomputes its
  own forward pass after that phase, and its intermediates die with it.
  (XLA:CPU drops ``lax.optimization_barrier`` without ordering.)
  """
  bad = jnp.isnan(token)

  def one(x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      return x
    return jnp.where(bad, jnp.asarray(jnp.nan, jnp.result_type(x)), x)

  return jax.tree.map(one, tree)


def _phase_inputs(problem: _Problem, token) -> tuple[list, tuple]:
  """Leaves and arguments for a phase that runs after ``token`` exists: the
  floating arguments (the batch) carry the dependency, or the parameters
  when no argument is floating."""
  if token is None:
    return problem.leaves, problem.args
  if any(jnp.issubdtype(jnp.result_type(x), jnp.inexact)
         for x in jax.tree.leaves(problem.args)):
    return problem.leaves, _after(token, problem.args)
  return _after(token, problem.leaves), problem.args


def _chunk_columns(problem: _Problem, e: jax.Array, token, dtype
                   ) -> jax.Array:
  """Columns ``J_s J_sᵀ e_j`` for the rows ``e_j`` of ``e``: one forward
  pass and ``len(e)`` VJPs for the gradients ``J_sᵀ e_j``, then one forward
  pass and ``len(e)`` JVPs of those gradients."""
  sequential = _explicitly_sharded((problem.leaves, problem.args))
  leaves, args = _phase_inputs(problem, token)
  shared = [x for x, m in zip(leaves, problem.flags) if m]
  losses, vjp_fn = jax.vjp(problem.shared_fn(args), *shared)
  grads = _map_rows(vjp_fn, _cotangent(e, losses), sequential)
  leaves, args = _phase_inputs(
      problem, None if token is None else jnp.sum(grads[0]))
  shared = [x for x, m in zip(leaves, problem.flags) if m]
  jvp = lambda g: jax.jvp(problem.shared_fn(args), shared, list(g))[1]
  return _map_rows(jvp, grads, sequential).astype(dtype)


def _matmul_precision(precision: str | None):
  """A context tracing matmuls at ``precision`` (JAX's
  ``default_matmul_precision``); None keeps the ambient setting."""
  if precision is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(precision)


def _check_precision(precision) -> None:
  """Raises a ValueError now for a ``precision`` JAX would reject later."""
  if precision is None:
    return
  try:
    with _matmul_precision(precision):
      pass
  except (TypeError, ValueError) as e:
    raise ValueError(
        f'precision must be None or a value of jax.default_matmul_precision '
        f"('highest', 'float32', 'tensorfloat32', 'bfloat16', ...), got "
        f'{precision!r}. ({e})') from None


def _jacobian_free_gram(problem: _Problem, losses: jax.Array,
                        chunk_size: int | None, precision: str | None
                        ) -> jax.Array:
  """``K = J_s J_sᵀ`` over the shared leaves, ``chunk_size`` columns at a
  time (all at once for None), with the VJPs and JVPs of the loss function
  traced at matmul ``precision``."""
  with _matmul_precision(precision):
    return _jacobian_free_gram_columns(problem, losses, chunk_size)


def _jacobian_free_gram_columns(problem: _Problem, losses: jax.Array,
                                chunk_size: int | None) -> jax.Array:
  """``_jacobian_free_gram`` at the ambient matmul precision."""
  t = losses.shape[0]
  dtype = gram_lib.accumulation_dtype(losses.dtype)
  if not any(problem.flags):
    return jnp.zeros((t, t), dtype)
  eye = jnp.eye(t, dtype=losses.dtype)
  looped = lambda e: jax.lax.map(
      lambda x: _chunk_columns(problem, x[None], None, dtype)[0], e,
      batch_size=chunk_size)
  if chunk_size is None or chunk_size >= t:
    out = _chunk_columns(problem, eye, jnp.sum(losses), dtype)
  elif -(-t // chunk_size) > MAX_UNROLLED_CHUNKS:
    out = looped(eye)
  else:
    out = jax.lax.platform_dependent(
        eye,
        cpu=lambda e: _unrolled_chunks(problem, e, losses, chunk_size, dtype),
        default=looped)
  return 0.5 * (out + out.T)


# On CPU, up to this many chunks are unrolled (fast to run, see
# ``_unrolled_chunks``); more are looped everywhere: the unrolled program's
# compile time grows faster than linearly with the number of chunks
# (ResNet-18-CelebA, batch 8: 20 s for 2 chunks, 56 s for 10, over 12
# minutes for 40; the 10 unrolled chunks' step takes 14 s, looped 259 s).
MAX_UNROLLED_CHUNKS = 10


def _unrolled_chunks(problem: _Problem, eye, losses, chunk_size: int,
                     dtype) -> jax.Array:
  """The chunks as straight-line code, each after the previous one.

  XLA:CPU runs the convolutions of a backward pass placed inside a loop
  body an order of magnitude slower than outside one (measured 10-25× for a
  ResNet's input and kernel gradients), so on CPU the chunks are unrolled
  (``lax.map`` elsewhere), chained through ``_after``.
  """
  outs, token = [], jnp.sum(losses)
  for start in range(0, eye.shape[0], chunk_size):
    outs.append(_chunk_columns(problem, eye[start:start + chunk_size], token,
                               dtype))
    token = jnp.sum(outs[-1])
  return jnp.concatenate(outs)


def _check_chunk_size(chunk_size) -> None:
  if chunk_size is not None and (not isinstance(chunk_size, int) or
                                 chunk_size < 1):
    raise ValueError(
        f'chunk_size must be a positive int or None, got {chunk_size!r}.')


def jacobian_free_gramian(
    loss_fn: Callable[..., Any],
    *,
    shared: gram_lib.SharedMask = None,
    chunk_size: int | None = 1,
    has_aux: bool = False,
    precision: str | None = 'highest',
) -> Callable[..., tuple[Any, jax.Array]]:
  """The task Gramian ``K = J Jᵀ`` without materialising the Jacobian ``J``.

  One forward pass (``jax.linearize``), then for each chunk of tasks a VJP
  (``J_sᵀ e_j``: ``chunk_size`` gradients of the shared leaves, alive only
  within the chunk) and a JVP of those gradients (``J_s J_sᵀ e_j``, column
  ``j`` of ``K``). Equals ``mtl.gramian(jac, shared)`` of the materialised
  ``jac`` to float tolerance.

  Cost: ``T`` VJPs and ``T`` JVPs (forward-mode passes) of the loss
  function; memory: the residuals of one forward pass plus ``chunk_size``
  gradients and tangents, independent of ``T``.

  Precision: the JVPs are the Gramian's inner products, so by default these
  passes (and the VJPs before them) trace the loss function's matmuls at
  ``'highest'`` precision, as ``mtl.gramian`` contracts the materialised
  Jacobian: full float32 on GPUs (no TF32) and TPUs (no single bf16 pass),
  where the default would leave ``K`` ~1e-3 accurate. It costs the speed of
  float32 matmuls in these passes; ``precision=None`` keeps the model's own.

  Args:
    loss_fn: ``loss_fn(params, *args)`` returning the ``[T]`` task losses (and
      an auxiliary value if ``has_aux``).
    shared: which parameter leaves enter the Gramian (see
      ``mtl.resolve_shared_mask``); default all.
    chunk_size: tasks per chunk (``jax.lax.map``'s ``batch_size``); None does
      all ``T`` at once (fastest, memory grows with ``T``). On CPU up to
      ``MAX_UNROLLED_CHUNKS`` chunks are unrolled instead of looped (XLA:CPU
      runs convolutions in a loop body slowly); more chunks are looped, so
      that compile time stays bounded.
    has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
    precision: matmul precision of the Gramian's passes, any value of
      ``jax.default_matmul_precision`` (``'highest'``, ``'tensorfloat32'``,
      ``'bfloat16'``, ...), or None for the ambient default.

  Returns:
    ``fn(params, *args) -> (losses, K)``, or ``((losses, aux), K)``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> def losses(p, x):
    ...   return jnp.stack([jnp.sum(p['w'] * x), jnp.sum(p['w'])])
    >>> from mtl_optax.jacobian import jacobian_free_gramian
    >>> l, k = jacobian_free_gramian(losses)({'w': jnp.ones(2)},
    ...                                      jnp.array([1., 0.]))
    >>> k.tolist()
    [[1.0, 1.0], [1.0, 2.0]]
  """

  _check_chunk_size(chunk_size)
  _check_precision(precision)

  def wrapped(params, *args):
    problem = _problem(loss_fn, params, args, has_aux, shared)
    losses, aux = problem.losses(problem.leaves, problem.args)
    check_task_losses(losses)
    k = _jacobian_free_gram(problem, losses, chunk_size, precision)
    return ((losses, aux), k) if has_aux else (losses, k)

  return wrapped


class JacobianFreeGrads(NamedTuple):
  """Result of one Jacobian-free step."""
  losses: jax.Array       # [T]
  grads: PyTree           # the parameters' structure: the aggregated update
  aggregator_state: Any   # the aggregator's new state
  aux: Any = None         # loss_fn's aux when has_aux


def _closure_qualnames(fn, depth=3):
  """Qualified names of the functions reachable through ``fn``'s closure."""
  names, stack, seen = [], [(fn, 0)], set()
  while stack:
    f, d = stack.pop()
    if id(f) in seen or d > depth:
      continue
    seen.add(id(f))
    names.append(getattr(f, '__qualname__', ''))
    for cell in getattr(f, '__closure__', None) or ():
      try:
        value = cell.cell_contents
      except ValueError:
        continue
      if callable(value):
        stack.append((value, d + 1))
  return names


def _check_coefficient_form(aggregator) -> None:
  if any(n.startswith('graddrop.') for n in
         _closure_qualnames(getattr(aggregator, 'update', None))):
    raise ValueError(
        'GradDrop works on each coordinate of the stacked gradients and has '
        'no coefficient form, so it cannot run without the Jacobian: use '
        'mtl.value_and_jacobian (the materialised path) for it.')


def _surrogate(problem: _Problem, factor: jax.Array) -> PyTree:
  """Stand-in stacked gradients with the parameters' structure: the first
  shared leaf holds a ``[T, T]`` factor of K, the first task-specific leaf
  the identity (which reads out the weights the aggregator gives those
  leaves), every other leaf ``[T, 1]`` zeros."""
  t = factor.shape[0]
  out, placed = [], {True: False, False: False}
  for m in problem.flags:
    if not placed[m]:
      out.append(factor if m else jnp.eye(t, dtype=factor.dtype))
      placed[m] = True
    else:
      out.append(jnp.zeros((t, 1), factor.dtype))
  return jax.tree.unflatten(problem.treedef, out)


def _select_state(ok, new, old):
  state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  if isinstance(state, AggregatorState):
    state = state._replace(
        num_skipped=old.num_skipped + (~ok).astype(old.num_skipped.dtype),
        last_skipped=~ok)
  return state


def jacobian_free_grads(
    loss_fn: Callable[..., Any],
    aggregator: optax.GradientTransformationExtraArgs,
    *,
    shared: gram_lib.SharedMask = None,
    chunk_size: int | None = 1,
    has_aux: bool = False,
    precision: str | None = 'highest',
) -> Callable[..., JacobianFreeGrads]:
  """Any coefficient-form aggregator, without the ``[T, P]`` Jacobian.

  The Gramian comes from ``jacobian_free_gramian``; the aggregator then runs
  on a stand-in for the stacked gradients with the same Gramian (a ``[T, T]``
  factor ``R = V Λ^½`` of ``K = V Λ Vᵀ``), which gives its coefficients ``c``
  through its update ``c @ R`` (``c`` is recovered up to its null-space part,
  which does not change ``c @ J``); the update is ONE VJP with cotangent
  ``c``. Task-specific leaves get the weights the aggregator gives its own
  task-specific leaves (the preferences, or ``c`` for loss-based methods and
  RLW), also by one VJP. So every method whose update is ``Σ_t c_t g_t``
  with ``c`` a function of the Gramian (and the losses) gives the
  materialised path's update and state: all of them except GradDrop, which
  raises.

  The aggregator must be built with the same ``shared`` mask as given here
  (a pytree mask or a predicate on key paths: it sees the stand-in, whose
  leaves have the parameters' key paths but other shapes). Non-finite
  losses, Gramian or gradients skip the step as in the materialised path:
  zero update, state kept (``last_skipped``, ``num_skipped``).

  Cost: ``T`` VJPs and ``T`` JVPs for the Gramian, one VJP for the update
  (plus one through the task-specific part); no ``T``-fold copy of the
  parameters. Memory: a training step plus ``chunk_size`` gradients.

  Args:
    loss_fn: ``loss_fn(params, *args)`` returning the ``[T]`` task losses (or
      ``(losses, aux)`` if ``has_aux``).
    aggregator: a mtl_optax aggregator (not GradDrop), built with
      ``shared=`` as here; initialise its state with ``aggregator.init(None)``
      or ``aggregator.init(params)``.
    shared: which parameter leaves are shared (enter the Gramian).
    chunk_size: tasks per chunk for the Gramian (None: all at once).
    has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
    precision: matmul precision of the Gramian's passes (see
      ``jacobian_free_gramian``); the update's VJP, an ordinary backward
      pass, keeps the model's own.

  Returns:
    ``step(params, aggregator_state, *args, **extra) -> JacobianFreeGrads``;
    ``args`` go to ``loss_fn``, ``extra`` to the aggregator (which also
    receives ``losses=``). ``grads`` has the parameters' structure: feed it
    to any Optax optimizer.

  Raises:
    ValueError: for GradDrop.

  Example:
    >>> import jax, jax.numpy as jnp, mtl_optax as mtl
    >>> def losses(p, x):
    ...   return jnp.stack([jnp.sum(p['w'] * x), 3 * jnp.sum(p['w'])])
    >>> from mtl_optax.jacobian import jacobian_free_grads
    >>> agg = mtl.aligned_mtl()
    >>> step = jax.jit(jacobian_free_grads(losses, agg))
    >>> out = step({'w': jnp.ones(2)}, agg.init(None), jnp.array([1., 0.]))
    >>> out.grads['w'].shape
    (2,)
  """
  _check_coefficient_form(aggregator)
  _check_chunk_size(chunk_size)
  _check_precision(precision)

  def step(params, aggregator_state, *args, **extra):
    problem = _problem(loss_fn, params, args, has_aux, shared)
    losses, aux = problem.losses(problem.leaves, problem.args)
    check_task_losses(losses)
    k = _jacobian_free_gram(problem, losses, chunk_size, precision)
    # K = V Λ Vᵀ and R = V Λ^½ has R Rᵀ = K; the aggregator's update on R
    # is u = Rᵀ c, and c' = V Λ^-½ u equals c up to null(K), so c'ᵀ J = cᵀ J.
    lam, vecs = jnp.linalg.eigh(jnp.where(jnp.isfinite(k), k, 0))
    lam = jnp.where(jnp.all(jnp.isfinite(k)), lam, jnp.nan)
    root = jnp.sqrt(jnp.maximum(lam, 0))
    stand_in = _surrogate(problem, vecs * root)

    extra = dict(extra)
    extra.setdefault('losses', losses)
    update, new_state = aggregator.update(stand_in, aggregator_state, None,
                                          **extra)
    _check_aggregated(update, jax.tree.map(lambda x: x[0], stand_in),
                      'jacobian_free_grads',
                      "one task's slice of the (stand-in) gradients it "
                      'receives')
    flat = jax.tree.leaves(update)
    slot = {m: next((u for u, f in zip(flat, problem.flags) if f == m), None)
            for m in (True, False)}
    ok = jnp.all(jnp.isfinite(lam))
    token = jnp.sum(k)
    cotangents = {}
    if slot[True] is not None:
      u = slot[True].astype(root.dtype)
      inv = jnp.where(root > 0, 1 / jnp.where(root > 0, root, 1), 0)
      cotangents[True] = jnp.matmul(vecs, u * inv,
                                    precision=gram_lib.PRECISION)
    if slot[False] is not None:
      cotangents[False] = slot[False]
    for c in cotangents.values():
      ok &= jnp.all(jnp.isfinite(c))
      token = token + jnp.sum(c)

    # The update: one VJP with the coefficients as cotangent (and, for the
    # task-specific leaves, one with their weights), after the Gramian.
    leaves, final_args = _phase_inputs(problem, token)
    _, vjp_fn = jax.vjp(lambda *xs: problem.losses(xs, final_args)[0],
                        *leaves)
    grads = [None] * len(leaves)
    for m, c in cotangents.items():
      for i, g in enumerate(vjp_fn(_cotangent(c, losses))):
        if problem.flags[i] == m:
          grads[i] = g
    if isinstance(new_state, AggregatorState):
      ok &= ~new_state.last_skipped
    ok &= leaves_finite(grads)
    grads = [jnp.where(ok, g, jnp.zeros_like(g)) for g in grads]
    return JacobianFreeGrads(
        losses=losses,
        grads=jax.tree.unflatten(problem.treedef, grads),
        aggregator_state=_select_state(ok, new_state, aggregator_state),
        aux=aux)

  return step


def stack_tasks(per_task: Sequence[PyTree]) -> PyTree:
  """Stacks T per-task gradient pytrees along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_task)


__all__ = [
    'jacobian_free_grads',
    'jacobian_free_gramian',
    'JacobianFreeGrads',
    'RepresentationGramians',
    'RepresentationGrads',
    'representation_gramians',
    'representation_grads',
    'stack_tasks',
    'value_and_jacobian',
]
