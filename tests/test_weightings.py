"""Tests of the weighting functions (Gramian -> coefficients).

Every reference here is a direct numpy/scipy implementation of the method's
definition on the gradient matrix itself (SVD of the gradients, an exact
quadratic program, the vector form of the projection rules), never the
library's own Gramian helpers.
"""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import mtl_optax as mtl
from mtl_optax import weightings as W
import reference_solvers as rs

F32_EPS = float(np.finfo(np.float32).eps)
F64_EPS = float(np.finfo(np.float64).eps)

# Jitted entry points (compiled once per shape and dtype, shared by the
# tests; eager calls are exercised by the docstring tests).
aligned = jax.jit(W.aligned, static_argnames='scale_mode')
aligned_svd = jax.jit(W.aligned_direction_svd, static_argnames='scale_mode')
mgda = jax.jit(W.mgda, static_argnames=('normalization', 'max_iters', 'tol',
                                        'solver'))
pcgrad = jax.jit(W.pcgrad)
mamg = jax.jit(W.mamg)
random_orders = jax.jit(W.random_orders, static_argnums=1)
from_gramian = jax.jit(mtl.diagnostics.from_gramian)
MODES = ('min', 'median', 'rmse')


@jax.jit
def aligned_modes(k, w, g):
  """Both Aligned-MTL paths for every scale mode, in one compiled call:
  ``{mode: (c, d_svd, c_svd)}``."""
  return {m: (W.aligned(k, w, m),) + tuple(W.aligned_direction_svd(g, w, m))
          for m in MODES}


# ----------------------------------------------------------------------------
# Numpy references and data.
# ----------------------------------------------------------------------------


def orthonormal(rng, n, k):
  q, r = np.linalg.qr(rng.standard_normal((n, k)))
  return q * np.sign(np.diag(r))


def conditioned(rng, t, p, singular_values):
  """``G = A diag(s) Bᵀ`` with orthonormal A (T×T), B (P×T)."""
  a = orthonormal(rng, t, t)
  b = orthonormal(rng, p, t)
  return a @ np.diag(singular_values) @ b.T


