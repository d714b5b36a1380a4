"""The methods as Optax aggregators: stacked per-task gradients in, one update
with the parameters' structure out.

Each factory returns an ``optax.experimental.aggregating.Aggregator`` (a
``GradientTransformationExtraArgs``), so it chains in front of any optimizer::

    tx = optax.chain(mtl_optax.aligned_mtl(), optax.adam(1e-3))
    updates, state = tx.update(stacked_grads, state, params)

Every aggregator is built the same way: the Gramian of the *shared* leaves
(``mtl_optax.normalized_gramian``), a weighting function ``K -> c``
(``mtl_optax.weightings``), and the weighted sum ``Σ_t c_t g_t`` of the shared
leaves. Task-specific leaves (``shared`` mask False) get the plain
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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import diagnostics as diag_lib
from mtl_optax import gramians as gram_lib
from mtl_optax import weightings
from mtl_optax.methods.aligned_mtl import SCALE_MODES
from mtl_optax.methods.linear_scalarization import preference_vector
from mtl_optax.methods.mgda import NORMALIZATIONS

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
      selects.
  """
  coefficients: jax.Array
  gram_hat: jax.Array | None
  inner: Any
  inputs_ok: jax.Array | None
  combine: Callable[[], PyTree]


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
      ok &= jnp.all(jnp.isfinite(leaf))
  return ok


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
    track_diagnostics: bool = True,
) -> aggregating.Aggregator:
  """Wraps a direction function with validation, NaN handling and state.

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
    del params
    weights = None if num_tasks is None else jnp.zeros((num_tasks,),
                                                       state_dtype())
    return AggregatorState(
        weights=weights,
        diagnostics=diag_lib.empty(state_dtype()),
        num_skipped=jnp.zeros((), jnp.int32),
        last_skipped=jnp.zeros((), bool),
        inner=init_inner(),
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
    if proposal.inputs_ok is None:
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

  Returns:
    A function ``(grads, inner, extra) -> Proposal``.

  Raises:
    TypeError: if ``coefficients_fn`` is not callable, ``scale_degree`` not a
      real number or ``heads_follow_coefficients`` not a bool.
    ValueError: for invalid ``preferences`` (1-D, finite, not all zero),
      a non-finite ``scale_degree`` or an unknown ``heads_reduction``.
  """
  method = 'gramian_direction'
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


################################################################################
# The papers' methods.


def linear_scalarization(
    weights: jax.Array | None = None,
    *,
    shared: gram_lib.SharedMask = None,
    num_tasks: int | None = None,
    track_diagnostics: bool = True,
) -> aggregating.Aggregator:
  """The uniform-scaling baseline: ``Σ_t w_t g_t``, the gradient of ``w·L``.

  Args:
    weights: ``[T]`` task weights; default all ones (the sum of the losses).
    shared: which leaves are shared (only matters for diagnostics here).
    num_tasks: ``T``, to record the weights in the state.
    track_diagnostics: compute the Gramian for the diagnostics. With False the
      aggregator is a plain weighted sum, the cheapest possible step.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: if ``weights`` is not a 1-D, finite, not all-zero vector
      (negative weights are allowed: they ascend those losses) or disagrees
      with ``num_tasks``, or ``num_tasks < 1``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, mtl_optax as mtl
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[1., 0.], [0., 2.]])}   # two tasks
    >>> tx = optax.chain(mtl.linear_scalarization(), optax.sgd(0.1))
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['w'].tolist()
    [-0.10000000149011612, -0.20000000298023224]
  """
  method = 'linear_scalarization'
  _checks.check_num_tasks(num_tasks, method=method)
  # Any sign: a plain weighted sum may ascend a loss on purpose.
  _checks.check_preferences('weights', weights, method=method,
                            num_tasks=num_tasks, non_negative=False)
  _checks.check_bool('track_diagnostics', track_diagnostics, method=method)

  if track_diagnostics:
    direction_fn = gramian_direction(
        lambda k, scale, inner, extra: (weightings.linear(k, weights), inner),
        shared=shared, preferences=weights)
  else:
    def direction_fn(grads, inner, extra):
      t = gram_lib.num_tasks(grads)
      c = preference_vector(weights, t)
      # inputs_ok=None: the sum of every leaf certifies them (one pass).
      return Proposal(c, None, inner, None,
                      lambda: gram_lib.combine(c, grads))

  return _build(direction_fn, num_tasks=num_tasks, preferences=weights,
                track_diagnostics=track_diagnostics)


