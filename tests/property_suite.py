"""The exactness and property tests, built for a family of methods by
``make_tests(keys)`` and instantiated by ``tests/test_properties.py`` (the
QP/projection family) and ``tests/test_properties_closed_form.py`` (the
closed-form and bargaining family).

Each module runs its methods on every matrix of the sampler suite
(``matrix_samplers.suite``: controlled stationarity, rank deficiency,
duplicated and zero rows, scales 1e-10..1e15), in float32 and in float64
(inside ``jax.enable_x64``), all methods of the family in one compiled call
per shape and dtype (``exactness_harness.run_library``, cached).

Properties, as the methods' papers prove them:

- Exact values (``test_matches_reference``): the update against the
  independent float64 reference of ``reference_solvers`` solved on the
  matrix as rounded to the dtype.
- KKT conditions of every QP from the coefficients the aggregator returns
  (the state's ``weights``): MGDA's simplex QP, DualProj's and each of
  UPGrad's projections onto the dual cone, CAGrad's dual.
- Non-conflicting (``J d ≥ 0``): UPGrad, DualProj (Quinton & Rey 2024),
  MGDA (Désidéri 2012), CAGrad with ``c ≥ 1`` (0 is in the ball, so the
  worst improvement is ≥ 0), Nash-MTL (``K̃α = 1/α > 0``), FairGrad
  (``Kw = w^(-1/α) > 0``), ConFIG when the rows are linearly independent.
- Permutation invariance ``d(PJ) = d(J)``: every method here (all are
  deterministic and symmetric in the tasks).
- Homogeneity ``d(σJ) = σ^p d(J)``: ``p = 1`` for linear, MGDA ('none'),
  UPGrad, DualProj, IMTL-G, Aligned-MTL, ConFIG, CAGrad, Nash-MTL without
  clipping; ``p = 0`` for MGDA 'l2'; ``p = (1-α)/(1+α)`` for FairGrad. The
  scales are the powers of two nearest to 1e-10, 1e3, 1e5, 1e10, 1e15, so
  the scaled inputs are exact in both dtypes.
- Linear under scaling (TorchJD's property: ``c -> A(diag(c) J)`` linear on
  ``c > 0``): linear scalarization, UPGrad (``π_C(c_i g_i) = c_i π_C(g_i)``,
  the cone does not change), ConFIG (the unit rows do not change).
- Stationarity: MGDA's update is 0 iff ``J`` is weakly stationary (0 in the
  convex hull); UPGrad's and DualProj's iff ``J`` is strongly stationary;
  CAGrad with ``c ≥ 1`` is 0 on strongly stationary matrices (the optimum
  closest to ``g0``) and non-zero on non-weakly-stationary ones; CAGrad with
  ``c < 1`` is non-zero unless ``g0 = 0``; Nash-MTL and FairGrad are
  non-zero where defined.
- Every method is finite and never skips a step on these matrices (zero
  matrix and zero rows included; Nash-MTL and FairGrad may skip where no
  solution exists), and records float64 coefficients in float64 mode.
- Random matrices (hypothesis): exactness, permutation invariance and
  non-conflict on matrices drawn from the samplers with fresh seeds.

Tolerances (``exactness_harness``): the base values 1e-5 (float32) and 1e-9
(float64; 1e-10 for the invariances), or 10x the Gramian floor where that
is larger; the KKT residuals 1e-4 (float32: the coefficients come from a
float32 Gramian) and 1e-9 (float64). Cases where a method is undefined
(Nash-MTL, FairGrad at stationary points), at a truncation threshold, or
ill-posed in the dtype (floor > 1e-2) are excluded; every test asserts that
it compared at least one case.

Profiles: ``HYPOTHESIS_PROFILE=thorough`` runs the thorough suite (every
shape, three seeds, every kind at every scale) and 200 random matrices per
test and dtype instead of 10.
"""

from __future__ import annotations

from typing import Callable

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

import exactness_harness as H
import matrix_samplers as ms
import reference_solvers as rs

DTYPES = [pytest.param(np.float32, id='f32'), pytest.param(np.float64,
                                                            id='f64')]
