"""MAMG's two modes against the paper, on explicit gradient vectors.

The references here are direct numpy float64 implementations of the
clipping rule (Eqs. 2-4 on the vectors themselves) and of the pair schedule
documented in ``mtl_optax.weightings.mamg``; never the library's coefficient
form. Every numeric test runs in float32 and in float64 (inside
``jax.enable_x64``; a no-op in CI's ``JAX_ENABLE_X64=1`` pass).

What the paper's clip guarantees and what it does not (module docstring of
``mtl_optax.weightings.mamg``) is pinned by the ``test_clip_*`` and
``test_lemma1_*`` tests.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
from mtl_optax import registry
from mtl_optax import weightings as W

DTYPES = ('float32', 'float64')
CLIPS = ('larger_norm', 'random', 'sequential')
# Decision margins the references demand of their inputs (a conflict sign
# or a norm comparison closer than this, relative to the largest input
# norm squared, could be decided differently in the dtype's rounding).
MARGIN = {'float32': 1e-4, 'float64': 1e-10}
# Error of the direction, relative to Σ w_i ‖g_i‖.
TOL = {'float32': 2e-5, 'float64': 1e-11}

one_sided = jax.jit(W.mamg_one_sided, static_argnames=('clip', 'reduction'))


def x64(dtype):
  return jax.enable_x64(True) if dtype == 'float64' else \
      contextlib.nullcontext()


# ---------------------------------------------------------------------------
# numpy references


def np_clip(gi, gj):
  """Eqs. (2)-(4) on vectors: ``g_i'`` and ``Δg_ij``; ``g_i`` unchanged
  (Δg = 0) unless the two conflict (Def. 1)."""
  if gi @ gj >= 0:
    return gi, 0.0
  p = gi - gj                                                  # Def. 2
  norm_p = np.linalg.norm(p)
  if norm_p == 0:
    return gi, 0.0
  cos_i = gi @ p / (np.linalg.norm(gi) * norm_p)               # (2)
  cos_j = gj @ p / (np.linalg.norm(gj) * norm_p)
  delta = np.linalg.norm(gi * cos_i - gj * cos_j)              # (3)
  return gi - delta * p / norm_p, delta                        # (4)


def np_one_sided(g, order, coins=None, w=None, clip='larger_norm',
                 reduction='sum'):
  """The one-sided schedule on explicit vectors.

  Returns:
    ``(direction, margin)``: ``margin`` is the smallest decision margin met
    (|<g_a, g_b>| and, for 'larger_norm', |‖g_a‖² - ‖g_b‖²|, over the
    largest input norm squared).
  """
  g = [np.asarray(x, np.float64).copy() for x in g]
  t = len(g)
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  scale2 = max(max(x @ x for x in g), 1e-300)
  margin = np.inf
  for k in range(1, t):
    for l in range(k):
      late, early = int(order[k]), int(order[l])
      dot = g[late] @ g[early]
      margin = min(margin, abs(dot) / scale2)
      if not dot < 0:
        continue
      if clip == 'larger_norm':
        n_late, n_early = g[late] @ g[late], g[early] @ g[early]
        margin = min(margin, abs(n_late - n_early) / scale2)
        this = n_late > n_early or (n_late == n_early and late < early)
      elif clip == 'sequential':
        this = True
      else:
        this = bool(coins[k, l])
      i, j = (late, early) if this else (early, late)
      g[i], _ = np_clip(g[i], g[j])
  out = w @ np.stack(g)
  return (out / t if reduction == 'mean' else out), margin


def np_algorithm1(g, orders, w=None):
  """Algorithm 1 as written: each running g_i' against every original g_j,
  mean of the g_i'."""
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  rows = []
  for i in range(t):
    gi = g[i].copy()
    for j in orders[i]:
      if j != i:
        gi, _ = np_clip(gi, g[j])
    rows.append(gi)
  return w @ np.stack(rows) / t


# ---------------------------------------------------------------------------
# data


def random_case(rng, t, p=12):
  g = rng.standard_normal((t, p)) * np.exp(rng.uniform(-1, 1, (t, 1)))
  g[1] -= 1.2 * g[0]          # at least one conflict
  return g


