"""Float64 reference solutions of the gradient-balancing methods (numpy/scipy).

Independent of ``mtl_optax``: every reference works on the matrix ``J`` of
shape ``[T, P]`` itself (rows are the task gradients ``g_t``), in float64,
with scipy's exact active-set NNLS (Lawson-Hanson) or numpy's SVD, and
verifies its own answer (KKT conditions, a bracket of the optimal value or
an equation residual) before returning it. A reference that cannot certify its answer
raises ``ReferenceFailure``, so a test never compares against a wrong value.

Conventions (those of ``mtl_optax``, see its docstrings): preferences ``w``
default to all ones (sums); CAGrad's ``g0`` is the *mean* gradient; MGDA,
UPGrad, DualProj, IMTL-G, Aligned-MTL, ConFIG, CAGrad and Nash-MTL (without
clipping) are positively homogeneous of degree 1, FairGrad of degree
``(1 - α)/(1 + α)``. Every method's function returns ``(d, c)``: the
update ``d`` (shape ``[P]``) and coefficients ``c`` (shape ``[T]``) with
``d = cᵀJ`` (one such vector; it is not unique when ``J`` is rank
deficient).

Methods whose definition involves a pseudo-inverse (IMTL-G, Aligned-MTL,
ConFIG) truncate singular values with ``s² ≤ s_max² · T · eps`` as the
library documents; ``eps`` is a parameter, so the float32 comparison uses
float32's ``eps`` on the float32-rounded matrix.

Every certificate tolerance here is relative to the size of the terms the
checked quantity sums (the rows are normalised first), ``CERT_TOL =
1e-10``; the certified quantities are residuals (backward errors), so the
answers themselves are accurate to about ``1e-16 × κ`` (``κ`` the
problem's condition number): 1e-13 on the well-conditioned matrices, about
1e-6 on the sampler's 'ill' kind (singular values down to 1e-6), where the
Gramian floor of the tests is far larger anyway. Problems too degenerate to
certify (Nash-MTL/FairGrad on 'ill', where ``Kw`` cancels by more than
``MAX_CANCELLATION_POWER``) raise ``ReferenceFailure``.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import optimize

CERT_TOL = 1e-10
MAX_CANCELLATION = 1e10
MAX_CANCELLATION_POWER = 1e9
F64_EPS = float(np.finfo(np.float64).eps)


class ReferenceFailure(RuntimeError):
  """A reference solver could not certify its answer."""


def as64(matrix) -> np.ndarray:
  """``matrix`` as a 2-D float64 array (a copy)."""
  j = np.array(matrix, dtype=np.float64)
  if j.ndim != 2:
    raise ValueError(f'expected a [T, P] matrix, got shape {j.shape}')
  return j


def preference_vector(preferences, t: int) -> np.ndarray:
  """``preferences`` as a float64 ``[T]`` vector, all ones by default."""
  if preferences is None:
    return np.ones(t)
  return np.broadcast_to(np.asarray(preferences, np.float64), (t,)).copy()


def row_norms(j: np.ndarray) -> np.ndarray:
  return np.linalg.norm(j, axis=1)


################################################################################
# Non-negative least squares with a certificate.


def nnls_kkt_violation(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
  """Largest violation of the KKT conditions of ``min_{x≥0} ‖Ax - b‖²``.

  The conditions are ``x ≥ 0``, ``g = Aᵀ(Ax - b) ≥ 0`` and ``x_i g_i = 0``;
  ``x`` is measured relative to its own size, ``g`` relative to
  ``max_i ‖a_i‖ (‖b‖ + Σ_j x_j ‖a_j‖)`` (``a_i`` the columns): the size of
  the terms that ``g`` sums, so that the measure is a backward error (a
  nearly degenerate problem has large ``x`` and ``Ax`` cancels).
  """
  g = a.T @ (a @ x - b)
  col = np.linalg.norm(a, axis=0)
  x_scale = max(np.max(np.abs(x), initial=0.0), F64_EPS)
  g_scale = max(np.max(col, initial=0.0) *
                (np.linalg.norm(b) + float(np.abs(x) @ col)),
                np.finfo(np.float64).tiny)
  xn, gn = x / x_scale, g / g_scale
  return float(max(np.max(-xn, initial=0.0), np.max(-gn, initial=0.0),
                   np.max(np.abs(xn * gn), initial=0.0),
                   np.max(np.abs(gn[x > 0]), initial=0.0)))


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``argmin_{x≥0} ‖Ax - b‖²`` by scipy's Lawson-Hanson, then polished.

  The polish re-solves the least-squares problem on the positive support by
  ``lstsq`` (what the last active-set step does) and keeps it when it is
  still non-negative and its KKT violation is not larger. Raises
  ``ReferenceFailure`` above ``CERT_TOL``.
  """
  x, _ = optimize.nnls(a, b, maxiter=50 * max(a.shape[1], 1))
  support = x > 0
  if support.any():
    polished = np.zeros_like(x)
    polished[support] = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
    if (polished >= 0).all() and (nnls_kkt_violation(a, b, polished) <=
                                  nnls_kkt_violation(a, b, x)):
      x = polished
  violation = nnls_kkt_violation(a, b, x)
  if violation > CERT_TOL:
    raise ReferenceFailure(f'NNLS KKT violation {violation:.3g}')
  return x