THOROUGH = ms.profile() == 'thorough'
# Default: 10 derandomized examples, no shrinking (a failing draw is
# reported as drawn: shrinking re-runs the library many times). Thorough:
# 200 random examples, shrunk.
SETTINGS = hypothesis.settings(
    max_examples=200 if THOROUGH else 10, deadline=None,
    derandomize=not THOROUGH, database=None, report_multiple_bugs=False,
    phases=(tuple(hypothesis.Phase) if THOROUGH else
            (hypothesis.Phase.explicit, hypothesis.Phase.generate)),
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
KKT_TOL = {np.float32: 1e-4, np.float64: 1e-9}
SIGMAS = tuple(H.power_of_two(s) for s in ms.SCALES)


class Checker:
  """The checks for one family of methods (``keys``): every library call
  runs the whole family at once."""

  def __init__(self, keys: tuple[str, ...]):
    self.keys = tuple(keys)

  def run(self, matrix) -> dict[str, H.Output]:
    return H.run_library(matrix, self.keys)

  # -- helpers ---------------------------------------------------------------

  @staticmethod
  def reference_of(key, case, matrix):
    """``(d_ref, denominator)``, or None where there is no exact value
    (undefined, truncation threshold, no certified reference) or the case
    is ill-posed for the method in this dtype."""
    if H.applies(key, case, matrix) is not None or H.ill_posed(key, matrix):
      return None
    d_ref = H.reference(key, matrix)
    return d_ref, H.denominator(key, matrix, d_ref)

  @staticmethod
  def record(failures, prop, key, case, matrix, error, what=''):
    verdict = H.judge(prop, key, matrix, error)
    if not verdict.ok:
      failures.append((error, f'{case.name}: {what}{error:.2e} > '
                              f'{verdict.tolerance:.1e} '
                              f'(floor {verdict.floor})'))

  @staticmethod
  def finish(failures, compared):
    assert compared > 0, 'no case compared'
    assert not failures, H.format_failures(failures)

  # -- exact values ------------------------------------------------------------

  def exact(self, key, case, dtype, failures) -> bool:
    matrix = case.as_dtype(dtype)
    if H.applies(key, case, matrix) is not None:
      return False
    out = self.run(matrix)[key]
    if out.error is not None:
      failures.append((np.inf, f'{case.name}: raised {out.error}'))
      return True
    err = H.relative_error(key, matrix, out.direction, H.reference(key, matrix))
    verdict = H.judge('exact', key, matrix, err)
    if verdict.status == 'ill-posed':
      return False
    if not verdict.ok:
      failures.append((err, f'{case.name}: error {err:.2e} > '
                            f'{verdict.tolerance:.1e} (floor {verdict.floor})'))
    return True

  def matches_reference(self, key, dtype):
    failures, compared = [], 0
    for case in H.cases():
      compared += self.exact(key, case, dtype, failures)
    self.finish(failures, compared)

  # -- invariances -------------------------------------------------------------

  @staticmethod
  def difference(a, b, denom) -> float:
    diff = float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
    if denom == 0:
      return 0.0 if diff == 0 else float('inf')
    return diff / denom

  def permutation(self, key, case, dtype, failures) -> bool:
    matrix = case.as_dtype(dtype)
    t = matrix.shape[0]
    ref = self.reference_of(key, case, matrix) if t > 1 else None
    if ref is None:
      return False
    order = H.permutation_of(t, case.seed)
    d = self.run(matrix)[key].direction
    d_perm = self.run(matrix[order])[key].direction
    self.record(failures, 'permutation', key, case, matrix,
                self.difference(d_perm, d, ref[1]),
                f'order {order.tolist()}: ')
    return True

  def permutation_invariant(self, key, dtype):
    failures, compared = [], 0
    for case in H.cases():
      compared += self.permutation(key, case, dtype, failures)
    self.finish(failures, compared)

  def homogeneous(self, key, dtype):
    degree = H.METHODS[key].degree
    failures, compared = [], 0
    for case in H.cases():
      if case.scale != 1.0:
        continue
      matrix = case.as_dtype(dtype)
      ref = self.reference_of(key, case, matrix)
      if ref is None:
        continue
      d = self.run(matrix)[key].direction
      for sigma in SIGMAS:
        scaled = (case.matrix * sigma).astype(dtype)
        assert np.array_equal(scaled, matrix * np.asarray(sigma, dtype))
        d_sigma = self.run(scaled)[key].direction
        compared += 1
        self.record(failures, 'homogeneity', key, case, matrix,
                    self.difference(d_sigma / sigma**degree, d, ref[1]),
                    f'σ=2^{np.log2(sigma):.0f}: ')
    self.finish(failures, compared)

  def linear_under_row_scaling(self, key, dtype):
    failures, compared = [], 0
    for case in H.cases():
      if case.scale != 1.0:
        continue
      rng = np.random.default_rng([case.seed, *case.shape])
      a, b = rng.uniform(0.5, 2.0, (2, case.shape[0]))
      mats = [(w[:, None] * case.matrix).astype(dtype) for w in (a, b, a + b)]
      ref = self.reference_of(key, case, mats[2])
      if ref is None:
        continue
      da, db, dab = (self.run(m)[key].direction for m in mats)
      compared += 1
      self.record(failures, 'row_linear', key, case, mats[2],
                  self.difference(da + db, dab, ref[1]))
    self.finish(failures, compared)

  # -- conflicts and stationarity ------------------------------------------

  @staticmethod
  def conflict(matrix, d, denom) -> float:
    """``max_i -<g_i, d>/‖g_i‖`` relative to ``denom`` (0 if none)."""
    j = np.asarray(matrix, np.float64)
    norms = np.linalg.norm(j, axis=1)
    present = norms > 0
    if denom == 0 or not present.any():
      return 0.0
    return max(0.0, float(np.max(-(j[present] @ d) / norms[present])) / denom)

  @staticmethod
  def claims_no_conflict(key, matrix) -> bool:
    claim = H.METHODS[key].non_conflicting
    if claim != 'full_rank':
      return claim == 'always'
    j = np.asarray(matrix, np.float64)
    norms = np.linalg.norm(j, axis=1)
    if (norms == 0).any() or j.shape[0] > j.shape[1]:
      return False
    s = np.linalg.svd(j / norms[:, None], compute_uv=False)
    return s.min() > 1e3 * np.sqrt(H.eps_of(matrix)) * s.max()

  def no_conflict(self, key, case, dtype, failures) -> bool:
    matrix = case.as_dtype(dtype)
    if not self.claims_no_conflict(key, matrix):
      return False
    ref = self.reference_of(key, case, matrix)
    if ref is None:
      return False
    d = self.run(matrix)[key].direction
    self.record(failures, 'non_conflict', key, case, matrix,
                self.conflict(matrix, d, ref[1]), 'conflict ')
    return True

  def non_conflicting(self, key, dtype):
    failures, compared = [], 0
    for case in H.cases():
      compared += self.no_conflict(key, case, dtype, failures)
    self.finish(failures, compared)

  def stationarity(self, key, dtype):
    method = H.METHODS[key]
    failures, compared = [], 0
    threshold = 100 * H.base_tolerance('zero', dtype)
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      ref = self.reference_of(key, case, matrix)
      scale = H.natural_scale(matrix, method.degree)
      if ref is None or scale == 0:
        continue
      d = self.run(matrix)[key].direction
      if method.zero_when and H.stationary_at_least(case.stationarity,
                                                    method.zero_when):
        compared += 1
        self.record(failures, 'zero', key, case, matrix,
                    float(np.linalg.norm(d)) / scale, '‖d‖/‖J‖ = ')
        continue
      if method.nonzero_unless == 'g0':
        exempt = not np.any(case.matrix.mean(axis=0))
      else:
        exempt = H.stationary_at_least(case.stationarity,
                                       method.nonzero_unless)
      if exempt or np.linalg.norm(ref[0]) <= 100 * threshold * scale:
        continue   # no claim, or the exact answer itself is nearly zero
      compared += 1
      if not np.linalg.norm(d) > threshold * scale:
        failures.append((0.0, f'{case.name}: ‖d‖ = {np.linalg.norm(d):.2e} '
                              f'(reference {np.linalg.norm(ref[0]):.2e})'))
    self.finish(failures, compared)

  def finite_and_never_skipped(self, key, dtype):
    """Finite everywhere; the NaN guard never fires, except for the
    bargaining methods (Nash-MTL, FairGrad) at Pareto-stationary matrices
    without zero rows, where no solution exists (zero rows are documented:
    capped weights)."""
    method = H.METHODS[key]
    failures = []
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      out = self.run(matrix)[key]
      no_solution = (method.defined == 'not_weak' and
                     case.stationarity != 'none' and
                     bool((np.linalg.norm(matrix, axis=1) > 0).all()))
      if out.error is not None:
        failures.append((np.inf, f'{case.name}: raised {out.error}'))
      elif not np.all(np.isfinite(out.direction)):
        failures.append((np.inf, f'{case.name}: not finite'))
      elif out.skipped and not no_solution:
        failures.append((np.inf, f'{case.name}: step skipped (NaN/Inf '
                                 'coefficients)'))
    assert not failures, H.format_failures(failures)

  def float64_weights(self):
    case = ms.make_case('none', (3, 3), 0)
    outs = self.run(case.as_dtype(np.float64))
    bad = [f'{k}: {o.weights_dtype}' for k, o in outs.items()
           if o.weights_dtype != 'float64']
    assert not bad, 'weights not recorded in float64: ' + ', '.join(bad)

  # -- KKT conditions from the returned coefficients -------------------------

  @staticmethod
  def assert_kkt(violations, dtype, what):
    tol = KKT_TOL[dtype]
    assert violations, 'no case compared'
    bad = [(v, f'{name}: {what} KKT violation {v:.2e} > {tol:.0e}')
           for name, v in violations if not v <= tol]
    assert not bad, H.format_failures(bad)

  def mgda_kkt(self, key, dtype):
    """α ≥ 0, Σα = 1, (Kα)_i ≥ αᵀKα with equality on the support, for the
    hull the method minimises over (the unit rows for 'l2')."""
    violations = []
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      j = matrix.astype(np.float64)
      weights = self.run(matrix)[key].weights
      norms = np.linalg.norm(j, axis=1)
      if key == 'mgda_l2':
        if (norms == 0).any():
          continue   # a zero row's α is not recoverable from α/‖g‖ = 0
        hull, alpha = j / norms[:, None], weights * norms
      else:
        hull, alpha = j, weights
      if not np.any(hull):
        continue
      violations.append((case.name, rs.min_norm_kkt_violation(
          hull @ hull.T, alpha)))
    self.assert_kkt(violations, dtype, key)

  def dualproj_kkt(self, dtype):
    """c = 1 + v: v ≥ 0, J d ≥ 0, v_t (J d)_t = 0 for d = cᵀJ."""
    violations = []
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      j = matrix.astype(np.float64)
      c = self.run(matrix)['dualproj'].weights
      if not np.any(j.sum(axis=0)):
        continue
      violations.append((case.name, rs.dual_cone_kkt_violation(
          j, j.sum(axis=0), c @ j, c - 1)))
    self.assert_kkt(violations, dtype, 'dualproj')

  def upgrad_kkt(self, dtype):
    """Each of UPGrad's T projections (as the aggregator computes them)
    satisfies the projection's KKT conditions, and their sum equals the
    recorded coefficients."""
    tol = KKT_TOL[dtype]
    failures, compared = [], 0
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      j = matrix.astype(np.float64)
      out = self.run(matrix)['upgrad']
      coefficients, eye = out.projections, np.eye(j.shape[0])
      worst = 0.0
      for i in range(j.shape[0]):
        if np.any(j[i]):
          worst = max(worst, rs.dual_cone_kkt_violation(
              j, j[i], coefficients[:, i] @ j, coefficients[:, i] - eye[i]))
      gap = np.linalg.norm((coefficients.sum(axis=1) - out.weights) @ j)
      gap /= max(np.linalg.norm(j), 1e-300)
      compared += 1
      if not worst <= tol:
        failures.append((worst, f'{case.name}: upgrad KKT violation '
                                f'{worst:.2e} > {tol:.0e}'))
      if not gap <= tol:
        failures.append((gap, f'{case.name}: the sum of the projections '
                              f'differs from the weights by {gap:.1e}'))
    self.finish(failures, compared)

  def cagrad_kkt(self, key, dtype):
    """λ = coef - 1/T ≥ 0, d in the ball, zero duality gap (or, when the
    optimal level is 0, the projection conditions of the closest optimum);
    ill-posed cases excluded."""
    params = H.METHODS[key].params
    factor = {0: 1.0, 1: 1 + params['c']**2, 2: 1 + params['c']}[
        params['rescale']]
    violations = []
    for case in H.cases():
      matrix = case.as_dtype(dtype)
      if H.ill_posed(key, matrix):
        continue
      coefficients = self.run(matrix)[key].weights * factor
      violation = rs.cagrad_kkt_violation(
          matrix.astype(np.float64), params['c'], coefficients)
      # A Gramian method cannot beat the conditioning of K = J Jᵀ: past the
      # base tolerance, allow 10x the error an exact solve makes on K
      # rounded at the dtype's level (as the exactness checks do).
      if violation > KKT_TOL[dtype] and violation <= 10 * H.gramian_floor(
          key, matrix):
        violation = 0.0
      violations.append((case.name, violation))
    self.assert_kkt(violations, dtype, key)

  # -- random matrices -------------------------------------------------------

  def random_matrix(self, dtype, kind, shape, seed, scale):
    """Exactness, permutation invariance and non-conflict of every method
    of the family on one random matrix of the samplers' kinds."""
    hypothesis.assume(ms.applicable(kind, *shape))
    case = ms.make_case(kind, shape, seed, scale)
    failures = []
    for key in self.keys:
      before = len(failures)
      self.exact(key, case, dtype, failures)
      self.permutation(key, case, dtype, failures)
      self.no_conflict(key, case, dtype, failures)
      failures[before:] = [(e, f'{key} {text}')
                           for e, text in failures[before:]]
    assert not failures, H.format_failures(failures)


def make_tests(keys) -> dict[str, Callable]:
  """The pytest test functions for the methods ``keys`` (only those with
  at least one applicable method), to put in a test module's globals."""
  checker = Checker(keys)
  methods = {k: H.METHODS[k] for k in keys}
  tests = {}

  def add(name, check, selected, doc):
    if not selected:
      return

    @pytest.mark.parametrize('dtype', DTYPES)
    @pytest.mark.parametrize('key', selected)
    def test(key, dtype):
      check(key, dtype)

    test.__name__ = name
    test.__doc__ = doc
    tests[name] = test

  add('test_matches_reference', checker.matches_reference, list(keys),
      'The update equals the float64 reference.')
  add('test_non_conflicting', checker.non_conflicting,
      [k for k, m in methods.items() if m.non_conflicting != 'never claimed'],
      'J d ≥ 0 where the paper proves it.')
  add('test_permutation_invariant', checker.permutation_invariant,
      list(keys), 'd(PJ) = d(J).')
  add('test_homogeneous', checker.homogeneous,
      [k for k, m in methods.items() if m.degree is not None],
      'd(σJ) = σ^p d(J) for σ = 2^-33 ... 2^50 (exact inputs).')
  add('test_linear_under_row_scaling', checker.linear_under_row_scaling,
      [k for k, m in methods.items() if m.row_linear],
      'A(diag(a + b) J) = A(diag(a) J) + A(diag(b) J) for a, b > 0.')
  add('test_stationarity', checker.stationarity,
      [k for k, m in methods.items() if m.zero_when or m.nonzero_unless],
      'Zero exactly where the paper says, non-zero elsewhere.')
  add('test_finite_and_never_skipped', checker.finite_and_never_skipped,
      list(keys), Checker.finite_and_never_skipped.__doc__)
  add('test_mgda_coefficients_solve_the_simplex_qp', checker.mgda_kkt,
      [k for k in keys if k.startswith('mgda')], Checker.mgda_kkt.__doc__)
  add('test_cagrad_coefficients_solve_the_dual', checker.cagrad_kkt,
      [k for k in keys if k.startswith('cagrad')], Checker.cagrad_kkt.__doc__)

  if 'dualproj' in keys:
    @pytest.mark.parametrize('dtype', DTYPES)
    def test_dualproj_coefficients_solve_the_projection(dtype):
      checker.dualproj_kkt(dtype)
    test_dualproj_coefficients_solve_the_projection.__doc__ = (
        Checker.dualproj_kkt.__doc__)
    tests['test_dualproj_coefficients_solve_the_projection'] = (
        test_dualproj_coefficients_solve_the_projection)

  if 'upgrad' in keys:
    @pytest.mark.parametrize('dtype', DTYPES)
    def test_upgrad_projections_solve_the_projection(dtype):
      checker.upgrad_kkt(dtype)
    test_upgrad_projections_solve_the_projection.__doc__ = (
        Checker.upgrad_kkt.__doc__)
    tests['test_upgrad_projections_solve_the_projection'] = (
        test_upgrad_projections_solve_the_projection)

  def test_float64_weights_are_recorded_in_float64():
    """In float64 mode the state's coefficients keep float64 precision (the
    KKT checks read them)."""
    checker.float64_weights()
  tests['test_float64_weights_are_recorded_in_float64'] = (
      test_float64_weights_are_recorded_in_float64)

  @pytest.mark.parametrize('dtype', DTYPES)
  @SETTINGS
  @hypothesis.given(kind=st.sampled_from(ms.KINDS),
                    shape=st.sampled_from(ms.shapes()),
                    seed=st.integers(100, 10**6),
                    scale=st.sampled_from((1.0,) + ms.SCALES))
  def test_random_matrices(dtype, kind, shape, seed, scale):
    checker.random_matrix(dtype, kind, shape, seed, scale)
  test_random_matrices.__doc__ = Checker.random_matrix.__doc__
  tests['test_random_matrices'] = test_random_matrices
  return tests