def lower_median(x):
  """``torch.median``'s median: the lower middle value for an even count
  (the authors' Aligned-MTL code applies it to the kept eigenvalues)."""
  x = np.sort(np.asarray(x).ravel())
  return x[(x.size - 1) // 2]


def np_aligned(g, w=None, eps=F32_EPS, scale_mode='min'):
  """Aligned-MTL from numpy's SVD of the P×T matrix of gradient columns.

  ``Gᵀ = U Σ Vᵀ`` (thin); kept modes ``σ² > σ_max² T eps``; the aligned
  direction is ``σ U Vᵀ w`` over the kept modes. Returns (direction, rank).
  """
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  u, s, vt = np.linalg.svd(g.T, full_matrices=False)
  if s.max() == 0:
    return np.zeros(g.shape[1]), 0
  keep = s**2 > s.max()**2 * t * eps
  lam = s[keep]**2
  if scale_mode == 'min':
    sigma = np.sqrt(lam.min())
  elif scale_mode == 'rmse':
    sigma = np.sqrt(lam.mean())
  elif scale_mode == 'median':
    sigma = np.sqrt(lower_median(lam))
  else:
    raise ValueError(scale_mode)
  return sigma * (u[:, keep] @ (vt[keep] @ w)), int(keep.sum())


def slsqp_min_norm(g):
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  k = g @ g.T
  res = optimize.minimize(
      lambda a: a @ k @ a, np.full(t, 1 / t), jac=lambda a: 2 * k @ a,
      bounds=[(0, 1)] * t, method='SLSQP',
      constraints=[{'type': 'eq', 'fun': lambda a: a.sum() - 1}],
      options={'ftol': 1e-15, 'maxiter': 1000})
  return res.x, res.x @ g


def np_pcgrad(g, orders, w=None):
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  out = np.zeros(g.shape[1])
  for i in range(t):
    gi = g[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      dot = gi @ g[j]
      if dot < 0:
        gi = gi - dot / (g[j] @ g[j]) * g[j]
    out += w[i] * gi
  return out


def np_mamg(g, orders, w=None):
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  out = np.zeros(g.shape[1])
  for i in range(t):
    gi = g[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      gj = g[j]
      if gi @ gj < 0:
        p = gi - gj
        norm_p = np.linalg.norm(p)
        cos_i = gi @ p / (np.linalg.norm(gi) * norm_p)
        cos_j = gj @ p / (np.linalg.norm(gj) * norm_p)
        delta = np.linalg.norm(gi * cos_i - gj * cos_j)
        gi = gi - delta * p / norm_p
    out += w[i] * gi
  return out / t


def np_orders(t, seed):
  """Visiting orders drawn with numpy (``random_orders`` is tested, and
  used for the reference comparisons, below; this keeps compilations few)."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(t) for _ in range(t)])


def mgda_data(kind, t, p, rng):
  if kind == 'random':
    return rng.standard_normal((t, p))
  if kind == 'common':      # a shared component dominates: no conflict
    return 3 * rng.standard_normal(p)[None] + rng.standard_normal((t, p))
  if kind == 'conflict':    # g_1 ≈ -0.8 g_0: a short min-norm point
    g = rng.standard_normal((t, p))
    g[1] = -0.8 * g[0] + 0.3 * rng.standard_normal(p)
    return g
  if kind == 'scaled':      # norms over 1.5 decades
    return rng.standard_normal((t, p)) * np.geomspace(1, 30, t)[:, None]
  raise ValueError(kind)


def f32(x):
  return jnp.asarray(np.asarray(x, np.float64).astype(np.float32))


def gram32(g):
  """The Gramian computed in float64 and rounded to float32."""
  g = np.asarray(g, np.float64)
  return f32(g @ g.T)


def rel_err(x, ref):
  return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


def direction(c, g):
  return np.asarray(c, np.float64) @ np.asarray(g, np.float64)


# ----------------------------------------------------------------------------
# Aligned-MTL.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('t,p', [(2, 7), (3, 20), (5, 40), (8, 50)])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_matches_numpy_svd_random(t, p, seed):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, p)) * rng.uniform(0.2, 5, (t, 1))
  ref, rank = np_aligned(g)
  assert rank == t
  d = direction(aligned(gram32(g)), g)
  np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_aligned_preferences_match_numpy(seed):
  rng = np.random.default_rng(10 + seed)
  t, p = 4, 25
  g = rng.standard_normal((t, p))
  w = rng.uniform(0.1, 3, t)
  ref, _ = np_aligned(g, w)
  d = direction(aligned(gram32(g), f32(w)), g)
  np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # The update is linear in w (a scalar preference broadcasts).
  d_half = direction(aligned(gram32(g), 0.5), g)
  np.testing.assert_allclose(d_half, 0.5 * np_aligned(g)[0], rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize('kappa,tol', [(1e2, 1e-9), (1e4, 1e-6), (1e6, 1e-3)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_aligned_ill_conditioned_float64(kappa, tol, seed):
  rng = np.random.default_rng(seed)
  t, p = 4, 30
  s = np.concatenate([np.linspace(1, 0.3, t - 1), [1 / kappa]])
  g = conditioned(rng, t, p, s)
  w = rng.uniform(0.5, 2, t)
  ref, rank = np_aligned(g, w, eps=F64_EPS)
  assert rank == t
  # σ_min = 1/κ: the reference keeps the smallest mode.
  np.testing.assert_allclose(np.linalg.norm(ref),
                             np.linalg.norm(w) / kappa, rtol=1e-6)
  with jax.enable_x64(True):
    c = aligned(jnp.asarray(g @ g.T, jnp.float64),
                  jnp.asarray(w, jnp.float64))
    assert c.dtype == jnp.float64
    d_svd, c_svd = aligned_svd(jnp.asarray(g, jnp.float64),
                                           jnp.asarray(w, jnp.float64))
    c, d_svd, c_svd = np.asarray(c), np.asarray(d_svd), np.asarray(c_svd)
  assert rel_err(c @ g, ref) < tol
  # The SVD path does not square the condition number.
  assert rel_err(d_svd, ref) < 1e-9
  assert rel_err(c_svd @ g, ref) < 1e-6


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_aligned_float32_kappa_1e2_keeps_all_modes(seed):
  rng = np.random.default_rng(seed)
  t, p = 4, 30
  s = np.concatenate([np.linspace(1, 0.3, t - 1), [1e-2]])
  g = conditioned(rng, t, p, s)
  ref, rank = np_aligned(g, eps=F32_EPS)
  assert rank == t
  # The Gramian path squares κ: relative accuracy about eps·κ² = 1e-3.
  assert rel_err(direction(aligned(gram32(g)), g), ref) < 1e-3


@pytest.mark.parametrize('kappa', [1e4, 1e6])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_float32_truncates_below_sqrt_t_eps(kappa, seed):
  """In float32 a singular value below ~sqrt(T eps)·σ_max (7e-4 for T = 4)
  is dropped: the result is the rank-(T-1) aligned system, whose scale is
  the smallest *kept* singular value (0.3 here), not 1/κ."""
  rng = np.random.default_rng(seed)
  t, p = 4, 30
  s = np.concatenate([np.linspace(1, 0.3, t - 1), [1 / kappa]])
  g = conditioned(rng, t, p, s)
  k = gram32(g)
  ref_trunc, rank = np_aligned(g, eps=F32_EPS)
  assert rank == t - 1
  ref_full, rank_full = np_aligned(g, eps=F64_EPS)
  assert rank_full == t
  d = direction(aligned(k), g)
  assert rel_err(d, ref_trunc) < 1e-4
  assert rel_err(d, ref_full) > 0.5
  diag = from_gramian(k)
  assert int(diag.rank) == t - 1
  d_svd, _ = aligned_svd(f32(g))
  assert rel_err(d_svd, ref_trunc) < 1e-4
  # Rank-(T-1) dominance rate: σ_max / smallest kept = 1 / 0.3.
  np.testing.assert_allclose(float(diag.dominance_rate),
                             1 / 0.3, rtol=1e-3)
  with jax.enable_x64(True):
    full = np.asarray(aligned(jnp.asarray(g @ g.T, jnp.float64)))
    assert int(from_gramian(jnp.asarray(g @ g.T, jnp.float64)).rank) == t
  assert rel_err(full @ g, ref_full) < 1e-3


@pytest.mark.parametrize('t,smallest,kept', [(4, 2e-3, True),
                                              (8, 6e-4, False)])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_float32_truncation_threshold(t, smallest, kept, seed):
  """The cut is at λ = λ_max · T · eps (σ ≈ 6.9e-4 σ_max for T = 4, 9.8e-4
  for T = 8): σ = 2e-3 is kept at T = 4; σ = 6e-4 (λ between eps and T eps)
  is dropped at T = 8."""
  rng = np.random.default_rng(seed)
  s = np.concatenate([np.linspace(1, 0.3, t - 1), [smallest]])
  g = conditioned(rng, t, 3 * t, s)
  k = gram32(g)
  ref, rank = np_aligned(g, eps=F32_EPS)
  assert rank == (t if kept else t - 1)
  assert int(from_gramian(k).rank) == rank
  d = direction(aligned(k), g)
  # A kept mode at κ = 500 costs accuracy: eps·κ² ≈ 3e-2 on its eigenvalue.
  assert rel_err(d, ref) < (2e-2 if kept else 1e-4)


@pytest.mark.parametrize('t', [4, 5])
def test_aligned_scale_modes_match_numpy(t):
  rng = np.random.default_rng(t)
  g = rng.standard_normal((t, 3 * t)) * rng.uniform(0.3, 3, (t, 1))
  w = rng.uniform(0.5, 2, t)
  out = aligned_modes(gram32(g), f32(w), f32(g))
  for mode in MODES:
    ref, _ = np_aligned(g, w, scale_mode=mode)
    c, d_svd, c_svd = out[mode]
    for d in (direction(c, g), np.asarray(d_svd, np.float64),
              direction(c_svd, g)):
      np.testing.assert_allclose(d, ref, rtol=1e-4,
                                 atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize('t', [4, 5])
def test_aligned_scale_modes_use_kept_spectrum_only(t):
  """With a dropped mode, median/rmse are over the T-1 kept eigenvalues
  (an odd count for T = 4, even for T = 5)."""
  rng = np.random.default_rng(100 + t)
  s = np.concatenate([np.geomspace(2, 0.2, t - 1), [1e-6]])
  g = conditioned(rng, t, 3 * t, s)
  out = aligned_modes(gram32(g), f32(np.ones(t)), f32(g))
  d_min = np_aligned(g, scale_mode='min')[0]
  for mode in ('median', 'rmse'):
    ref, rank = np_aligned(g, scale_mode=mode)
    assert rank == t - 1
    c, d_svd, _ = out[mode]
    assert rel_err(direction(c, g), ref) < 1e-4
    assert rel_err(d_svd, ref) < 1e-4
    # Only the scale differs from 'min' (σ_min = s[t-2], the last kept).
    lam = s[:-1]**2
    expect = np.sqrt(lower_median(lam) if mode == 'median' else lam.mean())
    np.testing.assert_allclose(
        np.linalg.norm(direction(c, g)) / np.linalg.norm(d_min),
        expect / s[t - 2], rtol=1e-4)


@pytest.mark.parametrize('t', [2, 4, 6])
def test_aligned_median_is_the_lower_middle_for_an_even_count(t):
  """An even number of kept values with distinct middles: σ² is the lower
  middle eigenvalue (torch.median), not the mean of the two middles, in the
  Gramian path and the SVD path alike."""
  rng = np.random.default_rng(40 + t)
  s = np.geomspace(3, 0.5, t)                 # distinct singular values
  g = conditioned(rng, t, 3 * t, s)
  lam = np.sort(s**2)
  lower, upper = lam[t // 2 - 1], lam[t // 2]
  assert upper > 1.5 * lower                  # the two middles differ
  out = aligned_modes(gram32(g), f32(np.ones(t)), f32(g))
  d_min = np_aligned(g, scale_mode='min')[0]
  c, d_svd, c_svd = out['median']
  for d in (direction(c, g), np.asarray(d_svd, np.float64),
            direction(c_svd, g)):
    ratio = np.linalg.norm(d) / np.linalg.norm(d_min)
    np.testing.assert_allclose(ratio, np.sqrt(lower) / s.min(), rtol=1e-4)
    assert abs(ratio - np.sqrt(0.5 * (lower + upper)) / s.min()) > 1e-2
  # alignment_scale itself, on an unsorted spectrum with a dropped value.
  from mtl_optax.methods.aligned_mtl import alignment_scale
  squared = jnp.array([4., 0., 9., 1., 16.], jnp.float32)
  keep = squared > 0
  # Kept 1, 4, 9, 16: the lower middle is 4 (σ = 2), not 6.5.
  np.testing.assert_allclose(float(alignment_scale(squared, keep, 'median')),
                             2.0)
  np.testing.assert_allclose(
      float(alignment_scale(squared, squared > 1, 'median')), 3.0)  # 4, 9, 16


def test_aligned_invalid_scale_mode():
  k = jnp.eye(3)
  with pytest.raises(ValueError):
    aligned(k, scale_mode='max')
  with pytest.raises(ValueError):
    aligned_svd(k, scale_mode='mean')


@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_system_has_unit_condition_number(seed):
  """The aligned gradients (the directions for the preferences e_t) are
  ``σ V Uᵀ``: orthogonal, of equal norm σ_min, condition number 1."""
  rng = np.random.default_rng(seed)
  t, p = 5, 30
  g = rng.standard_normal((t, p)) * rng.uniform(0.2, 5, (t, 1))
  u, s, vt = np.linalg.svd(g.T, full_matrices=False)
  aligned_cols = s.min() * u @ vt                          # P×T, numpy
  np.testing.assert_allclose(np.linalg.cond(aligned_cols), 1.0, rtol=1e-10)
  k = gram32(g)
  rows = np.stack([direction(aligned(k, f32(np.eye(t)[i])), g)
                   for i in range(t)])                     # T×P, library
  np.testing.assert_allclose(rows, aligned_cols.T, rtol=1e-4,
                             atol=1e-4 * s.min())
  np.testing.assert_allclose(np.linalg.cond(rows), 1.0, rtol=1e-4)
  aligned_gram = f32(rows @ rows.T)
  np.testing.assert_allclose(np.asarray(aligned_gram),
                             s.min()**2 * np.eye(t), atol=1e-4 * s.min()**2)
  np.testing.assert_allclose(
      float(from_gramian(aligned_gram).dominance_rate), 1.0, rtol=1e-4)
  # Linearity: the direction for w = 1 is the sum of the aligned gradients.
  np.testing.assert_allclose(direction(aligned(k), g), rows.sum(0),
                             rtol=1e-4, atol=1e-4 * s.min())


@pytest.mark.parametrize('t', [4, 5])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_direction_svd_equals_gramian_path(t, seed):
  rng = np.random.default_rng(50 + seed)
  g = rng.standard_normal((t, 3 * t))
  w = rng.uniform(0.5, 2, t)
  out = aligned_modes(gram32(g), f32(w), f32(g))
  for mode in MODES:
    c, d_svd, c_svd = (np.asarray(x, np.float64) for x in out[mode])
    np.testing.assert_allclose(c_svd, c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d_svd, c @ g, rtol=1e-4,
                               atol=1e-4 * np.abs(c @ g).max())
    # The coefficients returned by the SVD path reproduce its direction.
    np.testing.assert_allclose(c_svd @ g, d_svd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('t', [1, 5])
def test_aligned_zero_gramian_gives_zeros(t):
  out = aligned_modes(jnp.zeros((t, t)), jnp.ones(t), jnp.zeros((t, 3 * t)))
  for mode in MODES:
    for x in out[mode]:
      assert np.all(np.asarray(x) == 0), mode


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_aligned_rank_deficient_duplicated_rows(seed):
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((3, 15))
  g = np.concatenate([base, base[:1], 2 * base[1:2]])     # T = 5, rank 3
  out = aligned_modes(gram32(g), f32(np.ones(5)), f32(g))
  for mode in MODES:
    ref, rank = np_aligned(g, scale_mode=mode)
    assert rank == 3
    c, d_svd, c_svd = out[mode]
    assert np.all(np.isfinite(np.asarray(c)))
    assert np.all(np.isfinite(np.asarray(c_svd)))
    assert rel_err(direction(c, g), ref) < 1e-4
    assert rel_err(d_svd, ref) < 1e-4
    assert rel_err(direction(c_svd, g), ref) < 1e-4


def test_aligned_docstring_example_eager_and_jitted():
  g = np.array([[3., 0.], [0., 1.]])
  k = f32(g @ g.T)
  np.testing.assert_allclose(np.asarray(W.aligned(k)), [1 / 3, 1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(aligned(k)), [1 / 3, 1], rtol=1e-6)


# ----------------------------------------------------------------------------
# MGDA.
# ----------------------------------------------------------------------------


def test_qp_reference_agrees_with_slsqp():
  """Self-check of the enumeration reference against scipy's SLSQP."""
  for seed, kind in [(0, 'random'), (1, 'conflict'), (2, 'common')]:
    rng = np.random.default_rng(seed)
    g = mgda_data(kind, 5, 12, rng)
    _, d_enum = rs.min_norm_by_enumeration(g)
    _, d_slsqp = slsqp_min_norm(g)
    assert rel_err(d_slsqp, d_enum) < 1e-4
    assert np.linalg.norm(d_enum) <= np.linalg.norm(d_slsqp) * (1 + 1e-9)


MGDA_CASES = [(t, kind, seed) for t in (2, 3, 5, 8)
              for kind in ('random', 'common', 'conflict', 'scaled')
              for seed in (0, 1)]


@pytest.mark.parametrize('t,kind,seed', MGDA_CASES)
def test_mgda_matches_exact_qp(t, kind, seed):
  rng = np.random.default_rng(1000 * seed + t)
  g = mgda_data(kind, t, 3 * t + 4, rng)
  alpha_ref, d_ref = rs.min_norm_by_enumeration(g)
  c = np.asarray(mgda(gram32(g)), np.float64)
  assert rel_err(c @ g, d_ref) < 1e-3
  # Unnormalised: c = α lies on the simplex.
  assert c.min() >= 0
  np.testing.assert_allclose(c.sum(), 1.0, rtol=1e-5)
  # The aggregators' normalised Gramian (max diagonal 1) gives the same c.
  k = g @ g.T
  c_norm = np.asarray(mgda(f32(k / np.diag(k).max())), np.float64)
  assert rel_err(c_norm @ g, d_ref) < 1e-3


@pytest.mark.parametrize('t,kind,seed', [c for c in MGDA_CASES if c[0] > 2])
def test_mgda_kkt_and_no_conflict(t, kind, seed):
  rng = np.random.default_rng(1000 * seed + t)
  g = mgda_data(kind, t, 3 * t + 4, rng)
  k = g @ g.T
  alpha = np.asarray(mgda(f32(k)), np.float64)
  k_alpha = k @ alpha
  value = alpha @ k_alpha
  tol = 1e-4 * np.diag(k).max()
  # KKT of min αᵀKα on the simplex: (Kα)_t ≥ αᵀKα, with equality on the
  # support.
  assert np.all(k_alpha >= value - tol)
  support = alpha > 1e-3
  np.testing.assert_allclose(k_alpha[support], value, atol=tol)
  # Désidéri: <d, g_t> ≥ ‖d‖² for every task (no conflict).
  d = alpha @ g
  dots = g @ d
  assert np.all(dots >= -1e-6 * np.dot(d, d))
  assert np.all(dots >= (1 - 1e-3) * np.dot(d, d) - tol)


@pytest.mark.parametrize('kind', ['random', 'common', 'conflict', 'scaled'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mgda_two_tasks_closed_form(kind, seed):
  rng = np.random.default_rng(seed)
  g = mgda_data(kind, 2, 6, rng)
  g1, g2 = g
  # Eq. (4): α = [(g2 - g1)·g2 / ‖g1 - g2‖²] clipped to [0, 1], weight of g1.
  a = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2)**2), 0, 1)
  np.testing.assert_allclose(np.asarray(W.min_norm_two(gram32(g)),
                                        np.float64), [a, 1 - a], atol=1e-5)
  alpha_ref, d_ref = rs.min_norm_by_enumeration(g)
  np.testing.assert_allclose(a, alpha_ref[0], atol=1e-9)
  c = np.asarray(mgda(gram32(g)), np.float64)
  assert rel_err(c @ g, d_ref) < 1e-5


def test_mgda_two_tasks_vertex_solutions():
  # g1 short and inside the half-space of g2: the min-norm point is g1.
  g = np.array([[1., 0.], [3., 1.]])
  np.testing.assert_allclose(np.asarray(mgda(gram32(g))), [1, 0], atol=1e-7)
  np.testing.assert_allclose(np.asarray(mgda(gram32(g[::-1]))), [0, 1],
                             atol=1e-7)
  # Identical gradients: any α; the direction is the gradient.
  g = np.array([[1., 2.], [1., 2.]])
  np.testing.assert_allclose(direction(mgda(gram32(g)), g), [1, 2],
                             rtol=1e-6)


@pytest.mark.parametrize('t', [2, 3, 5])
def test_mgda_origin_in_hull_gives_zero_direction(t):
  rng = np.random.default_rng(t)
  g = rng.standard_normal((t, 10))
  g[1] = -g[0]                       # 0 = (g_0 + g_1)/2 is in the hull
  c = np.asarray(mgda(gram32(g)), np.float64)
  assert np.all(np.isfinite(c))
  assert np.linalg.norm(c @ g) <= 1e-3 * np.linalg.norm(g, axis=1).max()
  c_plain = np.asarray(mgda(gram32(g), solver='frank_wolfe'), np.float64)
  assert np.linalg.norm(c_plain @ g) <= 5e-2 * np.linalg.norm(g, axis=1).max()


@pytest.mark.parametrize('t,kind,seed', [c for c in MGDA_CASES if c[0] > 2])
def test_mgda_plain_frank_wolfe(t, kind, seed):
  """``solver='frank_wolfe'`` (the paper's Algorithm 2) is approximately
  right and never more accurate than the exact solver."""
  rng = np.random.default_rng(1000 * seed + t)
  g = mgda_data(kind, t, 3 * t + 4, rng)
  k = gram32(g)
  _, d_ref = rs.min_norm_by_enumeration(g)
  g_max = np.linalg.norm(g, axis=1).max()
  d_plain = direction(mgda(k, solver='frank_wolfe'), g)
  d_away = direction(mgda(k), g)
  err_plain = np.linalg.norm(d_plain - d_ref)
  err_away = np.linalg.norm(d_away - d_ref)
  # Plain Frank-Wolfe converges sublinearly: measured against the scale of
  # the gradients (relative to ‖d*‖ it can be off by 25% for conflicts).
  assert err_plain <= 5e-2 * g_max
  assert err_away <= err_plain + 1e-4 * np.linalg.norm(d_ref)
  # No conflict, approximately.
  assert np.all(g @ d_plain >= -5e-2 * g_max * np.linalg.norm(d_ref))
  c_plain = np.asarray(mgda(k, solver='frank_wolfe'))
  assert c_plain.min() >= 0
  np.testing.assert_allclose(c_plain.sum(), 1.0, rtol=1e-5)


def test_frank_wolfe_iterations_and_simplex():
  rng = np.random.default_rng(3)
  g = mgda_data('scaled', 6, 20, rng)
  k = gram32(g)
  for away in (True, False):
    alpha, iters = W.min_norm_frank_wolfe(k, max_iters=7, away_steps=away)
    assert int(iters) <= 7
    alpha = np.asarray(alpha)
    assert alpha.min() >= 0
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
  _, iters = W.min_norm_frank_wolfe(k, max_iters=1000)
  assert 1 <= int(iters) < 1000


def _normalised_qp(g, scales):
  return rs.min_norm_by_enumeration(g * scales[:, None])


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('t', [2, 3, 5])
def test_mgda_l2_normalisation(seed, t):
  rng = np.random.default_rng(seed * 10 + t)
  g = mgda_data('scaled', t, 3 * t + 3, rng)
  norms = np.linalg.norm(g, axis=1)
  alpha_ref, d_ref = _normalised_qp(g, 1 / norms)
  c = np.asarray(mgda(gram32(g), 'l2'), np.float64)
  assert rel_err(c @ g, d_ref) < 1e-3
  # c = α / ‖g_t‖ with α on the simplex.
  alpha = c * norms
  assert alpha.min() >= 0
  np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-4)
  # No conflict with the normalised gradients, hence with the gradients.
  assert np.all(g @ (c @ g) >= -1e-6 * norms.max() * np.linalg.norm(c @ g))


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('t', [2, 5])
def test_mgda_loss_normalisations(seed, t):
  rng = np.random.default_rng(seed * 10 + t)
  g = mgda_data('random', t, 3 * t + 3, rng)
  losses = rng.uniform(0.1, 5, t)
  norms = np.linalg.norm(g, axis=1)
  _, d_loss = _normalised_qp(g, 1 / losses)
  c = np.asarray(mgda(gram32(g), 'loss', f32(losses)), np.float64)
  assert rel_err(c @ g, d_loss) < 1e-3
  np.testing.assert_allclose((c * losses).sum(), 1.0, rtol=1e-4)
  _, d_lossp = _normalised_qp(g, 1 / (losses * norms))
  c = np.asarray(mgda(gram32(g), 'loss+', f32(losses)), np.float64)
  assert rel_err(c @ g, d_lossp) < 1e-3
  np.testing.assert_allclose((c * losses * norms).sum(), 1.0, rtol=1e-4)
  np.testing.assert_allclose(
      np.asarray(W.normalization_scales(gram32(g), 'loss+', f32(losses))),
      1 / (losses * norms), rtol=1e-5)


def test_mgda_normalisation_errors():
  k = jnp.eye(3)
  for norm in ('loss', 'loss+'):
    with pytest.raises(ValueError, match='losses'):
      mgda(k, norm)
    with pytest.raises(ValueError):
      mgda(k, norm, losses=jnp.ones(2))
  with pytest.raises(ValueError):
    mgda(k, 'l1')


@pytest.mark.parametrize('t', [2, 5])
def test_mgda_zero_gradient_is_finite(t):
  rng = np.random.default_rng(t)
  g = rng.standard_normal((t, 8))
  g[-1] = 0
  k = gram32(g)
  for norm in ('none', 'l2'):
    c = np.asarray(mgda(k, norm), np.float64)
    assert np.all(np.isfinite(c))
    # The zero gradient (normalised to 0 in 'l2') is in the hull: d = 0.
    assert np.linalg.norm(c @ g) <= 1e-3 * np.linalg.norm(g, axis=1).max()
  losses = f32(np.r_[np.ones(t - 1), 0.0])     # a zero loss too
  for norm in ('loss', 'loss+'):
    assert np.all(np.isfinite(np.asarray(mgda(k, norm, losses))))
  assert np.all(np.asarray(mgda(jnp.zeros((t, t)), 'l2')) == 0)
  assert np.all(np.isfinite(np.asarray(mgda(jnp.zeros((t, t))))))


def test_mgda_single_task_and_docstring():
  np.testing.assert_allclose(np.asarray(mgda(jnp.array([[4.]]))), [1.])
  np.testing.assert_allclose(np.asarray(mgda(jnp.array([[4.]]), 'l2')),
                             [0.5])
  # The docstring example, eager (the rest of the file uses jitted calls).
  np.testing.assert_allclose(np.asarray(W.mgda(jnp.eye(2))), [0.5, 0.5])
  # Three orthonormal gradients: the centroid.
  np.testing.assert_allclose(np.asarray(mgda(jnp.eye(3))), [1 / 3] * 3,
                             atol=1e-5)


# ----------------------------------------------------------------------------
# PCGrad and MAMG.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('t', [1, 2, 3, 6])
def test_random_orders_are_permutations(t):
  key = jax.random.PRNGKey(0)
  orders = np.asarray(random_orders(key, t))
  assert orders.shape == (t, t)
  assert jnp.issubdtype(orders.dtype, jnp.integer)
  for row in orders:
    assert sorted(row.tolist()) == list(range(t))
  np.testing.assert_array_equal(orders, np.asarray(random_orders(key, t)))


def test_random_orders_depend_on_key():
  t = 6
  a = np.asarray(random_orders(jax.random.PRNGKey(0), t))
  b = np.asarray(random_orders(jax.random.PRNGKey(1), t))
  assert not np.array_equal(a, b)
  # Rows are drawn independently: not all the same permutation.
  assert len({tuple(r) for r in a}) > 1


def _surgery_case(t, seed):
  rng = np.random.default_rng(seed * 7 + t)
  g = rng.standard_normal((t, 3 * t + 2)) * rng.uniform(0.3, 3, (t, 1))
  g[1] -= 0.8 * np.linalg.norm(g[1]) / np.linalg.norm(g[0]) * g[0]
  orders = np.asarray(random_orders(jax.random.PRNGKey(seed), t))
  return g, orders


@pytest.mark.parametrize('t', [2, 3, 6])
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('method', ['pcgrad', 'mamg'])
def test_surgery_matches_vector_reference(t, seed, method):
  g, orders = _surgery_case(t, seed)
  fn, ref_fn = {'pcgrad': (pcgrad, np_pcgrad),
                'mamg': (mamg, np_mamg)}[method]
  # Conflicts, so that the rule matters.
  assert (g @ g.T < 0).any()
  # float32, default preferences (the sum / the mean).
  ref = ref_fn(g, orders)
  d = direction(fn(gram32(g), jnp.asarray(orders)), g)
  assert rel_err(d, ref) < 1e-4
  # float64, random preferences.
  w = np.random.default_rng(seed).uniform(0.2, 2, t)
  ref_w = ref_fn(g, orders, w)
  with jax.enable_x64(True):
    c64 = np.asarray(fn(jnp.asarray(g @ g.T, jnp.float64),
                        jnp.asarray(orders), jnp.asarray(w, jnp.float64)))
  assert rel_err(c64 @ g, ref_w) < 1e-10


@pytest.mark.parametrize('method', ['pcgrad', 'mamg'])
def test_surgery_depends_on_order(method):
  """The references are order-sensitive, so the comparison above checks the
  orders are followed: find a case where two orders differ."""
  fn, ref_fn = {'pcgrad': (pcgrad, np_pcgrad),
                'mamg': (mamg, np_mamg)}[method]
  g = np.array([[1., 0., 0.], [-0.9, 1., 0.], [-0.5, -0.8, 0.3]])
  o1 = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
  o2 = np.array([[0, 2, 1], [2, 1, 0], [1, 0, 2]])
  r1, r2 = ref_fn(g, o1), ref_fn(g, o2)
  assert np.linalg.norm(r1 - r2) > 1e-3 * np.linalg.norm(r1)
  assert rel_err(direction(fn(gram32(g), jnp.asarray(o1)), g), r1) < 1e-5
  assert rel_err(direction(fn(gram32(g), jnp.asarray(o2)), g), r2) < 1e-5


@pytest.mark.parametrize('t', [2, 3, 6])
def test_surgery_without_conflict_is_plain_sum_or_mean(t):
  rng = np.random.default_rng(t)
  g = np.abs(rng.standard_normal((t, 7))) + 0.1     # all inner products > 0
  assert (g @ g.T > 0).all()
  orders = jnp.asarray(np_orders(t, t))
  np.testing.assert_allclose(np.asarray(pcgrad(gram32(g), orders)),
                             np.ones(t))
  np.testing.assert_allclose(np.asarray(mamg(gram32(g), orders)),
                             np.ones(t) / t, rtol=1e-6)
  w = rng.uniform(0.5, 2, t)
  with jax.enable_x64(True):
    k = jnp.asarray(g @ g.T, jnp.float64)
    w64 = jnp.asarray(w, jnp.float64)
    np.testing.assert_allclose(np.asarray(pcgrad(k, orders, w64)), w,
                               rtol=1e-12)
    np.testing.assert_allclose(np.asarray(mamg(k, orders, w64)), w / t,
                               rtol=1e-12)


@pytest.mark.parametrize('seed', range(5))
def test_pcgrad_two_conflicting_tasks(seed):
  rng = np.random.default_rng(seed)
  g1 = rng.standard_normal(6)
  g2 = -0.7 * g1 + 0.5 * rng.standard_normal(6)
  g = np.stack([g1, g2])
  assert g1 @ g2 < 0
  orders = jnp.asarray(random_orders(jax.random.PRNGKey(seed), 2))
  d = direction(pcgrad(gram32(g), orders), g)
  scale = np.linalg.norm(g1) * np.linalg.norm(g2)
  assert d @ g1 >= -1e-5 * scale and d @ g2 >= -1e-5 * scale
  # Closed form for T = 2: each gradient projected on the other's normal.
  expect = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
  assert rel_err(d, expect) < 1e-5


def test_surgery_zero_gradient_is_finite():
  rng = np.random.default_rng(0)
  g = rng.standard_normal((4, 6))
  g[2] = 0
  orders = jnp.asarray(np_orders(4, 0))
  for fn, ref_fn in ((pcgrad, np_pcgrad), (mamg, np_mamg)):
    c = np.asarray(fn(gram32(g), orders), np.float64)
    assert np.all(np.isfinite(c))
    assert rel_err(c @ g, ref_fn(g, np.asarray(orders))) < 1e-4
    assert np.all(np.isfinite(np.asarray(fn(jnp.zeros((3, 3)),
                                            random_orders(
                                                jax.random.PRNGKey(1), 3)))))


def test_mamg_identical_gradients_do_not_conflict():
  g = np.array([[1., 2.], [1., 2.]])
  orders = jnp.asarray(np_orders(2, 0))
  np.testing.assert_allclose(np.asarray(mamg(gram32(g), orders)),
                             [0.5, 0.5])


def test_linear():
  k = jnp.eye(3)
  np.testing.assert_array_equal(np.asarray(W.linear(k)), np.ones(3))
  np.testing.assert_allclose(np.asarray(W.linear(k, jnp.array([1., 2., 3.]))),
                             [1, 2, 3])
  np.testing.assert_allclose(np.asarray(W.linear(k, 0.5)), [0.5] * 3)


# ----------------------------------------------------------------------------
# Properties (hypothesis).
# ----------------------------------------------------------------------------

SETTINGS = hypothesis.settings(max_examples=25, deadline=None,
                               derandomize=True)


@jax.jit
def _equivariant_parts(k, w):
  """The coefficients whose properties are checked, in one compiled call
  per task count."""
  return (aligned(k, w, 'min'), aligned(k, w, 'median'),
          aligned(k, w, 'rmse'), mgda(k), mgda(k, 'l2'))


@st.composite
def well_conditioned(draw):
  t = draw(st.sampled_from([2, 3, 5]))
  p = draw(st.integers(t + 2, 14))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, p)) * rng.uniform(0.3, 3, (t, 1))
  hypothesis.assume(np.linalg.cond(g) < 50)
  perm = rng.permutation(t)
  return g, perm, rng.uniform(0.5, 2, t)