################################################################################
# MGDA: the min-norm point of the convex hull.


def min_norm_kkt_violation(gram: np.ndarray, alpha: np.ndarray) -> float:
  """KKT violation of ``α`` for ``min_{α∈Δ} αᵀKα``, relative to ``max K_ii``.

  Conditions: ``α ≥ 0``, ``Σα = 1``, ``(Kα)_i ≥ αᵀKα`` for every ``i``, with
  equality where ``α_i > 0`` (complementarity ``α_i ((Kα)_i - αᵀKα) = 0``).
  """
  scale = max(float(np.max(np.diag(gram), initial=0.0)),
              np.finfo(np.float64).tiny)
  k_alpha = gram @ alpha / scale
  value = alpha @ k_alpha
  gap = k_alpha - value
  return float(max(np.max(-alpha, initial=0.0), abs(alpha.sum() - 1),
                   np.max(-gap, initial=0.0),
                   np.max(np.abs(alpha * gap), initial=0.0)))


def mgda(matrix, normalization: str = 'none') -> tuple[np.ndarray, np.ndarray]:
  """MGDA: ``d = αᵀ J`` with ``α = argmin_{α∈Δ} ‖Jᵀα‖²``.

  Reformulation solved by one NNLS: ``min_{x≥0} ‖Jᵀx‖² + (1ᵀx - 1)²``, then
  ``α = x / 1ᵀx``. Proof: write ``x = sα`` with ``s = 1ᵀx`` and ``α∈Δ``,
  ``q(α) = ‖Jᵀα‖²``. The objective is ``s² q + (s - 1)²``, minimised over
  ``s`` at ``s = 1/(1+q)`` with value ``q/(1+q)``, increasing in ``q``
  (``s = 0`` gives 1, worse). So the NNLS minimiser is ``α*/(1+q*)`` with
  ``α*`` a min-norm point. ``α`` is not unique when ``J`` is rank deficient
  but ``d`` is (the min-norm point of a convex set); the KKT conditions of the
  simplex QP are verified on ``α``.

  Args:
    matrix: ``[T, P]``.
    normalization: 'none', or 'l2' (the hull of the unit gradients; zero
      rows stay zero and the returned coefficients are ``α_t / ‖g_t‖``).

  Returns:
    ``(d, coefficients)`` with ``d = coefficientsᵀ J``.
  """
  j = as64(matrix)
  t = j.shape[0]
  norms = row_norms(j)
  if normalization == 'l2':
    scales = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0.0)
  elif normalization == 'none':
    scales = np.ones(t)
  else:
    raise ValueError(normalization)
  hull = j * scales[:, None]
  top = np.max(row_norms(hull), initial=0.0)
  if top == 0:   # every (normalised) gradient is zero: any α, d = 0
    alpha = np.full(t, 1 / t)
    return np.zeros(j.shape[1]), alpha * scales
  unit = hull / top   # α is invariant to the hull's scale
  a = np.vstack([unit.T, np.ones((1, t))])
  b = np.zeros(a.shape[0])
  b[-1] = 1
  x = nnls(a, b)
  alpha = x / x.sum()
  violation = min_norm_kkt_violation(unit @ unit.T, alpha)
  if violation > CERT_TOL:
    raise ReferenceFailure(f'MGDA KKT violation {violation:.3g}')
  coefficients = alpha * scales
  return coefficients @ j, coefficients


################################################################################
# Projection onto the dual cone C = {d : J d ≥ 0}: UPGrad, DualProj.


def dual_cone_kkt_violation(matrix, x, d, v) -> float:
  """KKT violation of ``(d, v)`` for the projection of ``x`` onto
  ``C = {d : J d ≥ 0}``.

  Conditions: stationarity ``d = x + Jᵀv``, ``v ≥ 0``, ``J d ≥ 0`` and
  complementarity ``v_t (J d)_t = 0``. Measured on the unit rows ``u_t``
  (multipliers ``v_t ‖g_t‖``), relative to ``‖x‖ + Σ_t |v_t| ‖g_t‖``, the
  size of the terms that ``d = x + Jᵀv`` sums (a backward error: a nearly
  degenerate cone has large multipliers, and ``J d`` cancels); zero rows
  impose nothing (their multiplier is ignored).
  """
  j = as64(matrix)
  x = np.asarray(x, np.float64)
  d = np.asarray(d, np.float64)
  v = np.asarray(v, np.float64)
  norms = row_norms(j)
  present = norms > 0
  scale = max(float(np.linalg.norm(x)) +
              float(np.abs(v[present]) @ norms[present]),
              np.finfo(np.float64).tiny)
  residual = np.linalg.norm(d - x - j[present].T @ v[present]) / scale
  v_unit = v[present] * norms[present] / scale
  ud = (j[present] @ d) / (norms[present] * scale)
  return float(max(np.max(-ud, initial=0.0), np.max(-v_unit, initial=0.0),
                   np.max(np.abs(v_unit * ud), initial=0.0), residual))


