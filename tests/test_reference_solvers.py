"""Self-tests of the float64 references (``reference_solvers``) and of the
matrix samplers (``matrix_samplers``): each reference is checked against a
second, independent characterisation of its answer (enumeration of supports
or active sets, a generic solver on the dual, a closed form, the defining
geometric property). Pure numpy/scipy, no JAX.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import linalg
from scipy import optimize

import matrix_samplers as ms
import reference_solvers as rs

# Tight comparisons use the well-conditioned kinds: on 'ill' (singular values
# down to 1e-6) every float64 answer is only determined to about 1e-10.
SMALL = [c for c in ms.base_cases(shapes=((2, 2), (2, 5), (3, 3), (5, 7)))
         if c.kind != 'ill']
FULL_RANK = [c for c in ms.base_cases() if c.shape[0] <= c.shape[1] and
             c.kind in ('none', 'generic', 'near_weak')]


def rel(a, b, scale):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b))) / scale


def scale_of(j):
  return max(float(np.linalg.norm(j)), 1e-300)


################################################################################
# Samplers.


def test_constructed_stationarity_labels_match_linear_programming():
  cases = [c for c in ms.base_cases() if c.kind in ms.CONSTRUCTED]
  assert cases
  wrong = [(c.name, c.stationarity, ms.classify_stationarity(c.matrix))
           for c in cases if ms.classify_stationarity(c.matrix) !=
           c.stationarity]
  assert not wrong


def test_weak_construction_has_both_certificates():
  """``v ≥ 0`` with a zero, ``vᵀJ = 0``, and ``u`` with ``J u ≥ 0``,
  ``J u ≠ 0`` (Stiemke: then no positive ``v`` exists)."""
  for seed in range(5):
    rng = np.random.default_rng(seed)
    j, v, u = ms.weakly_not_strongly_stationary(rng, 6, 4)
    assert (v >= 0).all() and (v == 0).any()
    assert np.linalg.norm(v @ j) <= 1e-13 * np.linalg.norm(v)
    ju = j @ u
    assert (ju >= -1e-14).all() and ju.max() > 0.05


def test_suite_covers_every_kind_shape_and_scale():
  suite = ms.suite('default')
  assert {c.kind for c in suite} == set(ms.KINDS)
  assert {c.shape for c in suite} == set(ms.DEFAULT_SHAPES)
  assert {c.shape for c in ms.suite('thorough')} == set(ms.SHAPES)
  assert {c.scale for c in suite} >= set(ms.SCALES) | {1.0}
  assert {c.stationarity for c in suite} == {'strong', 'weak', 'none'}


################################################################################
# MGDA.


@pytest.mark.parametrize('case', SMALL, ids=lambda c: c.name)
def test_mgda_matches_support_enumeration(case):
  j = case.matrix
  d, alpha = rs.mgda(j)
  assert np.isclose(alpha.sum(), 1) and (alpha >= 0).all()
  assert rel(d, rs.min_norm_by_enumeration(j, feasibility_tol=1e-10)[1],
             scale_of(j)) <= 1e-10


def test_mgda_is_zero_iff_weakly_stationary():
  for case in ms.base_cases():
    norm = np.linalg.norm(rs.mgda(case.matrix)[0]) / max(
        np.linalg.norm(case.matrix), 1e-300)
    if case.stationarity == 'none':
      assert norm > 1e-9, case
    else:
      assert norm < 1e-12, case


def test_mgda_l2_is_mgda_of_unit_rows():
  for case in SMALL:
    j = case.matrix
    norms = np.linalg.norm(j, axis=1)
    if (norms == 0).any():
      continue
    d, c = rs.mgda(j, 'l2')
    assert rel(d, rs.mgda(j / norms[:, None])[0], 1.0) <= 1e-10
    assert rel(c @ j, d, 1.0) <= 1e-12


################################################################################
# Dual cone.


def projection_by_enumeration(j, x):
  """``π_C(x)``: for each active set A, the point ``x + J_Aᵀv`` with
  ``J_A d = 0``; among those with ``v ≥ 0`` and ``J d ≥ 0``, the closest."""
  t = j.shape[0]
  k = j @ j.T
  best = x if (j @ x >= -1e-12 * np.linalg.norm(x)).all() else None
  for r in range(1, t + 1):
    for active in itertools.combinations(range(t), r):
      a = list(active)
      v = np.linalg.lstsq(k[np.ix_(a, a)], -(j[a] @ x), rcond=None)[0]
      d = x + j[a].T @ v
      if v.min() < -1e-10 or (j @ d).min() < -1e-10 * scale_of(j) * (
          np.linalg.norm(x) + 1):
        continue
      if best is None or np.linalg.norm(d - x) < np.linalg.norm(best - x):
        best = d
  return best


@pytest.mark.parametrize('case', SMALL, ids=lambda c: c.name)
def test_dual_cone_projection_matches_active_set_enumeration(case):
  j = case.matrix
  rng = np.random.default_rng(0)
  for x in (j.sum(axis=0), rng.standard_normal(j.shape[1]), -j[0]):
    d, v = rs.project_to_dual_cone(j, x)
    assert (v >= 0).all()
    assert rel(d, projection_by_enumeration(j, x),
               max(np.linalg.norm(x), 1e-300)) <= 1e-9


def test_upgrad_and_dualproj_are_zero_iff_strongly_stationary():
  for case in ms.base_cases():
    scale = max(np.linalg.norm(case.matrix), 1e-300)
    for fn in (rs.upgrad, rs.dualproj):
      norm = np.linalg.norm(fn(case.matrix)[0]) / scale
      if case.stationarity == 'strong':
        assert norm < 1e-12, (fn.__name__, case)
      else:
        assert norm > 1e-9, (fn.__name__, case)


################################################################################
# CAGrad.


def cagrad_by_slsqp(j, c):
  """The dual ``min_{w∈Δ} wᵀb + r‖Jᵀw‖`` by SLSQP (multi-start), then
  ``d = g0 + r Jᵀw/‖Jᵀw‖``."""
  t = j.shape[0]
  g0 = j.mean(axis=0)
  radius = c * np.linalg.norm(g0)
  k = j @ j.T
  fun = lambda w: rs.cagrad_dual_value(k, w, radius)
  best = None
  for start in [np.full(t, 1 / t)] + list(np.eye(t)):
    res = optimize.minimize(
        fun, 0.9 * start + 0.1 / t, method='SLSQP', bounds=[(0, 1)] * t,
        constraints=[{'type': 'eq', 'fun': lambda w: w.sum() - 1}],
        options={'ftol': 1e-15, 'maxiter': 1000})
    if best is None or res.fun < best.fun:
      best = res
  gw = best.x @ j
  return g0 + radius * gw / np.linalg.norm(gw), best.fun


@pytest.mark.parametrize('c', [0.4, 1.5])
def test_cagrad_matches_a_generic_solver_of_the_dual(c):
  cases = [x for x in SMALL if x.kind in ('none', 'generic', 'rank1_pos')]
  assert cases
  for case in cases:
    j = case.matrix
    d, info = rs.cagrad(j, c, 0)
    d_slsqp, dual_value = cagrad_by_slsqp(j, c)
    # strong duality: the primal value min_i <g_i, d> equals the dual's
    assert abs((j @ d).min() - dual_value) <= 1e-7 * scale_of(j)**2, case
    assert rel(d, d_slsqp, np.linalg.norm(d)) <= 1e-5, case


def test_cagrad_rescaling_and_zero_radius():
  j = ms.make_case('generic', (3, 5), 0).matrix
  d0, _ = rs.cagrad(j, 0.0, 0)
  assert rel(d0, j.mean(axis=0), 1.0) <= 1e-12
  d, _ = rs.cagrad(j, 0.5, 0)
  assert rel(rs.cagrad(j, 0.5, 1)[0], d / 1.25, 1.0) <= 1e-14
  assert rel(rs.cagrad(j, 0.5, 2)[0], d / 1.5, 1.0) <= 1e-14


def test_cagrad_is_the_closest_optimum_on_stationary_matrices():
  """``c ≥ 1`` and strongly stationary rows: ``t* = 0``, ``d = 0`` (the
  projection of ``g0`` onto ``null(J)``); weakly stationary: ``d`` is the
  projection of ``g0`` onto ``{J d ≥ 0}``."""
  for case in ms.base_cases(shapes=((3, 3), (5, 7), (9, 11))):
    if case.stationarity == 'none' or not np.any(case.matrix.mean(axis=0)):
      continue
    j = case.matrix
    d, info = rs.cagrad(j, 1.5, 0)
    assert abs(info['level']) <= 1e-12, case
    expected = rs.project_to_dual_cone(j, j.mean(axis=0))[0]
    assert rel(d, expected, scale_of(j)) <= 1e-10, case


################################################################################
# Closed forms.


@pytest.mark.parametrize('case', FULL_RANK, ids=lambda c: c.name)
def test_imtl_g_has_equal_projections_on_unit_gradients(case):
  j = case.matrix
  d, c = rs.imtl_g(j)
  projections = j @ d / np.linalg.norm(j, axis=1)
  assert np.isclose(c.sum(), 1, atol=1e-12)
  assert np.ptp(projections) <= 1e-9 * np.abs(projections).max()


@pytest.mark.parametrize('case', FULL_RANK, ids=lambda c: c.name)
@pytest.mark.parametrize('mode', ['min', 'median', 'rmse'])
def test_aligned_mtl_is_the_scaled_polar_factor(case, mode):
  """For full row rank, ``U Vᵀ`` is the orthogonal polar factor of ``Jᵀ``."""
  j = case.matrix
  q, _ = linalg.polar(j.T)   # Jᵀ = Q H, Q with orthonormal columns
  s = np.sort(np.linalg.svd(j, compute_uv=False))
  sigma = {'min': s[0], 'median': s[(s.size - 1) // 2],
           'rmse': np.sqrt(np.mean(s**2))}[mode]
  expected = sigma * q @ np.ones(j.shape[0])
  assert rel(rs.aligned_mtl(j, None, mode)[0], expected,
             np.linalg.norm(expected)) <= 1e-9


def test_aligned_mtl_median_conventions():
  """Even count of kept values: 'lower' takes the lower middle value,
  'mean' the root mean square of the two middle ones."""
  j = np.diag([4.0, 3.0, 2.0, 1.0])
  lower, _ = rs.aligned_mtl(j, None, 'median', median='lower')
  mean, _ = rs.aligned_mtl(j, None, 'median', median='mean')
  assert np.allclose(lower, 2.0 * np.ones(4))
  assert np.allclose(mean, np.sqrt(6.5) * np.ones(4))


@pytest.mark.parametrize('case', FULL_RANK, ids=lambda c: c.name)
def test_config_has_equal_cosines_and_the_projection_length(case):
  j = case.matrix
  d, _ = rs.config(j)
  cosines = j @ d / (np.linalg.norm(j, axis=1) * np.linalg.norm(d))
  assert np.ptp(cosines) <= 1e-9 and cosines.min() > 0
  e = d / np.linalg.norm(d)
  assert np.isclose(np.linalg.norm(d), np.sum(j @ e), rtol=1e-12)


def test_config_of_two_opposite_gradients_is_zero():
  g = np.array([1.0, 2.0, -0.5])
  assert not np.any(rs.config(np.stack([g, -3 * g]))[0])


################################################################################
# Nash-MTL and FairGrad.


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0])
def test_power_balance_on_orthogonal_gradients_is_closed_form(alpha):
  """``K = diag(n²)``: ``n_i² w_i = w_i^(-1/α)``, ``w_i = n_i^(-2α/(1+α))``."""
  n = np.array([0.5, 1.0, 3.0])
  w = rs.solve_power_balance(np.diag(n**2), alpha)
  assert np.allclose(w, n**(-2 * alpha / (1 + alpha)), rtol=1e-13)


def test_nash_mtl_is_fairgrad_one_on_the_frobenius_normalised_gramian():
  for case in [c for c in SMALL if c.stationarity == 'none']:
    j = case.matrix
    root = np.sqrt(np.linalg.norm(j @ j.T))
    assert rel(rs.nash_mtl(j)[0], root * rs.fairgrad(j / root, 1.0)[0],
               np.linalg.norm(j)) <= 1e-10


def test_power_balance_has_no_solution_at_stationary_points():
  """Exactly stationary rows (exact in binary) or a zero row: no ``w > 0``
  solves ``K w = w^(-1/α)``."""
  for j in (np.array([[1.0, 2.0], [-2.0, -4.0]]),
            np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]),
            np.array([[0.0, 0.0], [1.0, 1.0]])):
    with pytest.raises(rs.ReferenceFailure):
      rs.fairgrad(j, 1.0)
    with pytest.raises(rs.ReferenceFailure):
      rs.nash_mtl(j)


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0])
def test_fairgrad_scales_with_degree(alpha):
  j = ms.make_case('none', (3, 5), 0).matrix
  p = (1 - alpha) / (1 + alpha)
  d = rs.fairgrad(j, alpha)[0]
  for sigma in (1e-10, 1e15):
    assert rel(rs.fairgrad(sigma * j, alpha)[0] / sigma**p, d,
               np.linalg.norm(d)) <= 1e-12


################################################################################
# Coefficients.


REFERENCES = {
    'linear': rs.linear,
    'mgda': rs.mgda,
    'mgda_l2': lambda j: rs.mgda(j, 'l2'),
    'upgrad': rs.upgrad,
    'dualproj': rs.dualproj,
    'cagrad': lambda j: (lambda r: (r[0], r[1]['coefficients']))(
        rs.cagrad(j, 0.4, 1)),
    'imtl_g': rs.imtl_g,
    'aligned': lambda j: rs.aligned_mtl(j, None, 'median'),
    'config': rs.config,
    'nash_mtl': lambda j: rs.nash_mtl(j, max_norm=1.0),
    'fairgrad': lambda j: rs.fairgrad(j, 2.0),
}


@pytest.mark.parametrize('name', REFERENCES)
def test_coefficients_reproduce_the_update(name):
  """``d = cᵀJ`` for the coefficients every reference returns (used by the
  Gramian floor of the tests)."""
  compared = 0
  for case in ms.base_cases():
    if case.kind == 'ill':
      continue
    try:
      d, c = REFERENCES[name](case.matrix)
    except rs.ReferenceFailure:
      continue
    compared += 1
    size = np.linalg.norm(d) + np.linalg.norm(case.matrix)
    assert rel(c @ case.matrix, d, max(size, 1e-300)) <= 1e-10, case
  assert compared