@SETTINGS
@hypothesis.given(well_conditioned())
def test_permutation_equivariance(case):
  """Permuting the tasks (and the preferences) permutes the coefficients."""
  g, perm, w = case
  parts = _equivariant_parts(gram32(g), f32(w))
  parts_perm = _equivariant_parts(gram32(g[perm]), f32(w[perm]))
  for c, c_perm in zip(parts[:3], parts_perm[:3]):          # aligned
    c, c_perm = np.asarray(c), np.asarray(c_perm)
    np.testing.assert_allclose(c_perm, c[perm], rtol=1e-4,
                               atol=1e-4 * np.abs(c).max())
  for c, c_perm in zip(parts[3:], parts_perm[3:]):          # MGDA
    c, c_perm = np.asarray(c), np.asarray(c_perm)
    # Full-rank K: α is unique.
    np.testing.assert_allclose(c_perm, c[perm], atol=2e-4 * np.abs(c).max())


@SETTINGS
@hypothesis.given(well_conditioned(),
                  st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))
def test_scale_invariance(case, scale):
  """c(s²K) = c(K) for aligned and MGDA 'none'; 'l2' coefficients scale as
  1/s (its α is scale-free)."""
  g, _, w = case
  k = np.asarray(g @ g.T)
  parts = [np.asarray(c) for c in _equivariant_parts(f32(k), f32(w))]
  parts_s = [np.asarray(c) for c in
             _equivariant_parts(f32(scale**2 * k), f32(w))]
  for c, c_s in zip(parts[:3], parts_s[:3]):
    np.testing.assert_allclose(c_s, c, rtol=1e-4, atol=1e-4 * np.abs(c).max())
  np.testing.assert_allclose(parts_s[3], parts[3], atol=2e-4)
  np.testing.assert_allclose(parts_s[4] * scale, parts[4], rtol=1e-3,
                             atol=2e-4 * np.abs(parts[4]).max())