def ill_conditioned_case(rng, t, p=12):
  """Nearly collinear gradients (Gramian condition number ~1e6), random
  signs, norms over 1e-2 ... 1e2."""
  base = rng.standard_normal(p)
  signs = np.where(np.arange(t) % 2 == 0, 1.0, -1.0)
  rng.shuffle(signs)
  g = signs[:, None] * base + 1e-3 * rng.standard_normal((t, p))
  return g * 10.0 ** rng.uniform(-2, 2, (t, 1))


CASES = {'random': random_case, 'ill_conditioned': ill_conditioned_case}


def draw_case(kind, t, seed, clip, dtype):
  """A case whose decisions are far from the dtype's rounding, with its
  entry order and coins."""
  rng = np.random.default_rng(1000 * t + seed)
  for _ in range(100):
    g = CASES[kind](rng, t)
    order = rng.permutation(t)
    coins = rng.random((t, t)) < 0.5
    w = rng.uniform(0.2, 2, t)
    ref, margin = np_one_sided(g, order, coins, w, clip)
    if margin > MARGIN[dtype]:
      return g, order, coins, w, ref
  raise AssertionError('no case with a clear margin')


def err(d, ref, g, w=None):
  w = np.ones(len(g)) if w is None else w
  scale = w @ np.linalg.norm(g, axis=1)
  return np.linalg.norm(np.asarray(d, np.float64) - ref) / scale


def tree(g, head):
  return {'enc': jnp.asarray(g), 'head': jnp.asarray(head)}


@functools.lru_cache(maxsize=None)
def mamg(preferences=None, **kwargs):
  """``mtl.mamg`` built once per arguments (``preferences`` a tuple, kept
  in float64: the update casts it to the Gramian's dtype; ``shared='enc'``
  for ``SHARED``), with its update jitted once (per shape and dtype)."""
  if preferences is not None:
    preferences = np.asarray(preferences, np.float64)
  if kwargs.get('shared') == 'enc':
    kwargs['shared'] = {'enc': True, 'head': False}
  tx = mtl.mamg(preferences, **kwargs)
  return tx, jax.jit(tx.update)


def apply(tx, grads, state=None):
  """``tx.update`` for ``tx`` built by ``mamg`` (a pair) or any aggregator."""
  tx, update = (tx, jax.jit(tx.update)) if hasattr(tx, 'init') else tx
  state = tx.init(None) if state is None else state
  return update(grads, state)


def library_draws(seed, t):
  """The entry order and coins the aggregator draws at its first step."""
  _, sub = jax.random.split(jax.random.PRNGKey(seed))
  order, coins = W.mamg_draws(sub, t)
  return np.asarray(order), np.asarray(coins)


# ---------------------------------------------------------------------------
# (a) the coefficient form against the vector reference


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('kind', sorted(CASES))
@pytest.mark.parametrize('t', [2, 3, 5])
@pytest.mark.parametrize('clip', CLIPS)
def test_one_sided_matches_vector_reference(dtype, kind, t, clip):
  for seed in range(3):
    g, order, coins, w, ref = draw_case(kind, t, seed, clip, dtype)
    with x64(dtype):
      c = one_sided(jnp.asarray(g @ g.T, dtype), jnp.asarray(order),
                    jnp.asarray(coins), jnp.asarray(w, dtype), clip=clip)
      assert c.dtype == jnp.dtype(dtype)
    assert err(np.asarray(c, np.float64) @ g, ref, g, w) < TOL[dtype], seed


def test_reference_schedule_matters():
  """The comparisons above check the schedule is followed: the orders, the
  coins and the clip rule all change the reference's result."""
  g = np.array([[1., 0., 0.], [-0.9, 1., 0.], [-0.5, -0.8, 0.3]])
  rng = np.random.default_rng(0)
  coins = rng.random((3, 3)) < 0.5
  results = {}
  for clip in CLIPS:
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
      results[clip, order] = np_one_sided(g, order, coins, clip=clip)[0]
  values = list(results.values())
  distinct = {tuple(np.round(v, 6)) for v in values}
  assert len(distinct) >= 6
  assert not np.allclose(np_one_sided(g, (0, 1, 2), coins, clip='random')[0],
                         np_one_sided(g, (0, 1, 2), ~coins, clip='random')[0])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('t', [2, 3, 5])