def project_to_dual_cone(matrix, x) -> tuple[np.ndarray, np.ndarray]:
  """``π_C(x)`` for ``C = {d : J d ≥ 0}`` and its multipliers.

  Primal ``min ½‖d - x‖²  s.t. J d ≥ 0``; its Lagrangian dual gives
  ``d = x + Jᵀv``, ``v ≥ 0`` minimising ``‖Jᵀv + x‖²``: one NNLS in primal
  space (``nnls(Jᵀ, -x)``), whose own KKT conditions (``v ≥ 0``,
  ``J(Jᵀv + x) ≥ 0``, complementarity) are exactly those of the projection.
  Solved on the unit rows (the same cone) and on ``x/‖x‖`` (the projection
  is positively homogeneous).

  Returns:
    ``(d, v)`` with ``d = x + Jᵀv`` (``v`` per original row; 0 on zero rows).
  """
  j = as64(matrix)
  x = np.asarray(x, np.float64)
  t = j.shape[0]
  norms = row_norms(j)
  present = norms > 0
  x_norm = float(np.linalg.norm(x))
  if x_norm == 0 or not present.any():
    return x.copy(), np.zeros(t)
  u = j[present] / norms[present, None]
  v_unit = nnls(u.T, -x / x_norm)
  d = x + x_norm * (u.T @ v_unit)
  v = np.zeros(t)
  v[present] = x_norm * v_unit / norms[present]
  violation = dual_cone_kkt_violation(j, x, d, v)
  if violation > CERT_TOL:
    raise ReferenceFailure(
        f'dual-cone projection KKT violation {violation:.3g}')
  return d, v


def upgrad(matrix, preferences=None) -> tuple[np.ndarray, np.ndarray]:
  """UPGrad: ``Σ_i w_i π_C(g_i)`` (Quinton & Rey, 2024); ``(d, c)`` with
  ``c = Σ_i w_i (e_i + v_i)``."""
  j = as64(matrix)
  t = j.shape[0]
  w = preference_vector(preferences, t)
  c = np.zeros(t)
  for i in range(t):
    c += w[i] * (np.eye(t)[i] + project_to_dual_cone(j, j[i])[1])
  return c @ j, c


def dualproj(matrix, preferences=None) -> tuple[np.ndarray, np.ndarray]:
  """DualProj: ``π_C(Σ_t w_t g_t)``; ``(d, c)`` with ``c = w + v``."""
  j = as64(matrix)
  w = preference_vector(preferences, j.shape[0])
  d, v = project_to_dual_cone(j, w @ j)
  return d, w + v


################################################################################
# CAGrad.


def project_to_polyhedron(matrix, x, level: float):
  """Projection of ``x`` onto ``{d : J d ≥ level·1}`` by Lawson-Hanson LDP.

  With ``y = d - x`` the problem is the least-distance program
  ``min ‖y‖  s.t.  J y ≥ h``, ``h = level·1 - J x``. LDP (Lawson & Hanson,
  ch. 23): solve ``u = argmin_{u≥0} ‖E u - f‖`` with ``E = [Jᵀ; hᵀ]``,
  ``f = e_{P+1}``; with ``r = E u - f``, the set is empty iff ``r = 0``,
  else ``y = -r[:P] / r[P]`` and the multipliers of ``J y ≥ h`` are
  ``λ = u / (-r[P])`` (``y = Jᵀλ``).

  Returns:
    ``(d, λ)``, or ``(None, None)`` when the set is (numerically) empty.
  """
  j = as64(matrix)
  h = level - j @ x
  e = np.vstack([j.T, h[None, :]])
  f = np.zeros(e.shape[0])
  f[-1] = 1
  u, _ = optimize.nnls(e, f, maxiter=50 * max(e.shape[1], 1))
  r = e @ u - f
  denominator = -r[-1]   # = ‖r‖² > 0 at the optimum unless the set is empty
  if denominator <= 1e-300:
    return None, None
  lam = u / denominator
  d = x + j.T @ lam
  # A nearly empty set (Pareto-stationary rows, a positive level) gives
  # astronomically large multipliers, and d, which cancels out of them, is
  # then meaningless: treat the set as empty when the cancellation exceeds
  # MAX_CANCELLATION (legitimately ill-conditioned sets stay far below).
  spread = float(np.abs(lam) @ row_norms(j))
  if spread > MAX_CANCELLATION * max(float(np.linalg.norm(d - x)),
                                     float(np.linalg.norm(x)), 1e-300):
    return None, None
  return d, lam


