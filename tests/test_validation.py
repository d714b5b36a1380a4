"""Argument checks at construction: every public factory rejects every bad
hyperparameter with a clear error (``ValueError`` for a bad value,
``TypeError`` for a wrong type) that names the method, the argument, the
value received and the valid range; the defaults and the registry's
``for_tasks`` still build every method."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtl_optax as mtl
from mtl_optax import registry
from mtl_optax.aggregators import gramian_direction
from mtl_optax.linesearch import backtracking_linesearch
from mtl_optax.linesearch import fast_backtracking_linesearch

NAN, INF = float('nan'), float('inf')


def _coefficients(k, scale, inner, extra):
  return jnp.ones(k.shape[0], k.dtype), inner


def _encode(w, x):
  return x @ w


def _heads(h, z, y):
  return jnp.mean((z @ h.T - y) ** 2, axis=0)


def _fast(**kwargs):
  return fast_backtracking_linesearch(_encode, _heads, mtl.mgda(), **kwargs)


def _ema(**kwargs):
  kwargs.setdefault('weighting', mtl.weightings.mgda)
  kwargs.setdefault('num_tasks', 3)
  return mtl.ema_weighting(**kwargs)


def _with_tasks(factory):
  """The factory with num_tasks=3 unless the case passes its own."""
  def build(**kwargs):
    kwargs.setdefault('num_tasks', 3)
    return factory(**kwargs)
  build.__name__ = factory.__name__
  return build


def _gd(**kwargs):
  kwargs.setdefault('coefficients_fn', _coefficients)
  return gramian_direction(**kwargs)


# Per method: (keyword arguments, error, message fragments). Every fragment
# must appear in the message; the first names the method, the argument and
# the range, the second the value received.
NUM_TASKS_CASES = [
    (dict(num_tasks=0), ValueError, ('num_tasks must be', 'got 0')),
    (dict(num_tasks=-2), ValueError, ('num_tasks must be', 'got -2')),
    (dict(num_tasks=3.0), TypeError, ('num_tasks must be', 'got 3.0')),
    (dict(num_tasks='3'), TypeError, ('num_tasks must be', "got '3'")),
]
PREFERENCE_CASES = [
    (dict(preferences=[1., -1., 1.]), ValueError,
     ('preferences must be non-negative', '-1.')),
    (dict(preferences=[0., 0., 0.]), ValueError,
     ('preferences must be a vector with a positive entry', '[0., 0., 0.]')),
    (dict(preferences=[1., NAN, 1.]), ValueError,
     ('preferences must be finite', 'nan')),
    (dict(preferences=[1., INF, 1.]), ValueError,
     ('preferences must be finite', 'inf')),
    (dict(preferences=[[1., 1., 1.]]), ValueError,
     ('preferences must be a non-empty 1-D array', 'shape (1, 3)')),
    (dict(preferences=2.0), ValueError,
     ('preferences must be a non-empty 1-D array', 'got 2.0')),
    (dict(preferences=[]), ValueError,
     ('preferences must be a non-empty 1-D array', 'shape (0,)')),
    (dict(preferences='abc'), TypeError,
     ('preferences must be a numeric 1-D array', "'abc'")),
    (dict(preferences=[1., 1.], num_tasks=3), ValueError,
     ('num_tasks=3 but preferences has 2 entries',)),
]
# The same for a weighted sum's weights, which may be negative (linear
# scalarization, the objective of the line searches, gramian_direction).
SIGNED_PREFERENCE_CASES = [
    c for c in PREFERENCE_CASES
    if 'num_tasks' not in c[0] and 'non-negative' not in c[2][0]
    and 'positive entry' not in c[2][0]
] + [
    (dict(preferences=[0., 0., 0.]), ValueError,
     ('preferences must be a vector with a non-zero entry', '[0., 0., 0.]')),
]
SEED_CASES = [
    (dict(seed=1.5), TypeError, ('seed must be an integer', 'got 1.5')),
    (dict(seed='0'), TypeError, ('seed must be an integer', "got '0'")),
]
TRACK_CASES = [
    (dict(track_diagnostics=1), TypeError,
     ('track_diagnostics must be True or False', 'got 1')),
]


def _prefixed(method, cases):
  return [(kw, err, (f'{method}: {frags[0]}',) + frags[1:])
          for kw, err, frags in cases]


CASES = {
    'linear_scalarization': (
        mtl.linear_scalarization,
        _prefixed('linear_scalarization', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(weights=jnp.array([1., NAN])), ValueError,
             ('linear_scalarization: weights must be finite', 'nan')),
            (dict(weights=jnp.zeros(2)), ValueError,
             ('linear_scalarization: weights must be a vector with a '
              'non-zero entry',)),
            (dict(weights=jnp.ones((2, 1))), ValueError,
             ('linear_scalarization: weights must be a non-empty 1-D array',
              'shape (2, 1)')),
            (dict(weights=jnp.ones(2), num_tasks=3), ValueError,
             ('num_tasks=3 but weights has 2 entries',)),
        ]),
    'aligned_mtl': (
        mtl.aligned_mtl,
        _prefixed('aligned_mtl', NUM_TASKS_CASES + PREFERENCE_CASES) + [
            (dict(scale_mode='max'), ValueError,
             ("aligned_mtl: scale_mode must be one of 'min', 'median', "
              "'rmse'", "got 'max'")),
            (dict(method='qr'), ValueError,
             ("aligned_mtl: method must be one of 'eigh', 'svd'",
              "got 'qr'")),
        ]),
    'mgda': (
        mtl.mgda,
        _prefixed('mgda', NUM_TASKS_CASES) + [
            (dict(normalization='l1'), ValueError,
             ("mgda: normalization must be one of 'none', 'l2', 'loss', "
              "'loss+'", "got 'l1'")),
            (dict(max_iters=0), ValueError,
             ('mgda: max_iters must be an integer >= 1', 'got 0')),
            (dict(max_iters=2.5), TypeError,
             ('mgda: max_iters must be an integer >= 1', 'got 2.5')),
            (dict(tol=-1), ValueError, ('mgda: tol must be >= 0', 'got -1')),
            (dict(tol=NAN), ValueError,
             ('mgda: tol must be finite and >= 0', 'got nan')),
        ]),
    'pcgrad': (
        mtl.pcgrad,
        _prefixed('pcgrad', NUM_TASKS_CASES + PREFERENCE_CASES
                  + SEED_CASES)),
    'mamg': (
        mtl.mamg,
        _prefixed('mamg', NUM_TASKS_CASES + PREFERENCE_CASES + SEED_CASES)
        + [
            (dict(mode='alg1'), ValueError,
             ("mamg: mode must be one of 'one_sided', 'algorithm1'",
              "got 'alg1'")),
            (dict(clip='smaller_norm'), ValueError,
             ("mamg: clip must be one of 'larger_norm', 'random', "
              "'sequential'", "got 'smaller_norm'")),
            (dict(reduction='max'), ValueError,
             ("mamg: reduction must be one of 'sum', 'mean'", "got 'max'")),
            (dict(mode='algorithm1', clip='random'), ValueError,
             ("mamg: clip='random' applies to mode='one_sided' only",
              "mode='one_sided'")),
        ]),
    'gramian_direction': (
        _gd,
        _prefixed('gramian_direction', SIGNED_PREFERENCE_CASES) +
        [
            (dict(coefficients_fn=3), TypeError,
             ('gramian_direction: coefficients_fn must be callable',
              'got 3')),
            (dict(scale_degree=NAN), ValueError,
             ('gramian_direction: scale_degree must be finite', 'got nan')),
            (dict(heads_reduction='avg'), ValueError,
             ("gramian_direction: heads_reduction must be one of 'sum', "
              "'mean'", "got 'avg'")),
            (dict(scale_degree='1'), TypeError,
             ('gramian_direction: scale_degree must be a real number',
              "got '1'")),
            (dict(heads_follow_coefficients=1), TypeError,
             ('gramian_direction: heads_follow_coefficients must be True or '
              'False', 'got 1')),
        ]),
    'imtl_g': (mtl.imtl_g, _prefixed('imtl_g', NUM_TASKS_CASES)),
    'conflict_free': (mtl.conflict_free,
                      _prefixed('conflict_free', NUM_TASKS_CASES)),
    'cagrad': (
        mtl.cagrad,
        _prefixed('cagrad', NUM_TASKS_CASES) + [
            (dict(c=-1.), ValueError,
             ('cagrad: c must be >= 0 (the radius factor of the ball around '
              'the mean gradient; the paper uses 0.4-0.5', 'got -1.0.')),
            (dict(c=NAN), ValueError,
             ('cagrad: c must be finite and >= 0', 'got nan')),
            (dict(c=INF), ValueError,
             ('cagrad: c must be finite and >= 0', 'got inf')),
            (dict(c='0.4'), TypeError,
             ('cagrad: c must be a real number >= 0', "got '0.4'")),
            (dict(c=True), TypeError,
             ('cagrad: c must be a real number >= 0', 'got True')),
            (dict(rescale=3), ValueError,
             ('cagrad: rescale must be one of 0, 1, 2', 'got 3')),
            (dict(rescale=True), ValueError,
             ('cagrad: rescale must be one of 0, 1, 2', 'got True')),
            (dict(rescale=1.0), ValueError,
             ('cagrad: rescale must be one of 0, 1, 2', 'got 1.0')),
            (dict(max_iters=0), ValueError,
             ('cagrad: max_iters must be None or an integer >= 1', 'got 0')),
        ]),
    'upgrad': (
        mtl.upgrad,
        _prefixed('upgrad', NUM_TASKS_CASES + PREFERENCE_CASES) + [
            (dict(max_iters=0), ValueError,
             ('upgrad: max_iters must be None or an integer >= 1',
              'got 0')),
        ]),
    'dualproj': (
        mtl.dualproj,
        _prefixed('dualproj', NUM_TASKS_CASES + PREFERENCE_CASES) + [
            (dict(max_iters=-3), ValueError,
             ('dualproj: max_iters must be None or an integer >= 1',
              'got -3')),
        ]),
    'fairgrad': (
        mtl.fairgrad,
        _prefixed('fairgrad', NUM_TASKS_CASES) + [
            (dict(alpha=0.), ValueError,
             ('fairgrad: alpha must be > 0', 'got 0.0')),
            (dict(alpha=-1), ValueError,
             ('fairgrad: alpha must be > 0', 'got -1')),
            (dict(alpha=NAN), ValueError,
             ('fairgrad: alpha must be finite and > 0', 'got nan')),
            (dict(max_iters=0), ValueError,
             ('fairgrad: max_iters must be an integer >= 1', 'got 0')),
        ]),
    'nash_mtl': (
        _with_tasks(mtl.nash_mtl),
        _prefixed('nash_mtl', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('nash_mtl keeps one value per task', 'num_tasks=T')),
            (dict(max_norm=-1.), ValueError,
             ('nash_mtl: max_norm must be >= 0', 'got -1.0')),
            (dict(max_norm=INF), ValueError,
             ('nash_mtl: max_norm must be finite and >= 0', 'got inf')),
            (dict(update_weights_every=0), ValueError,
             ('nash_mtl: update_weights_every must be an integer >= 1',
              'got 0')),
            (dict(update_weights_every=1.5), TypeError,
             ('nash_mtl: update_weights_every must be an integer >= 1',
              'got 1.5')),
            (dict(optim_niter=0), ValueError,
             ('nash_mtl: optim_niter must be an integer >= 1', 'got 0')),
        ]),
    'gradvac': (
        _with_tasks(mtl.gradvac),
        _prefixed('gradvac', NUM_TASKS_CASES + PREFERENCE_CASES
                  + SEED_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('gradvac keeps one value per task',)),
            (dict(beta=2), ValueError,
             ('gradvac: beta must be in [0, 1]', 'got 2')),
            (dict(beta=-0.1), ValueError,
             ('gradvac: beta must be in [0, 1]', 'got -0.1')),
            (dict(beta=NAN), ValueError,
             ('gradvac: beta must be finite and in [0, 1]', 'got nan')),
        ]),
    'random_weighting': (
        mtl.random_weighting,
        _prefixed('random_weighting', NUM_TASKS_CASES + SEED_CASES)),
    'ema_weighting': (
        _ema,
        _prefixed('ema_weighting', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('ema_weighting keeps one value per task',)),
            (dict(weighting=3), TypeError,
             ('ema_weighting: weighting must be callable', 'got 3')),
            (dict(beta=1.), ValueError,
             ('ema_weighting: beta must be in [0, 1)', 'got 1.0')),
            (dict(beta=-0.5), ValueError,
             ('ema_weighting: beta must be in [0, 1)', 'got -0.5')),
            (dict(beta=NAN), ValueError,
             ('ema_weighting: beta must be finite and in [0, 1)',
              'got nan')),
        ]),
    'graddrop': (
        mtl.graddrop,
        _prefixed('graddrop', NUM_TASKS_CASES + SEED_CASES + TRACK_CASES) + [
            (dict(leak=1.5), ValueError,
             ('graddrop: leak must be in [0, 1]', 'got 1.5')),
            (dict(leak=-0.1), ValueError,
             ('graddrop: leak must be in [0, 1]', 'got -0.1')),
            (dict(leak=NAN), ValueError,
             ('graddrop: leak must be finite and in [0, 1]', 'got nan')),
        ]),
    'stch': (
        _with_tasks(mtl.stch),
        _prefixed('stch', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('stch keeps one value per task',)),
            (dict(mu=0.), ValueError, ('stch: mu must be > 0', 'got 0.0')),
            (dict(mu=INF), ValueError,
             ('stch: mu must be finite and > 0', 'got inf')),
            (dict(preferences=[1., -1., 1.]), ValueError,
             ('stch: preferences must be non-negative', '-1.')),
            (dict(ideal_point=jnp.zeros(2)), ValueError,
             ('stch: `ideal_point` has shape (2,); expected (3,)',)),
            (dict(ideal_point=jnp.array([0., NAN, 0.])), ValueError,
             ('stch: `ideal_point` has NaN/Inf entries',)),
        ]),
    'db_mtl': (
        _with_tasks(mtl.db_mtl),
        _prefixed('db_mtl', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('db_mtl keeps one value per task',)),
            (dict(beta=1.), ValueError,
             ('db_mtl: beta must be in [0, 1)', 'got 1.0')),
            (dict(beta=-0.1), ValueError,
             ('db_mtl: beta must be in [0, 1)', 'got -0.1')),
            (dict(beta_sigma=-1.), ValueError,
             ('db_mtl: beta_sigma must be >= 0', 'got -1.0')),
        ]),
    'imtl': (
        _with_tasks(mtl.imtl),
        _prefixed('imtl', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('imtl keeps one value per task',)),
            (dict(optimizer='adam'), TypeError,
             ('imtl: optimizer must be None or an Optax '
              'GradientTransformation', "got 'adam'")),
        ]),
    'uncertainty_weighting': (
        _with_tasks(mtl.uncertainty_weighting),
        _prefixed('uncertainty_weighting', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('uncertainty_weighting keeps one value per task',)),
            (dict(optimizer='adam'), TypeError,
             ('uncertainty_weighting: optimizer must be None or an Optax '
              'GradientTransformation', "got 'adam'")),
        ]),
    'dwa': (
        _with_tasks(mtl.dwa),
        _prefixed('dwa', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('dwa keeps one value per task',)),
            (dict(temperature=0.), ValueError,
             ('dwa: temperature must be > 0', 'got 0.0')),
            (dict(temperature=-2.), ValueError,
             ('dwa: temperature must be > 0', 'got -2.0')),
            (dict(temperature=INF), ValueError,
             ('dwa: temperature must be finite and > 0', 'got inf')),
        ]),
    'gradnorm': (
        _with_tasks(mtl.gradnorm),
        _prefixed('gradnorm', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('gradnorm keeps one value per task',)),
            (dict(alpha=-1.), ValueError,
             ('gradnorm: alpha must be >= 0', 'got -1.0')),
            (dict(alpha=NAN), ValueError,
             ('gradnorm: alpha must be finite and >= 0', 'got nan')),
            (dict(optimizer=optax.adam), TypeError,
             ('gradnorm: optimizer must be None or an Optax',)),
        ]),
    'famo': (
        _with_tasks(mtl.famo),
        _prefixed('famo', NUM_TASKS_CASES + TRACK_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('famo keeps one value per task',)),
            (dict(learning_rate=0.), ValueError,
             ('famo: learning_rate must be > 0', 'got 0.0')),
            (dict(learning_rate=INF), ValueError,
             ('famo: learning_rate must be finite and > 0', 'got inf')),
            (dict(gamma=-1e-3), ValueError,
             ('famo: gamma must be >= 0', 'got -0.001')),
        ]),
    'geometric_mean': (
        mtl.geometric_mean,
        _prefixed('geometric_mean', NUM_TASKS_CASES + TRACK_CASES)),
    'moco': (
        _with_tasks(mtl.moco),
        _prefixed('moco', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('moco keeps one value per task',)),
            (dict(beta=0.), ValueError,
             ('moco: beta must be in (0, 1]', 'got 0.0')),
            (dict(gamma=0.), ValueError,
             ('moco: gamma must be > 0', 'got 0.0')),
            (dict(rho=-1.), ValueError,
             ('moco: rho must be >= 0', 'got -1.0')),
            (dict(beta_decay=NAN), ValueError,
             ('moco: beta_decay must be finite and >= 0', 'got nan')),
            (dict(gamma_decay=-1.), ValueError,
             ('moco: gamma_decay must be >= 0', 'got -1.0')),
        ]),
    'excess_mtl': (
        _with_tasks(mtl.excess_mtl),
        _prefixed('excess_mtl', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('excess_mtl keeps one value per task',)),
            (dict(robust_step_size=0.), ValueError,
             ('excess_mtl: robust_step_size must be > 0', 'got 0.0')),
            (dict(robust_step_size=INF), ValueError,
             ('excess_mtl: robust_step_size must be finite and > 0',
              'got inf')),
        ]),
    'modo': (
        _with_tasks(mtl.modo),
        _prefixed('modo', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('modo keeps one value per task',)),
            (dict(gamma=0.), ValueError,
             ('modo: gamma must be > 0', 'got 0.0')),
            (dict(rho=-1.), ValueError,
             ('modo: rho must be >= 0', 'got -1.0')),
        ]),
    'sdmgrad': (
        _with_tasks(mtl.sdmgrad),
        _prefixed('sdmgrad', NUM_TASKS_CASES) + [
            (dict(num_tasks=None), TypeError,
             ('sdmgrad keeps one value per task',)),
            (dict(lamda=-1.), ValueError,
             ('sdmgrad: lamda must be >= 0', 'got -1.0')),
            (dict(step_size=INF), ValueError,
             ('sdmgrad: step_size must be finite and > 0', 'got inf')),
            (dict(num_steps=0), ValueError,
             ('sdmgrad: num_steps must be', 'got 0')),
        ]),
}

LINESEARCH_CASES = [
    (dict(lr_ub=0.), ValueError, ('lr_ub must be > 0', 'got 0.0')),
    (dict(lr_ub=INF), ValueError, ('lr_ub must be finite and > 0', 'inf')),
    (dict(lr_ub=NAN), ValueError, ('lr_ub must be finite and > 0', 'nan')),
    (dict(decrease_factor=1.), ValueError,
     ('decrease_factor must be in (0, 1)', 'got 1.0')),
    (dict(decrease_factor=0.), ValueError,
     ('decrease_factor must be in (0, 1)', 'got 0.0')),
    (dict(slope_rtol=1.), ValueError,
     ('slope_rtol must be in [0, 1)', 'got 1.0')),
    (dict(slope_rtol=-1e-4), ValueError,
     ('slope_rtol must be in [0, 1)', 'got -0.0001')),
    (dict(max_steps=0), ValueError,
     ('max_steps must be an integer >= 1', 'got 0')),
    (dict(max_steps=20.), TypeError,
     ('max_steps must be an integer >= 1', 'got 20.0')),
    (dict(on_failure='largest'), ValueError,
     ("on_failure must be one of 'zero', 'smallest'", "got 'largest'")),
    (dict(lr_ub_patience=0), ValueError,
     ('lr_ub_patience must be None or an integer >= 1', 'got 0')),
    (dict(lr_ub_patience=2.5), TypeError,
     ('lr_ub_patience must be None or an integer >= 1', 'got 2.5')),
    (dict(lr_ub_min=-1.), ValueError,
     ('lr_ub_min must be in [0, 1]', 'got -1.0')),
    (dict(lr_ub=0.5, lr_ub_min=0.75), ValueError,
     ('lr_ub_min must be in [0, 0.5]', 'got 0.75')),
] + SIGNED_PREFERENCE_CASES

CASES['backtracking_linesearch'] = (
    backtracking_linesearch,
    _prefixed('backtracking_linesearch', LINESEARCH_CASES) + [
        (dict(slope='exact'), ValueError,
         ("backtracking_linesearch: slope must be one of 'auto', 'grad', "
          "'norm'", "got 'exact'")),
    ])
CASES['fast_backtracking_linesearch'] = (
    _fast,
    _prefixed('fast_backtracking_linesearch', LINESEARCH_CASES) + [
        (dict(z_step='exact'), ValueError,
         ('fast_backtracking_linesearch: z_step must be one of',
          "got 'exact'")),
        (dict(preconditioner='adam'), TypeError,
         ('fast_backtracking_linesearch: preconditioner must be None or an '
          'Optax', "got 'adam'")),
        (dict(encoder_has_aux=1), TypeError,
         ('fast_backtracking_linesearch: encoder_has_aux must be True or '
          'False',)),
        (dict(heads_has_aux='no'), TypeError,
         ('fast_backtracking_linesearch: heads_has_aux must be True or '
          'False',)),
    ])


def _flat_cases():
  out = []
  for method, (factory, cases) in CASES.items():
    for i, (kwargs, error, fragments) in enumerate(cases):
      key = ','.join(kwargs) or 'none'
      out.append(pytest.param(factory, kwargs, error, fragments,
                              id=f'{method}-{key}-{i}'))
  return out


@pytest.mark.parametrize('factory,kwargs,error,fragments', _flat_cases())
def test_bad_argument_is_a_clear_error(factory, kwargs, error, fragments):
  with pytest.raises(error) as info:
    factory(**kwargs)
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, (fragment, message)


@pytest.mark.parametrize('factory,kwargs', [
    (lambda **kw: fast_backtracking_linesearch(3, _heads, mtl.mgda(), **kw),
     {}),
    (lambda **kw: fast_backtracking_linesearch(_encode, None, mtl.mgda(),
                                               **kw), {}),
    (lambda **kw: fast_backtracking_linesearch(_encode, _heads, 'mgda', **kw),
     {}),
])
def test_fast_linesearch_positional_arguments(factory, kwargs):
  with pytest.raises(TypeError, match='fast_backtracking_linesearch: '
                     '(encode|heads_losses|aggregator) must be'):
    factory(**kwargs)


def test_every_factory_is_covered():
  """Every registered method has cases here, and every checked argument of
  the registry's factories appears in some case."""
  assert set(mtl.available()) <= set(CASES)