@pytest.mark.parametrize('clip', CLIPS)
def test_aggregator_matches_vector_reference(dtype, t, clip):
  # Shared leaves: the one-sided rule with the order and coins drawn from
  # the state's key; head: the plain preference-weighted sum.
  rng = np.random.default_rng(t)
  seed = 7
  order, coins = library_draws(seed, t)
  for _ in range(100):
    g = random_case(rng, t)
    w = rng.uniform(0.2, 2, t)
    ref, margin = np_one_sided(g, order, coins, w, clip)
    if margin > MARGIN[dtype]:
      break
  head = rng.standard_normal((t, 3))
  with x64(dtype):
    tx = mamg(tuple(w), clip=clip, shared='enc', seed=seed, num_tasks=t)
    d, state = apply(tx, tree(g.astype(dtype), head.astype(dtype)))
    assert d['enc'].dtype == jnp.dtype(dtype)
  assert err(d['enc'], ref, g, w) < TOL[dtype] * 10
  np.testing.assert_allclose(d['head'], w @ head, rtol=1e-5 if
                             dtype == 'float32' else 1e-12)
  c = np.asarray(state.weights, np.float64)
  assert err(c @ g, ref, g, w) < TOL[dtype] * 10


# ---------------------------------------------------------------------------
# (b) T = 2: g' of the larger gradient plus the smaller one


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('seed', range(4))
def test_two_tasks_clip_the_larger_keep_the_smaller(dtype, seed):
  rng = np.random.default_rng(seed)
  g = random_case(rng, 2)
  big, small = np.argsort(-np.linalg.norm(g, axis=1))
  assert g[0] @ g[1] < 0
  clipped, delta = np_clip(g[big], g[small])
  assert delta > 0
  expect = clipped + g[small]                                 # Lemma 1
  other = np_clip(g[small], g[big])[0] + g[big]
  assert np.linalg.norm(expect - other) > 1e-2 * np.linalg.norm(g)
  with x64(dtype):
    for s in (0, 1, 2):            # whatever the entry order
      tx = mamg(seed=s)
      d, _ = apply(tx, {'w': jnp.asarray(g, dtype)})
      assert err(d['w'], expect, g) < TOL[dtype]


@pytest.mark.parametrize('dtype', DTYPES)
def test_two_tasks_tie_clips_the_smaller_index(dtype):
  # ‖(3, 4)‖ = ‖(-5, 0)‖ = 5 exactly, <,> = -15: a tie; task 0 is clipped,
  # in either entry order and either task numbering.
  a, b = np.array([3., 4.]), np.array([-5., 0.])
  with x64(dtype):
    for g in (np.stack([a, b]), np.stack([b, a])):
      expect = np_clip(g[0], g[1])[0] + g[1]
      for order in ([0, 1], [1, 0]):
        c = one_sided(jnp.asarray(g @ g.T, dtype), jnp.asarray(order))
        assert err(np.asarray(c, np.float64) @ g, expect, g) < TOL[dtype]
  assert np.linalg.norm(np_clip(a, b)[0] + b - np_clip(b, a)[0] - a) > 1


@pytest.mark.parametrize('dtype', DTYPES)
def test_two_tasks_random_and_sequential_clip_either(dtype):
  # 'random' and 'sequential' clip one of the two, each one for some seed.
  g = np.array([[2., 0.3, 0.], [-1., 1., 0.5]])
  both = {0: np_clip(g[0], g[1])[0] + g[1], 1: np_clip(g[1], g[0])[0] + g[0]}
  for clip in ('random', 'sequential'):
    seen = set()
    with x64(dtype):
      tx = mamg(clip=clip)
      state = tx[0].init(None)
      for _ in range(12):
        d, state = apply(tx, {'w': jnp.asarray(g, dtype)}, state)
        hits = [i for i, e in both.items() if err(d['w'], e, g) < TOL[dtype]]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {0, 1}, clip


# ---------------------------------------------------------------------------
# (c) what the clip does: a point between g_i and g_j; the conflict is
# removed for cos ψ > -0.62 only


