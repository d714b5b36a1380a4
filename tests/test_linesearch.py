"""Tests of the Armijo line searches: mtl_optax.linesearch (Algorithms 3.1
and 3.2 of Filatov's thesis)."""

import functools
import inspect

import hypothesis
import hypothesis.strategies as st
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtl_optax as mtl
from mtl_optax import registry
from mtl_optax.linesearch import (backtracking_linesearch,
                                  fast_backtracking_linesearch,
                                  linesearch_state)

T, N, M, K = 3, 4, 2, 5
MASK = {'shared': True, 'heads': False}


def _problem(seed):
  """A quadratic multi-task problem: L_t = ½‖A_t θ + B_t h_t - b_t‖²."""
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=(T, K, N)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(T, K, M)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(T, K)) * 3, jnp.float32)
  params = {'shared': jnp.asarray(rng.normal(size=N), jnp.float32),
            'heads': jnp.asarray(rng.normal(size=(T, M)), jnp.float32)}

  def losses(p):
    r = (jnp.einsum('tkn,n->tk', a, p['shared'])
         + jnp.einsum('tkm,tm->tk', b, p['heads']) - c)
    return 0.5 * jnp.sum(r ** 2, axis=1)

  def losses64(p):   # the same in float64 numpy, for exact Armijo checks
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
    r = (np.einsum('tkn,n->tk', np.asarray(a, np.float64), p['shared'])
         + np.einsum('tkm,tm->tk', np.asarray(b, np.float64), p['heads'])
         - np.asarray(c, np.float64))
    return 0.5 * np.sum(r ** 2, axis=1)

  return params, losses, losses64


def _step(tx, params, state, losses_fn, **kw):
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  return tx.update(jac, state, params, value=losses, grad=grad,
                   value_fn=losses_fn, **kw), losses, jac, grad


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in jax.tree.leaves(tree)])


def _tree_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


################################################################################
# Algorithm 3.1


@pytest.mark.parametrize('seed,lr_ub,gamma,make_agg', [
    (0, 8., .5, lambda: mtl.aligned_mtl(shared=MASK)),
    (1, 1., .7, lambda: mtl.mgda(shared=MASK)),
    (2, .01, .5, lambda: mtl.linear_scalarization()),   # k = 1
], ids=['aligned', 'mgda', 'sum'])
def test_accepts_largest_armijo_step(seed, lr_ub, gamma, make_agg):
  params, losses_fn, losses64 = _problem(seed)
  agg = make_agg()
  c = 0.3
  tx = optax.chain(agg, backtracking_linesearch(
      lr_ub=lr_ub, decrease_factor=gamma, slope_rtol=c, max_steps=30))
  (updates, state), losses, jac, grad = _step(tx, params, tx.init(params),
                                              losses_fn)
  d, _ = agg.update(jac, agg.init(params), params)
  ls = linesearch_state(state)
  k = int(ls.info.num_trials)
  assert bool(ls.info.accepted) and bool(ls.info.descent)
  eta = float(ls.learning_rate)
  assert eta == pytest.approx(lr_ub * gamma ** (k - 1), rel=1e-5)
  _tree_close(updates, jax.tree.map(lambda x: -eta * x, d))

  s = float(np.dot(_flat(d), _flat(grad)))
  np.testing.assert_allclose(float(ls.info.slope), s, rtol=1e-4)
  f0 = float(np.sum(losses64(params)))
  moved = lambda e: jax.tree.map(lambda p, x: np.asarray(p, np.float64)
                                 - e * np.asarray(x, np.float64), params, d)
  f = lambda e: float(np.sum(losses64(moved(e))))
  tol = 1e-5 * abs(f0)      # float32 evaluation inside the search
  assert f(eta) <= f0 - c * eta * s + tol                   # Armijo holds
  for j in range(k - 1):                                    # larger ones fail
    e = lr_ub * gamma ** j
    assert f(e) > f0 - c * e * s - tol