def cagrad_dual_value(gram: np.ndarray, w: np.ndarray, radius: float) -> float:
  """CAGrad's dual ``F(w) = wᵀK1/T + r√(wᵀKw)``: an upper bound on the primal
  value ``max_{‖d-g0‖≤r} min_i <g_i, d>`` for every ``w`` in the simplex
  (``min_i <g_i, d> ≤ <g_w, d> ≤ <g_w, g0> + r‖g_w‖``)."""
  t = gram.shape[0]
  return float(w @ gram @ np.full(t, 1 / t) +
               radius * np.sqrt(max(w @ gram @ w, 0.0)))


def cagrad(matrix, c: float = 0.4, rescale: int = 1
           ) -> tuple[np.ndarray, dict]:
  """CAGrad (Liu et al., 2021): ``argmax_{‖d - g0‖ ≤ c‖g0‖} min_i <g_i, d>``.

  ``g0`` is the mean gradient. The optimal value ``t*`` is found by
  bisection on ``t``: ``t ≤ t*`` iff ``dist(g0, {J d ≥ t·1}) ≤ c‖g0‖`` (the
  sets shrink as ``t`` grows, each distance an exact LDP). The update is the
  projection of ``g0`` onto ``{J d ≥ t*·1}``: the unique optimum when
  ``t* ≠ 0`` (the optimum then lies on the sphere, which is strictly
  convex), and otherwise (``t* = 0``: Pareto-stationary rows and ``c ≥ 1``,
  or a zero row, or a weakly stationary block) the optimum closest to
  ``g0``. Both are ``g0 + Jᵀλ`` with ``λ ≥ 0``. When the bisection brackets
  0 and ``t = 0`` is feasible, ``t* = 0`` is taken exactly.

  When ``t*`` is well away from 0 the bisection result is polished on its
  active set ``A`` (``λ`` supported on ``A``): ``J_A d = t 1`` with
  ``d = g0 + J_Aᵀλ_A``, ``‖J_Aᵀλ_A‖ = c‖g0‖`` is a quadratic in ``t``
  (largest root), kept if its duality gap is smaller. Certificate
  (``_certify_cagrad``): ``λ ≥ 0``, ``‖d - g0‖ ≤ c‖g0‖`` and
  ``min_i <g_i, d>`` inside the bisection's final bracket ``[lo, hi]``
  (width ``4e-16`` of the natural scale), which contains ``t*``.

  Args:
    matrix: ``[T, P]``.
    c: the radius factor.
    rescale: 0 (none), 1 (divide by ``1 + c²``) or 2 (by ``1 + c``).

  Returns:
    ``(d, info)``; ``info`` has ``level`` (``t*`` of the normalised rows),
    ``weights`` (``λ/Σλ`` or None), ``unscaled`` (``d`` before rescaling)
    and ``coefficients`` (``c`` with ``d = cᵀJ``: ``(1/T + λ)/factor``).
  """
  if rescale not in (0, 1, 2):
    raise ValueError(rescale)
  j = as64(matrix)
  t, p = j.shape
  top = float(np.max(row_norms(j), initial=0.0))
  g0_raw = j.mean(axis=0)
  factor = {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale]
  mean = np.full(t, 1 / t)
  if top == 0 or np.linalg.norm(g0_raw) == 0:
    # The ball is the single point g0 = 0.
    return np.zeros(p), {'level': 0.0, 'weights': None,
                         'unscaled': np.zeros(p), 'coefficients': mean / factor}
  a = j / top
  g0 = a.mean(axis=0)
  radius = c * float(np.linalg.norm(g0))
  level_scale = float(np.linalg.norm(g0)) * (1 + c)
  if radius == 0:   # the ball is the point g0
    return g0_raw / factor, {'level': float(np.min(a @ g0)), 'weights': None,
                             'unscaled': g0_raw,
                             'coefficients': mean / factor}

  def within(level):
    d, _ = project_to_polyhedron(a, g0, level)
    return d is not None and np.linalg.norm(d - g0) <= radius

  lo = float(np.min(a @ g0))                      # d = g0 is feasible
  hi = float(np.min(row_norms(a))) * level_scale  # |<g_i,d>| ≤ ‖g_i‖ ‖d‖
  hi = max(hi, lo)
  for _ in range(200):
    if hi - lo <= 2 * F64_EPS * level_scale:
      break
    mid = 0.5 * (lo + hi)
    if within(mid):
      lo = mid
    else:
      hi = mid
  if lo < 0 < hi and within(0.0):
    lo = 0.0   # t* = 0 to the bisection's resolution: take it exactly
  d, lam = project_to_polyhedron(a, g0, lo)
  if d is None:
    raise ReferenceFailure('CAGrad: the bisection lost feasibility')
  if abs(lo) > 1e-8 * level_scale:
    d, lam = _polish_cagrad(a, g0, radius, d, lam, hi)
  _certify_cagrad(a, g0, radius, d, lam, lo, hi, level_scale)
  weights = None if lam.sum() <= 0 else lam / lam.sum()
  unscaled = d * top
  return unscaled / factor, {'level': lo, 'weights': weights,
                             'unscaled': unscaled,
                             'coefficients': (mean + lam) / factor}