# ---------------------------------------------------------------------------
# What stays valid.


@pytest.mark.parametrize('name', sorted(CASES))
def test_defaults_build(name):
  factory = CASES[name][0]
  built = factory()
  # Aggregators and line searches have init; gramian_direction gives a
  # direction function.
  assert callable(getattr(built, 'init', built))


@pytest.mark.parametrize('name', mtl.available())
def test_registry_for_tasks_builds_everything(name):
  agg = registry.for_tasks(name, num_tasks=3)
  # A tracked copy of the gradients is shaped like the parameters.
  params = {'w': jnp.zeros(2)} if name in registry.TRACKS_GRADIENTS else None
  state = agg.init(params)
  assert state.weights is None or state.weights.shape == (3,)
  if name in registry.TAKES_PREFERENCES:
    registry.for_tasks(name, num_tasks=3, preferences=[0., 1., 2.])


@pytest.mark.parametrize('factory,kwargs', [
    (mtl.cagrad, dict(c=0)),                          # the mean gradient
    (mtl.cagrad, dict(c=jnp.float32(0.5), rescale=0)),
    (mtl.cagrad, dict(rescale=np.int64(2))),
    (mtl.mgda, dict(tol=0, max_iters=np.int32(3))),
    (mtl.nash_mtl, dict(max_norm=0, num_tasks=np.int64(3))),
    (mtl.gradvac, dict(beta=0, num_tasks=2)),
    (mtl.gradvac, dict(beta=1, num_tasks=2, preferences=np.array([0, 3]))),
    (mtl.ema_weighting, dict(weighting=mtl.weightings.mgda, beta=0,
                             num_tasks=2)),
    (mtl.graddrop, dict(leak=1, seed=np.uint32(7))),
    (mtl.graddrop, dict(leak=0, track_diagnostics=np.bool_(False))),
    (mtl.aligned_mtl, dict(preferences=(0.2, 0.8), num_tasks=2)),
    (mtl.mamg, dict(mode='algorithm1', reduction='sum', clip=None)),
    (mtl.mamg, dict(mode='one_sided', clip='sequential', reduction='mean')),
    (mtl.linear_scalarization, dict(weights=jnp.array([0., 1.]))),
    # A plain weighted sum may ascend a loss on purpose (test_linesearch).
    (mtl.linear_scalarization, dict(weights=jnp.array([-1., 0., 0.]))),
    (mtl.upgrad, dict(max_iters=None, preferences=[1, 2])),
    (mtl.gradnorm, dict(alpha=0, num_tasks=2, optimizer=optax.sgd(0.1))),
    (backtracking_linesearch, dict(lr_ub_min=1.0, lr_ub_patience=1,
                                   slope_rtol=0)),
])
def test_boundary_values_are_accepted(factory, kwargs):
  factory(**kwargs)