def test_norm_slope_equals_grad_slope_for_the_gradient():
  params, losses_fn, _ = _problem(0)
  tx = optax.chain(mtl.linear_scalarization(), backtracking_linesearch())
  (u1, s1), losses, jac, grad = _step(tx, params, tx.init(params), losses_fn)
  u2, s2 = tx.update(jac, tx.init(params), params, value=losses,
                     value_fn=losses_fn)                     # no grad: ‖d‖²
  _tree_close(u1, u2)
  np.testing.assert_allclose(float(s1[1].info.slope),
                             float(s2[1].info.slope), rtol=1e-5)


def test_non_descent_direction_gives_zero_step_without_trials():
  params, losses_fn, _ = _problem(0)
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  ls = backtracking_linesearch(slope='grad')
  uphill = jax.tree.map(jnp.negative, grad)
  u, s = ls.update(uphill, ls.init(params), params, value=losses, grad=grad,
                   value_fn=losses_fn)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  assert int(s.info.num_trials) == 0 and not bool(s.info.descent)
  assert float(s.learning_rate) == 0 and float(s.info.slope) < 0

  # An aggregated direction at an angle > 90° with ∇f (it ascends task 1).
  agg = mtl.linear_scalarization(jnp.array([-1., 0., 0.]))
  tx = optax.chain(agg, backtracking_linesearch())
  d, _ = agg.update(jac, agg.init(params), params)
  assert float(np.dot(_flat(d), _flat(grad))) < 0
  u, s = tx.update(jac, tx.init(params), params, value=losses, grad=grad,
                   value_fn=losses_fn)
  assert not bool(s[1].info.descent) and np.all(_flat(u) == 0)


@pytest.mark.parametrize('on_failure', ['zero', 'smallest'])
def test_max_steps_failure(on_failure):
  params, losses_fn, _ = _problem(0)
  never = lambda p: losses_fn(p) + 1.        # no trial can pass
  ls = backtracking_linesearch(lr_ub=2., decrease_factor=.5, max_steps=5,
                               on_failure=on_failure)
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  u, s = ls.update(grad, ls.init(params), params, value=losses, grad=grad,
                   value_fn=never)
  assert int(s.info.num_trials) == 5 and not bool(s.info.accepted)
  expected = 0. if on_failure == 'zero' else 2. * .5 ** 4
  assert float(s.learning_rate) == expected
  _tree_close(u, jax.tree.map(lambda g: -expected * g, grad))


def test_non_finite_trials_fail_and_never_nan():
  params, losses_fn, _ = _problem(1)
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  size = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(params)))

  def blows_up(p):   # NaN far from the current point, Inf in between
    r = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p)))
    out = losses_fn(p)
    out = jnp.where(r > 2 * size, jnp.inf, out)
    return jnp.where(r > 4 * size, jnp.nan, out)

  ls = backtracking_linesearch(lr_ub=1e6, max_steps=60)
  u, s = ls.update(grad, ls.init(params), params, value=losses, grad=grad,
                   value_fn=blows_up)
  assert bool(s.info.accepted) and int(s.info.num_trials) > 5
  assert np.all(np.isfinite(_flat(u)))
  assert np.isfinite(float(s.info.value))

  # Always NaN: zero step, never NaN.
  ls = backtracking_linesearch(on_failure='smallest', max_steps=4)
  u, s = ls.update(grad, ls.init(params), params, value=losses, grad=grad,
                   value_fn=lambda p: losses_fn(p) * jnp.nan)
  assert int(s.info.num_trials) == 4 and np.all(_flat(u) == 0)

  # NaN direction or NaN current value: zero step, no trial.
  nan_dir = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grad)
  for d, v in [(nan_dir, losses), (grad, losses * jnp.nan)]:
    u, s = ls.update(d, ls.init(params), params, value=v, grad=grad,
                     value_fn=losses_fn)
    assert int(s.info.num_trials) == 0 and np.all(_flat(u) == 0)