def _polish_cagrad(a, g0, radius, d, lam, hi):
  """Solves the CAGrad optimum exactly on the active set of ``(d, λ)``; keeps
  ``(d, λ)`` when the active-set system is singular, its level leaves the
  bisection's bracket ``[min J d, hi]``, or its duality gap is larger."""
  active = lam > 0
  if not active.any():
    return d, lam
  ja = a[active]
  k = ja @ ja.T
  try:
    ones_k = np.linalg.solve(k, np.ones(active.sum()))
    g0_k = np.linalg.solve(k, ja @ g0)
  except np.linalg.LinAlgError:
    return d, lam
  # λ_A = t·ones_k - g0_k and λ_AᵀKλ_A = r²: a quadratic q2 t² - 2 q1 t + q0.
  q2 = ones_k @ k @ ones_k
  q1 = ones_k @ k @ g0_k
  q0 = g0_k @ k @ g0_k - radius**2
  disc = q1**2 - q2 * q0
  if q2 <= 0 or disc < 0:
    return d, lam
  level = (q1 + np.sqrt(disc)) / q2
  lam_a = level * ones_k - g0_k
  if (lam_a < 0).any() or not np.min(a @ d) <= level <= hi:
    return d, lam
  new_lam = np.zeros_like(lam)
  new_lam[active] = lam_a
  new_d = g0 + a.T @ new_lam
  if np.min(a @ new_d) < level - 1e-13 * max(abs(level), 1.0):
    return d, lam   # an inactive constraint became violated: wrong set
  old_gap = _cagrad_gap(a, g0, radius, d, lam)
  new_gap = _cagrad_gap(a, g0, radius, new_d, new_lam)
  return (new_d, new_lam) if new_gap <= old_gap else (d, lam)


def _cagrad_gap(a, g0, radius, d, lam):
  if lam.sum() <= 0:
    return np.inf
  w = lam / lam.sum()
  return cagrad_dual_value(a @ a.T, w, radius) - float(np.min(a @ d))


def _certify_cagrad(a, g0, radius, d, lam, lo, hi, level_scale):
  """``λ ≥ 0``, ``d`` in the ball, and its worst improvement within
  tolerance of the bracket ``[lo, hi]`` that the bisection proved to
  contain ``t*`` (``hi`` infeasible or the a-priori bound): ``d`` is optimal
  to that accuracy. The tolerance is ``CERT_TOL`` of the natural scale plus
  the rounding of ``d = g0 + Jᵀλ`` (``16 eps Σλ``: near-stationary rows have
  large multipliers)."""
  tol = CERT_TOL * level_scale + 16 * F64_EPS * float(np.sum(np.abs(lam)))
  if np.min(lam, initial=0.0) < 0:
    raise ReferenceFailure('CAGrad: negative multiplier')
  excess = np.linalg.norm(d - g0) - radius
  if excess > tol:
    raise ReferenceFailure(f'CAGrad: outside the ball by {excess:.3g}')
  value = float(np.min(a @ d))
  if value < lo - tol or hi - value > tol:
    raise ReferenceFailure(f'CAGrad: worst improvement {value:.17g} outside '
                           f'the bracket [{lo:.17g}, {hi:.17g}]')


################################################################################
# Closed forms from the SVD: IMTL-G, Aligned-MTL, ConFIG, linear.


def _kept(s: np.ndarray, t: int, eps: float) -> np.ndarray:
  """Singular values kept by the documented truncation ``s² > s_max² T eps``."""
  if s.size == 0 or s.max() == 0:
    return np.zeros(s.shape, bool)
  return s**2 > s.max()**2 * t * eps


def imtl_g(matrix, eps: float = F64_EPS) -> tuple[np.ndarray, np.ndarray]:
  """IMTL-G: ``c = K⁺n / 1ᵀK⁺n``, ``n = (‖g_t‖)_t``, ``d = cᵀJ``.

  ``K⁺ = U S⁻² Uᵀ`` from the SVD ``J = U S Vᵀ`` (kept modes only). A zero
  gradient gets weight 0; when ``|1ᵀK⁺n| ≤ eps Σ|K⁺n|`` the documented
  fallback ``c = 1/T`` applies. Returns ``(d, c)``.
  """
  j = as64(matrix)
  t = j.shape[0]
  n = row_norms(j)
  u, s, _ = np.linalg.svd(j, full_matrices=False)
  keep = _kept(s, t, eps)
  raw = u[:, keep] @ ((u[:, keep].T @ n) / s[keep]**2)
  raw = np.where(n > 0, raw, 0.0)
  total = raw.sum()
  if abs(total) <= eps * np.abs(raw).sum() or not keep.any():
    c = np.full(t, 1 / t)
  else:
    c = raw / total
  return c @ j, c