def _pairs(rng, n, cos_range, ratio_range):
  """``n`` pairs (g_i, g_j) in R^5 with cos ψ and ‖g_j‖/‖g_i‖ drawn from
  the ranges."""
  out = []
  for _ in range(n):
    c = rng.uniform(*cos_range)
    r = rng.uniform(*ratio_range)
    q, _ = np.linalg.qr(rng.standard_normal((5, 2)))
    u, v = q[:, 0], q[:, 1]
    s = 10.0 ** rng.uniform(-3, 3)
    out.append((s * u, s * r * (c * u + np.sqrt(1 - c * c) * v)))
  return out


def _library_clip(gi, gj, dtype):
  """``g_i'`` from the library: T = 2, 'sequential' with ``i`` entering
  second clips ``g_i``; ``g^MG - g_j``."""
  g = np.stack([gi, gj])
  with x64(dtype):
    c = one_sided(jnp.asarray(g @ g.T, dtype), jnp.asarray([1, 0]),
                  clip='sequential')
  return np.asarray(c, np.float64) @ g - gj


@pytest.mark.parametrize('dtype', DTYPES)
def test_clip_is_a_point_between_the_two_gradients(dtype):
  # g_i' = (1 - λ) g_i + λ g_j, λ = Δg_ij/‖Pγ‖ ∈ [0, 1): the angle to g_j
  # shrinks (Fig. 2(c), "from ψ to β") and <g_i', g_j> grows, whichever of
  # the two is clipped.
  rng = np.random.default_rng(1)
  tol = 1e-5 if dtype == 'float32' else 1e-12
  for gi, gj in _pairs(rng, 40, (-0.999, -0.001), (0.01, 100)):
    got = _library_clip(gi, gj, dtype)
    ref, delta = np_clip(gi, gj)
    lam = delta / np.linalg.norm(gi - gj)
    assert 0 <= lam < 1
    np.testing.assert_allclose(ref, (1 - lam) * gi + lam * gj,
                               atol=1e-12 * np.linalg.norm(gi - gj))
    scale = np.linalg.norm(gi) + np.linalg.norm(gj)
    assert np.linalg.norm(got - ref) < tol * scale
    cos = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cos(ref, gj) > cos(gi, gj)
    assert ref @ gj > gi @ gj


@pytest.mark.parametrize('dtype', DTYPES)
def test_clip_removes_the_conflict_only_for_cos_above_minus_0_62(dtype):
  rng = np.random.default_rng(2)
  # cos ψ > -0.62, any norm ratio, either gradient clipped: no conflict
  # left.
  for gi, gj in _pairs(rng, 60, (-0.62, -0.001), (0.01, 100)):
    got = _library_clip(gi, gj, dtype)
    tol = (1e-5 if dtype == 'float32' else 1e-12) * (
        np.linalg.norm(gi) + np.linalg.norm(gj)) * np.linalg.norm(gj)
    assert np_clip(gi, gj)[0] @ gj >= 0
    assert got @ gj >= -tol
  # More strongly opposed, it can remain: equal norms, cos ψ = -0.9, and
  # the larger of two (ratio 0.65) at cos ψ = -0.7.
  for c, r in ((-0.9, 1.0), (-0.7, 0.65)):
    gi = np.array([1., 0., 0.])
    gj = r * np.array([c, np.sqrt(1 - c * c), 0.])
    ref = np_clip(gi, gj)[0]
    got = _library_clip(gi, gj, dtype)
    assert ref @ gj < -1e-3 and got @ gj < -1e-3, (c, r)
  # Exactly opposite gradients: g_i' = -g_j, the conflict stays whole and
  # g^MG = 0.
  gi, gj = np.array([3., 0.]), np.array([-1., 0.])
  np.testing.assert_allclose(np_clip(gi, gj)[0], -gj)
  np.testing.assert_allclose(_library_clip(gi, gj, dtype), -gj, atol=1e-6)