def test_extra_keywords_reach_value_fn_and_are_ignored_otherwise():
  params, losses_fn, _ = _problem(0)
  seen = {}

  def value_fn(p, batch):
    seen['batch'] = batch
    return losses_fn(p) * batch

  def value_fn_kw(p, **kw):
    seen['kw'] = sorted(kw)
    return losses_fn(p)

  agg = mtl.dwa(num_tasks=T, shared=MASK)       # consumes losses=
  tx = optax.chain(agg, backtracking_linesearch())
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  u, s = tx.update(jac, tx.init(params), params, losses=losses, batch=1.,
                   grad=grad, value_fn=value_fn)   # value defaults to losses
  assert seen['batch'] == 1. and bool(s[1].info.accepted)
  tx.update(jac, tx.init(params), params, losses=losses, batch=1.,
            grad=grad, value_fn=value_fn_kw)
  assert seen['kw'] == ['batch', 'losses']

  # Optax's own line search rejects the aggregator's keyword.
  optax_tx = optax.chain(agg, optax.scale_by_backtracking_linesearch(5))
  with pytest.raises(TypeError, match='losses'):
    optax_tx.update(jac, optax_tx.init(params), params, losses=losses,
                    value=jnp.sum(losses), grad=grad,
                    value_fn=lambda p: jnp.sum(losses_fn(p)))


def test_every_registered_aggregator_takes_the_linesearch_keywords():
  """In a chain every member gets value=, grad=, value_fn= and losses=."""
  params, losses_fn, _ = _problem(2)
  losses, jac = mtl.value_and_jacobian(losses_fn)(params)
  grad = mtl.combine(jnp.ones(T), jac)
  f0 = float(jnp.sum(losses))
  kw = dict(losses=losses, value=losses, grad=grad, value_fn=losses_fn)
  ls = backtracking_linesearch(lr_ub=4.)
  ls_update = jax.jit(functools.partial(ls.update, value_fn=losses_fn))

  def build(name):
    kwargs = {'num_tasks': T} if name in registry.NEEDS_NUM_TASKS else {}
    if name == 'ema_weighting':
      kwargs['weighting'] = mtl.weightings.aligned
    return mtl.get_aggregator(name, **kwargs)

  for name in mtl.available():   # all take (and ignore) any keyword ...
    kinds = [p.kind for p in inspect.signature(build(name).update).parameters
             .values()]
    assert inspect.Parameter.VAR_KEYWORD in kinds, name
  # ... and run with them (GradDrop can give a non-descent direction,
  # FAMO reads losses=, IMTL-G rescales).
  for name in ['graddrop', 'famo', 'imtl_g']:
    agg = build(name)
    d, _ = agg.update(jac, agg.init(params), params, **kw)   # same as chain
    u, s = ls_update(d, ls.init(params), params, value=losses, grad=grad,
                     losses=losses)
    assert np.all(np.isfinite(_flat(u))), name
    new = float(jnp.sum(losses_fn(optax.apply_updates(params, u))))
    if bool(s.info.accepted):
      assert new <= f0 - 1e-4 * float(s.learning_rate) * float(
          s.info.slope) + 1e-4, name
    else:
      assert np.all(_flat(u) == 0), name


@pytest.mark.parametrize('pre', [None, 'adam'])
def test_monotone_descent_and_adam_preconditioning(pre):
  params, losses_fn, _ = _problem(3)
  parts = [mtl.aligned_mtl(shared=MASK)]
  if pre:
    parts.append(optax.scale_by_adam())
  tx = optax.chain(*parts, backtracking_linesearch(lr_ub=2.))
  state = tx.init(params)

  @jax.jit
  def train_step(params, state):
    (u, state), losses, _, _ = _step(tx, params, state, losses_fn)
    return optax.apply_updates(params, u), state, jnp.sum(losses)

  values = []
  for _ in range(25):
    params, state, f = train_step(params, state)
    values.append(float(f))
  values.append(float(jnp.sum(losses_fn(params))))
  assert all(b <= a + 1e-5 * abs(a) for a, b in zip(values, values[1:]))
  assert values[-1] < 0.5 * values[0]
  ls = linesearch_state(state)
  assert int(ls.count) == 25 and int(ls.total_trials) >= 25


def test_lr_ub_patience_lowers_the_upper_bound():
  params, losses_fn, _ = _problem(0)
  runs = {}
  for patience in (None, 2):
    tx = optax.chain(mtl.linear_scalarization(),
                     backtracking_linesearch(lr_ub=256., lr_ub_patience=patience,
                                             lr_ub_min=1e-3))
    state, p, trials = tx.init(params), params, []
    step = jax.jit(lambda p, s, tx=tx: _step(tx, p, s, losses_fn)[0])
    for _ in range(16):
      u, state = step(p, state)
      p = optax.apply_updates(p, u)
      trials.append(int(state[1].info.num_trials))
    runs[patience] = (float(state[1].lr_ub), trials)
  assert runs[None][0] == 256.
  lr_ub, trials = runs[2]
  assert 1e-3 <= lr_ub < 256.
  assert sum(trials[-4:]) < sum(runs[None][1][-4:])