def aligned_mtl(matrix, preferences=None, scale_mode: str = 'min',
                eps: float = F64_EPS, median: str = 'lower'
                ) -> tuple[np.ndarray, np.ndarray]:
  """Aligned-MTL: ``d = σ · Σ_k v_k (u_kᵀ w)`` over the kept modes of
  ``J = Σ_k s_k u_k v_kᵀ`` (``U Vᵀ`` is the closest orthogonal system).

  ``σ``: 'min' the smallest kept ``s_k``; 'median' the median kept ``s_k``
  (``median='lower'``: the lower of the two middle values for an even
  count, as ``torch.median``; ``'mean'``: the root mean square of the two);
  'rmse' ``√(mean s_k²)``. Coefficients ``c = σ U_k S_k⁻¹ U_kᵀ w``.
  """
  j = as64(matrix)
  t, p = j.shape
  w = preference_vector(preferences, t)
  u, s, vt = np.linalg.svd(j, full_matrices=False)
  keep = _kept(s, t, eps)
  if not keep.any():
    return np.zeros(p), np.zeros(t)
  kept = np.sort(s[keep])
  if scale_mode == 'min':
    sigma = kept[0]
  elif scale_mode == 'median':
    r = kept.size
    if median == 'lower':
      sigma = kept[(r - 1) // 2]
    else:
      sigma = np.sqrt(0.5 * (kept[(r - 1) // 2]**2 + kept[r // 2]**2))
  elif scale_mode == 'rmse':
    sigma = np.sqrt(np.mean(kept**2))
  else:
    raise ValueError(scale_mode)
  along = u[:, keep].T @ w
  return (sigma * (vt[keep].T @ along),
          sigma * (u[:, keep] @ (along / s[keep])))


def config(matrix, eps: float = F64_EPS) -> tuple[np.ndarray, np.ndarray]:
  """ConFIG: ``ê ∝ U⁺1`` (``U`` the unit gradients; zero rows left out) and
  ``d = (Σ_t <g_t, ê>) ê``. ``U⁺`` from the SVD of ``U`` with the documented
  truncation (``T`` counts every task). When ``1`` is orthogonal to the kept
  range of ``U`` (to ``1e3 eps √T``; e.g. two opposite gradients) ``U⁺1 = 0``
  and ``d = 0``."""
  j = as64(matrix)
  t, p = j.shape
  n = row_norms(j)
  present = n > 0
  if not present.any():
    return np.zeros(p), np.zeros(t)
  unit = j[present] / n[present, None]
  uu, s, vt = np.linalg.svd(unit, full_matrices=False)
  keep = _kept(s, t, eps)
  along = uu[:, keep].T @ np.ones(unit.shape[0])
  if np.linalg.norm(along) <= 1e3 * eps * np.sqrt(t):
    # 1 is orthogonal to the kept range of U: U⁺1 = 0, and d -> 0 in the
    # limit (all cosines 1/‖U⁺1‖ -> 0); the library's convention is d = 0.
    return np.zeros(p), np.zeros(t)
  x = vt[keep].T @ (along / s[keep])            # U⁺1
  beta = uu[:, keep] @ (along / s[keep]**2)     # U⁺1 = Uᵀβ
  x_norm = np.linalg.norm(x)
  if x_norm == 0:
    return np.zeros(p), np.zeros(t)
  e = x / x_norm
  length = float(np.sum(j @ e))
  c = np.zeros(t)
  c[present] = length / x_norm * beta / n[present]
  return length * e, c


def linear(matrix, weights=None) -> tuple[np.ndarray, np.ndarray]:
  """Linear scalarization: ``Σ_t w_t g_t``."""
  j = as64(matrix)
  w = preference_vector(weights, j.shape[0])
  return w @ j, w


################################################################################
# Nash-MTL and FairGrad: K w = w^(-1/α).


def power_balance_residual(gram: np.ndarray, w: np.ndarray,
                           alpha: float) -> float:
  """Componentwise backward error of ``K w = w^(-1/α)``:
  ``max_i |(Kw)_i - w_i^(-1/α)| / ((|K| w)_i + w_i^(-1/α))``.

  A value ``ε`` means ``w`` solves the equation exactly for a ``K`` whose
  entries are perturbed by at most a relative ``ε`` (the residual of
  ``(Kw)_i`` itself cancels when ``K`` has large negative entries, so an
  absolute residual cannot reach rounding level on ill-conditioned ``K``).
  """
  rhs = w**(-1 / alpha)
  return float(np.max(np.abs(gram @ w - rhs) / (np.abs(gram) @ w + rhs)))


def power_balance_potential(gram: np.ndarray, w: np.ndarray,
                            alpha: float) -> float:
  """``φ(w) = ½ wᵀKw - Σ h(w_i)``, ``h = log`` (α = 1) or
  ``w^(1-1/α)/(1-1/α)``: strictly convex on ``w > 0``, with gradient
  ``K w - w^(-1/α)``, so its minimiser is the solution."""
  if alpha == 1:
    h = np.log(w)
  else:
    q = 1 - 1 / alpha
    h = w**q / q
  return float(0.5 * w @ gram @ w - np.sum(h))


def solve_power_balance(gram: np.ndarray, alpha: float) -> np.ndarray:
  """The ``w > 0`` with ``K w = w^(-1/α)`` (unique when it exists).

  Damped Newton on the strictly convex potential
  (``power_balance_potential``; Hessian ``K + diag(w^(-1-1/α))/α``) in
  float64 from ``w_i = K_ii^(-α/(1+α))`` (the solution for a diagonal
  ``K``), with a fraction-to-the-boundary step and backtracking (a step is
  accepted when it decreases the potential or the residual). Raises
  ``ReferenceFailure`` unless ``power_balance_residual`` is below
  ``CERT_TOL``: no solution exists when a ``v ≥ 0, v ≠ 0`` has
  ``vᵀKv = 0`` (Pareto-stationary rows, a zero row).
  """
  gram = 0.5 * (gram + gram.T)
  diag = np.diag(gram)
  if (diag <= 0).any():
    raise ReferenceFailure('power balance: a zero gradient has no solution')
  w = diag**(-alpha / (1 + alpha))
  residual = power_balance_residual(gram, w, alpha)
  for _ in range(1000):
    if residual <= 4 * F64_EPS:
      break
    grad = gram @ w - w**(-1 / alpha)
    hess = gram + np.diag(w**(-1 - 1 / alpha) / alpha)
    try:
      step = np.linalg.solve(hess, grad)
    except np.linalg.LinAlgError:
      break
    shrinking = step > 0
    size = 1.0
    if shrinking.any():
      size = min(1.0, 0.99 * float(np.min(w[shrinking] / step[shrinking])))
    value = power_balance_potential(gram, w, alpha)
    slope = float(grad @ step)
    while size > 1e-14:
      trial = w - size * step
      trial_residual = power_balance_residual(gram, trial, alpha)
      if (power_balance_potential(gram, trial, alpha) <=
          value - 1e-4 * size * slope or trial_residual < residual):
        break
      size *= 0.5
    else:
      break   # no progress possible
    w, residual = trial, trial_residual
  if not np.all(np.isfinite(w)) or residual > CERT_TOL:
    raise ReferenceFailure(f'power balance residual {residual:.3g}')
  # Where no solution exists, Newton runs off along a v ≥ 0 with Kv ≈ 0 and
  # the backward error becomes small because (Kw)_i cancels: require that
  # (Kw)_i is resolved to better than 1e-7 (cancellation below 1e9).
  cancellation = float(np.max((np.abs(gram) @ w) * w**(1 / alpha)))
  if cancellation > MAX_CANCELLATION_POWER:
    raise ReferenceFailure(
        f'power balance: no solution to working precision (Kw cancels by '
        f'{cancellation:.3g})')
  return w


def nash_mtl(matrix, max_norm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Nash-MTL: ``K̃α = 1/α`` with ``K̃ = K/‖K‖_F``, ``d = αᵀJ``, then (if
  ``max_norm > 0``) ``d`` clipped to norm ``max_norm``. Returns
  ``(d, c)`` (``c = α``, times the clipping factor)."""
  j = as64(matrix)
  if (row_norms(j) == 0).any():
    raise ReferenceFailure('Nash-MTL: a zero gradient has no solution')
  a = j / np.max(row_norms(j))   # K̃ does not depend on J's scale
  gram = a @ a.T
  alpha = solve_power_balance(gram / np.linalg.norm(gram), 1.0)
  d = alpha @ j
  norm = np.linalg.norm(d)
  if max_norm > 0 and norm > max_norm:
    alpha = alpha * (max_norm / norm)
    d = alpha @ j
  return d, alpha


def fairgrad(matrix, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """FairGrad: ``K w = w^(-1/α)`` on the raw Gramian, ``d = wᵀJ``.

  Solved on ``K̂ = K/s²`` (``s`` the largest row norm): if ``K̂ŵ = ŵ^(-1/α)``
  then ``w = s^(-2α/(1+α)) ŵ``, so ``d = s^((1-α)/(1+α)) ŵᵀ(J/s)``, computed
  in that form (no overflow for any ``s``). Returns ``(d, w)``.
  """
  j = as64(matrix)
  if (row_norms(j) == 0).any():
    raise ReferenceFailure('FairGrad: a zero gradient has no solution')
  s = float(np.max(row_norms(j)))
  a = j / s
  w_hat = solve_power_balance(a @ a.T, alpha)
  return (s**((1 - alpha) / (1 + alpha)) * (w_hat @ a),
          s**(-2 * alpha / (1 + alpha)) * w_hat)


def cagrad_kkt_violation(matrix, c: float, coefficients) -> float:
  """Optimality violation of CAGrad coefficients (before rescaling).

  With ``d = Σ_t coef_t g_t``, the multipliers are ``λ = coef - 1/T``
  (``d = g0 + Jᵀλ``). Measured on the normalised rows, relative to the
  natural scale ``‖g0‖(1 + c)`` (``λ`` relative to ``max(Σ|λ|, 1)``):
    - ``λ ≥ 0``;
    - ``d`` in the ball: ``‖d - g0‖ ≤ c‖g0‖``;
    - if the optimal level ``t*`` (from ``cagrad``) is not 0: the duality
      gap ``|F(λ/Σλ) - min_i <g_i, d>|`` (``cagrad_dual_value``), zero
      exactly at the optimum;
    - if ``t* = 0`` (the degenerate case, the optimum closest to ``g0``):
      the projection conditions ``J d ≥ 0`` and ``λ_i (J d)_i = 0``.
  """
  j = as64(matrix)
  t = j.shape[0]
  coefficients = np.asarray(coefficients, np.float64)
  top = float(np.max(row_norms(j), initial=0.0))
  if top == 0 or np.linalg.norm(j.mean(axis=0)) == 0:
    return float(np.linalg.norm(coefficients @ j)) / max(top, 1e-300)
  a = j / top
  g0 = a.mean(axis=0)
  radius = c * float(np.linalg.norm(g0))
  scale = float(np.linalg.norm(g0)) * (1 + c)
  lam = coefficients - 1 / t
  lam[row_norms(j) == 0] = 0   # a zero row's coefficient changes nothing
  lam_size = max(float(np.abs(lam).sum()), 1.0)   # coefficients are O(1)
  d = g0 + a.T @ lam
  values = a @ d
  violations = [max(0.0, -float(lam.min()) / lam_size),
                max(0.0, float(np.linalg.norm(d - g0)) - radius) / scale]
  level = cagrad(j, c, 0)[1]['level']
  if abs(level) > 1e-8 * scale:
    w = np.clip(lam, 0, None)
    if w.sum() <= 0:
      return float('inf')
    gap = cagrad_dual_value(a @ a.T, w / w.sum(), radius) - float(values.min())
    violations.append(abs(gap) / scale)
  else:
    violations.append(max(0.0, -float(values.min())) / scale)
    violations.append(float(np.max(np.abs(lam * values))) / (lam_size * scale))
  return float(max(violations))


def min_norm_by_enumeration(g, *, feasibility_tol=1e-12):
  """Exact ``argmin_{α∈Δ} ‖αᵀ G‖²`` by enumerating the supports.

  On the optimal support S the optimum is the min-norm point of the affine
  hull of ``{g_s}``, solved from its KKT system; the best feasible (α ≥ 0)
  candidate over all supports is the global optimum; supports whose
  solution has an entry below ``-feasibility_tol`` are infeasible.
  Returns (α, d).
  """
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  k = g @ g.T
  best = None
  for r in range(1, t + 1):
    for support in itertools.combinations(range(t), r):
      s = list(support)
      n = len(s)
      a = np.zeros((n + 1, n + 1))
      a[:n, :n] = k[np.ix_(s, s)]
      a[:n, n] = 1
      a[n, :n] = 1
      rhs = np.zeros(n + 1)
      rhs[n] = 1
      sol = np.linalg.lstsq(a, rhs, rcond=None)[0][:n]
      if sol.min() < -feasibility_tol:
        continue
      alpha = np.zeros(t)
      alpha[s] = np.clip(sol, 0, None)
      alpha /= alpha.sum()
      value = alpha @ k @ alpha
      if best is None or value < best[0] - 1e-15:
        best = (value, alpha)
  return best[1], best[1] @ g


def project_to_simplex(v) -> np.ndarray:
  """Euclidean projection of ``v`` onto the probability simplex, by bisection
  on the threshold ``τ`` of ``max(v − τ, 0)`` (a different algorithm from the
  library's sort-based ``weightings.project_to_simplex``)."""
  v = np.asarray(v, np.float64)
  lo, hi = v.min() - 1.0, v.max()
  for _ in range(200):
    mid = (lo + hi) / 2
    if np.maximum(v - mid, 0).sum() > 1:
      lo = mid
    else:
      hi = mid
  return np.maximum(v - (lo + hi) / 2, 0)