def test_traced_preferences_are_not_inspected():
  """Under vmap the preferences are tracers: their shape is checked, their
  values cannot be (and are not)."""
  grads = {'w': jnp.eye(3)}
  state = mtl.pcgrad(jnp.ones(3)).init(None)
  out = jax.vmap(lambda p: mtl.pcgrad(p).update(grads, state)[0]['w'])(
      jnp.stack([jnp.ones(3), 2 * jnp.ones(3)]))
  np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-6)
  with pytest.raises(ValueError, match='1-D'):
    jax.vmap(lambda p: mtl.pcgrad(p))(jnp.ones((2, 3, 1)))


# ---------------------------------------------------------------------------
# The registry.


def test_unknown_name_suggests_the_closest():
  with pytest.raises(registry.UnknownAggregatorError) as info:
    mtl.get_aggregator('mgdaa')
  assert isinstance(info.value, KeyError)
  assert isinstance(info.value, ValueError)
  message = str(info.value)
  assert "unknown aggregator 'mgdaa'" in message
  assert "Did you mean 'mgda'" in message
  assert all(name in message for name in mtl.available())


@pytest.mark.parametrize('call,error,fragment', [
    (lambda: mtl.get_aggregator(3), TypeError,
     'get_aggregator: name must be a string'),
    (lambda: mtl.get_aggregator('mgda', normalisation='l2'), TypeError,
     "get_aggregator: mgda takes no keyword argument 'normalisation'"),
    (lambda: mtl.get_aggregator('cagrad', c=-1), ValueError,
     'cagrad: c must be >= 0'),
    (lambda: registry.for_tasks('no_such', num_tasks=3), KeyError,
     "for_tasks: unknown aggregator 'no_such'"),
    # The name is checked before the preferences: not "takes no preferences".
    (lambda: registry.for_tasks('upgard', num_tasks=2, preferences=[1, 1]),
     ValueError, "Did you mean 'upgrad'"),
    (lambda: registry.for_tasks('mgda', num_tasks=0), ValueError,
     "for_tasks('mgda'): num_tasks must be an integer >= 1"),
    (lambda: registry.for_tasks('mgda', num_tasks=None), TypeError,
     'num_tasks=T'),
    (lambda: registry.for_tasks('mgda', num_tasks=3, preferences=[1, 1, 1]),
     ValueError, "'mgda' takes no task preferences"),
    (lambda: registry.for_tasks('upgrad', num_tasks=3, preferences=[1, 1]),
     ValueError, 'num_tasks=3 but preferences has 2 entries'),
])
def test_registry_errors(call, error, fragment):
  with pytest.raises(error, match=re.escape(fragment)):
    call()