def test_clip_jumps_where_the_conflict_starts():
  # Δg does not vanish as <g_i, g_j> rises to 0: for equal norms it tends
  # to ‖g_i‖, so a barely conflicting pair is clipped hard.
  for eps in (1e-3, 1e-6):
    gi, gj = np.array([1., 0.]), np.array([-eps, np.sqrt(1 - eps * eps)])
    assert np_clip(gi, gj)[1] == pytest.approx(1.0, abs=1e-3)
    gj_ok = np.array([eps, np.sqrt(1 - eps * eps)])
    assert np_clip(gi, gj_ok)[1] == 0.0


# ---------------------------------------------------------------------------
# (d) Lemma 1: ‖g_i' + g_j‖ ≤ ‖g_i + g_j‖ iff Δg ≤ 2(‖g_i‖² - ‖g_j‖²)/‖Pγ‖


def _lemma_margin(gi, gj):
  """``‖g_i + g_j‖² - ‖g_i' + g_j‖²`` from the identity
  ``2 Δg (‖g_i‖² - ‖g_j‖²)/‖Pγ‖ - Δg²``."""
  _, delta = np_clip(gi, gj)
  norm_p = np.linalg.norm(gi - gj)
  return 2 * delta * (gi @ gi - gj @ gj) / norm_p - delta ** 2


@pytest.mark.parametrize('dtype', DTYPES)
def test_lemma1_identity_and_where_it_holds(dtype):
  rng = np.random.default_rng(3)
  for gi, gj in _pairs(rng, 60, (-0.999, -0.001), (0.01, 100)):
    g = gi + gj
    g_mg = np_clip(gi, gj)[0] + gj
    scale = (np.linalg.norm(gi) + np.linalg.norm(gj)) ** 2
    # The identity.
    assert abs((g @ g - g_mg @ g_mg) - _lemma_margin(gi, gj)) < 1e-12 * scale
    # The library's g^MG has the reference's norm.
    got = _library_clip(gi, gj, dtype) + gj
    tol = 1e-5 if dtype == 'float32' else 1e-12
    assert abs(np.linalg.norm(got) - np.linalg.norm(g_mg)) < tol * np.sqrt(
        scale)
    ratio = np.linalg.norm(gj) / np.linalg.norm(gi)
    if ratio <= 0.64:      # the clipped one is clearly the larger: holds
      assert np.linalg.norm(g_mg) <= np.linalg.norm(g) * (1 + 1e-12)
    if ratio > 1:          # the smaller one clipped: fails, strictly
      assert np.linalg.norm(g_mg) > np.linalg.norm(g)


def test_lemma1_fails_for_the_larger_at_close_norms():
  # Norm ratio 0.9, cos ψ = -0.1: the larger gradient is clipped and
  # ‖g^MG‖ > ‖g‖ all the same; at ratio 0.5 it holds for every angle.
  gi = np.array([1., 0.])
  gj = 0.9 * np.array([-0.1, np.sqrt(1 - 0.01)])
  assert _lemma_margin(gi, gj) < -1e-2
  assert np.linalg.norm(np_clip(gi, gj)[0] + gj) > np.linalg.norm(gi + gj)
  for c in np.linspace(-0.999, -0.001, 200):
    gj = 0.5 * np.array([c, np.sqrt(1 - c * c)])
    assert _lemma_margin(gi, gj) >= 0


@pytest.mark.parametrize('dtype', DTYPES)
def test_larger_norm_mode_satisfies_lemma1_when_it_can(dtype):
  # The default clips the larger gradient: at T = 2 Lemma 1 holds for every
  # pair with norm ratio ≤ 0.64, whatever the angle.
  rng = np.random.default_rng(4)
  for gi, gj in _pairs(rng, 20, (-0.999, -0.001), (0.01, 0.64)):
    g = np.stack([gj, gi])
    with x64(dtype):
      d, _ = apply(mamg(), {'w': jnp.asarray(g, dtype)})
    d = np.asarray(d['w'], np.float64)
    assert np.linalg.norm(d) <= np.linalg.norm(gi + gj) * (1 + 1e-5)
    assert err(d, np_clip(gi, gj)[0] + gj, g) < TOL[dtype]


