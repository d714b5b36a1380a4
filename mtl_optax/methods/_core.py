"""The machinery of every method: stacked per-task gradients in, one update
with the parameters' structure out.

Each method (one file per method, or per tight family, in
``mtl_optax/methods/``) has a factory that returns an
``optax.experimental.aggregating.Aggregator`` (a
``GradientTransformationExtraArgs``), so it chains in front of any optimizer::

    tx = optax.chain(mtl_optax.aligned_mtl(), optax.adam(1e-3))
    updates, state = tx.update(stacked_grads, state, params)

Every aggregator is built the same way: the Gramian of the *shared* leaves
(``mtl_optax.normalized_gramian``), a weighting function ``K -> c``
(``mtl_optax.weightings``), and the weighted sum ``Σ_t c_t g_t`` of the shared
leaves (``gramian_direction``), wrapped by ``_build`` (validation, NaN/Inf
skips, state). Task-specific leaves (``shared`` mask False) get the plain
preference-weighted sum ``Σ_t w_t g_t``: each head's gradient is non-zero for
its own task only, so this is its ordinary gradient.

Common keyword arguments:
  shared: which leaves are shared (default: all). A pytree of bools with the
    parameters' structure or a prefix of it (``{'encoder': True, 'heads':
    False}``), or a predicate ``fn(key_path, leaf) -> bool``.
  num_tasks: ``T``. Optional; when given (or implied by ``preferences``) the
    state records the last step's coefficients in ``weights``. ``init`` only
    sees the parameters, which do not tell ``T``.

State (``AggregatorState``): ``weights`` (the coefficients ``c`` of the last
applied step, or None), ``diagnostics`` (``mtl_optax.diagnostics``, from the
same Gramian), ``num_skipped`` and ``last_skipped`` (see below) and the
method's own state (``inner``, e.g. a PRNG key).

Non-finite gradients: if any NaN/Inf is in the gradients (the Gramian covers
the shared leaves, a direct check the others), the losses or the
coefficients, the step is skipped: the update is all zeros, ``weights``,
``diagnostics`` and the method's own state (``inner``: keys, warm starts,
learned weights, loss histories) keep their previous values, ``last_skipped``
is True and ``num_skipped`` counts it. Parameters never become NaN through an
aggregator. (Adam-like optimizers downstream still see a zero gradient; to freeze them as
well, wrap the whole chain in ``optax.apply_if_finite``.)

Magnitudes: the Gramian is normalised before the weighting, so gradients from
1e-20 to 1e20 give finite, correct coefficients in float32; bf16/f16 gradients
accumulate in float32 and the update comes back in their dtype.

Loss-based methods (``_loss_aggregator``) weight the task losses, so their
update is ``Σ_t c_t g_t`` on every leaf (shared and task-specific alike:
scaling a loss scales its head's gradient too). They need the task losses
each step::

    updates, state = tx.update(grads, state, params, losses=losses)

Their learnable parts (log-variances, GradNorm weights, FAMO logits) live in
the aggregator's state with their own inner Optax optimizer, so the model is
untouched. The Gramian is still computed for the diagnostics unless
``track_diagnostics=False``. Non-finite losses skip the step like non-finite
gradients do.

Methods whose state holds one value per task need ``num_tasks``
(``_require_num_tasks``: ``init`` only sees the parameters).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import diagnostics as diag_lib
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector

PyTree = Any


class AggregatorState(NamedTuple):
  """State of every mtl_optax aggregator."""
  weights: jax.Array | None
  diagnostics: diag_lib.Diagnostics
  num_skipped: jax.Array
  last_skipped: jax.Array
  inner: Any


class Proposal(NamedTuple):
  """What a method proposes for one step, before the NaN/Inf check.

  Attributes:
    coefficients: ``[T]`` coefficients (recorded in ``weights``).
    gram_hat: the normalised Gramian of the shared leaves, or None. When
      given, its finiteness certifies every shared leaf (a NaN/Inf entry
      makes the Gramian non-finite) and it feeds the diagnostics.
    inner: the method's new state.
    inputs_ok: finiteness of whatever ``gram_hat`` does not cover (the
      task-specific leaves, the losses, or every leaf when there is no
      Gramian). None when ``combine`` is a weighted sum of EVERY leaf: a
      NaN/Inf entry makes that sum non-finite (``c·Inf`` is ±Inf or, for
      ``c = 0``, NaN), so the update is computed and its finiteness checked
      instead of a separate pass over the ``[T, ...]`` inputs (a sum that
      overflows is skipped too).
    combine: computes the update; called only when the step is not skipped,
      so a skipped step costs no weighted sum and compiles no per-leaf
      selects. With ``select_inner``, it takes the new state as argument.
    select_inner: None, or ``ok -> state``: the method's new state where
      ``ok``, its old one elsewhere, computed in one elementwise pass from
      the old state and the inputs (``inner`` is then unused). For states
      as large as the gradients (tracked ``[T, ...]`` copies): the generic
      ``where(ok, new, old)`` keeps the old state alive beside a freshly
      written new one and then selects between them, which on CPU cost
      more than the Gramian (a new ``[T, P]`` buffer each step); computed
      from the inputs, the donated old state's buffer is updated in place.
      Needs ``inputs_ok``.
  """
  coefficients: jax.Array
  gram_hat: jax.Array | None
  inner: Any
  inputs_ok: jax.Array | None
  combine: Callable[..., PyTree]
  select_inner: Callable[[jax.Array], Any] | None = None


# direction_fn(grads, inner, extra) -> Proposal
DirectionFn = Callable[..., Proposal]


def state_dtype() -> jnp.dtype:
  """The float dtype of the aggregators' states: float64 when
  ``jax_enable_x64`` is on, else float32 (``init`` sees only the parameters,
  which may be None, so the state follows JAX's default float)."""
  return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _keep_dtype(new: jax.Array, old: jax.Array) -> jax.Array:
  """``new`` in ``old``'s dtype: a state's dtypes never change between steps
  (a carry of ``lax.scan``), whatever the gradients' dtype."""
  return jnp.asarray(new).astype(jnp.asarray(old).dtype)


def leaves_finite(grads: PyTree, mask: PyTree | None = None,
                  shared: bool | None = None) -> jax.Array:
  """True when every leaf (or every leaf whose mask equals ``shared``) is
  finite."""
  ok = jnp.ones((), bool)
  flags = jax.tree.leaves(mask) if mask is not None else None
  for i, leaf in enumerate(jax.tree.leaves(grads)):
    if flags is None or flags[i] == shared:
      ok &= all_finite(leaf)
  return ok


def all_finite(x: jax.Array) -> jax.Array:
  """``jnp.all(jnp.isfinite(x))``, as a floating-point sum.

  ``x · 0`` is ±0 where ``x`` is finite and NaN where it is ±inf or NaN, so
  the sum is exactly 0 (it cannot overflow) unless an entry is not finite.
  Same answer, but XLA:CPU reduces floats with vector instructions and
  booleans without: at ``[40, 10⁷]`` float32 on 2 cores, 0.08 s against
  0.39 s for ``all(isfinite)`` (a ``c @ J`` takes 0.05 s), which for the
  methods that check every task gradient was a third of their update.
  (XLA:CPU folds ``x · 0`` to 0 only under fast-math flags that assume no
  NaN/inf, which JAX does not set.) Other backends keep ``all(isfinite)``:
  their boolean reductions are fast, and no compiler there can fold it.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.ones((), bool)
  if x.size == 0:
    return jnp.ones((), bool)
  return jax.lax.platform_dependent(
      x,
      cpu=lambda v: jnp.isfinite(jnp.sum(v * jnp.zeros((), v.dtype))),
      default=lambda v: jnp.all(jnp.isfinite(v)))


def _check_extra_args(extra: dict[str, Any]) -> None:
  losses = extra.get('losses')
  if losses is not None and jnp.ndim(losses) != 1:
    raise ValueError(
        f'`losses` must be a vector of task losses, got shape '
        f'{jnp.shape(losses)}.')


def check_stacked(grads: PyTree, params: PyTree | None = None) -> None:
  """Refuses updates that are not stacked per-task gradients, when it shows.

  With ``params`` given, updates whose every leaf has the shape of the
  corresponding parameter (no leading task axis) are one gradient, not ``T``:
  what an aggregator receives after ``optax.adam`` or another aggregator in
  the same chain. (Without ``params`` the leading axes are checked by
  ``num_tasks``.)

  Args:
    grads: the updates an aggregator received.
    params: the parameters given to ``update``, or None.

  Raises:
    ValueError: saying what was expected, what was received and the fix.
  """
  if params is None:
    return
  g_leaves, g_def = jax.tree.flatten(grads)
  p_leaves, p_def = jax.tree.flatten(params)
  if not g_leaves or g_def != p_def:
    return
  if all(jnp.shape(g) == jnp.shape(p) for g, p in zip(g_leaves, p_leaves)):
    raise ValueError(
        "The aggregator received updates with the parameters' shapes: "
        f'{gram_lib.describe_shapes(grads)}; it '
        f'{gram_lib.EXPECTED_STACKED}, e.g. (T, ...) where the parameter is '
        "(...). An mtl_optax aggregator must come first in the chain, on the "
        'stacked per-task gradients: optax.chain(mtl.aligned_mtl(), '
        'optax.adam(1e-3)), not after optax.adam or another aggregator; '
        'compute the gradients with mtl.value_and_jacobian, not jax.grad.')


def _build(
    direction_fn: DirectionFn,
    *,
    num_tasks: int | None,
    preferences: jax.Array | None,
    init_inner: Callable[[], Any] = tuple,
    init_inner_from_params: Callable[[Any], Any] | None = None,
    track_diagnostics: bool = True,
) -> aggregating.Aggregator:
  """Wraps a direction function with validation, NaN handling and state.

  ``init_inner()`` gives the method's own state; ``init_inner_from_params``,
  when given, replaces it with a function of the parameters passed to
  ``init`` (a state per parameter group: ``per_group_state_init``).

  A step is skipped when the coefficients, the Gramian or the inputs it does
  not cover are not finite: the update is zeros, and the whole state (the
  method's own included: learned weights, warm starts, loss histories, PRNG
  keys) stays as it was, so one bad batch cannot poison later steps.
  """
  if preferences is not None:
    t_pref = int(jnp.asarray(preferences).shape[0])
    if num_tasks is not None and num_tasks != t_pref:
      raise ValueError(
          f'num_tasks={num_tasks} but preferences has {t_pref} entries.')
    num_tasks = t_pref

  def init_fn(params):
    inner = (init_inner() if init_inner_from_params is None
             else init_inner_from_params(params))
    weights = None if num_tasks is None else jnp.zeros((num_tasks,),
                                                       state_dtype())
    return AggregatorState(
        weights=weights,
        diagnostics=diag_lib.empty(state_dtype()),
        num_skipped=jnp.zeros((), jnp.int32),
        last_skipped=jnp.zeros((), bool),
        inner=inner,
    )

  def update_fn(grads, state, params=None, **extra):
    check_stacked(grads, params)
    t = gram_lib.num_tasks(grads)
    if num_tasks is not None and t != num_tasks:
      raise ValueError(
          f'The stacked gradients have {t} tasks on their leading axis but '
          f'the aggregator was built for num_tasks={num_tasks}: it '
          f'{gram_lib.EXPECTED_STACKED} = {num_tasks}. Received: '
          f'{gram_lib.describe_shapes(grads)}. {gram_lib.CHAIN_HINT}')
    _check_extra_args(extra)
    # Every contraction of the weighting (T×T products in the solvers) at
    # full precision: on GPUs/TPUs JAX's default rounds float32 inputs to
    # TF32/bf16. The Gramian and weighted sum set it themselves.
    with jax.default_matmul_precision('highest'):
      proposal = direction_fn(grads, state.inner, extra)
    gram_hat = proposal.gram_hat
    ok = jnp.all(jnp.isfinite(proposal.coefficients))
    if gram_hat is not None:
      ok &= jnp.all(jnp.isfinite(gram_hat))
    if proposal.select_inner is not None:
      if proposal.inputs_ok is None:
        raise ValueError('Proposal.select_inner needs inputs_ok.')
      ok &= proposal.inputs_ok
      inner = proposal.select_inner(ok)
      direction = jax.lax.cond(
          ok, lambda: proposal.combine(inner),
          lambda: jax.tree.map(lambda g: jnp.zeros_like(g[0]), grads))
    elif proposal.inputs_ok is None:
      # One pass over the inputs: combine, then check the (T× smaller) sum.
      combined = proposal.combine()
      ok &= leaves_finite(combined)
      direction = jax.tree.map(
          lambda d: jnp.where(ok, d, jnp.zeros_like(d)), combined)
    else:
      ok &= proposal.inputs_ok
      # zeros_like(g[0]): a task's slice keeps the leaf's sharding (under
      # Explicit mesh axes both branches must have the same sharded type).
      direction = jax.lax.cond(
          ok, proposal.combine,
          lambda: jax.tree.map(lambda g: jnp.zeros_like(g[0]), grads))

    if track_diagnostics and gram_hat is not None:
      safe_gram = jnp.where(ok, gram_hat, jnp.eye(t, dtype=gram_hat.dtype))
      new_diag = diag_lib.from_gramian(safe_gram)
      new_diag = jax.tree.map(
          lambda n, o: jnp.where(ok, _keep_dtype(n, o), o), new_diag,
          state.diagnostics)
    else:
      new_diag = state.diagnostics
    weights = state.weights
    if weights is not None:
      weights = jnp.where(ok, proposal.coefficients.astype(weights.dtype),
                          weights)
    if proposal.select_inner is None:
      inner = jax.tree.map(lambda n, o: jnp.where(ok, _keep_dtype(n, o), o),
                           proposal.inner, state.inner)
    new_state = AggregatorState(
        weights=weights,
        diagnostics=new_diag,
        num_skipped=state.num_skipped + (~ok).astype(jnp.int32),
        last_skipped=~ok,
        inner=inner,
    )
    return direction, new_state

  return aggregating.Aggregator(init_fn, update_fn)


def gramian_direction(
    coefficients_fn: Callable[[jax.Array, jax.Array, Any, dict],
                              tuple[jax.Array, Any]],
    *,
    shared: gram_lib.SharedMask = None,
    preferences: jax.Array | None = None,
    scale_degree: int = 1,
    heads_follow_coefficients: bool = False,
    heads_reduction: str = 'sum',
    per_group: gram_lib.PerGroup = None,
    shared_key_state: bool = False,
    per_group_state: bool = False,
    method: str = 'gramian_direction',
) -> DirectionFn:
  """A direction function from a weighting ``(K_hat, scale, inner, extra) ->
  (c, inner)``.

  Args:
    coefficients_fn: computes the coefficients from the normalised Gramian
      ``K_hat`` (``K = scale² K_hat``), the method's state and the extra
      arguments of the update (e.g. ``losses``).
    shared: which leaves are shared.
    preferences: ``[T]`` weights of the task-specific leaves' sum.
    scale_degree: ``p`` with ``d(σG) = σ^p d(G)`` for the method; the
      coefficients computed on ``K/scale²`` are multiplied by
      ``scale^(p-1)`` to be those of the true gradients.
    heads_follow_coefficients: weight the task-specific leaves with the
      coefficients too (methods that re-weight the losses, e.g. RLW) instead
      of the preferences.
    heads_reduction: ``'sum'`` (default) or ``'mean'``: divide the
      task-specific leaves' weighted sum by ``T``, for methods whose shared
      part is a mean of ``T`` task terms (e.g. ``mamg(reduction='mean')``),
      so that heads and shared leaves are on the same scale.
    per_group: how the shared leaves are grouped. ``None`` (default): one
      Gramian over all of them. ``'leaf'``: each shared leaf is its own group.
      A function ``key_path -> hashable group id`` (e.g. ``lambda path:
      path[0].key``, by top-level module): leaves with the same id form a
      group. Each group's ``[T, T]`` Gramian is computed in the same single
      pass over the gradients (a ``[G, T, T]`` stack), the weighting runs on
      each group's Gramian (vmapped over the groups) and each group's leaves
      get ``Σ_t c_{g,t} g_t``; task-specific leaves are unchanged. The
      state's ``weights`` are then the mean over the groups of the ``[G, T]``
      coefficients and ``diagnostics`` those of the whole shared Gramian.
      For a weighting with state: a PRNG key the groups share
      (``shared_key_state``), or one state per group (``per_group_state``,
      the state built by ``per_group_state_init``); otherwise a weighting
      with state raises ValueError at its first update.
    shared_key_state: with ``per_group``, the method's state is a PRNG key
      that ``coefficients_fn`` only advances (independently of the Gramian):
      the groups share it, so every group sees the same random draws in a
      step, and the state advances once per step (e.g. ``pcgrad``).
    per_group_state: with ``per_group``, the method's state carries a
      leading group axis ``G`` (``per_group_state_init``): group ``g``'s
      weighting reads and updates its own state (its own EMAs, warm starts,
      targets), as if each group were a separate aggregator.
    method: the factory's name, for error messages.

  Returns:
    A function ``(grads, inner, extra) -> Proposal``.

  Raises:
    TypeError: if ``coefficients_fn`` is not callable, ``scale_degree`` not a
      real number or ``heads_follow_coefficients`` not a bool.
    ValueError: for invalid ``preferences`` (1-D, finite, not all zero),
      a non-finite ``scale_degree``, an unknown ``heads_reduction`` or
      ``per_group`` (and, at the first update, ``per_group`` with a weighting
      that has state).
  """
  _checks.check_callable('coefficients_fn', coefficients_fn, method=method,
                         hint='(K_hat, scale, inner, extra) -> (c, inner)')
  # Any sign: linear scalarization passes its weights here.
  _checks.check_preferences('preferences', preferences, method=method,
                            non_negative=False)
  _checks.check_in_range('scale_degree', scale_degree, None, None,
                         method=method,
                         hint='p with d(σG) = σ^p d(G); 1 for most methods')
  _checks.check_bool('heads_follow_coefficients', heads_follow_coefficients,
                     method=method)
  _checks.check_one_of(
      'heads_reduction', heads_reduction, ('sum', 'mean'), method=method,
      hint="'mean' divides the task-specific leaves' sum by T")

  gram_lib.check_per_group(per_group, method=method)
  if per_group is not None:
    return _per_group_direction(
        coefficients_fn, shared=shared, preferences=preferences,
        scale_degree=scale_degree,
        heads_follow_coefficients=heads_follow_coefficients,
        heads_reduction=heads_reduction, per_group=per_group,
        shared_key_state=shared_key_state, per_group_state=per_group_state,
        method=method)

  def direction_fn(grads, inner, extra):
    mask = gram_lib.resolve_shared_mask(shared, grads)
    gram_hat, scale = gram_lib.normalized_gramian(grads, mask)
    c, inner = coefficients_fn(gram_hat, scale, inner, extra)
    if scale_degree != 1:
      c = c * scale ** (scale_degree - 1)
    t = gram_hat.shape[0]
    heads = c if heads_follow_coefficients else preference_vector(
        preferences, t, c.dtype)
    if heads_reduction == 'mean':
      heads = heads / t
    return Proposal(
        coefficients=c, gram_hat=gram_hat, inner=inner,
        inputs_ok=leaves_finite(grads, mask, shared=False),
        combine=lambda: gram_lib.weighted_sum(c, grads, mask,
                                              task_weights=heads))

  return direction_fn


def _per_group_direction(coefficients_fn, *, shared, preferences,
                         scale_degree, heads_follow_coefficients,
                         heads_reduction, per_group, shared_key_state,
                         per_group_state, method) -> DirectionFn:
  """``gramian_direction`` with ``per_group``: the ``[G, T, T]`` Gramians of
  the groups in one pass, the weighting vmapped over the groups, each group's
  leaves combined with its own coefficients."""

  def direction_fn(grads, inner, extra):
    if (jax.tree.leaves(inner) and not shared_key_state
        and not per_group_state):
      raise ValueError(
          f'{method}: per_group needs a weighting without state (one '
          'Gramian per group would need one state per group: PRNG keys, '
          'EMAs, learned weights); this one has state. Use per_group=None, '
          'or a method that takes per_group (aligned_mtl, mgda, upgrad, '
          'dualproj, imtl_g, cagrad, conflict_free, fairgrad, pcgrad, '
          'gradvac, nash_mtl, ema_weighting).')
    mask = gram_lib.resolve_shared_mask(shared, grads)
    groups, names = gram_lib.leaf_groups(per_group, grads, mask)
    k_hats, scales = gram_lib.normalized_group_gramians(
        grads, mask, groups, len(names))
    if per_group_state:
      _check_group_axis(inner, len(names), method)
      c, new_inner = jax.vmap(
          lambda k, s, own: coefficients_fn(k, s, own, extra))(
              k_hats, scales, inner)
    else:
      c, new_inner = jax.vmap(
          lambda k, s: coefficients_fn(k, s, inner, extra))(k_hats, scales)
      # The key advanced the same way in every group: keep one copy.
      new_inner = jax.tree.map(lambda x: x[0], new_inner)
    if scale_degree != 1:
      c = c * (scales ** (scale_degree - 1))[:, None]
    t = k_hats.shape[1]
    mean_c = jnp.mean(c, axis=0)
    heads = mean_c if heads_follow_coefficients else preference_vector(
        preferences, t, c.dtype)
    if heads_reduction == 'mean':
      heads = heads / t
    # The whole shared Gramian (for the diagnostics and the NaN check):
    # Σ_g scale_g² K_hat_g, normalised, with the scales relative to the
    # largest so that it neither overflows nor underflows.
    rel = scales / jnp.max(scales)
    total = jnp.sum(k_hats * (rel ** 2)[:, None, None], axis=0)
    top = jnp.max(jnp.diag(total))
    gram_hat = jnp.where(top > 0, total / jnp.where(top > 0, top, 1), total)
    # A NaN/Inf in any group's coefficients reaches their mean.
    return Proposal(
        coefficients=mean_c, gram_hat=gram_hat, inner=new_inner,
        inputs_ok=leaves_finite(grads, mask, shared=False) & jnp.all(
            jnp.isfinite(k_hats)),
        combine=lambda: gram_lib.grouped_weighted_sum(c, grads, groups,
                                                      heads))

  return direction_fn


def _check_group_axis(inner: Any, num_groups: int, method: str) -> None:
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else None
           for x in jax.tree.leaves(inner)}
  if sizes != {num_groups}:
    raise ValueError(
        f'{method}: the gradients form {num_groups} parameter groups but the '
        f'state holds one per group for {sorted(map(str, sizes))} groups: '
        'the state was initialised from other parameters. Call '
        'init(params) with the parameters whose gradients you pass.')


def per_group_state_init(init_inner: Callable[[], Any], *,
                         shared: gram_lib.SharedMask,
                         per_group: gram_lib.PerGroup,
                         method: str) -> Callable[[Any], Any] | None:
  """``params -> one copy of init_inner() per parameter group`` (None
  without ``per_group``), for ``_build(init_inner_from_params=...)`` with
  ``gramian_direction(per_group_state=True)``.

  The groups are those ``per_group`` forms on the shared leaves of
  ``params`` (the gradients' leaves without the task axis), so ``init``
  needs the parameters; ``init(None)`` (the representation level, whose
  gradients are the representation's, not the parameters') raises
  ValueError naming the fix.
  """
  if per_group is None:
    return None

  def init(params):
    if params is None or not jax.tree.leaves(params):
      raise ValueError(
          f'{method}: per_group keeps one state per parameter group and '
          'finds the groups in the parameters given to init; init got '
          f'{params!r}. Call init(params) with the parameters (or the '
          'tree whose stacked gradients you will pass); at the '
          'representation level (init(None)) use per_group=None.')
    mask = gram_lib.resolve_shared_mask(shared, params)
    _, names = gram_lib.leaf_groups(per_group, params, mask)
    state = init_inner()
    return jax.tree.map(
        lambda x: jnp.repeat(jnp.asarray(x)[None], len(names), axis=0),
        state)

  return init


def _stateful(coefficients_fn, init_inner: Callable[[], Any], *,
              num_tasks: int, shared: gram_lib.SharedMask,
              per_group: gram_lib.PerGroup, method: str,
              preferences: jax.Array | None = None
              ) -> aggregating.Aggregator:
  """A Gramian aggregator whose weighting has state ``init_inner()``; with
  ``per_group``, one state per parameter group (``per_group_state_init``)."""
  direction_fn = gramian_direction(
      coefficients_fn, shared=shared, preferences=preferences,
      per_group=per_group, per_group_state=True, method=method)
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences,
                init_inner=init_inner,
                init_inner_from_params=per_group_state_init(
                    init_inner, shared=shared, per_group=per_group,
                    method=method))


def aggregator_state(opt_state: Any) -> AggregatorState:
  """Finds the (first) ``AggregatorState`` inside an optimizer state.

  Args:
    opt_state: e.g. the state of ``optax.chain(mtl.aligned_mtl(), adam)``.

  Returns:
    The aggregator's state, for logging its weights and diagnostics.

  Raises:
    ValueError: if there is none.
  """
  found = [
      x for x in jax.tree.leaves(
          opt_state, is_leaf=lambda x: isinstance(x, AggregatorState))
      if isinstance(x, AggregatorState)
  ]
  if not found:
    raise ValueError('No mtl_optax AggregatorState in this optimizer state.')
  return found[0]


################################################################################
# Shared by several methods.


def _require_num_tasks(name: str, num_tasks: int | None) -> int:
  return _checks.check_num_tasks(num_tasks, method=name, required=True)


def _stateless(weighting, shared, num_tasks, preferences=None, degree=1,
               per_group=None, method='gramian_direction'):
  """An aggregator whose coefficients are ``weighting(K_hat)`` (no state)."""
  direction_fn = gramian_direction(
      lambda k, scale, inner, extra: (weighting(k), inner),
      shared=shared, preferences=preferences, scale_degree=degree,
      per_group=per_group, method=method)
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences)


def _positive(losses, floor=1e-12):
  """The losses floored at ``floor`` (the loss-based weightings divide by
  them and take their logarithms)."""
  return jnp.maximum(losses, floor)


################################################################################
# The loss-based methods' machinery.


def _losses(extra, name, t):
  losses = extra.get('losses')
  if losses is None:
    raise ValueError(
        f'{name} weights the task losses: pass them to the update, e.g. '
        'tx.update(grads, state, params, losses=losses).')
  losses = jnp.asarray(losses)
  losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
  if losses.shape != (t,):
    raise ValueError(f'`losses` has shape {losses.shape}; expected ({t},).')
  return losses


def _loss_aggregator(name, coefficients_fn, init_inner, *, num_tasks, shared,
                     track_diagnostics, needs_gramian=False, stateful=True):
  """``coefficients_fn(losses, gram_hat, scale, inner) -> (c, inner)``."""
  t = _checks.check_num_tasks(num_tasks, method=name, required=stateful)
  _checks.check_bool('track_diagnostics', track_diagnostics, method=name)
  with_gramian = track_diagnostics or needs_gramian

  def direction_fn(grads, inner, extra):
    losses = _losses(extra, name, gram_lib.num_tasks(grads))
    mask = gram_lib.resolve_shared_mask(shared, grads)
    gram_hat, scale = (gram_lib.normalized_gramian(grads, mask)
                       if with_gramian else (None, None))
    c, inner = coefficients_fn(losses, gram_hat, scale, inner)
    # Non-finite losses skip the step, which leaves the state as it was: a
    # NaN loss must not enter the loss history or the learned weights.
    inputs_ok = jnp.all(jnp.isfinite(losses)) & (
        leaves_finite(grads, mask, shared=False) if with_gramian
        else leaves_finite(grads))
    return Proposal(c, gram_hat, inner, inputs_ok,
                    lambda: gram_lib.weighted_sum(c, grads, mask, c))

  return _build(direction_fn, num_tasks=t, preferences=None,
                init_inner=init_inner, track_diagnostics=track_diagnostics)


def _inner_step(optimizer, grad, value, opt_state):
  """One step of an inner Optax optimizer on a learned part of the state."""
  updates, opt_state = optimizer.update(grad, opt_state, value)
  return optax.apply_updates(value, updates), opt_state