def _aligned_svd_direction(shared, preferences, scale_mode) -> DirectionFn:
  """Aligned-MTL from the SVD of the concatenated shared leaves (reference)."""

  def direction_fn(grads, inner, extra):
    t = gram_lib.num_tasks(grads)
    mask = gram_lib.resolve_shared_mask(shared, grads)
    leaves, treedef = jax.tree.flatten(grads)
    flags = jax.tree.leaves(mask)
    # Zero-size leaves have no columns to decompose (and no entries to
    # scale); `combine` still gives them their zero-size update.
    shared_leaves = [g for g, m in zip(leaves, flags) if m and g.size > 0]
    heads = preference_vector(preferences, t)
    heads_ok = leaves_finite(grads, mask, shared=False)
    if not shared_leaves:
      return Proposal(heads, None, inner, heads_ok,
                      lambda: gram_lib.weighted_sum(heads, grads, mask, heads))
    acc = jnp.result_type(*[gram_lib.accumulation_dtype(g.dtype)
                            for g in shared_leaves])
    matrix = jnp.concatenate(
        [g.reshape(t, -1).astype(acc) for g in shared_leaves], axis=1)
    top = jnp.max(jnp.abs(matrix))
    inv = jnp.where((top > 0) & jnp.isfinite(top), 1 / top, 1)
    scaled = matrix * inv
    # LAPACK's SVD does not terminate on a matrix containing Inf: decompose a
    # finite stand-in and poison the result instead (the step is skipped).
    finite = jnp.all(jnp.isfinite(scaled))
    flat, c = weightings.aligned_direction_svd(
        jnp.where(finite, scaled, 0), heads.astype(acc), scale_mode)
    flat = jnp.where(finite, flat, jnp.nan)
    c = jnp.where(finite, c, jnp.nan)
    flat = flat / inv   # Aligned-MTL is scale-equivariant: undo the scaling
    gram_hat = scaled @ scaled.T
    gram_hat = gram_hat / jnp.where(jnp.max(jnp.diag(gram_hat)) > 0,
                                    jnp.max(jnp.diag(gram_hat)), 1)

    def combine():
      head_part = jax.tree.leaves(
          gram_lib.weighted_sum(heads, grads, mask, heads))
      out, offset = [], 0
      for g, m, h in zip(leaves, flags, head_part):
        if m:
          size = g[0].size
          out.append(flat[offset:offset + size].reshape(g.shape[1:]).astype(
              g.dtype))
          offset += size
        else:
          out.append(h)
      return jax.tree.unflatten(treedef, out)

    return Proposal(c, gram_hat, inner, heads_ok & jnp.all(jnp.isfinite(flat)),
                    combine)

  return direction_fn


