"""Tests of ``mtl_optax.diagnostics`` against direct numpy computations on the
gradient matrix (SVD condition numbers, pairwise norms and cosines)."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_optax import diagnostics

F32_EPS = float(np.finfo(np.float32).eps)
F64_EPS = float(np.finfo(np.float64).eps)

# One compilation per shape and dtype for the whole file.
from_gramian = jax.jit(diagnostics.from_gramian)
dominance_rate = jax.jit(diagnostics.dominance_rate)

FIELDS = ('dominance_rate', 'gradient_magnitude_similarity', 'min_cosine',
          'max_norm_ratio')


# ----------------------------------------------------------------------------
# Numpy references.
# ----------------------------------------------------------------------------


def gram32(g):
  g = np.asarray(g, np.float64)
  return jnp.asarray((g @ g.T).astype(np.float32))


def np_condition(g, eps=F32_EPS):
  """σ_max / σ_min over the singular values with σ² > σ_max² T eps."""
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  if s.max() == 0:
    return 1.0
  kept = s[s**2 > s.max()**2 * g.shape[0] * eps]
  return kept.max() / kept.min()


def np_rank(g, eps=F32_EPS):
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  if s.max() == 0:
    return 0
  return int(np.sum(s**2 > s.max()**2 * g.shape[0] * eps))


def np_pairwise(g):
  """(min cosine, min magnitude similarity, max norm ratio) by loops."""
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  norms = np.linalg.norm(g, axis=1)
  cosines, gms = [1.0], [1.0]
  for i in range(t):
    for j in range(t):
      if i == j:
        continue
      ni, nj = norms[i], norms[j]
      cosines.append(g[i] @ g[j] / (ni * nj) if ni > 0 and nj > 0 else 0.0)
      gms.append(2 * ni * nj / (ni**2 + nj**2) if ni + nj > 0 else 1.0)
  min_cos = min(cosines) if t > 1 else 1.0
  min_gms = min(gms) if t > 1 else 1.0
  return min_cos, min_gms


def np_norm_ratio(g, eps=F32_EPS):
  norms = np.linalg.norm(np.asarray(g, np.float64), axis=1)
  if norms.max() == 0:
    return 1.0
  if norms.min() == 0:
    return 1 / eps
  return min(norms.max() / norms.min(), 1 / eps)


def orthonormal(rng, n, k):
  q, r = np.linalg.qr(rng.standard_normal((n, k)))
  return q * np.sign(np.diag(r))


def conditioned(rng, t, p, kappa, s=None):
  s = np.geomspace(1, 1 / kappa, t) if s is None else s
  return orthonormal(rng, t, t) @ np.diag(s) @ orthonormal(rng, p, t).T


def values(diag):
  return {f: float(getattr(diag, f)) for f in FIELDS}


# ----------------------------------------------------------------------------
# Dominance rate.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('t,p', [(2, 10), (3, 10), (5, 20)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_dominance_rate_is_condition_number(t, p, seed):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, p)) * rng.uniform(0.2, 5, (t, 1))
  np.testing.assert_allclose(float(dominance_rate(gram32(g))),
                             np.linalg.cond(g), rtol=1e-3)


@pytest.mark.parametrize('kappa', [10.0, 100.0])
@pytest.mark.parametrize('seed', [0, 1])
def test_dominance_rate_ill_conditioned_float32(kappa, seed):
  rng = np.random.default_rng(seed)
  g = conditioned(rng, 5, 20, kappa)
  np.testing.assert_allclose(np.linalg.cond(g), kappa, rtol=1e-8)
  np.testing.assert_allclose(float(dominance_rate(gram32(g))), kappa,
                             rtol=2e-3)


@pytest.mark.parametrize('kappa', [1e4, 1e6])
def test_dominance_rate_ill_conditioned_float64(kappa):
  rng = np.random.default_rng(7)
  g = conditioned(rng, 5, 20, kappa, s=np.array([1, .5, .2, .1, 1 / kappa]))
  with jax.enable_x64(True):
    diag = from_gramian(jnp.asarray(g @ g.T, jnp.float64))
    assert diag.dominance_rate.dtype == jnp.float64
    np.testing.assert_allclose(float(diag.dominance_rate), kappa, rtol=1e-3)
    assert int(diag.rank) == 5
  # In float32 the smallest mode (below sqrt(T eps) σ_max) is not counted.
  diag32 = from_gramian(gram32(g))
  assert int(diag32.rank) == np_rank(g) == 4
  np.testing.assert_allclose(float(diag32.dominance_rate), 10.0, rtol=1e-3)


def test_dominance_rate_orthogonal_equal_norms_is_one():
  rng = np.random.default_rng(0)
  g = 3.7 * orthonormal(rng, 20, 5).T
  np.testing.assert_allclose(float(dominance_rate(gram32(g))), 1.0,
                             rtol=1e-5)
  # Orthogonal, unequal norms: the condition number is the norm ratio.
  scales = np.array([1.0, 2.0, 0.5, 4.0, 1.5])
  gs = g * scales[:, None]
  np.testing.assert_allclose(float(dominance_rate(gram32(gs))), 8.0,
                             rtol=1e-5)


@pytest.mark.parametrize('seed', [0, 1])
def test_dominance_rate_rank_deficient(seed):
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((3, 20))
  g = np.concatenate([base, base[:1], -2 * base[2:3]])    # T = 5, rank 3
  assert np_rank(g) == 3
  diag = from_gramian(gram32(g))
  assert np.isfinite(float(diag.dominance_rate))
  np.testing.assert_allclose(float(diag.dominance_rate), np_condition(g),
                             rtol=1e-3)
  assert int(diag.rank) == 3


@pytest.mark.parametrize('t', [1, 3])
def test_zero_system(t):
  diag = from_gramian(jnp.zeros((t, t)))
  assert float(diag.dominance_rate) == 1.0
  assert float(diag.max_norm_ratio) == 1.0
  assert float(diag.gradient_magnitude_similarity) == 1.0
  assert int(diag.rank) == 0
  # A zero gradient has cosine 0 with everything (1 when T = 1).
  assert float(diag.min_cosine) == (1.0 if t == 1 else 0.0)


# ----------------------------------------------------------------------------
# Pairwise diagnostics.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('t', [2, 3, 5])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pairwise_diagnostics_match_numpy(t, seed):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, 3 * t)) * rng.uniform(0.1, 10, (t, 1))
  k = gram32(g)
  min_cos, min_gms = np_pairwise(g)
  np.testing.assert_allclose(float(diagnostics.min_cosine(k)), min_cos,
                             atol=1e-5)
  np.testing.assert_allclose(
      float(diagnostics.gradient_magnitude_similarity(k)), min_gms,
      rtol=1e-5)
  np.testing.assert_allclose(float(diagnostics.max_norm_ratio(k)),
                             np_norm_ratio(g), rtol=1e-5)
  diag = from_gramian(k)
  np.testing.assert_allclose(float(diag.min_cosine), min_cos, atol=1e-5)
  np.testing.assert_allclose(float(diag.gradient_magnitude_similarity),
                             min_gms, rtol=1e-5)
  np.testing.assert_allclose(float(diag.max_norm_ratio), np_norm_ratio(g),
                             rtol=1e-5)
  np.testing.assert_allclose(float(diag.dominance_rate), np.linalg.cond(g),
                             rtol=1e-3)


def test_pairwise_known_values():
  g = np.array([[3., 0.], [0., 1.], [-3., 4.]])     # norms 3, 1, 5
  diag = from_gramian(gram32(g))
  np.testing.assert_allclose(float(diag.min_cosine), -0.6, rtol=1e-6)
  np.testing.assert_allclose(float(diag.gradient_magnitude_similarity),
                             2 * 5 / 26, rtol=1e-6)
  np.testing.assert_allclose(float(diag.max_norm_ratio), 5.0, rtol=1e-6)
  # Parallel gradients: cosine 1, similarity < 1 for unequal norms.
  g = np.array([[1., 1.], [2., 2.]])
  diag = from_gramian(gram32(g))
  np.testing.assert_allclose(float(diag.min_cosine), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(diag.gradient_magnitude_similarity),
                             0.8, rtol=1e-6)


def test_zero_gradient_is_capped_and_finite():
  rng = np.random.default_rng(0)
  g = rng.standard_normal((3, 9))
  g[1] = 0
  diag = from_gramian(gram32(g))
  for f in FIELDS:
    assert np.isfinite(getattr(diag, f)), f
  assert float(diag.max_norm_ratio) == pytest.approx(1 / F32_EPS)
  assert float(diag.gradient_magnitude_similarity) == 0.0
  min_cos, _ = np_pairwise(g)
  np.testing.assert_allclose(float(diag.min_cosine), min(min_cos, 0.0),
                             atol=1e-6)
  assert int(diag.rank) == 2
  np.testing.assert_allclose(float(diag.dominance_rate),
                             np_condition(g), rtol=1e-3)
  # Two zero gradients are similar (1) to each other, not to the third.
  g[2] = 0
  diag = from_gramian(gram32(g))
  assert float(diag.gradient_magnitude_similarity) == 0.0
  assert float(diag.dominance_rate) == pytest.approx(1.0)
  with jax.enable_x64(True):
    diag64 = from_gramian(jnp.asarray(g @ g.T, jnp.float64))
    assert float(diag64.max_norm_ratio) == pytest.approx(1 / F64_EPS)


def test_norm_ratio_cap_without_zero_gradient():
  # Norms 1 and 1e-8: the ratio 1e8 exceeds 1/eps32 ≈ 8.4e6.
  k = jnp.asarray(np.diag([1.0, 1e-16]).astype(np.float32))
  assert float(k[1, 1]) > 0
  assert float(diagnostics.max_norm_ratio(k)) == pytest.approx(1 / F32_EPS)
  assert np.isfinite(float(dominance_rate(k)))
  k = gram32(np.array([[1., 0.], [0., 1e-3]]))
  np.testing.assert_allclose(float(diagnostics.max_norm_ratio(k)), 1e3,
                             rtol=1e-5)


def test_single_task_gives_ones():
  diag = from_gramian(jnp.array([[4.0]]))
  for f in FIELDS:
    assert float(getattr(diag, f)) == 1.0, f
  assert int(diag.rank) == 1


def test_from_gramian_fields_and_dtypes():
  rng = np.random.default_rng(3)
  g = rng.standard_normal((4, 12))
  k = gram32(g)
  diag = from_gramian(k)
  assert isinstance(diag, diagnostics.Diagnostics)
  for f in FIELDS:
    assert getattr(diag, f).dtype == jnp.float32
    assert getattr(diag, f).shape == ()
  assert diag.rank.dtype == jnp.int32 and int(diag.rank) == 4
  np.testing.assert_allclose(float(diag.dominance_rate),
                             float(diagnostics.dominance_rate(k)), rtol=1e-6)
  # The docstring example.
  g2 = jnp.array([[2., 0.], [0., 1.]])
  assert float(diagnostics.from_gramian(g2 @ g2.T).dominance_rate) == 2.0


def test_empty():
  diag = diagnostics.empty()
  for f in FIELDS:
    assert float(getattr(diag, f)) == 1.0
  assert int(diag.rank) == 0
  with jax.enable_x64(True):
    assert diagnostics.empty(jnp.float64).dominance_rate.dtype == jnp.float64


# ----------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------


@st.composite
def systems(draw):
  t = draw(st.sampled_from([2, 3, 5]))
  rank = draw(st.integers(0, t))
  seed = draw(st.integers(0, 2**31 - 1))
  log_scale = draw(st.floats(-8, 8))
  zero_row = draw(st.booleans())
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((t, rank)) @ rng.standard_normal((rank, 10))
  g *= rng.uniform(0.2, 5, (t, 1))
  if zero_row:
    g[-1] = 0
  return g * 10.0**log_scale, rng.permutation(t)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(systems())
def test_diagnostics_finite_and_invariant(case):
  """Finite for any PSD Gramian (rank-deficient, zero rows, 16 decades of
  scale); invariant under task permutation; equal to numpy."""
  g, perm = case
  diag = from_gramian(gram32(g))
  assert all(np.isfinite(v) for v in values(diag).values())
  assert 0 <= int(diag.rank) <= g.shape[0]
  perm_vals = values(from_gramian(gram32(g[perm])))
  for f, v in values(diag).items():
    np.testing.assert_allclose(perm_vals[f], v, rtol=1e-4, atol=1e-5)
  min_cos, min_gms = np_pairwise(g)
  np.testing.assert_allclose(float(diag.min_cosine), min_cos, atol=1e-4)
  np.testing.assert_allclose(float(diag.gradient_magnitude_similarity),
                             min_gms, atol=1e-4)
  np.testing.assert_allclose(float(diag.max_norm_ratio), np_norm_ratio(g),
                             rtol=1e-4)
  assert float(diag.dominance_rate) >= 1 - 1e-6
