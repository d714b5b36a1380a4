"""Seeded matrices ``J`` ([T, P], rows = task gradients) with controlled
Pareto stationarity, for the property and exactness suites.

Stationarity (Quinton & Rey 2024; Gordan's and Stiemke's alternatives):
  - strongly stationary: some ``v > 0`` has ``vᵀJ = 0``; equivalently no
    ``d`` has ``J d ≥ 0`` with ``J d ≠ 0``;
  - weakly stationary: some ``v ≥ 0, v ≠ 0`` has ``vᵀJ = 0`` (0 is in the
    convex hull of the rows); equivalently no ``d`` has ``J d > 0``;
  - not weakly stationary ('none'): some ``d`` has ``J d > 0``.

Kinds (``KINDS``; which shapes each applies to is in ``applicable``):
  strong      ``J = (I - q qᵀ) M``, ``q = v/‖v‖``, ``v > 0`` random:
              ``vᵀJ = 0``.
  weak        a strongly stationary block of 2..T-1 rows inside ``u⊥`` and the
              other rows with a positive component along ``u``: ``v ≥ 0``
              supported on the block, and ``J u ≥ 0`` with ``J u ≠ 0``
              (so not strongly stationary).
  none        every row ``m_t⊥ + a_t u`` with ``a_t ∈ [0.1, 1]·‖m_t⊥‖``:
              ``J u > 0``; pairs of rows may still conflict.
  near_weak   as ``none`` with ``a_t ∈ [1e-3, 2e-3]·‖m_t⊥‖``: strongly
              conflicting rows, an ill-conditioned projection problem.
  generic     Gaussian rows.
  ill         ``A diag(s) Bᵀ`` (``2 ≤ T ≤ P``), ``s`` log-spaced in [1e-2, 1]
              plus one 1e-6: float32's documented truncation
              (``s² ≤ s_max² T eps``) drops that mode, float64 keeps it;
              no singular value lies within 10x of either threshold.
  rank1       ``a bᵀ`` with Gaussian ``a`` (mixed signs: stationary).
  rank1_pos   ``a bᵀ`` with ``a > 0`` (all rows along ``b``: 'none').
  rank_tm2    rank ``T - 2`` (Gaussian factors), ``T ≥ 3``.
  duplicate   Gaussian with row 1 equal to row 0.
  zero_row    Gaussian with row 0 zero (weakly stationary).
  zero        the zero matrix (strongly stationary by definition).

The stationarity of the constructed kinds is known by construction; that of
the others is computed by ``classify_stationarity`` (an LP), and the
constructed labels are cross-checked against it by the tests.

Every case is built in float64; ``Case.as_dtype`` gives the matrix in the
dtype under test. Scales multiply the float64 matrix (``scale=0`` is the
zero matrix).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from scipy import optimize

SHAPES = ((1, 1), (2, 2), (2, 5), (3, 3), (5, 7), (9, 11), (10, 100),
          (20, 100), (20, 10))
# The default profile's shapes (each shape and dtype costs one compilation of
# every method): T = 1, 2, 3, 5, 9, 20, with P < T, P = T and P > T.
DEFAULT_SHAPES = ((1, 1), (2, 2), (3, 3), (5, 7), (9, 11), (20, 100),
                  (20, 10))
SCALES = (1e-10, 1e3, 1e5, 1e10, 1e15)
KINDS = ('strong', 'weak', 'none', 'near_weak', 'generic', 'ill',
         'rank1', 'rank1_pos', 'rank_tm2', 'duplicate', 'zero_row', 'zero')
CONSTRUCTED = {'strong': 'strong', 'weak': 'weak', 'none': 'none',
               'near_weak': 'none', 'rank1_pos': 'none', 'zero': 'strong'}


def profile() -> str:
  """'default' (fast) or 'thorough', from ``HYPOTHESIS_PROFILE``."""
  return ('thorough' if os.environ.get('HYPOTHESIS_PROFILE') == 'thorough'
          else 'default')


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
  """One test matrix.

  Attributes:
    kind: one of ``KINDS``.
    shape: ``(T, P)``.
    seed: the sampler's seed.
    scale: the factor the base matrix was multiplied by.
    matrix: float64 ``[T, P]``.
    stationarity: 'strong', 'weak' or 'none'.
  """
  kind: str
  shape: tuple[int, int]
  seed: int
  scale: float
  matrix: np.ndarray
  stationarity: str

  @property
  def name(self) -> str:
    t, p = self.shape
    return f'{self.kind}-{t}x{p}-s{self.seed}-x{self.scale:g}'

  def as_dtype(self, dtype) -> np.ndarray:
    """The matrix rounded to ``dtype`` (float32 or float64)."""
    return self.matrix.astype(dtype)

  def scaled(self, factor: float) -> 'Case':
    return dataclasses.replace(self, scale=self.scale * factor,
                               matrix=self.matrix * factor,
                               stationarity=('strong' if factor == 0 else
                                             self.stationarity))

  def __repr__(self) -> str:
    return f'Case({self.name}, {self.stationarity})'


################################################################################
# Constructions.


def unit_vector(rng, p: int) -> np.ndarray:
  u = rng.standard_normal(p)
  return u / np.linalg.norm(u)


def strongly_stationary(rng, t: int, p: int) -> tuple[np.ndarray, np.ndarray]:
  """``(J, v)`` with ``v > 0`` and ``vᵀJ = 0`` (to rounding)."""
  m = rng.standard_normal((t, p))
  v = rng.uniform(0.5, 2.0, t)
  q = v / np.linalg.norm(v)
  return m - np.outer(q, q @ m), v


def orthogonal_part(m: np.ndarray, u: np.ndarray) -> np.ndarray:
  return m - np.outer(m @ u, u)


def not_weakly_stationary(rng, t: int, p: int, margin=(0.1, 1.0)
                          ) -> tuple[np.ndarray, np.ndarray]:
  """``(J, u)`` with ``J u > 0``: rows ``m_t⊥ + a_t u``."""
  u = unit_vector(rng, p)
  m = orthogonal_part(rng.standard_normal((t, p)), u)
  size = np.linalg.norm(m, axis=1)
  size = np.where(size > 0, size, 1.0)   # P = 1: no orthogonal part
  a = rng.uniform(*margin, t) * size
  return m + np.outer(a, u), u


def weakly_not_strongly_stationary(rng, t: int, p: int
                                   ) -> tuple[np.ndarray, np.ndarray,
                                              np.ndarray]:
  """``(J, v, u)``: ``v ≥ 0`` (zeros outside a block) with ``vᵀJ = 0``, and
  ``J u ≥ 0``, ``J u ≠ 0``. Needs ``T ≥ 3`` and ``P ≥ 2``."""
  if t < 3 or p < 2:
    raise ValueError('weak stationarity without strong needs T>=3, P>=2')
  k = int(rng.integers(2, t))   # block size in [2, T-1]
  rows = rng.permutation(t)
  block, rest = rows[:k], rows[k:]
  u = unit_vector(rng, p)
  j = np.zeros((t, p))
  sub, v_block = strongly_stationary(rng, k, p)
  j[block] = orthogonal_part(sub, u)   # still v_blockᵀ(.) = 0, inside u⊥
  m = orthogonal_part(rng.standard_normal((t - k, p)), u)
  size = np.linalg.norm(m, axis=1)
  j[rest] = m + np.outer(rng.uniform(0.1, 1.0, t - k) * size, u)
  v = np.zeros(t)
  v[block] = v_block
  return j, v, u


def orthonormal(rng, n: int, k: int) -> np.ndarray:
  q, r = np.linalg.qr(rng.standard_normal((n, k)))
  return q * np.sign(np.diag(r))


def applicable(kind: str, t: int, p: int) -> bool:
  """Whether ``kind`` can be built (and is distinct) at shape ``(T, P)``."""
  return {
      'strong': t >= 2,
      'weak': t >= 3 and p >= 2,
      'rank1': t >= 2,
      'rank_tm2': t >= 3,
      'duplicate': t >= 2,
      'zero_row': t >= 2,
      'ill': 2 <= t <= p,
      'generic': True,
  }.get(kind, True)


def build(kind: str, t: int, p: int, seed: int) -> np.ndarray:
  """The base (scale 1) float64 matrix of ``kind``."""
  rng = np.random.default_rng([seed, t, p, KINDS.index(kind)])
  if kind == 'strong':
    return strongly_stationary(rng, t, p)[0]
  if kind == 'weak':
    return weakly_not_strongly_stationary(rng, t, p)[0]
  if kind == 'none':
    return not_weakly_stationary(rng, t, p)[0]
  if kind == 'near_weak':
    return not_weakly_stationary(rng, t, p, (1e-3, 2e-3))[0]
  if kind == 'generic':
    return rng.standard_normal((t, p))
  if kind == 'ill':
    s = np.append(np.logspace(0, -2, t - 1), 1e-6)
    return orthonormal(rng, t, t) @ np.diag(s) @ orthonormal(rng, p, t).T
  if kind == 'rank1':
    a = rng.standard_normal(t)
    a[0], a[1] = abs(a[0]), -abs(a[1])   # both signs: strongly stationary
    return np.outer(a, rng.standard_normal(p))
  if kind == 'rank1_pos':
    return np.outer(rng.uniform(0.2, 2.0, t), rng.standard_normal(p))
  if kind == 'rank_tm2':
    return rng.standard_normal((t, t - 2)) @ rng.standard_normal((t - 2, p))
  if kind == 'duplicate':
    j = rng.standard_normal((t, p))
    j[1] = j[0]
    return j
  if kind == 'zero_row':
    j = rng.standard_normal((t, p))
    j[0] = 0
    return j
  if kind == 'zero':
    return np.zeros((t, p))
  raise ValueError(kind)


################################################################################
# Classification.


def classify_stationarity(matrix) -> str:
  """'strong', 'weak' or 'none' by linear programming (HiGHS).

  On the unit rows ``u_t`` (zero rows: weakly stationary at once; strongly
  iff the other rows are), solves ``max s  s.t.  Uᵀy = 0, Σy = 1,
  y ≥ s·1, y ≥ 0``: infeasible means 'none'; ``s* > 1e-9`` 'strong'.
  HiGHS' feasibility tolerance (1e-7) absorbs the rounding of the
  constructions.
  """
  j = np.asarray(matrix, np.float64)
  norms = np.linalg.norm(j, axis=1)
  present = norms > 0
  if not present.any():
    return 'strong'
  u = j[present] / norms[present, None]
  n, p = u.shape
  # variables (y_1..y_n, s); minimise -s
  cost = np.zeros(n + 1)
  cost[-1] = -1
  a_eq = np.zeros((p + 1, n + 1))
  a_eq[:p, :n] = u.T
  a_eq[p, :n] = 1
  b_eq = np.zeros(p + 1)
  b_eq[p] = 1
  a_ub = np.hstack([-np.eye(n), np.ones((n, 1))])   # s - y_i ≤ 0
  res = optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq,
                         b_eq=b_eq, bounds=[(0, None)] * n + [(None, None)],
                         method='highs')
  if res.status == 2:
    return 'weak' if not present.all() else 'none'
  if res.status != 0:
    raise RuntimeError(f'linprog failed: {res.message}')
  return 'strong' if -res.fun > 1e-9 else 'weak'


def make_case(kind: str, shape, seed: int, scale: float = 1.0) -> Case:
  t, p = shape
  base = build(kind, t, p, seed)
  label = CONSTRUCTED.get(kind) or classify_stationarity(base)
  return Case(kind, (t, p), seed, 1.0, base, label).scaled(scale)


################################################################################
# Suites.


def base_cases(shapes=SHAPES, seeds=(0,), kinds=KINDS) -> list[Case]:
  """Every applicable ``kind`` at every shape and seed, scale 1."""
  return [make_case(kind, shape, seed)
          for seed in seeds for shape in shapes for kind in kinds
          if applicable(kind, *shape)]


SCALED_SHAPES = ((2, 2), (5, 7), (20, 100), (20, 10))
SCALED_KINDS = ('strong', 'weak', 'none', 'rank1_pos', 'duplicate')


def scaled_cases(shapes=SCALED_SHAPES, seeds=(0,), kinds=SCALED_KINDS,
                 scales=SCALES) -> list[Case]:
  """The base cases of ``kinds`` multiplied by every scale."""
  return [c.scaled(s) for c in base_cases(shapes, seeds, kinds)
          for s in scales]


def shapes(which: str | None = None) -> tuple[tuple[int, int], ...]:
  """The shapes of a profile's suite."""
  return SHAPES if (which or profile()) == 'thorough' else DEFAULT_SHAPES


def suite(which: str | None = None) -> list[Case]:
  """The case suite of a profile: 'default' (seed 0, ``DEFAULT_SHAPES``;
  the scales on four shapes and five kinds) or 'thorough' (seeds 0-2, every
  shape, every kind at every scale)."""
  which = which or profile()
  if which == 'thorough':
    seeds = (0, 1, 2)
    return (base_cases(seeds=seeds) +
            scaled_cases(SHAPES, seeds, KINDS))
  return base_cases(DEFAULT_SHAPES) + scaled_cases()