def test_validation():
  with pytest.raises(ValueError, match='decrease_factor'):
    backtracking_linesearch(decrease_factor=1.)
  with pytest.raises(ValueError, match='lr_ub'):
    backtracking_linesearch(lr_ub=0.)
  with pytest.raises(ValueError, match='max_steps'):
    backtracking_linesearch(max_steps=0)
  with pytest.raises(ValueError, match='slope'):
    backtracking_linesearch(slope='exact')
  with pytest.raises(ValueError, match='linearized'):
    fast_backtracking_linesearch(lambda w, x: x, lambda h, z, b: z,
                                 mtl.mgda(), z_step='direction',
                                 preconditioner=optax.scale_by_adam())
  params, losses_fn, _ = _problem(0)
  ls = backtracking_linesearch()
  with pytest.raises(TypeError, match='value_fn'):
    ls.update(params, ls.init(params), params, value=1.)
  with pytest.raises(TypeError, match='value='):
    ls.update(params, ls.init(params), params, value_fn=losses_fn)


################################################################################
# Algorithm 3.2


def _encoder_problem(seed, orthogonal=False, batch=4, d_in=6, width=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, d_in))
  if orthogonal:                      # orthonormal rows: x xᵀ = I, J Jᵀ = I
    x = np.linalg.qr(x.T)[0].T
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(rng.normal(size=(batch, T)), jnp.float32)
  enc = jnp.asarray(rng.normal(size=(d_in, width)) * .5, jnp.float32)
  heads = jnp.asarray(rng.normal(size=(T, width)), jnp.float32)

  def heads_losses(h, z, y):
    pred = jnp.tanh(z) @ h.T                          # [batch, T]
    return jnp.mean((pred - y) ** 2, axis=0)

  return x, y, enc, heads, heads_losses


def _linear_encode(w, x):
  return x @ w


def test_fast_equals_classic_for_linear_orthogonal_encoder():
  """z = x W with orthonormal rows of x: J Jᵀ = I, so moving z along d_z
  (the default z_step='direction', the thesis literally) is exactly the
  encoder step, and Algorithm 3.2 is Algorithm 3.1. ('scaled' then has
  α = 1, the same search; 'linearized' is checked for any linear encoder
  below, with MGDA-UB.)"""
  make_agg = mtl.aligned_mtl       # Aligned-MTL-UB vs Aligned-MTL on θ_sh
  x, y, enc, heads, heads_losses = _encoder_problem(0, orthogonal=True)
  _tree_close(x @ x.T, jnp.eye(4), atol=1e-5)
  kw = dict(lr_ub=16., decrease_factor=.5, slope_rtol=.2)
  fast = fast_backtracking_linesearch(_linear_encode, heads_losses,
                                      make_agg(), **kw)
  fstate = fast.init(enc, heads)
  classic = optax.chain(make_agg(shared={'enc': True, 'heads': False}),
                        backtracking_linesearch(**kw))
  params = {'enc': enc, 'heads': heads}
  cstate = classic.init(params)
  losses_fn = lambda p: heads_losses(p['heads'], _linear_encode(p['enc'], x),
                                     y)
  fstep = jax.jit(fast.step)
  cstep = jax.jit(lambda p, s: _step(classic, p, s, losses_fn)[:2])
  for _ in range(3):
    out = fstep(params['enc'], params['heads'], fstate, x, y)
    fstate = out.state
    (u, cstate), losses = cstep(params, cstate)
    np.testing.assert_allclose(out.losses, losses, rtol=1e-5)
    ls_f, ls_c = fstate.linesearch, linesearch_state(cstate)
    assert int(ls_f.info.num_trials) == int(ls_c.info.num_trials)
    assert float(ls_f.learning_rate) == float(ls_c.learning_rate)
    np.testing.assert_allclose(float(ls_f.info.slope), float(ls_c.info.slope),
                               rtol=1e-4)
    _tree_close({'enc': out.encoder_updates, 'heads': out.head_updates}, u,
                rtol=1e-4, atol=1e-6)
    params = optax.apply_updates(params, u)
  assert float(fstate.linesearch.learning_rate) > 0


