"""Shared machinery of the exactness and property suites: the methods under
test with their references and the properties their papers prove, the
library runner, and the error measures and tolerances.

Used by ``tests/property_suite.py`` (instantiated by
``tests/test_properties.py`` and ``tests/test_properties_closed_form.py``)
and by ``benchmarks/exactness.py``.

Error measure (``relative_error``): ``‖d - d_ref‖ / ‖d_ref‖``, or relative
to the natural scale ``‖J‖_F^p`` (``p`` the method's homogeneity degree)
when the reference is zero: ``‖d_ref‖ ≤ 100 eps ‖J‖_F^p`` with ``eps`` of
the dtype under test (rounding a stationary matrix to float32 leaves an
exact answer of size ``~eps ‖J‖``, which is zero for this purpose).

Tolerances (``judge``): an error passes when it is below the base tolerance
of its property and dtype (``BASE``: 1e-5 float32; 1e-9 float64, 1e-10 for
the invariances), or below ``FLOOR_FACTOR = 10`` times the *Gramian floor*
(``gramian_floor``): the error of an exact float64 solve given a Gramian
perturbed at the dtype's rounding level (``K + T eps ξ_ij ‖g_i‖ ‖g_j‖``,
``|ξ| ≤ 1``: the backward error of forming ``K`` and decomposing it in that
dtype), plus the rounding of the final weighted sum
(``eps Σ_t |c_t| ‖g_t‖``). That is what a backward-stable method working
from the Gramian in that dtype achieves: ``O(eps κ²)`` for the
pseudo-inverse methods, ``O(√eps)`` for the QPs at a stationary point
(``‖d‖²`` is only known to ``eps ‖J‖²``). It is computed only when the base
tolerance fails (it costs a few reference solves). Permutation invariance
compares two computed answers and is held to twice these. A case whose floor
exceeds ``ILL_POSED = 1e-2`` is ill-posed in that dtype (e.g. CAGrad at a
weakly stationary matrix rounded to float32: the optimum jumps from the
interior of the ball to its sphere) and is excluded, not failed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import matrix_samplers as ms
import mtl_optax as mtl
import reference_solvers as rs

FLOOR_FACTOR = 10.0
FLOOR_SAMPLES = 3
ZERO_REFERENCE = 100.0
ILL_POSED = 1e-2


@dataclasses.dataclass(frozen=True)
class Method:
  """A method under test.

  Attributes:
    key: its name in the suites.
    make: ``T -> Aggregator`` (``num_tasks=T`` so that the state records the
      coefficients).
    reference: ``(J float64, eps) -> (d, c)`` (``d = cᵀJ``), raising
      ``rs.ReferenceFailure`` where undefined.
    degree: ``p`` with ``d(σJ) = σ^p d(J)`` (σ > 0); None if not homogeneous.
    truncates: the definition truncates singular values (``s² ≤ s_max² T
      eps``); cases within 10x of that threshold are ambiguous and skipped.
    defined: 'always', or 'not_weak' (defined only when no ``v ≥ 0`` has
      ``vᵀJ = 0``: Nash-MTL, FairGrad).
    non_conflicting: 'always' (``J d ≥ 0``), 'full_rank' (when the rows are
      linearly independent) or 'never claimed'.
    zero_when: ``d = 0`` whenever ``J`` is 'strong'ly / 'weak'ly stationary.
    nonzero_unless: ``d ≠ 0`` unless ``J`` is 'strong'ly / 'weak'ly
      stationary ('g0': unless the mean gradient is zero).
    row_linear: TorchJD's "linear under scaling": ``c -> A(diag(c) J)`` is
      linear on ``c > 0``.
    params: the factory's parameters (for the KKT checks).
  """
  key: str
  make: Callable[[int], Any]
  reference: Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]
  degree: float | None = 1.0
  truncates: bool = False
  defined: str = 'always'
  non_conflicting: str = 'never claimed'
  zero_when: str | None = None
  nonzero_unless: str | None = None
  row_linear: bool = False
  params: dict = dataclasses.field(default_factory=dict)

  def defined_on(self, stationarity: str, matrix: np.ndarray) -> bool:
    if self.defined == 'always':
      return True
    return stationarity == 'none' and bool(
        (np.linalg.norm(np.asarray(matrix, np.float64), axis=1) > 0).all())


def _cagrad_pair(result):
  d, info = result
  return d, info['coefficients']


def _cagrad(c, rescale):
  return Method(
      f'cagrad_c{c:g}_r{rescale}',
      lambda t: mtl.cagrad(c, rescale, num_tasks=t),
      lambda j, eps: _cagrad_pair(rs.cagrad(j, c, rescale)),
      non_conflicting='always' if c >= 1 else 'never claimed',
      zero_when='strong' if c >= 1 else None,
      nonzero_unless='weak' if c >= 1 else 'g0',
      params={'c': c, 'rescale': rescale})


def _fairgrad(alpha):
  return Method(
      f'fairgrad_a{alpha:g}',
      lambda t: mtl.fairgrad(alpha, num_tasks=t),
      lambda j, eps: rs.fairgrad(j, alpha),
      degree=(1 - alpha) / (1 + alpha), defined='not_weak',
      non_conflicting='always', nonzero_unless='weak',
      params={'alpha': alpha})


def _aligned(mode, method='eigh'):
  suffix = '' if method == 'eigh' else '_svd'
  return Method(
      f'aligned_{mode}{suffix}',
      lambda t: mtl.aligned_mtl(scale_mode=mode, method=method, num_tasks=t),
      lambda j, eps: rs.aligned_mtl(j, None, mode, eps),
      truncates=True, params={'scale_mode': mode})


METHODS: dict[str, Method] = {m.key: m for m in (
    Method('linear', lambda t: mtl.linear_scalarization(num_tasks=t),
           lambda j, eps: rs.linear(j), row_linear=True),
    Method('mgda', lambda t: mtl.mgda(num_tasks=t),
           lambda j, eps: rs.mgda(j), non_conflicting='always',
           zero_when='weak', nonzero_unless='weak',
           params={'normalization': 'none'}),
    Method('mgda_l2', lambda t: mtl.mgda('l2', num_tasks=t),
           lambda j, eps: rs.mgda(j, 'l2'), degree=0.0,
           non_conflicting='always', zero_when='weak',
           nonzero_unless='weak', params={'normalization': 'l2'}),
    Method('upgrad', lambda t: mtl.upgrad(num_tasks=t),
           lambda j, eps: rs.upgrad(j), non_conflicting='always',
           zero_when='strong', nonzero_unless='strong', row_linear=True),
    Method('dualproj', lambda t: mtl.dualproj(num_tasks=t),
           lambda j, eps: rs.dualproj(j), non_conflicting='always',
           zero_when='strong', nonzero_unless='strong'),
    _cagrad(0.4, 1),
    _cagrad(0.5, 2),
    _cagrad(1.5, 0),
    Method('imtl_g', lambda t: mtl.imtl_g(num_tasks=t),
           lambda j, eps: rs.imtl_g(j, eps), truncates=True),
    _aligned('min'),
    _aligned('median'),
    _aligned('rmse'),
    _aligned('min', 'svd'),
    Method('conflict_free', lambda t: mtl.conflict_free(num_tasks=t),
           lambda j, eps: rs.config(j, eps), truncates=True,
           non_conflicting='full_rank', row_linear=True),
    Method('nash_mtl', lambda t: mtl.nash_mtl(max_norm=0.0, num_tasks=t),
           lambda j, eps: rs.nash_mtl(j), defined='not_weak',
           non_conflicting='always', nonzero_unless='weak'),
    Method('nash_mtl_clip1', lambda t: mtl.nash_mtl(num_tasks=t),
           lambda j, eps: rs.nash_mtl(j, max_norm=1.0), degree=None,
           defined='not_weak', non_conflicting='always',
           nonzero_unless='weak'),
    _fairgrad(1.0),
    _fairgrad(2.0),
    _fairgrad(0.5),
)}
KEYS = tuple(METHODS)
# The two test modules, one per family (pytest-xdist's --dist loadfile runs
# each module on one worker; each compiles only its family).
QP_KEYS = ('mgda', 'mgda_l2', 'upgrad', 'dualproj', 'cagrad_c0.4_r1',
           'cagrad_c0.5_r2', 'cagrad_c1.5_r0')
CLOSED_FORM_KEYS = tuple(k for k in KEYS if k not in QP_KEYS)


################################################################################
# The library.


@dataclasses.dataclass(frozen=True)
class Output:
  """One method's step: ``direction`` ([P] float64), ``weights`` (the state's
  coefficients as float64, ``weights_dtype`` their stored dtype),
  ``skipped`` (the NaN guard fired), or ``error`` (the exception's text)
  when the call raised. For UPGrad, ``projections`` holds the T projections
  in coefficient form (see ``projection_coefficients``)."""
  direction: np.ndarray | None
  weights: np.ndarray | None
  skipped: bool | None
  error: str | None = None
  weights_dtype: str | None = None
  projections: np.ndarray | None = None


def projection_coefficients(matrix):
  """UPGrad's per-task projections in coefficient form, ``[T, T]`` (column
  ``i``: ``π_C(g_i) = Σ_t C[t, i] g_t``), from the library's public
  ``normalized_gramian`` and ``weightings.project_to_dual_cone``, as the
  aggregator computes them (traceable)."""
  k_hat, _ = mtl.normalized_gramian({'w': matrix})
  eye = jnp.eye(matrix.shape[0], dtype=k_hat.dtype)
  return mtl.weightings.project_to_dual_cone(k_hat, eye)


def _updates(matrix, keys):
  t = matrix.shape[0]
  out = {}
  for key in keys:
    tx = METHODS[key].make(t)
    d, state = tx.update({'w': matrix}, tx.init(None))
    extra = projection_coefficients(matrix) if key == 'upgrad' else None
    out[key] = (d['w'], state.weights, state.last_skipped, extra)
  return out


_updates_jit = jax.jit(_updates, static_argnames='keys')
_LIBRARY_CACHE: dict = {}


def _fingerprint(matrix: np.ndarray):
  return (matrix.dtype.str, matrix.shape, matrix.tobytes())


def _to_output(raw) -> Output:
  d, w, skipped, extra = raw
  return Output(np.asarray(d, np.float64), np.asarray(w, np.float64),
                bool(skipped), weights_dtype=str(w.dtype),
                projections=None if extra is None else np.asarray(
                    extra, np.float64))


_TRACE_ERRORS: dict = {}


def run_library(matrix: np.ndarray, keys: tuple[str, ...] = KEYS
                ) -> dict[str, Output]:
  """Every method in ``keys`` on ``matrix`` (float32 or float64, the dtype
  under test; float64 inside ``jax.enable_x64``), in one compiled call per
  shape and dtype. If that call fails, each method runs alone so that one
  failure does not hide the others; a method that raised is not run again
  for that shape and dtype (its error is reported from then on). Results
  are cached."""
  matrix = np.asarray(matrix)
  cache_key = _fingerprint(matrix) + (keys,)
  if cache_key in _LIBRARY_CACHE:
    return _LIBRARY_CACHE[cache_key]
  known = _TRACE_ERRORS.setdefault((matrix.dtype.str, matrix.shape), {})
  results = {k: Output(None, None, None, known[k]) for k in keys if k in known}
  todo = tuple(k for k in keys if k not in known)
  with jax.enable_x64(matrix.dtype == np.float64):
    x = jnp.asarray(matrix)
    try:
      if todo:
        results.update(
            {k: _to_output(v) for k, v in _updates_jit(x, todo).items()})
    except Exception:   # pylint: disable=broad-except
      for k in todo:
        try:
          results[k] = _to_output(_updates_jit(x, (k,))[k])
        except Exception as e:   # pylint: disable=broad-except
          known[k] = f'{type(e).__name__}: {str(e)[:300]}'
          results[k] = Output(None, None, None, known[k])
  results = {k: results[k] for k in keys}
  _LIBRARY_CACHE[cache_key] = results
  return results


################################################################################
# References, errors and tolerances.


_REFERENCE_CACHE: dict = {}


def eps_of(matrix: np.ndarray) -> float:
  return float(np.finfo(np.asarray(matrix).dtype).eps)


def reference_pair(key: str, matrix: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """``(d_ref, c_ref)`` for ``matrix`` as rounded to its dtype, in float64
  (truncation at that dtype's eps). Raises ``rs.ReferenceFailure`` where
  undefined. Cached."""
  matrix = np.asarray(matrix)
  cache_key = (key,) + _fingerprint(matrix)
  if cache_key not in _REFERENCE_CACHE:
    try:
      _REFERENCE_CACHE[cache_key] = METHODS[key].reference(
          matrix.astype(np.float64), eps_of(matrix))
    except rs.ReferenceFailure as e:
      _REFERENCE_CACHE[cache_key] = e
  value = _REFERENCE_CACHE[cache_key]
  if isinstance(value, Exception):
    raise value
  return value


def reference(key: str, matrix: np.ndarray) -> np.ndarray:
  """``d_ref`` (see ``reference_pair``)."""
  return reference_pair(key, matrix)[0]


def truncation_ambiguous(matrix: np.ndarray) -> bool:
  """Whether a singular value lies within 10x (in ``s²``) of the documented
  truncation threshold ``s_max² T eps`` of the matrix's dtype, where the
  truncating methods are discontinuous (for ConFIG, of the unit rows)."""
  j = np.asarray(matrix, np.float64)
  t = j.shape[0]
  eps = eps_of(matrix)
  norms = np.linalg.norm(j, axis=1)
  for m in (j, j[norms > 0] / norms[norms > 0, None]):
    if m.size == 0:
      continue
    s = np.linalg.svd(m, compute_uv=False)
    if s.max() == 0:
      continue
    ratio = s**2 / (s.max()**2 * t * eps)
    if ((ratio > 0.1) & (ratio < 10)).any():
      return True
  return False


def natural_scale(matrix: np.ndarray, degree: float | None) -> float:
  """``‖J‖_F^p``: the size of the update when the reference is zero."""
  f = float(np.linalg.norm(np.asarray(matrix, np.float64)))
  if f == 0:
    return 0.0
  return f**(1.0 if degree is None else degree)


def denominator(key: str, matrix: np.ndarray, d_ref: np.ndarray) -> float:
  """``‖d_ref‖``, or the natural scale when the reference is zero: below
  ``ZERO_REFERENCE × eps × scale`` (``eps`` of the matrix's dtype), the size
  that rounding the matrix to its dtype can give a stationary problem's
  answer."""
  scale = natural_scale(matrix, METHODS[key].degree)
  ref = float(np.linalg.norm(d_ref))
  return ref if ref > ZERO_REFERENCE * eps_of(matrix) * scale else scale


def relative_error(key: str, matrix: np.ndarray, d: np.ndarray,
                   d_ref: np.ndarray) -> float:
  """``‖d - d_ref‖`` over ``denominator``; for a zero matrix, 0 if ``d = 0``
  and infinity otherwise."""
  diff = float(np.linalg.norm(np.asarray(d, np.float64) - d_ref))
  denom = denominator(key, matrix, d_ref)
  if denom == 0:
    return 0.0 if diff == 0 else float('inf')
  return diff / denom


_FLOOR_CACHE: dict = {}


def gramian_floor(key: str, matrix: np.ndarray) -> float:
  """``_gramian_floor`` cached (it costs ``FLOOR_SAMPLES`` reference
  solves)."""
  matrix = np.asarray(matrix)
  cache_key = (key,) + _fingerprint(matrix)
  if cache_key not in _FLOOR_CACHE:
    _FLOOR_CACHE[cache_key] = _gramian_floor(key, matrix)
  return _FLOOR_CACHE[cache_key]


def ill_posed(key: str, matrix: np.ndarray) -> bool:
  """Whether the Gramian floor of ``key`` on ``matrix`` exceeds
  ``ILL_POSED`` (False where the reference is undefined)."""
  try:
    return gramian_floor(key, matrix) > ILL_POSED
  except rs.ReferenceFailure:
    return False


def _gramian_floor(key: str, matrix: np.ndarray,
                   samples: int = FLOOR_SAMPLES) -> float:
  """The relative error of an exact float64 solve on a Gramian rounded at
  the matrix dtype's level, worst over ``samples`` seeded perturbations.

  The perturbed Gramian ``K' = K + T eps ξ ∘ (n nᵀ)`` (``ξ`` symmetric,
  uniform in [-1, 1], ``n`` the row norms; ``T eps`` is the backward error
  of forming the Gramian and of a symmetric eigen-decomposition or
  factorisation of it in that dtype) is factored as ``F Fᵀ``
  (``F = V√Λ`` from ``eigh``, negative eigenvalues clipped to 0 like a
  truncation); the reference solved on ``F`` (the same Gramian, so the same
  coefficients) gives ``c'``, applied to ``J``. The rounding of that
  weighted sum, ``eps Σ_t |c'_t| n_t``, is added. Infinite when no
  perturbed problem has a certified reference (the problem is then
  degenerate at that precision).
  """
  method = METHODS[key]
  eps = eps_of(matrix)
  j = np.asarray(matrix, np.float64)
  t = j.shape[0]
  d_ref = reference(key, matrix)
  denom = denominator(key, matrix, d_ref)
  if denom == 0:
    return 0.0
  norms = np.linalg.norm(j, axis=1)
  gram = j @ j.T
  rng = np.random.default_rng(20240613)
  errors = []
  for _ in range(samples):
    xi = rng.uniform(-1, 1, (t, t))
    perturbed = gram + t * eps * 0.5 * (xi + xi.T) * np.outer(norms, norms)
    lam, vec = np.linalg.eigh(perturbed)
    factor = vec * np.sqrt(np.clip(lam, 0, None))
    try:
      _, c = method.reference(factor, eps)
    except rs.ReferenceFailure:
      continue
    errors.append(float(np.linalg.norm(c @ j - d_ref)) +
                  eps * float(np.abs(c) @ norms))
  if not errors:
    return float('inf')
  return max(errors) / denom


BASE = {
    # property: (float32, float64)
    'exact': (1e-5, 1e-9),
    'permutation': (1e-5, 1e-10),
    'homogeneity': (1e-5, 1e-10),
    'row_linear': (1e-5, 1e-10),
    'non_conflict': (1e-5, 1e-9),
    'zero': (1e-5, 1e-9),
}


def base_tolerance(prop: str, dtype) -> float:
  return BASE[prop][0 if np.dtype(dtype) == np.float32 else 1]


@dataclasses.dataclass
class Verdict:
  """``status``: 'pass', 'fail' or 'ill-posed' (the Gramian floor exceeds
  ``ILL_POSED``: a rounding-level change of the Gramian moves the exact
  answer by more than that, so no Gramian-based method can be held to it;
  such cases are excluded and counted)."""
  status: str
  tolerance: float
  floor: float | None

  @property
  def ok(self) -> bool:
    return self.status != 'fail'


def judge(prop: str, key: str, matrix: np.ndarray, error: float) -> Verdict:
  """Passes ``error`` if it is below the base tolerance of the property and
  dtype, or below ``FLOOR_FACTOR × gramian_floor`` (computed only then);
  'ill-posed' when that floor exceeds ``ILL_POSED``."""
  base = base_tolerance(prop, np.asarray(matrix).dtype)
  # Permutation invariance compares two computed answers, each within the
  # tolerance of the exact one: their difference is held to twice it (one
  # tolerance had cases fail by 1.2x on one CPU's code generation, e.g.
  # IMTL-G on a rank-1 20x10 at 1e10, 12x its Gramian floor).
  pair = 2.0 if prop == 'permutation' else 1.0
  base = pair * base
  if error <= base:
    return Verdict('pass', base, None)
  try:
    floor = gramian_floor(key, matrix)
  except rs.ReferenceFailure:
    return Verdict('fail', base, None)
  if floor > ILL_POSED:
    return Verdict('ill-posed', np.inf, floor)
  # Nash-MTL and FairGrad are solved by Newton's method, not by finitely
  # many pivots: its last steps move w by the rounding of its own residual,
  # about eps·cond of the Newton matrix K + diag(w^-2) rather than of K
  # (measured 9e-10 against a floor of 4e-11 on a near-weak 2x2 at 1e15).
  factor = pair * FLOOR_FACTOR * (100 if key.startswith(('nash', 'fairgrad'))
                                 else 1)
  tol = max(base, factor * floor)
  return Verdict('pass' if error <= tol else 'fail', tol, floor)


################################################################################
# Cases.


@functools.lru_cache(maxsize=None)
def cases(which: str | None = None) -> tuple[ms.Case, ...]:
  return tuple(ms.suite(which))


def applies(key: str, case: ms.Case, matrix: np.ndarray) -> str | None:
  """Why ``key`` has no exact value on ``case`` (None if it has): undefined
  there, at a truncation threshold, or no certified reference (a problem
  too ill-conditioned to solve in float64, e.g. Nash-MTL on the 'ill'
  kind)."""
  method = METHODS[key]
  if not method.defined_on(case.stationarity, matrix):
    return 'undefined'
  if method.truncates and truncation_ambiguous(matrix):
    return 'ambiguous truncation'
  try:
    reference(key, matrix)
  except rs.ReferenceFailure:
    return 'no certified reference'
  return None


def permutation_of(t: int, seed: int = 0) -> np.ndarray:
  """A seeded random permutation of ``range(T)``, never the identity when
  ``T > 1`` (then the reversed order is used)."""
  order = np.random.default_rng([seed, t]).permutation(t)
  if t > 1 and (order == np.arange(t)).all():
    order = order[::-1].copy()
  return order


def power_of_two(x: float) -> float:
  """The power of two nearest to ``x`` (exact scaling in binary floats)."""
  return float(2.0**round(np.log2(x)))


def format_failures(failures: list[tuple[float, str]], limit: int = 12) -> str:
  failures = sorted(failures, key=lambda f: -f[0] if np.isfinite(f[0])
                    else -np.inf)
  lines = [text for _, text in failures[:limit]]
  if len(failures) > limit:
    lines.append(f'... and {len(failures) - limit} more')
  return f'{len(failures)} failing case(s):\n  ' + '\n  '.join(lines)


def stationary_at_least(label: str, level: str) -> bool:
  """Whether a matrix labelled ``label`` is ``level``-stationary ('strong'
  implies 'weak')."""
  return label == 'strong' or (level == 'weak' and label == 'weak')