def aligned_mtl(
    preferences: jax.Array | None = None,
    scale_mode: str = 'min',
    *,
    shared: gram_lib.SharedMask = None,
    method: str = 'eigh',
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """Aligned-MTL (Senushkin et al., CVPR 2023): ``σ_min · U Vᵀ w``.

  The task gradients are aligned to the closest orthogonal system (the
  Procrustes solution ``U Vᵀ`` of ``G = U Σ Vᵀ``) scaled by the smallest
  singular value, so the aligned system has dominance rate 1; the update is
  that system applied to the preferences ``w``. Computed from ``eigh`` of the
  T×T Gramian (see ``mtl_optax.weightings.aligned``).

  Preference convention: ``w`` defaults to all ones, the paper's ``w = 1`` for
  MTL and its official code (a sum). Other libraries use ``w = 1/T`` (a
  mean); pass ``preferences=jnp.full(T, 1/T)`` for that. Task-specific leaves
  get ``Σ_t w_t g_t``.

  Precision: from the Gramian, float32 gradients resolve singular values down
  to about ``sqrt(T · eps) ≈ 2e-3`` of the largest; smaller ones are treated
  as zero (rank truncation). ``method='svd'`` decomposes the stacked matrix
  itself (exact to ``T · eps``) at a much higher cost.

  Args:
    preferences: ``[T]`` task preferences ``w``; default all ones.
    scale_mode: 'min' (the paper), 'median' or 'rmse' (see
      ``mtl_optax.weightings.aligned``).
    shared: which leaves are shared.
    method: 'eigh' (Gramian, the fast path) or 'svd' (reference: thin SVD of
      the concatenated ``[T, P]`` matrix).
    num_tasks: ``T``, to record the weights in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for an unknown ``scale_mode`` or ``method``, invalid
      ``preferences`` (1-D, finite, non-negative, not all zero, ``num_tasks``
      entries) or ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, optax, mtl_optax as mtl
    >>> params = {'w': jnp.zeros(2)}
    >>> grads = {'w': jnp.array([[3., 0.], [0., 1.]])}   # task 1 dominates
    >>> tx = mtl.aligned_mtl()
    >>> update, state = tx.update(grads, tx.init(params))
    >>> update['w'].tolist()                         # both scaled to σ_min = 1
    [1.0, 1.0]
    >>> float(state.diagnostics.dominance_rate)      # of the input system
    3.0
  """
  name = 'aligned_mtl'
  _checks.check_num_tasks(num_tasks, method=name)
  _checks.check_preferences('preferences', preferences, method=name,
                            num_tasks=num_tasks)
  _checks.check_one_of(
      'scale_mode', scale_mode, SCALE_MODES, method=name,
      hint="'min' is the paper's σ_min; see mtl_optax.weightings.aligned")
  _checks.check_one_of(
      'method', method, ('eigh', 'svd'), method=name,
      hint="'eigh' decomposes the T×T Gramian (fast), 'svd' the stacked "
      'gradients (reference)')
  if method == 'eigh':
    direction_fn = gramian_direction(
        lambda k, scale, inner, extra: (
            weightings.aligned(k, preferences, scale_mode), inner),
        shared=shared, preferences=preferences)
  elif method == 'svd':
    direction_fn = _aligned_svd_direction(shared, preferences, scale_mode)
  else:
    raise ValueError(f"method must be 'eigh' or 'svd', got {method!r}.")
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences)