@pytest.mark.parametrize('pre', [None, 'adam'])
def test_linearized_equals_classic_for_any_linear_encoder(pre):
  """With z = x W (J Jᵀ ≠ I), the linearized trials are the exact encoder
  step: the same η, trials and update as Algorithm 3.1 fed the same
  representation-level direction (Jᵀ d_z, ∇_heads f)."""
  x, y, enc, heads, heads_losses = _encoder_problem(1, batch=8)
  agg = mtl.mgda()
  kw = dict(lr_ub=4., decrease_factor=.5, slope_rtol=.1)
  precond = optax.scale_by_adam() if pre else None
  fast = fast_backtracking_linesearch(_linear_encode, heads_losses, agg,
                                      z_step='linearized',
                                      preconditioner=precond, **kw)
  fstate = fast.init(enc, heads)
  classic = optax.chain(*([optax.scale_by_adam()] if pre else []),
                        backtracking_linesearch(**kw))
  params = {'enc': enc, 'heads': heads}
  cstate = classic.init(params)
  rep = mtl.representation_grads(_linear_encode, heads_losses, agg)
  f = lambda p: jnp.sum(heads_losses(p['heads'], _linear_encode(p['enc'], x),
                                     y))

  @jax.jit
  def both(params, fstate, cstate):
    out = fast.step(params['enc'], params['heads'], fstate, x, y)
    r = rep(params['enc'], params['heads'], agg.init(None), x, y)
    direction = {'enc': r.encoder_grads, 'heads': r.head_grads}
    u, cstate = classic.update(direction, cstate, params,
                               value=jnp.sum(r.losses),
                               grad=jax.grad(f)(params), value_fn=f)
    return out, u, cstate

  for _ in range(3):
    out, u, cstate = both(params, fstate, cstate)
    fstate = out.state
    ls_f, ls_c = fstate.linesearch, linesearch_state(cstate)
    assert int(ls_f.info.num_trials) == int(ls_c.info.num_trials) >= 1
    assert float(ls_f.learning_rate) == float(ls_c.learning_rate)
    _tree_close({'enc': out.encoder_updates, 'heads': out.head_updates}, u,
                rtol=1e-4, atol=1e-6)
    params = optax.apply_updates(params, u)


def _sin_encode(w, x):
  return jnp.sin(x @ w)        # the only `sin` in the model: marks the encoder


def _walk_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else [v]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _walk_eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _walk_eqns(sub)


def _while_bodies_using(jaxpr, primitive):
  """For every while loop in the program: does its body use ``primitive``?"""
  out = []
  for eqn in _walk_eqns(jaxpr):
    if eqn.primitive.name == 'while':
      body = eqn.params['body_jaxpr'].jaxpr
      out.append(any(e.primitive.name == primitive for e in _walk_eqns(body)))
  return out


@pytest.mark.parametrize('z_step', ['direction', 'linearized'])
def test_fast_never_calls_the_encoder_during_trials(z_step):
  """('scaled' builds the same program as 'direction' plus two dot
  products, without an encoder call.)"""
  x, y, enc, heads, heads_losses = _encoder_problem(2, batch=8)
  runtime_calls, trace_calls = [0], [0]

  def counted_encode(w, x):
    trace_calls[0] += 1
    jax.debug.callback(lambda: runtime_calls.__setitem__(
        0, runtime_calls[0] + 1))
    return _sin_encode(w, x)

  fast = fast_backtracking_linesearch(counted_encode, heads_losses,
                                      mtl.aligned_mtl(), lr_ub=64.,
                                      z_step=z_step)
  step = jax.jit(fast.step)
  state, e, h = fast.init(enc, heads), enc, heads
  for _ in range(4):
    out = step(e, h, state, x, y)
    state = out.state
    e = optax.apply_updates(e, out.encoder_updates)
    h = optax.apply_updates(h, out.head_updates)
  jax.effects_barrier()
  assert trace_calls[0] == 1                       # one encode per step ...
  assert runtime_calls[0] == 4                     # ... run once per step
  assert int(state.linesearch.total_trials) > 4    # despite several trials

  # The program: no while loop (the trials, the aggregator's solvers) runs
  # the encoder.
  jaxpr = jax.make_jaxpr(fast.step)(enc, heads, fast.init(enc, heads), x, y)
  uses = _while_bodies_using(jaxpr.jaxpr, 'sin')
  assert uses and not any(uses)