PSD_P = 12


@jax.jit
def _all_weightings(k, g, losses, orders):
  outputs = [aligned(k, None, m) for m in ('min', 'median', 'rmse')]
  outputs += [mgda(k, n, losses) for n in ('none', 'l2', 'loss', 'loss+')]
  outputs += [mgda(k, solver='frank_wolfe'), pcgrad(k, orders), mamg(k, orders),
              W.linear(k)]
  outputs += list(aligned_svd(g))
  outputs += list(mtl.diagnostics.from_gramian(k))
  return outputs


@st.composite
def psd_gramians(draw):
  t = draw(st.sampled_from([1, 2, 3, 5]))     # 1; closed form; Frank-Wolfe
  rank = draw(st.integers(0, t))
  seed = draw(st.integers(0, 2**31 - 1))
  log_scale = draw(st.floats(-6, 6))
  duplicate = draw(st.booleans())
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, rank)) @ rng.standard_normal((rank, PSD_P))
  if duplicate and t > 1:
    g[-1] = g[0]
  return g * 10.0**log_scale


@SETTINGS
@hypothesis.given(psd_gramians())
def test_weightings_finite_on_psd_gramians(g):
  """Random PSD Gramians, rank-deficient (down to 0) and duplicated rows,
  over 12 decades of scale: every output is finite."""
  t = g.shape[0]
  k = gram32(g)
  losses = f32(np.linspace(0.5, 2, t))
  orders = jnp.asarray(np_orders(t, t))
  outputs = _all_weightings(k, f32(g), losses, orders)
  for out in outputs:
    assert np.all(np.isfinite(np.asarray(out)))
  # MGDA's direction is never longer than the shortest gradient.
  d = direction(outputs[3], g)
  shortest = np.linalg.norm(g, axis=1).min()
  assert np.linalg.norm(d) <= shortest * (1 + 1e-3) + 1e-6 * np.abs(g).max()