def mgda(
    normalization: str = 'none',
    max_iters: int = 250,
    tol: float = 1e-5,
    *,
    solver: str = 'active_set',
    shared: gram_lib.SharedMask = None,
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm convex combination.

  Solves problem (3), ``min_{α∈Δ} ‖Σ α_t g_t‖²`` exactly, by an active-set
  method inside ``lax.while_loop`` (closed form for T = 2); the paper's
  Frank-Wolfe (Algorithm 2) is ``solver='frank_wolfe'``. The direction
  conflicts with no task: ``<d, g_t> ≥ ‖d‖² ≥ 0``, for the gradients it is
  given. Task-specific leaves get their plain gradients (Algorithm 2, line
  2). As MGDA-UB (``representation_grads(encode, heads, mtl.mgda())``) that
  holds at the representation ``z``; at the encoder's parameters only when
  its Jacobian is isotropic on the tasks' span
  (``mtl.diagnostics.jacobian_isotropy``).

  Args:
    normalization: 'none' | 'l2' | 'loss' | 'loss+'. The last two need the
      task losses: ``tx.update(grads, state, params, losses=losses)``.
    max_iters: Frank-Wolfe iteration limit (Frank-Wolfe solvers only).
    tol: Frank-Wolfe stopping tolerance (see
      ``mtl_optax.weightings.min_norm_frank_wolfe``).
    solver: 'active_set' (default, exact), 'frank_wolfe' (the paper's
      Algorithm 2) or 'frank_wolfe_away' (with away steps).
    shared: which leaves are shared.
    num_tasks: ``T``, to record the coefficients in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type.
    ValueError: for an unknown ``normalization``, ``max_iters < 1``, a
      negative or non-finite ``tol`` or ``num_tasks < 1``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> grads = {'w': jnp.array([[1., 0.], [-0.5, 1.]])}   # conflicting
    >>> tx = mtl.mgda()
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> bool((grads['w'] @ d['w'] >= 0).all())
    True
  """
  _checks.check_num_tasks(num_tasks, method='mgda')
  _checks.check_one_of(
      'normalization', normalization, NORMALIZATIONS, method='mgda',
      hint="'none' is the paper; 'loss' and 'loss+' need losses= at update")
  _checks.check_int_at_least(
      'max_iters', max_iters, 1, method='mgda',
      hint='the Frank-Wolfe iteration limit; 250 as in the reference code')
  _checks.check_non_negative(
      'tol', tol, method='mgda',
      hint='the Frank-Wolfe stopping tolerance, e.g. 1e-5; 0 runs all '
      'max_iters iterations')
  _checks.check_one_of(
      'solver', solver, weightings.mgda_solvers, method='mgda',
      hint="'active_set' is exact, 'frank_wolfe' is the paper's Algorithm 2")
  degree = 0 if normalization in ('l2', 'loss+') else 1

  def coefficients(k, scale, inner, extra):
    return weightings.mgda(k, normalization, extra.get('losses'), max_iters,
                           tol, solver), inner

  direction_fn = gramian_direction(coefficients, shared=shared,
                                   scale_degree=degree)
  return _build(direction_fn, num_tasks=num_tasks, preferences=None)


def _random_order_aggregator(weighting, preferences, shared, seed, num_tasks,
                             method, draw=weightings.random_orders,
                             heads_reduction='sum'):
  """An aggregator whose weighting ``(K, draw(key, T), preferences) -> c``
  needs fresh random draws (visiting orders) every step, from a PRNG key in
  the state."""
  _checks.check_num_tasks(num_tasks, method=method)
  _checks.check_preferences('preferences', preferences, method=method,
                            num_tasks=num_tasks)
  _checks.check_integer('seed', seed, method=method,
                        hint='the seed of the PRNG key in the state')

  def coefficients(k, scale, key, extra):
    key, sub = jax.random.split(key)
    return weighting(k, draw(sub, k.shape[0]), preferences), key

  direction_fn = gramian_direction(coefficients, shared=shared,
                                   preferences=preferences,
                                   heads_reduction=heads_reduction)
  return _build(direction_fn, num_tasks=num_tasks, preferences=preferences,
                init_inner=lambda: jax.random.PRNGKey(seed))


def pcgrad(
    preferences: jax.Array | None = None,
    *,
    shared: gram_lib.SharedMask = None,
    seed: int = 0,
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """PCGrad (Yu et al., NeurIPS 2020): project away conflicting components.

  Each task gradient is projected onto the normal plane of every other task
  gradient it conflicts with, in a fresh random order per task and step (PRNG
  key in the state), and the results are summed; computed in coefficient form
  from the Gramian (``mtl_optax.weightings.pcgrad``).

  Args:
    preferences: ``[T]`` weights of the projected gradients in the sum (and of
      the task-specific leaves); default all ones.
    shared: which leaves are shared.
    seed: seed of the PRNG key in the state.
    num_tasks: ``T``, to record the coefficients in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type (e.g. a float ``seed``).
    ValueError: for invalid ``preferences`` (1-D, finite, non-negative, not
      all zero, ``num_tasks`` entries) or ``num_tasks < 1``.
  """
  return _random_order_aggregator(weightings.pcgrad, preferences, shared,
                                  seed, num_tasks, 'pcgrad')


MAMG_MODES = ('one_sided', 'algorithm1')


def mamg(
    preferences: jax.Array | None = None,
    *,
    mode: str = 'one_sided',
    clip: str | None = None,
    reduction: str | None = None,
    shared: gram_lib.SharedMask = None,
    seed: int = 0,
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """MAMG (Chai et al., IEEE TCYB 2022): the gradient clipping rule.

  When two task gradients conflict (``<g_i, g_j> < 0``, Def. 1), ``g_i`` is
  clipped along the interfering direction ``Pγ = g_i - g_j`` by ``Δg_ij``
  (Eqs. 2-4): ``g_i' = g_i - Δg_ij Pγ/‖Pγ‖``, a point between ``g_i`` and
  ``g_j``. Two modes (what the clip does and does not guarantee:
  ``mtl_optax.weightings.mamg_one_sided``; derivations in the module
  ``mtl_optax/methods/mamg.py``):

  - ``'one_sided'`` (default), the rule as the paper analyses it (Fig. 2(d),
    Lemma 1, Theorems 1-2): each conflicting pair clips ONE of its gradients
    and keeps the other; the update is the sum, for T = 2
    ``g^MG = g_i' + g_j``. Pairs are visited once each per step, tasks
    entering in a random order and each meeting the tasks already in, on
    the running (already clipped) gradients. ``clip`` picks the clipped one:
    ``'larger_norm'`` (default; the dominating gradient of Fig. 1(a); on an
    exact tie the smaller task index), ``'random'`` (a coin per pair) or
    ``'sequential'`` (the later-entered task: each task is clipped against
    the final gradients of those that entered before it).
  - ``'algorithm1'``, Algorithm 1 read literally: every task's running
    ``g_i'`` is clipped against every other original ``g_j`` (random order
    per task), and the update is their mean. For T = 2 the two clips cancel
    and this is exactly the plain mean gradient (``Δg_12 = Δg_21``, ``Pγ``
    flips sign).

  The task-specific leaves (``shared`` False) get the preference-weighted
  sum ``Σ w_t g_t``, divided by ``T`` when ``reduction='mean'``, on the scale
  of the shared part.

  Args:
    preferences: ``[T]`` weights of the (clipped) gradients and of the
      task-specific leaves; default all ones.
    mode: ``'one_sided'`` or ``'algorithm1'``.
    clip: ``'larger_norm'``, ``'random'`` or ``'sequential'``
      (``mode='one_sided'`` only; None means ``'larger_norm'`` there).
    reduction: ``'sum'`` or ``'mean'`` (divide by ``T``). None (default)
      means each mode's own: ``'sum'`` for ``'one_sided'`` (Lemma 1),
      ``'mean'`` for ``'algorithm1'`` (its line 13).
    shared: which leaves are shared.
    seed: seed of the PRNG key in the state (entry orders, coins).
    num_tasks: ``T``, to record the coefficients in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type (e.g. a float ``seed``).
    ValueError: for an unknown ``mode``, ``clip`` or ``reduction``, a
      ``clip`` with ``mode='algorithm1'``, invalid ``preferences`` (1-D,
      finite, non-negative, not all zero, ``num_tasks`` entries) or
      ``num_tasks < 1``.

  References:
    Chai et al., "A Model-Agnostic Approach to Mitigate Gradient Interference
    for Multi-Task Learning", IEEE Trans. Cybern. 2022: Defs. 1-2,
    Eqs. (2)-(4), Algorithm 1, Fig. 2, Lemma 1, Theorems 1-2.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> grads = {'w': jnp.array([[2., 0.], [-1., 1.]])}  # g_0 dominates
    >>> tx = mtl.mamg()                       # one-sided, larger norm, sum
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> [round(x, 3) for x in d['w'].tolist()]     # g_0' + g_1
    [-0.275, 1.425]
    >>> tx = mtl.mamg(mode='algorithm1')      # T = 2: the mean gradient
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> [round(x, 5) for x in d['w'].tolist()]
    [0.5, 0.5]
  """
  _checks.check_one_of(
      'mode', mode, MAMG_MODES, method='mamg',
      hint="'one_sided' clips one gradient per conflicting pair (the "
      "paper's analysis), 'algorithm1' is Algorithm 1 read literally")
  if clip is not None:
    _checks.check_one_of(
        'clip', clip, weightings.mamg_clips, method='mamg',
        hint='which gradient of a conflicting pair is clipped')
    if mode != 'one_sided':
      raise ValueError(
          f"mamg: clip={clip!r} applies to mode='one_sided' only "
          f"(mode={mode!r} clips every task against every other); drop "
          "clip= or pass mode='one_sided'.")
  if reduction is not None:
    _checks.check_one_of(
        'reduction', reduction, weightings.mamg_reductions, method='mamg',
        hint="None is 'sum' for mode='one_sided' (Lemma 1's g_i' + g_j) "
        "and 'mean' for mode='algorithm1' (its line 13)")
  if mode == 'one_sided':
    clip = 'larger_norm' if clip is None else clip
    reduction = 'sum' if reduction is None else reduction

    def weighting(k, draws, preferences):
      order, coins = draws
      return weightings.mamg_one_sided(k, order, coins, preferences,
                                       clip=clip, reduction=reduction)

    draw = weightings.mamg_draws
  else:
    reduction = 'mean' if reduction is None else reduction

    def weighting(k, orders, preferences):
      return weightings.mamg(k, orders, preferences, reduction=reduction)

    draw = weightings.random_orders
  return _random_order_aggregator(weighting, preferences, shared, seed,
                                  num_tasks, 'mamg', draw=draw,
                                  heads_reduction=reduction)


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