def test_classic_runs_the_encoder_in_every_trial():
  """The contrast: Algorithm 3.1 on the same model, 1 + trials encoder runs."""
  x, y, enc, heads, heads_losses = _encoder_problem(2, batch=8)
  runtime_calls = [0]

  def counted_encode(w, x):
    jax.debug.callback(lambda: runtime_calls.__setitem__(
        0, runtime_calls[0] + 1))
    return _sin_encode(w, x)

  params = {'enc': enc, 'heads': heads}
  losses_fn = lambda p: heads_losses(p['heads'], counted_encode(p['enc'], x),
                                     y)
  tx = optax.chain(mtl.linear_scalarization(),
                   backtracking_linesearch(lr_ub=64.))
  (u, cstate), *_ = jax.jit(
      lambda p, s: _step(tx, p, s, losses_fn))(params, tx.init(params))
  jax.effects_barrier()
  trials = int(linesearch_state(cstate).info.num_trials)
  assert trials > 1 and runtime_calls[0] == 1 + trials
  jaxpr = jax.make_jaxpr(lambda p, s: _step(tx, p, s, losses_fn))(
      params, tx.init(params))
  assert any(_while_bodies_using(jaxpr.jaxpr, 'sin'))


def _train(fast, enc, heads, x, y, heads_losses, steps):
  step = jax.jit(fast.step)
  state, e, h, values = fast.init(enc, heads), enc, heads, []
  for _ in range(steps):
    out = step(e, h, state, x, y)
    state = out.state
    values.append(float(jnp.sum(out.losses)))
    e = optax.apply_updates(e, out.encoder_updates)
    h = optax.apply_updates(h, out.head_updates)
  values.append(float(jnp.sum(heads_losses(h, _sin_encode(e, x), y))))
  return values, state


def test_fast_linearized_trains_with_mgda_ub():
  """The linearized trials model the encoder step to first order: the real
  loss falls and rarely goes up, with an aggressive upper bound."""
  x, y, enc, heads, heads_losses = _encoder_problem(3, batch=16)
  fast = fast_backtracking_linesearch(_sin_encode, heads_losses, mtl.mgda(),
                                      lr_ub=8., z_step='linearized')
  values, state = _train(fast, enc, heads, x, y, heads_losses, 30)
  assert np.all(np.isfinite(values)) and values[-1] < 0.5 * values[0]
  assert sum(b > a for a, b in zip(values, values[1:])) <= 3
  assert int(state.linesearch.count) == 30


def test_fast_default_trains_with_aligned_mtl_ub():
  """The default 'direction' tests Armijo on a surrogate of the encoder step
  (z moved along d_z): a sanity check that it trains at a moderate upper
  bound."""
  x, y, enc, heads, heads_losses = _encoder_problem(3, batch=16)
  fast = fast_backtracking_linesearch(_sin_encode, heads_losses,
                                      mtl.aligned_mtl(), lr_ub=1.)
  values, _ = _train(fast, enc, heads, x, y, heads_losses, 30)
  assert np.all(np.isfinite(values)) and values[-1] < 0.5 * values[0]