# ---------------------------------------------------------------------------
# (e) mode='algorithm1'


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('seed', range(3))
def test_algorithm1_two_tasks_is_the_mean_gradient(dtype, seed):
  rng = np.random.default_rng(10 + seed)
  g = random_case(rng, 2)
  head = rng.standard_normal((2, 3))
  assert g[0] @ g[1] < 0 and np_clip(g[0], g[1])[1] > 0.1   # it clips...
  np.testing.assert_allclose(np_algorithm1(g, [[0, 1], [1, 0]]), g.mean(0),
                             atol=1e-12 * np.abs(g).max())  # ...and cancels
  with x64(dtype):
    tx = mamg(mode='algorithm1', shared='enc', seed=seed)
    d, _ = apply(tx, tree(g.astype(dtype), head.astype(dtype)))
  assert err(d['enc'], g.mean(0), g) < TOL[dtype]
  np.testing.assert_allclose(d['head'], head.mean(0), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('dtype', DTYPES)
def test_algorithm1_three_tasks_matches_vector_reference(dtype):
  rng = np.random.default_rng(5)
  g = random_case(rng, 3)
  g[2] -= 0.8 * g[1]
  w = rng.uniform(0.5, 2, 3)
  _, sub = jax.random.split(jax.random.PRNGKey(11))
  orders = np.asarray(W.random_orders(sub, 3))
  ref = np_algorithm1(g, orders, w)
  assert np.linalg.norm(ref - w @ g / 3) > 1e-2 * np.linalg.norm(ref)
  with x64(dtype):
    tx = mamg(tuple(w), mode='algorithm1', seed=11)
    d, _ = apply(tx, {'w': jnp.asarray(g, dtype)})
  assert err(d['w'], ref, g, w) < TOL[dtype] * 10


# ---------------------------------------------------------------------------
# (f) reduction='mean' is the sum over T, heads included


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('mode,clip', [('one_sided', c) for c in CLIPS] +
                         [('algorithm1', None)])
def test_mean_is_sum_over_t_including_heads(dtype, mode, clip):
  t = 4
  rng = np.random.default_rng(6)
  g, head = random_case(rng, t), rng.standard_normal((t, 3))
  w = rng.uniform(0.5, 2, t)
  out = {}
  with x64(dtype):
    grads = tree(g.astype(dtype), head.astype(dtype))
    assert grads['head'].dtype == jnp.dtype(dtype)
    for reduction in ('sum', 'mean'):
      tx = mamg(tuple(w), mode=mode, clip=clip, reduction=reduction,
                shared='enc', seed=3, num_tasks=t)
      out[reduction] = apply(tx, grads)
  rtol = 1e-6 if dtype == 'float32' else 1e-14
  for leaf in ('enc', 'head'):
    np.testing.assert_allclose(out['mean'][0][leaf],
                               np.asarray(out['sum'][0][leaf]) / t,
                               rtol=rtol, atol=rtol * np.abs(g).max())
  np.testing.assert_allclose(out['sum'][0]['head'], w @ head, rtol=rtol * 10)
  np.testing.assert_allclose(out['mean'][1].weights,
                             np.asarray(out['sum'][1].weights) / t, rtol=rtol)


def test_default_reductions_per_mode():
  g = {'w': jnp.array([[1., 0.], [0., 1.], [1., 1.]])}     # no conflict
  sum_ = np.array([2., 2.])
  np.testing.assert_allclose(apply(mamg(), g)[0]['w'], sum_)
  np.testing.assert_allclose(apply(mamg(mode='algorithm1'), g)[0]['w'],
                             sum_ / 3)
  np.testing.assert_allclose(
      apply(mamg(mode='algorithm1', reduction='sum'), g)[0]['w'], sum_)


# ---------------------------------------------------------------------------
# (g) hyperparameters


@pytest.mark.parametrize('kwargs,fragments', [
    (dict(mode='lemma1'), ("mamg: mode must be one of 'one_sided', "
                           "'algorithm1'", "got 'lemma1'")),
    (dict(clip='smaller'), ("mamg: clip must be one of 'larger_norm', "
                            "'random', 'sequential'", "got 'smaller'")),
    (dict(reduction='avg'), ("mamg: reduction must be one of 'sum', 'mean'",
                             "got 'avg'")),
    (dict(mode='algorithm1', clip='larger_norm'),
     ("clip='larger_norm' applies to mode='one_sided' only",
      "drop clip= or pass mode='one_sided'")),
])
def test_bad_hyperparameters_name_the_options(kwargs, fragments):
  with pytest.raises(ValueError) as info:
    mtl.mamg(**kwargs)
  for fragment in fragments:
    assert fragment in str(info.value)


def test_hyperparameters_are_keyword_only():
  with pytest.raises(TypeError):
    mtl.mamg(None, 'algorithm1')   # pylint: disable=too-many-function-args


def test_weighting_level_checks():
  k = jnp.eye(2)
  with pytest.raises(ValueError, match="clip must be one of 'larger_norm'"):
    W.mamg_one_sided(k, jnp.arange(2), clip='largest')
  with pytest.raises(ValueError, match="reduction must be one of 'sum'"):
    W.mamg_one_sided(k, jnp.arange(2), reduction='max')
  with pytest.raises(ValueError, match='needs coins'):
    W.mamg_one_sided(k, jnp.arange(2), clip='random')
  with pytest.raises(ValueError, match="reduction must be one of 'sum'"):
    W.mamg(k, jnp.zeros((2, 2), jnp.int32), reduction='max')


def test_registry_passes_the_mode():
  tx = mtl.get_aggregator('mamg', mode='algorithm1', num_tasks=2)
  g = {'w': jnp.array([[2., 0.], [-1., 1.]])}
  np.testing.assert_allclose(apply(tx, g)[0]['w'], [0.5, 0.5], rtol=1e-5)
  tx = registry.for_tasks('mamg', num_tasks=2, preferences=[1., 1.],
                              clip='sequential')
  assert apply(tx, g)[1].weights.shape == (2,)


# ---------------------------------------------------------------------------
# (h) no conflict, zeros, duplicates, T = 1


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('t', [2, 3, 5])
@pytest.mark.parametrize('clip', CLIPS)
def test_no_conflict_is_the_plain_sum(dtype, t, clip):
  rng = np.random.default_rng(t)
  g = np.abs(rng.standard_normal((t, 6))) + 0.1
  w = rng.uniform(0.5, 2, t)
  with x64(dtype):
    order, coins = W.mamg_draws(jax.random.PRNGKey(t), t)
    c = one_sided(jnp.asarray(g @ g.T, dtype), order, coins,
                  jnp.asarray(w, dtype), clip=clip)
  np.testing.assert_allclose(c, w, rtol=1e-6 if dtype == 'float32' else 0)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('clip', CLIPS)
def test_zero_and_duplicated_gradients_are_finite(dtype, clip):
  rng = np.random.default_rng(8)
  g = random_case(rng, 5)
  g[2] = 0.0                      # a zero gradient conflicts with nothing
  g[4] = g[1]                     # a duplicate does not conflict with g_1
  order, coins = library_draws(0, 5)
  ref, _ = np_one_sided(g, order, coins, clip=clip)
  with x64(dtype):
    d, state = apply(mamg(clip=clip, num_tasks=5),
                     {'w': jnp.asarray(g, dtype)})
  assert not bool(state.last_skipped)
  assert np.all(np.isfinite(np.asarray(state.weights)))
  assert err(d['w'], ref, g) < TOL[dtype] * 10


@pytest.mark.parametrize('dtype', DTYPES)
def test_all_zero_identical_and_opposite_gradients(dtype):
  g0 = np.array([1., -2., 0.5, 3.])
  cases = {'zeros': (np.zeros((3, 4)), np.zeros(4)),
           'identical': (np.stack([g0] * 3), 3 * g0),
           # Equal and opposite: Δg = 0, nothing is clipped, the sum is 0.
           'opposite': (np.stack([g0, -g0, g0]), g0)}
  for name, (g, expect) in cases.items():
    with x64(dtype):
      d, state = apply(mamg(), {'w': jnp.asarray(g, dtype)})
    assert not bool(state.last_skipped), name
    np.testing.assert_allclose(d['w'], expect, rtol=1e-6, atol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize('mode', ['one_sided', 'algorithm1'])
def test_single_task_is_its_gradient(mode):
  g = {'w': jnp.array([[1., -2., 3.]])}
  np.testing.assert_allclose(apply(mamg(mode=mode), g)[0]['w'],
                             [1., -2., 3.])