@pytest.mark.parametrize('seed', range(5))
def test_mamg_two_tasks_reduces_to_the_mean(seed):
  # Algorithm 1 clips task 1 against task 2 and task 2 against task 1 by the
  # same Δg along opposite directions Pγ: for T = 2 the clips cancel.
  rng = np.random.default_rng(100 + seed)
  g = rng.standard_normal((2, 9))
  g[1] = -0.7 * g[0] * rng.uniform(0.1, 10) + 0.3 * g[1]   # conflicting
  assert g[0] @ g[1] < 0
  orders = jnp.asarray(np_orders(2, 2))
  c = np.asarray(mamg(gram32(g), orders))
  np.testing.assert_allclose(c, [0.5, 0.5], rtol=1e-5)
  np.testing.assert_allclose(np_mamg(g, np.asarray(orders)), g.mean(0),
                             rtol=1e-6, atol=1e-9)
  # ...although each clip really changes its gradient (the rule fired).
  p = g[0] - g[1]
  cos_0 = g[0] @ p / (np.linalg.norm(g[0]) * np.linalg.norm(p))
  cos_1 = g[1] @ p / (np.linalg.norm(g[1]) * np.linalg.norm(p))
  delta = np.linalg.norm(g[0] * cos_0 - g[1] * cos_1)
  assert delta > 0.1 * min(np.linalg.norm(g[0]), np.linalg.norm(g[1]))
