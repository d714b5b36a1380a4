"""Armijo backtracking line searches for multi-task models.

Two step-size rules from Filatov's thesis (*Fast optimisation of multi-task
models*, Algorithms 3.1 and 3.2), for a model with shared parameters
``θ_sh`` (the encoder, ``z = encode(θ_sh, x)``) and one head ``θ_t`` per task.
The objective of the search is the preference-weighted sum of the task
losses, ``f = Σ_t w_t L_t``.

- ``backtracking_linesearch`` (Algorithm 3.1) is an Optax transformation that
  follows an aggregator in ``optax.chain``. The aggregator's output is the
  trial direction ``d``: the aggregated direction on the shared leaves and
  each head's own (preference-weighted) gradient on the task-specific leaves.
  Every trial re-evaluates the whole model at ``θ - η d``.
- ``fast_backtracking_linesearch`` (Algorithm 3.2) is a training step built
  like ``mtl_optax.representation_grads``. Its trials move the shared
  representation along the aggregated representation-level direction
  ``d_z`` and the heads along their gradients, ``θ_t - η ∇_{θ_t} f``, and
  evaluate the heads only: the encoder runs once per step, whatever the
  number of trials. The accepted ``η`` reaches the encoder through the chain
  rule, ``θ_sh ← θ_sh - η Jᵀ d_z`` (one VJP), ``J = ∂z/∂θ_sh``.

Both try ``η = lr_ub γ^k`` for ``k = 0, 1, ..., max_steps - 1`` and accept the
first ``η`` with the Armijo sufficient decrease

    f(trial(η)) ≤ f(θ) - c η s,

where ``s = -d f(trial(η))/dη at η = 0`` is the slope along the trial
direction (see ``slope=``). A trial whose value is NaN or ±Inf fails. The thesis
does not spell out its Armijo condition; this is the standard one (Armijo,
1966; Nocedal & Wright, Eq. 3.4), with the slope of the searched function
when its gradient is known and Vaswani et al.'s ``s = ‖d‖²`` otherwise.

Non-descent directions. An aggregated direction is in general *not* the
gradient of ``f``, and may make a non-positive angle with it (``s ≤ 0``).
Then no small enough ``η`` decreases ``f`` and the Armijo test with ``s ≤ 0``
would accept increases, so **no trial is run and the update is zero**
(``info.descent`` False, ``info.num_trials`` 0). The same happens when the
current value, the slope or the direction is not finite. MGDA, Aligned-MTL
and linear scalarization give ``s ≥ 0`` when ``f`` uses the aggregator's
preferences and the slope is taken where they aggregate (``<d, Gᵀ w> =
wᵀ G d ≥ 0``: MGDA's ``d`` has ``G d ≥ ‖d‖²``, Aligned-MTL's ``wᵀ G d =
σ wᵀ V Λ^{1/2} Vᵀ w``); PCGrad, CAGrad, GradDrop, loss-based weightings
with their own task weights, Adam's momentum, or a representation-level
direction mapped through ``J Jᵀ`` can give ``s < 0``.

Failure. If all ``max_steps`` trials fail, the update is zero
(``info.accepted`` False), or, with ``on_failure='smallest'``, the smallest
step tried, ``lr_ub γ^(max_steps-1)``, provided its value is finite (Optax's
choice). Updates are never NaN.

Upper bound. ``lr_ub_patience=n`` lowers the upper bound (the thesis' second
open question): after ``n`` consecutive steps whose first trial ``η = lr_ub``
was rejected, ``lr_ub ← γ lr_ub`` (not below ``lr_ub_min``), so the wasted
trials per step fall back towards one.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtl_optax import gramians as gram_lib
from mtl_optax import _checks
from mtl_optax.methods._core import leaves_finite
from mtl_optax.jacobian import check_task_losses
from mtl_optax.jacobian import vjp_with_aux
from mtl_optax.gramians import preference_vector

PyTree = Any

_SLOPES = ('auto', 'grad', 'norm')
_FAILURES = ('zero', 'smallest')
_Z_STEPS = ('scaled', 'direction', 'linearized')


class LinesearchInfo(NamedTuple):
  """What happened in the last line search.

  Attributes:
    num_trials: objective evaluations (trials) in the last step; 0 when no
      trial ran (non-descent or non-finite inputs).
    accepted: whether a trial satisfied the Armijo condition.
    descent: whether the slope was positive and the value, slope and direction
      finite (otherwise no trial runs and the step is zero).
    slope: the slope ``s`` of the Armijo condition.
    value: the objective at the returned point (the accepted or, with
      ``on_failure='smallest'``, the last trial's value; the current value for
      a zero step).
  """
  num_trials: jax.Array
  accepted: jax.Array
  descent: jax.Array
  slope: jax.Array
  value: jax.Array


class BacktrackingLinesearchState(NamedTuple):
  """State of both line searches.

  Attributes:
    learning_rate: the step ``η`` of the last update (0 for a zero step).
    lr_ub: the current upper bound (constant unless ``lr_ub_patience``).
    fail_streak: consecutive steps whose first trial (``η = lr_ub``) failed.
    total_trials: trials summed over all steps (trials per step =
      ``total_trials / count``).
    count: number of updates.
    info: ``LinesearchInfo`` of the last step.
  """
  learning_rate: jax.Array
  lr_ub: jax.Array
  fail_streak: jax.Array
  total_trials: jax.Array
  count: jax.Array
  info: LinesearchInfo


################################################################################
# The search itself, shared by both variants.


def _validate(method, lr_ub, decrease_factor, slope_rtol, max_steps,
              on_failure, lr_ub_patience, lr_ub_min, preferences):
  """Checks the arguments both searches share (``method`` names the caller
  in the messages)."""
  _checks.check_positive('lr_ub', lr_ub, method=method,
                         hint='the largest step tried, e.g. 1.0')
  _checks.check_in_range(
      'decrease_factor', decrease_factor, 0, 1, method=method, low_open=True,
      high_open=True, hint='the backtracking factor γ, e.g. 0.5')
  _checks.check_in_range(
      'slope_rtol', slope_rtol, 0, 1, method=method, high_open=True,
      hint='the Armijo constant c, e.g. 1e-4')
  _checks.check_int_at_least('max_steps', max_steps, 1, method=method,
                             hint='trials per step at most, e.g. 20')
  _checks.check_one_of(
      'on_failure', on_failure, _FAILURES, method=method,
      hint="the step when no trial passes: 'zero' or the smallest tried")
  _checks.check_int_at_least(
      'lr_ub_patience', lr_ub_patience, 1, method=method, allow_none=True,
      hint='lower lr_ub after this many steps whose first trial failed; '
      'None keeps it fixed')
  _checks.check_in_range(
      'lr_ub_min', lr_ub_min, 0,
      None if isinstance(lr_ub, jax.core.Tracer) else float(lr_ub),
      method=method,
      hint='the floor of lr_ub under lr_ub_patience, between 0 and lr_ub')
  # Any sign, as linear scalarization's weights (f = Σ_t w_t L_t).
  _checks.check_preferences('preferences', preferences, method=method,
                            non_negative=False)


def _state_dtype(params: PyTree) -> jnp.dtype:
  """Float dtype of the search's state: float32, or float64 when a
  parameter is float64 (so that float64 losses are compared in float64)."""
  dtypes = [gram_lib.accumulation_dtype(jnp.result_type(x))
            for x in jax.tree.leaves(params)
            if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  return jnp.result_type(jnp.float32, *dtypes)


def _init_state(lr_ub, dtype=jnp.float32) -> BacktrackingLinesearchState:
  i32 = jnp.int32
  return BacktrackingLinesearchState(
      learning_rate=jnp.zeros((), dtype),
      lr_ub=jnp.asarray(lr_ub, dtype),
      fail_streak=jnp.zeros((), i32),
      total_trials=jnp.zeros((), i32),
      count=jnp.zeros((), i32),
      info=LinesearchInfo(
          num_trials=jnp.zeros((), i32),
          accepted=jnp.zeros((), bool),
          descent=jnp.zeros((), bool),
          slope=jnp.zeros((), dtype),
          value=jnp.full((), jnp.inf, dtype),
      ),
  )


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
  """``<a, b>`` over all leaves (``a`` conjugated), accumulated in float32
  or wider at full precision (the slope decides whether a step is tried)."""
  total = jnp.zeros((), jnp.float32)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    acc = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    dot = jnp.dot(jnp.conj(x.astype(acc).ravel()), y.astype(acc).ravel(),
                  precision=gram_lib.PRECISION)
    total = total + jnp.real(dot)
  return total


def _search(trial_value: Callable[[jax.Array], jax.Array], value: jax.Array,
            slope: jax.Array, direction_ok: jax.Array,
            state: BacktrackingLinesearchState, *, decrease_factor: float,
            slope_rtol: float, max_steps: int, on_failure: str,
            lr_ub_patience: int | None, lr_ub_min: float,
            ) -> tuple[jax.Array, BacktrackingLinesearchState]:
  """Tries ``η = lr_ub γ^k`` until Armijo holds; returns the step and state.

  The test runs in the widest of the state's, the value's and the slope's
  float dtypes (float32 at least); the state keeps its own dtypes.
  """
  value, slope = jnp.asarray(value), jnp.asarray(slope)
  dtype = jnp.result_type(state.lr_ub.dtype,
                          gram_lib.accumulation_dtype(value.dtype),
                          gram_lib.accumulation_dtype(slope.dtype))
  value, slope = value.astype(dtype), slope.astype(dtype)
  descent = (jnp.isfinite(value) & jnp.isfinite(slope) & (slope > 0)
             & direction_ok)
  gamma = jnp.asarray(decrease_factor, dtype)

  def cond(carry):
    k, _, accepted, _, _ = carry
    return descent & ~accepted & (k < max_steps)

  def body(carry):
    k, eta, _, _, _ = carry
    new_value = jnp.asarray(trial_value(eta)).astype(dtype)
    ok = jnp.isfinite(new_value) & (
        new_value <= value - slope_rtol * eta * slope)
    return k + 1, jnp.where(ok, eta, eta * gamma), ok, new_value, eta

  lr_ub = state.lr_ub.astype(dtype)
  num_trials, eta, accepted, last_value, last_eta = lax.while_loop(
      cond, body,
      (jnp.zeros((), jnp.int32), lr_ub, jnp.zeros((), bool), value,
       jnp.zeros((), dtype)))

  step = jnp.where(accepted, eta, 0.)
  if on_failure == 'smallest':
    fallback = ~accepted & (num_trials > 0) & jnp.isfinite(last_value)
    step = jnp.where(fallback, last_eta, step)
  new_value = jnp.where(step > 0, last_value, value)

  # The upper-bound rule: count steps whose first trial failed.
  first_failed = descent & ((num_trials > 1) | ~accepted)
  streak = jnp.where(first_failed, state.fail_streak + 1,
                     jnp.where(descent, 0, state.fail_streak))
  if lr_ub_patience is not None:
    lower = streak >= lr_ub_patience
    lr_ub = jnp.where(lower, jnp.maximum(lr_ub * gamma, lr_ub_min), lr_ub)
    streak = jnp.where(lower, 0, streak)

  new_state = BacktrackingLinesearchState(
      learning_rate=step.astype(state.learning_rate.dtype),
      lr_ub=lr_ub.astype(state.lr_ub.dtype),
      fail_streak=streak.astype(jnp.int32),
      total_trials=state.total_trials + num_trials,
      count=state.count + 1,
      info=LinesearchInfo(
          num_trials=num_trials, accepted=accepted, descent=descent,
          slope=slope.astype(state.info.slope.dtype),
          value=new_value.astype(state.info.value.dtype)),
  )
  return step, new_state


def _scaled_step(step: jax.Array, direction: PyTree) -> PyTree:
  """``-η d`` leaf by leaf; exactly zero (never NaN) when ``η = 0``."""
  return jax.tree.map(
      lambda d: jnp.where(step > 0, -step.astype(d.dtype) * d,
                          jnp.zeros_like(d)), direction)


def _move(tree: PyTree, eta: jax.Array, direction: PyTree) -> PyTree:
  return jax.tree.map(lambda p, d: p - eta.astype(p.dtype) * d.astype(p.dtype),
                      tree, direction)


def _objective(value: jax.Array, preferences) -> jax.Array:
  """A scalar, or a ``[T]`` vector of task losses reduced with ``w``."""
  value = jnp.asarray(value)
  if value.ndim == 0:
    return value
  if value.ndim == 1:
    w = preference_vector(preferences, value.shape[0],
                          jnp.promote_types(value.dtype, jnp.float32))
    return jnp.dot(w, value.astype(w.dtype), precision=gram_lib.PRECISION)
  raise ValueError(
      'The objective must be a scalar or a [T] vector of task losses; got '
      f'shape {value.shape}.')


def _kwargs_for(fn: Callable[..., Any], extra: dict[str, Any]) -> dict:
  """The extra keywords ``fn`` accepts (all of them if it takes ``**kw``).

  The first positional parameter (the parameters) is never filled from them.
  """
  try:
    parameters = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return {}
  kind = inspect.Parameter
  if any(p.kind is kind.VAR_KEYWORD for p in parameters):
    return dict(extra)
  if parameters and parameters[0].kind in (kind.POSITIONAL_ONLY,
                                           kind.POSITIONAL_OR_KEYWORD):
    parameters = parameters[1:]
  names = {p.name for p in parameters
           if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)}
  return {k: v for k, v in extra.items() if k in names}


################################################################################
# Algorithm 3.1: classic backtracking, as an Optax transformation.


def backtracking_linesearch(
    *,
    lr_ub: float = 1.0,
    decrease_factor: float = 0.5,
    slope_rtol: float = 1e-4,
    max_steps: int = 20,
    preferences: jax.Array | None = None,
    slope: str = 'auto',
    on_failure: str = 'zero',
    lr_ub_patience: int | None = None,
    lr_ub_min: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Armijo backtracking over shared and task parameters (Algorithm 3.1).

  Place it after an aggregator, ``optax.chain(mtl.aligned_mtl(shared=mask),
  backtracking_linesearch(...))``: it receives the direction ``d`` (gradient
  sign: the aggregated direction on shared leaves, each head's own gradient
  on the others), tries ``θ - η d`` for ``η = lr_ub γ^k``, ``k = 0, ...,
  max_steps - 1``, and returns the update ``-η d`` for the first ``η`` with

  .. math::
    f(θ - η d) \le f(θ) - c\, η\, s, \qquad f = \textstyle\sum_t w_t L_t,

  a plain gradient step with a searched step size (it takes gradients and
  returns updates, like ``optax.sgd``). The slope ``s``:

  - ``'grad'`` (the default when ``grad=`` is passed): ``s = <d, ∇f(θ)>``,
    the exact derivative of ``-f(θ - η d)`` at ``η = 0``. With stacked task
    gradients ``jac``, ``∇f = mtl.combine(w, jac)`` costs nothing more.
  - ``'norm'`` (the default without ``grad=``): ``s = ‖d‖²`` (Vaswani et
    al., 2019), exact when ``d = ∇f`` (linear scalarization), a surrogate
    otherwise.

  If ``s ≤ 0`` (``d`` is not a descent direction of ``f``; possible since an
  aggregated direction is not ``∇f``) or anything is non-finite, no trial
  runs and the update is zero. If all ``max_steps`` trials fail (NaN/Inf
  values fail), the update is zero, or ``-lr_ub γ^(max_steps-1) d`` with
  ``on_failure='smallest'``. See the module docstring.

  Adam-style preconditioning: ``optax.chain(aggregator, optax.scale_by_adam(),
  backtracking_linesearch(...))`` searches along the preconditioned direction
  ``P d`` (the slope is then ``<P d, ∇f>``; Adam's momentum can make it
  non-positive, which gives a zero step).

  Args:
    lr_ub: the largest step tried, ``lr_ub`` in the thesis.
    decrease_factor: ``γ`` in ``(0, 1)``.
    slope_rtol: ``c`` in ``[0, 1)``.
    max_steps: at most this many trials (objective evaluations) per step.
    preferences: ``[T]`` weights ``w`` reducing a vector-valued ``value`` /
      ``value_fn`` to ``f``; default all ones. Use the aggregator's.
    slope: ``'auto'``, ``'grad'`` or ``'norm'`` (above).
    on_failure: ``'zero'`` or ``'smallest'``: the step when no trial passes.
    lr_ub_patience: if set, ``lr_ub ← γ lr_ub`` after this many consecutive
      steps whose first trial failed.
    lr_ub_min: floor of that rule.

  Returns:
    A ``GradientTransformationExtraArgs`` whose ``update(updates, state,
    params, *, value_fn, value=None, grad=None, **extra)`` takes

    * ``value_fn``: ``value_fn(params, **kw)`` returns ``f`` (a scalar) or
      the ``[T]`` task losses (reduced with ``preferences``). It must be
      deterministic (same batch, no dropout) for the test to mean anything.
    * ``value``: ``f`` or the ``[T]`` losses at ``params``; defaults to
      ``losses=`` when that is passed (as for loss-based aggregators).
    * ``grad``: ``∇f`` at ``params`` (for ``slope='grad'``).
    * ``**extra``: the keywords ``value_fn`` accepts (by its signature; all
      of them if it takes ``**kwargs``) are passed to it, the others (e.g.
      ``losses=`` meant for an aggregator) are ignored, so it coexists in a
      chain with any aggregator. (Optax's own line searches raise instead.)

    The state is a ``BacktrackingLinesearchState`` (accepted step, trials).

  Raises:
    TypeError: for arguments of the wrong type (e.g. a float ``max_steps``).
    ValueError: for a value out of its range (``lr_ub > 0``,
      ``decrease_factor`` in (0, 1), ``slope_rtol`` in [0, 1),
      ``max_steps >= 1``, ``lr_ub_patience`` None or >= 1, ``lr_ub_min`` in
      [0, lr_ub], all finite), invalid ``preferences`` or an unknown
      ``slope``/``on_failure``.

  Example:
    >>> import jax.numpy as jnp, optax, mtl_optax as mtl
    >>> from mtl_optax.linesearch import backtracking_linesearch
    >>> def losses(p):   # two tasks, minimisers at w = 1 and w = -1
    ...   return jnp.stack([jnp.sum((p['w'] - 1) ** 2),
    ...                     jnp.sum((p['w'] + 1) ** 2)])
    >>> params = {'w': jnp.array([3.])}
    >>> tx = optax.chain(mtl.mgda(), backtracking_linesearch(lr_ub=4.))
    >>> l, jac = mtl.value_and_jacobian(losses)(params)
    >>> u, s = tx.update(jac, tx.init(params), params, value=l, value_fn=losses,
    ...                  grad=mtl.combine(jnp.ones(2), jac))
    >>> # MGDA: d = ∇L_1 = 4; η = 4 and 2 overshoot, η = 1 lands on w = -1
    >>> u['w'].tolist(), s[1].info.num_trials.tolist()
    ([-4.0], 3)

  References:
    Filatov, *Fast optimisation of multi-task models* (BSc thesis),
    Algorithm 3.1.

    Armijo, `Minimization of functions having Lipschitz continuous first
    partial derivatives <https://doi.org/10.2140/pjm.1966.16.1>`_, 1966.

    Vaswani et al., `Painless Stochastic Gradient
    <https://arxiv.org/abs/1905.09997>`_, 2019.
  """
  _validate('backtracking_linesearch', lr_ub, decrease_factor, slope_rtol,
            max_steps, on_failure, lr_ub_patience, lr_ub_min, preferences)
  _checks.check_one_of(
      'slope', slope, _SLOPES, method='backtracking_linesearch',
      hint="'grad' needs grad= at update, 'norm' uses ‖d‖², 'auto' picks")
  config = dict(decrease_factor=decrease_factor, slope_rtol=slope_rtol,
                max_steps=int(max_steps), on_failure=on_failure,
                lr_ub_patience=lr_ub_patience, lr_ub_min=lr_ub_min)

  def init_fn(params):
    return _init_state(lr_ub, _state_dtype(params))

  def update_fn(updates, state, params=None, *, value_fn=None, value=None,
                grad=None, **extra):
    if params is None:
      raise ValueError('backtracking_linesearch needs `params`.')
    if value_fn is None:
      raise TypeError(
          'backtracking_linesearch.update needs `value_fn=`: a function of '
          'the parameters returning the weighted loss or the [T] losses.')
    if value is None:
      value = extra.get('losses')
      if value is None:
        raise TypeError(
            'backtracking_linesearch.update needs `value=` (or `losses=`): '
            'the objective at `params`.')
    mode = slope
    if mode == 'auto':
      mode = 'grad' if grad is not None else 'norm'
    if mode == 'grad':
      if grad is None:
        raise TypeError("slope='grad' needs `grad=`, the gradient of the "
                        'objective at `params`.')
      s = _vdot(updates, grad)
    else:
      s = _vdot(updates, updates)

    fn_kwargs = _kwargs_for(value_fn, extra)

    def trial_value(eta):
      return _objective(value_fn(_move(params, eta, updates), **fn_kwargs),
                        preferences)

    step, new_state = _search(
        trial_value, _objective(value, preferences), s,
        leaves_finite(updates), state, **config)
    return _scaled_step(step, updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


################################################################################
# Algorithm 3.2: fast backtracking, as a training step.


class FastLinesearchState(NamedTuple):
  """State of ``fast_backtracking_linesearch``.

  Attributes:
    aggregator: the representation-level aggregator's state.
    linesearch: the search's ``BacktrackingLinesearchState``.
    preconditioner: the preconditioner's state (``()`` without one).
  """
  aggregator: Any
  linesearch: BacktrackingLinesearchState
  preconditioner: Any


class FastLinesearchStep(NamedTuple):
  """Result of one fast backtracking step.

  Attributes:
    losses: ``[T]`` task losses at the current parameters.
    encoder_updates: ``-η Jᵀ d_z`` (``-η P(Jᵀ d_z)`` with a preconditioner),
      the encoder parameters' structure; ``optax.apply_updates`` adds it.
    head_updates: ``-η ∇_heads f`` (preconditioned likewise).
    state: the new ``FastLinesearchState``.
    encoder_direction: ``Jᵀ d_z`` (or its preconditioned form), for logging
      or for transformations that want the direction rather than the step.
    head_direction: the heads' direction.
    encoder_aux: ``encode``'s aux, if ``encoder_has_aux``.
    heads_aux: ``heads_losses``'s aux at the current parameters.
  """
  losses: jax.Array
  encoder_updates: PyTree
  head_updates: PyTree
  state: FastLinesearchState
  encoder_direction: PyTree
  head_direction: PyTree
  encoder_aux: Any = None
  heads_aux: Any = None


class FastBacktrackingLinesearch(NamedTuple):
  """``init(encoder_params, head_params) -> FastLinesearchState`` and
  ``step(encoder_params, head_params, state, inputs, batch, **extra) ->
  FastLinesearchStep``."""
  init: Callable[[PyTree, PyTree], FastLinesearchState]
  step: Callable[..., FastLinesearchStep]


def fast_backtracking_linesearch(
    encode: Callable[..., Any],
    heads_losses: Callable[..., Any],
    aggregator: optax.GradientTransformationExtraArgs,
    *,
    lr_ub: float = 1.0,
    decrease_factor: float = 0.5,
    slope_rtol: float = 1e-4,
    max_steps: int = 20,
    preferences: jax.Array | None = None,
    on_failure: str = 'zero',
    lr_ub_patience: int | None = None,
    lr_ub_min: float = 0.0,
    z_step: str = 'direction',
    preconditioner: optax.GradientTransformation | None = None,
    encoder_has_aux: bool = False,
    heads_has_aux: bool = False,
) -> FastBacktrackingLinesearch:
  r"""Fast backtracking (Algorithm 3.2): trials re-run the task heads only.

  For ``z = encode(θ_sh, x)`` and ``L = heads_losses(θ_heads, z, batch)``
  (``[T]``), one step computes, with one encoder forward pass:

  1. the per-task ``∂L_t/∂z`` (T VJPs through the heads) and the
     representation-level direction ``d_z`` = ``aggregator`` applied to them
     (Aligned-MTL-UB with ``mtl.aligned_mtl()``, MGDA-UB with ``mtl.mgda()``,
     any other aggregator alike), and the heads' gradient
     ``g_h = ∇_heads f``, ``f = Σ_t w_t L_t``;
  2. the trials ``φ(η) = f(θ_heads - η g_h, z - η u_z)`` for ``η = lr_ub γ^k``
     until

     .. math::
       φ(η) \le φ(0) - c\, η\, s, \qquad
       s = \langle u_z, ∂f/∂z \rangle + \langle g_h, g_h \rangle,

     the exact slope of ``φ``; only ``heads_losses`` runs in these trials;
  3. the update ``θ_sh ← θ_sh - η Jᵀ d_z`` (one VJP through the encoder,
     ``J = ∂z/∂θ_sh``), ``θ_heads ← θ_heads - η g_h``.

  ``z_step`` chooses ``u_z``, the trials' displacement of ``z`` per unit
  ``η``. The encoder step ``-η Jᵀ d_z`` actually moves ``z`` by ``-η J Jᵀ
  d_z + O(η²)``, and ``J Jᵀ`` is far from the identity in general (with
  batch-mean losses its scale grows with the batch size), so:

  - ``'direction'`` (default): ``u_z = d_z``, Algorithm 3.2 read literally.
    The trials model the encoder step exactly only when ``J Jᵀ = I``;
    otherwise the search mostly guards the heads' step, ``lr_ub`` acts as a
    learning-rate cap, and an accepted step can raise the actual loss (it
    does in the example below, hence ``'linearized'`` there). On MultiMNIST
    (``benchmarks/results/linesearch.md``) it was the only fast reading that
    trained at ``lr_ub = 1``: its early rejections stopped the divergence a
    constant step of 1 suffers.
  - ``'scaled'``: ``u_z = α d_z``, ``α = ‖Jᵀ d_z‖² / ‖d_z‖²``, the component
    of ``J Jᵀ d_z`` along ``d_z``; free (``Jᵀ d_z`` is computed anyway). It
    ignores the (often dominant) part of the encoder's move orthogonal to
    ``d_z``: on MultiMNIST it accepted ``η = lr_ub = 1`` at every step and
    diverged like a constant step of 1.
  - ``'linearized'``: ``u_z = J Jᵀ d_z``, one JVP through the encoder per
    step (not per trial, about the cost of one encoder forward pass): the
    first-order image of the encoder step, so ``s`` is the true slope
    ``<Jᵀ d_z, ∇_sh f> + ‖g_h‖²`` and the accepted steps are of the order
    of ``backtracking_linesearch``'s (small ones on a network: see the
    benchmark). The only reading with a first-order Armijo guarantee for the
    actual update.

  All three coincide, and equal ``backtracking_linesearch``, when the encoder
  is linear in ``θ_sh`` with ``J Jᵀ = I``; ``'linearized'`` equals it for any
  encoder linear in ``θ_sh``.

  ``preconditioner`` (Adam-style, e.g. ``optax.scale_by_adam()``; needs
  ``z_step='linearized'``) maps the direction ``(Jᵀ d_z, g_h)`` to ``(u_sh,
  u_h)`` before the search; the trials move the heads along ``u_h`` and ``z``
  along ``J u_sh``, and the update is ``-η (u_sh, u_h)``.

  Non-descent (``s ≤ 0``), non-finite values and failure after ``max_steps``
  trials are handled as in ``backtracking_linesearch`` (zero update, or the
  smallest step with ``on_failure='smallest'``); updates are never NaN.

  Cost per step: one encoder forward and one encoder backward pass (plus one
  encoder JVP with ``'linearized'``), whatever the number of trials; T + 1
  backward passes and ``1 + num_trials`` forward passes through the heads.
  ``backtracking_linesearch`` costs ``num_trials`` more encoder forwards.

  Args:
    encode: ``encode(encoder_params, inputs) -> z`` (any pytree), or
      ``(z, aux)`` if ``encoder_has_aux``.
    heads_losses: ``heads_losses(head_params, z, batch) -> [T] losses``, or
      ``(losses, aux)`` if ``heads_has_aux``. It must be deterministic.
    aggregator: any aggregator; it receives the stacked ``∂L_t/∂z`` (and
      ``losses=`` plus the step's extra keywords) and returns ``d_z``.
    lr_ub: the largest step tried.
    decrease_factor: ``γ`` in ``(0, 1)``.
    slope_rtol: ``c`` in ``[0, 1)``.
    max_steps: at most this many trials per step.
    preferences: ``[T]`` weights ``w`` of ``f`` and of the heads' gradient;
      default all ones. Use the aggregator's.
    on_failure: ``'zero'`` or ``'smallest'``.
    lr_ub_patience: if set, ``lr_ub ← γ lr_ub`` after this many consecutive
      steps whose first trial failed.
    lr_ub_min: floor of that rule.
    z_step: ``'direction'`` (default, the thesis literally), ``'scaled'`` or
      ``'linearized'`` (above).
    preconditioner: an Optax transformation applied to the direction
      ``(encoder_direction, head_direction)`` (gradient sign in, gradient
      sign out, e.g. ``optax.scale_by_adam()``); only with ``'linearized'``.
    encoder_has_aux: whether ``encode`` returns ``(z, aux)``.
    heads_has_aux: whether ``heads_losses`` returns ``(losses, aux)``.

  Returns:
    A ``FastBacktrackingLinesearch`` ``(init, step)``: ``init(encoder_params,
    head_params)`` and ``step(encoder_params, head_params, state, inputs,
    batch, **extra) -> FastLinesearchStep``, a pure function to ``jax.jit``.
    The updates can be passed on to further Optax transformations (e.g.
    ``optax.add_decayed_weights``) before ``optax.apply_updates``.

  Raises:
    TypeError: for a non-callable ``encode``/``heads_losses``, an
      ``aggregator`` or ``preconditioner`` that is not an Optax
      transformation, or other arguments of the wrong type.
    ValueError: for the search's arguments out of range (as in
      ``backtracking_linesearch``), an unknown ``z_step`` or a
      ``preconditioner`` without ``z_step='linearized'``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, mtl_optax as mtl
    >>> from mtl_optax.linesearch import fast_backtracking_linesearch
    >>> encode = lambda w, x: jnp.tanh(x @ w)
    >>> def heads(h, z, y):
    ...   return jnp.mean((z @ h.T - y) ** 2, axis=0)     # [T = 2]
    >>> # Eight identical inputs: J Jᵀ is far from I, so let the trials see
    >>> # the encoder's first-order move (one JVP per step).
    >>> ls = fast_backtracking_linesearch(encode, heads, mtl.mgda(), lr_ub=1.,
    ...                                   z_step='linearized')
    >>> enc, hd = jnp.full((3, 4), .1), jnp.ones((2, 4))
    >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
    >>> out = jax.jit(ls.step)(enc, hd, ls.init(enc, hd), x, y)
    >>> info = out.state.linesearch
    >>> float(info.learning_rate), int(info.info.num_trials)   # 1/16: 5 trials
    (0.0625, 5)
    >>> enc = optax.apply_updates(enc, out.encoder_updates)
    >>> hd = optax.apply_updates(hd, out.head_updates)
    >>> bool(heads(hd, encode(enc, x), y).sum() < out.losses.sum())
    True

  References:
    Filatov, *Fast optimisation of multi-task models* (BSc thesis),
    Algorithm 3.2.

    Sener & Koltun, `Multi-Task Learning as Multi-Objective Optimization
    <https://arxiv.org/abs/1810.04650>`_, 2018 (the representation-level
    "-UB" directions).
  """
  method = 'fast_backtracking_linesearch'
  _checks.check_callable('encode', encode, method=method,
                         hint='encode(encoder_params, inputs) -> z')
  _checks.check_callable(
      'heads_losses', heads_losses, method=method,
      hint='heads_losses(head_params, z, batch) -> [T] losses')
  _checks.check_transformation(
      'aggregator', aggregator, method=method, allow_none=False,
      hint='an aggregator such as mtl.mgda()')
  _validate(method, lr_ub, decrease_factor, slope_rtol, max_steps,
            on_failure, lr_ub_patience, lr_ub_min, preferences)
  _checks.check_one_of(
      'z_step', z_step, _Z_STEPS, method=method,
      hint="'direction' is the thesis, 'linearized' the exact first-order "
      'move of z')
  _checks.check_transformation(
      'preconditioner', preconditioner, method=method,
      hint='e.g. optax.scale_by_adam(), or None')
  _checks.check_bool('encoder_has_aux', encoder_has_aux, method=method)
  _checks.check_bool('heads_has_aux', heads_has_aux, method=method)
  if preconditioner is not None and z_step != 'linearized':
    raise ValueError(
        "A preconditioner needs z_step='linearized': the trials must move z "
        'along the image J u of the preconditioned encoder direction u.')
  config = dict(decrease_factor=decrease_factor, slope_rtol=slope_rtol,
                max_steps=int(max_steps), on_failure=on_failure,
                lr_ub_patience=lr_ub_patience, lr_ub_min=lr_ub_min)

  def init(encoder_params, head_params):
    pre = (() if preconditioner is None
           else preconditioner.init((encoder_params, head_params)))
    return FastLinesearchState(aggregator=aggregator.init(None),
                               linesearch=_init_state(
                                   lr_ub, _state_dtype((encoder_params,
                                                        head_params))),
                               preconditioner=pre)

  def step(encoder_params, head_params, state, inputs, batch, **extra):
    enc_fn = lambda p: encode(p, inputs)
    # The one encoder forward pass of the step.
    if z_step == 'linearized':
      out = jax.linearize(enc_fn, encoder_params, has_aux=encoder_has_aux)
      if encoder_has_aux:
        z, encoder_jvp, encoder_aux = out
      else:
        (z, encoder_jvp), encoder_aux = out, None
      transpose = jax.linear_transpose(encoder_jvp, encoder_params)
      encoder_vjp = lambda ct: transpose(ct)
    else:
      z, encoder_vjp, encoder_aux = vjp_with_aux(
          enc_fn, encoder_params, has_aux=encoder_has_aux)

    heads_fn = lambda h, zz: heads_losses(h, zz, batch)
    losses, heads_vjp, heads_aux = vjp_with_aux(
        heads_fn, head_params, z, has_aux=heads_has_aux)
    t = check_task_losses(losses, 'heads_losses')
    w = preference_vector(preferences, t, losses.dtype)

    z_jacobian = jax.vmap(lambda e: heads_vjp(e)[1])(
        jnp.eye(t, dtype=losses.dtype))
    head_grads, z_grad = heads_vjp(w)     # ∇_heads f, ∂f/∂z

    extra = dict(extra)
    extra.setdefault('losses', losses)
    d_z, agg_state = aggregator.update(z_jacobian, state.aggregator, None,
                                       **extra)
    d_z = jax.tree.map(lambda d, zz: d.astype(zz.dtype), d_z, z)
    (encoder_dir,) = encoder_vjp(d_z)
    head_dir = head_grads
    pre_state = state.preconditioner
    if preconditioner is not None:
      (encoder_dir, head_dir), pre_state = preconditioner.update(
          (encoder_dir, head_dir), pre_state, (encoder_params, head_params))
    if z_step == 'linearized':
      z_dir = encoder_jvp(encoder_dir)
    elif z_step == 'scaled':
      # ‖Jᵀ d_z‖² / ‖d_z‖²: the component of J Jᵀ d_z along d_z, free from
      # the VJP above.
      norm_z = _vdot(d_z, d_z)
      alpha = jnp.where(norm_z > 0, _vdot(encoder_dir, encoder_dir) /
                        jnp.where(norm_z > 0, norm_z, 1), 0.)
      z_dir = jax.tree.map(lambda d: alpha.astype(d.dtype) * d, d_z)
    else:
      z_dir = d_z

    s = _vdot(z_dir, z_grad) + _vdot(head_dir, head_grads)
    direction_ok = leaves_finite((encoder_dir, head_dir, z_dir))

    def trial_value(eta):
      trial = heads_fn(_move(head_params, eta, head_dir),
                       _move(z, eta, z_dir))
      return _objective(trial[0] if heads_has_aux else trial, w)

    eta, ls_state = _search(trial_value, _objective(losses, w), s,
                            direction_ok, state.linesearch, **config)
    return FastLinesearchStep(
        losses=losses,
        encoder_updates=_scaled_step(eta, encoder_dir),
        head_updates=_scaled_step(eta, head_dir),
        state=FastLinesearchState(aggregator=agg_state, linesearch=ls_state,
                                  preconditioner=pre_state),
        encoder_direction=encoder_dir,
        head_direction=head_dir,
        encoder_aux=encoder_aux,
        heads_aux=heads_aux,
    )

  return FastBacktrackingLinesearch(init=init, step=step)


def linesearch_state(opt_state: Any) -> BacktrackingLinesearchState:
  """Finds the (first) ``BacktrackingLinesearchState`` in an optimizer state.

  Args:
    opt_state: e.g. the state of ``optax.chain(aggregator,
      backtracking_linesearch())``, or a ``FastLinesearchState``.

  Returns:
    The line search's state (accepted step, trials, upper bound).

  Raises:
    ValueError: if there is none.
  """
  is_state = lambda x: isinstance(x, BacktrackingLinesearchState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state)
           if is_state(x)]
  if not found:
    raise ValueError('No BacktrackingLinesearchState in this state.')
  return found[0]


__all__ = [
    'BacktrackingLinesearchState',
    'FastBacktrackingLinesearch',
    'FastLinesearchState',
    'FastLinesearchStep',
    'LinesearchInfo',
    'backtracking_linesearch',
    'fast_backtracking_linesearch',
    'linesearch_state',
]