def test_fast_slopes_match_their_trial_displacements():
  """s = <u_z, ∂f/∂z> + ‖g_h‖² with u_z = α d_z, α = ‖Jᵀd_z‖²/‖d_z‖²
  ('scaled'), u_z = d_z ('direction'), u_z = J Jᵀ d_z ('linearized');
  checked against an explicit Jacobian J of a nonlinear encoder."""
  x, y, enc, heads, heads_losses = _encoder_problem(5, batch=4)
  agg = mtl.aligned_mtl()
  z = _sin_encode(enc, x)
  jac = np.asarray(jax.jacobian(_sin_encode)(enc, x), np.float64).reshape(
      z.size, enc.size)
  losses, (gh, gz) = jax.value_and_grad(
      lambda h, zz: jnp.sum(heads_losses(h, zz, y)), argnums=(0, 1))(heads, z)
  zjac = jax.jacobian(heads_losses, argnums=1)(heads, z, y)
  d_z, _ = agg.update(zjac, agg.init(None), None)
  d = np.asarray(d_z, np.float64).ravel()
  gz, gh = np.asarray(gz, np.float64).ravel(), np.asarray(gh, np.float64)
  jjt_d = jac @ (jac.T @ d)
  expected = {'direction': d @ gz,
              'scaled': (d @ jjt_d) / (d @ d) * (d @ gz),
              'linearized': jjt_d @ gz}
  for z_step, s in expected.items():
    fast = fast_backtracking_linesearch(_sin_encode, heads_losses, agg,
                                        z_step=z_step)
    out = fast.step(enc, heads, fast.init(enc, heads), x, y)
    np.testing.assert_allclose(float(out.state.linesearch.info.slope),
                               s + np.sum(gh ** 2), rtol=1e-4)
    np.testing.assert_allclose(out.encoder_direction,
                               (jac.T @ d).reshape(enc.shape), rtol=1e-4,
                               atol=1e-6)


def test_fast_aux_and_nan_inputs():
  x, y, enc, heads, heads_losses = _encoder_problem(4)
  enc_aux = lambda w, x: (_sin_encode(w, x), {'n': x.shape[0]})
  heads_aux = lambda h, z, y: (heads_losses(h, z, y), jnp.sum(z))
  fast = fast_backtracking_linesearch(enc_aux, heads_aux, mtl.mgda(),
                                      encoder_has_aux=True, heads_has_aux=True)
  out = fast.step(enc, heads, fast.init(enc, heads), x, y)
  assert out.encoder_aux == {'n': 4} and np.isfinite(float(out.heads_aux))
  assert bool(out.state.linesearch.info.accepted)
  # NaN targets: NaN losses, zero updates, no trial, no NaN anywhere.
  out = fast.step(enc, heads, fast.init(enc, heads), x, y * jnp.nan)
  assert int(out.state.linesearch.info.num_trials) == 0
  assert np.all(_flat((out.encoder_updates, out.head_updates)) == 0)


################################################################################
# Properties: both stop within max_steps and never return NaN.


@hypothesis.settings(max_examples=4, deadline=None)
@hypothesis.given(
    log_lr=st.floats(-3, 9), gamma=st.floats(.1, .9),
    max_steps=st.integers(1, 8), seed=st.integers(0, 3),
    on_failure=st.sampled_from(['zero', 'smallest']))
def test_property_stops_and_is_finite(log_lr, gamma, max_steps, seed,
                                      on_failure):
  kw = dict(lr_ub=10. ** log_lr, decrease_factor=gamma, max_steps=max_steps,
            on_failure=on_failure)
  params, losses_fn, _ = _problem(seed)
  tx = optax.chain(mtl.aligned_mtl(shared=MASK), backtracking_linesearch(**kw))
  (u, s), losses, _, _ = _step(tx, params, tx.init(params), losses_fn)
  x, y, enc, heads, heads_losses = _encoder_problem(seed)
  fast = fast_backtracking_linesearch(_sin_encode, heads_losses, mtl.mgda(),
                                      **kw)
  out = fast.step(enc, heads, fast.init(enc, heads), x, y)
  # MGDA-UB with the default z_step='direction': <d_z, ∂L_t/∂z> >= ‖d_z‖²
  # for every task, so the slope is positive: always a descent step.
  fast_ls = out.state.linesearch
  assert bool(fast_ls.info.descent) and float(fast_ls.info.slope) > 0
  assert int(fast_ls.info.num_trials) >= 1
  for ls, upd in [(s[1], u), (fast_ls,
                              (out.encoder_updates, out.head_updates))]:
    k = int(ls.info.num_trials)
    assert 0 <= k <= max_steps
    assert np.all(np.isfinite(_flat(upd)))
    assert np.isfinite(float(ls.learning_rate))
    if bool(ls.info.accepted):
      assert float(ls.learning_rate) == pytest.approx(
          kw['lr_ub'] * gamma ** (k - 1), rel=1e-4)
