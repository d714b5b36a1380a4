"""Tests of the other weighting families: IMTL-G, CAGrad, Nash-MTL/FairGrad,
UPGrad/DualProj, GradVac, ConFIG and the loss-based weightings.

As in ``test_weightings.py``, the references are direct numpy/scipy
implementations on the gradient matrix ``G`` (rows are task gradients,
``K = G Gᵀ``, coefficients ``c`` give ``d = c @ G``): the papers' closed forms,
scipy solvers of the defining optimisation problems, and the vector form of
the update rules. The library's own helpers are never used as references.
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
from mtl_optax.weightings import loss_based as LB
from mtl_optax.methods.cagrad import solve_cagrad
from mtl_optax.methods.cagrad import solve_cagrad_dual

# Jitted entry points, compiled once per shape (and static argument) and
# shared by the tests.
imtl_g = jax.jit(W.imtl_g)
cagrad = jax.jit(W.cagrad, static_argnames=('rescale', 'max_iters'))
cagrad_dual = jax.jit(solve_cagrad_dual, static_argnames='max_iters')
nash_mtl = jax.jit(W.nash_mtl, static_argnames='max_iters')
fairgrad = jax.jit(W.fairgrad, static_argnames=('alpha', 'max_iters'))
power_balance = jax.jit(W.solve_power_balance,
                        static_argnames=('alpha', 'max_iters', 'tol',
                                         'max_weight'))
upgrad = jax.jit(W.upgrad, static_argnames='max_iters')
dualproj = jax.jit(W.dualproj, static_argnames='max_iters')
gradvac = jax.jit(W.gradvac)
pcgrad = jax.jit(W.pcgrad)
config = jax.jit(W.conflict_free)


# ----------------------------------------------------------------------------
# Data and small helpers.
# ----------------------------------------------------------------------------


def f32(x):
  return jnp.asarray(np.asarray(x, np.float64).astype(np.float32))


def gram32(g):
  """The Gramian computed in float64 and rounded to float32."""
  g = np.asarray(g, np.float64)
  return f32(g @ g.T)


def c64(c):
  return np.asarray(c, np.float64)


def rel_err(x, ref):
  return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


def units(g):
  return g / np.linalg.norm(g, axis=1, keepdims=True)


def random_g(rng, t, p):
  """Gaussian gradients with norms over about a decade."""
  return rng.standard_normal((t, p)) * rng.uniform(0.3, 3, (t, 1))


def conflicting_g(rng, t, p):
  """Gradients in a low dimension with a strongly conflicting pair
  (``g_1 ≈ -0.7 g_0``) and norms over a decade: the sum lies outside the
  dual cone and the mean gradient conflicts with some task."""
  x = rng.standard_normal((t, p))
  x[1] = -0.7 * x[0] + 0.4 * rng.standard_normal(p)
  return x * rng.uniform(0.3, 3, (t, 1))


def np_orders(t, rng):
  return np.stack([rng.permutation(t) for _ in range(t)])


def simplex_min(fun, t, jac=None, starts=None):
  """``argmin_{w∈Δ} fun(w)`` by SLSQP from several starts (best kept)."""
  starts = [np.full(t, 1 / t)] + list(starts or [])
  best = None
  for w0 in starts:
    res = optimize.minimize(
        fun, w0, jac=jac, bounds=[(0, 1)] * t, method='SLSQP',
        constraints=[{'type': 'eq', 'fun': lambda w: w.sum() - 1,
                      'jac': lambda w: np.ones_like(w)}],
        options={'ftol': 1e-15, 'maxiter': 2000})
    w = np.clip(res.x, 0, None)
    w /= w.sum()
    if best is None or fun(w) < fun(best):
      best = w
  return best


# ----------------------------------------------------------------------------
# IMTL-G.
# ----------------------------------------------------------------------------


def np_imtl_paper(g):
  """IMTL-G's closed form (Liu et al., ICLR 2021, Eq. 9):
  ``D = [g_1 - g_t]_{t≥2}``, ``U = [u_1 - u_t]_{t≥2}``,
  ``α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 - Σ α_{2:T}``."""
  g = np.asarray(g, np.float64)
  u = units(g)
  d_mat = g[0] - g[1:]
  u_mat = u[0] - u[1:]
  rest = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
  return np.concatenate([[1 - rest.sum()], rest])


@pytest.mark.parametrize('t,p', [(2, 7), (3, 12), (5, 20)])
@pytest.mark.parametrize('seed', [0, 1])
def test_imtl_g_matches_paper_closed_form(t, p, seed):
  rng = np.random.default_rng(seed)
  g = random_g(rng, t, p)
  ref = np_imtl_paper(g)
  c = c64(imtl_g(gram32(g)))
  np.testing.assert_allclose(c.sum(), 1, rtol=1e-5)
  np.testing.assert_allclose(c, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  # Equal projections of d on every unit task gradient.
  proj = units(g) @ (c @ g)
  np.testing.assert_allclose(proj, proj.mean(), rtol=1e-4)
  # ... which the uniform weights (the mean) do not have.
  proj_mean = units(g) @ g.mean(0)
  assert np.ptp(proj_mean) > 1e-2 * np.abs(proj_mean).max()


def test_imtl_g_float64_exact():
  rng = np.random.default_rng(3)
  g = random_g(rng, 5, 20)
  with jax.enable_x64(True):
    c = c64(imtl_g(jnp.asarray(g @ g.T, jnp.float64)))
  np.testing.assert_allclose(c, np_imtl_paper(g), rtol=1e-9, atol=1e-12)


def test_imtl_g_docstring_example():
  g = np.array([[2., 0.], [0., 1.]])
  np.testing.assert_allclose(c64(imtl_g(gram32(g))), [1 / 3, 2 / 3],
                             rtol=1e-6)


@pytest.mark.parametrize('zero', [0, 2, 4])
def test_imtl_g_zero_gradient(zero):
  rng = np.random.default_rng(zero)
  g = random_g(rng, 5, 20)
  g[zero] = 0
  c = c64(imtl_g(gram32(g)))
  assert np.all(np.isfinite(c))
  assert c[zero] == 0
  np.testing.assert_allclose(c.sum(), 1, rtol=1e-5)
  rest = np.delete(np.arange(5), zero)
  # The other tasks get IMTL-G of the system without the zero gradient.
  ref = np_imtl_paper(g[rest])
  np.testing.assert_allclose(c[rest], ref, rtol=1e-4,
                             atol=1e-4 * np.abs(ref).max())


def test_imtl_g_duplicated_tasks():
  rng = np.random.default_rng(7)
  base = random_g(rng, 3, 12)
  g = np.stack([base[0], base[1], base[0], base[2], base[1]])
  c = c64(imtl_g(gram32(g)))
  assert np.all(np.isfinite(c))
  np.testing.assert_allclose(c.sum(), 1, rtol=1e-5)
  # The duplicates split their weight evenly (minimum-norm solution) and the
  # direction is IMTL-G of the distinct tasks.
  np.testing.assert_allclose(c[0], c[2], rtol=1e-4)
  np.testing.assert_allclose(c[1], c[4], rtol=1e-4)
  ref = np_imtl_paper(base) @ base
  assert rel_err(c @ g, ref) < 1e-4


def test_imtl_g_all_zero_is_uniform():
  c = c64(imtl_g(jnp.zeros((3, 3), jnp.float32)))
  np.testing.assert_allclose(c, np.full(3, 1 / 3))


# ----------------------------------------------------------------------------
# CAGrad.
# ----------------------------------------------------------------------------


def cagrad_objective(g, radius_factor):
  k = g @ g.T
  t = g.shape[0]
  b = k @ np.full(t, 1 / t)
  radius = radius_factor * np.linalg.norm(g.mean(0))

  def fun(w):
    return w @ b + radius * np.sqrt(max(w @ k @ w, 0))

  def jac(w):
    kw = k @ w
    return b + radius * kw / np.sqrt(max(w @ kw, 1e-300))
  return fun, jac


def np_cagrad(g, radius_factor, rescale, rng):
  """The dual solved by scipy SLSQP, then the paper's update
  ``d = g0 + (c ‖g0‖/‖G w*‖) G w*`` and the authors' rescaling."""
  t = g.shape[0]
  fun, jac = cagrad_objective(g, radius_factor)
  w = simplex_min(fun, t, jac, starts=[rng.dirichlet(np.ones(t))
                                       for _ in range(3)])
  g0 = g.mean(0)
  gw = w @ g
  d = g0 + radius_factor * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
  d = d / {0: 1, 1: 1 + radius_factor**2, 2: 1 + radius_factor}[rescale]
  return w, d, fun(w)


@pytest.mark.parametrize('t,p', [(3, 6), (5, 8)])
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('radius_factor', [0.4, 0.8])
def test_cagrad_dual_matches_slsqp(t, p, seed, radius_factor):
  rng = np.random.default_rng(seed)
  g = conflicting_g(rng, t, p)
  fun, _ = cagrad_objective(g, radius_factor)
  _, _, best = np_cagrad(g, radius_factor, 0, rng)
  w = c64(cagrad_dual(gram32(g), radius_factor))
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(), 1, rtol=1e-5)
  np.testing.assert_allclose(fun(w), best, rtol=1e-5)


@pytest.mark.parametrize('rescale', [0, 1, 2])
@pytest.mark.parametrize('seed', [0, 1])
def test_cagrad_direction_matches_formula(rescale, seed):
  rng = np.random.default_rng(10 + seed)
  t, p, radius_factor = 5, 8, 0.5
  g = conflicting_g(rng, t, p)
  _, ref, _ = np_cagrad(g, radius_factor, rescale, rng)
  c = c64(cagrad(gram32(g), radius_factor, rescale=rescale))
  assert rel_err(c @ g, ref) < 1e-3


@pytest.mark.parametrize('rescale', [0, 1, 2])
def test_cagrad_zero_radius_is_mean(rescale):
  rng = np.random.default_rng(4)
  g = conflicting_g(rng, 5, 8)
  c = c64(cagrad(gram32(g), 0.0, rescale=rescale))
  np.testing.assert_allclose(c, np.full(5, 0.2), rtol=1e-6)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_cagrad_maximises_worst_improvement(seed):
  """CAGrad's update maximises ``min_t <d, g_t>`` over the ball
  ``‖d - g0‖ ≤ c‖g0‖``: it lies on the sphere, improves the worst task at
  least as much as ``g0`` (the ball's centre), and by strong duality its
  worst improvement is the dual optimum."""
  rng = np.random.default_rng(20 + seed)
  t, p, radius_factor = 5, 8, 0.5
  g = conflicting_g(rng, t, p)
  g0 = g.mean(0)
  assert np.min(g @ g0) < 0       # the mean conflicts with a task
  _, _, dual_value = np_cagrad(g, radius_factor, 0, rng)
  d = c64(cagrad(gram32(g), radius_factor, rescale=0)) @ g
  np.testing.assert_allclose(np.linalg.norm(d - g0),
                             radius_factor * np.linalg.norm(g0), rtol=1e-4)
  worst = np.min(g @ d)
  assert worst > np.min(g @ g0) + 0.1 * abs(np.min(g @ g0))
  scale = np.linalg.norm(g, axis=1).max() * np.linalg.norm(g0)
  np.testing.assert_allclose(worst, dual_value, atol=1e-4 * scale)
  # No point of the ball does better (random points on the sphere).
  dirs = units(rng.standard_normal((2000, p)))
  ball = g0 + radius_factor * np.linalg.norm(g0) * dirs
  assert np.max(np.min(ball @ g.T, axis=1)) <= worst + 1e-4 * scale


def test_cagrad_rank_deficient_exact():
  """Eight tasks in four dimensions (K of rank 4): first-order dual solvers
  stalled here (plain projected gradient 19% above the optimum after 100
  iterations); the homotopy reaches the dual optimum in a few pivots."""
  rng = np.random.default_rng(507)
  g = conflicting_g(rng, 8, 4)
  fun, _ = cagrad_objective(g, 0.5)
  _, _, best = np_cagrad(g, 0.5, 0, rng)
  solution = jax.jit(solve_cagrad)(gram32(g), 0.5)
  assert bool(solution.converged)
  assert 1 <= int(solution.iterations) <= 5 * 8 + 20
  w = c64(cagrad_dual(gram32(g), 0.5))
  np.testing.assert_allclose(fun(w), best, rtol=1e-5)


def test_cagrad_invalid_rescale():
  k = jnp.eye(3)
  for rescale in (3, -1, 'none'):
    with pytest.raises(ValueError):
      W.cagrad(k, rescale=rescale)
    with pytest.raises(ValueError):
      cagrad(k, rescale=rescale)


# ----------------------------------------------------------------------------
# Nash-MTL and FairGrad.
# ----------------------------------------------------------------------------


def power_residual(k, w, alpha=1.0):
  """Relative residual of ``K w = w^(-1/α)`` (elementwise)."""
  w = np.asarray(w, np.float64)
  return np.max(np.abs((k @ w) * w**(1 / alpha) - 1))


def np_power_balance(k, alpha=1.0):
  """An independent root solve of ``K w - w^(-1/α) = 0`` on ``w > 0``."""
  t = k.shape[0]
  res = optimize.least_squares(
      lambda w: k @ w - w**(-1 / alpha), np.ones(t),
      jac=lambda w: k + np.diag(w**(-1 - 1 / alpha) / alpha),
      bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
  return res.x


@pytest.mark.parametrize('t', [2, 3, 5, 10])
def test_nash_mtl_bargaining_solution_and_scale_invariance(t):
  rng = np.random.default_rng(t)
  g = random_g(rng, t, 2 * t + 3)
  k = g @ g.T
  k_tilde = k / np.linalg.norm(k)
  ref = np_power_balance(k_tilde)
  assert power_residual(k_tilde, ref) < 1e-9
  alphas = {}
  for scale in (1e-3, 1.0, 1e3):
    a = c64(nash_mtl(gram32(scale * g)))
    assert np.all(a > 0)
    assert power_residual(k_tilde, a) < 1e-3
    np.testing.assert_allclose(a, ref, rtol=1e-3)
    alphas[scale] = a
  np.testing.assert_allclose(alphas[1e-3], alphas[1.0], rtol=1e-4)
  np.testing.assert_allclose(alphas[1e3], alphas[1.0], rtol=1e-4)


@pytest.mark.parametrize('seed', [0, 1])
def test_nash_mtl_warm_start(seed):
  rng = np.random.default_rng(30 + seed)
  g = conflicting_g(rng, 5, 8)
  k = gram32(g)
  cold = c64(nash_mtl(k))
  for init in (cold, rng.uniform(0.05, 20, 5), 1e3 * np.ones(5)):
    warm = c64(nash_mtl(k, f32(init)))
    np.testing.assert_allclose(warm, cold, rtol=1e-4)
  # Started at the solution, one (or no) Newton step keeps it there.
  np.testing.assert_allclose(c64(nash_mtl(k, f32(cold), max_iters=1)), cold,
                             rtol=1e-4)


@pytest.mark.parametrize('seed', [0, 1])
def test_nash_mtl_huge_losses(seed):
  """Gradients 1e6 times larger (losses in the millions): the Gramian, about
  1e12 and still a float32 number, is normalised, so α is the same and
  solves ``K̃ α = 1/α``; it does not collapse to ~0."""
  rng = np.random.default_rng(40 + seed)
  g = conflicting_g(rng, 5, 8)
  k_tilde = g @ g.T / np.linalg.norm(g @ g.T)
  a = c64(nash_mtl(gram32(1e6 * g)))
  assert np.all(np.isfinite(a))
  assert a.min() > 0.1
  assert power_residual(k_tilde, a) < 1e-3
  np.testing.assert_allclose(a, np_power_balance(k_tilde), rtol=1e-3)
  # The update Σ α_t g_t scales with the gradients (α does not shrink).
  d = a @ (1e6 * g)
  assert np.linalg.norm(d) > 1e5 * np.linalg.norm(g, axis=1).min()


@pytest.mark.parametrize('seed', [0, 1])
def test_nash_mtl_unequal_task_scales(seed):
  """One task's gradient 100 times larger: its weight is about 100 times
  smaller, still the exact solution."""
  rng = np.random.default_rng(50 + seed)
  g = random_g(rng, 5, 8)
  g[0] *= 100
  k_tilde = g @ g.T / np.linalg.norm(g @ g.T)
  a = c64(nash_mtl(gram32(g)))
  assert power_residual(k_tilde, a) < 1e-3
  np.testing.assert_allclose(a, np_power_balance(k_tilde), rtol=1e-3)


@pytest.mark.parametrize('alpha', [0.5, 2.0, 5.0])
@pytest.mark.parametrize('seed', [0, 1])
def test_power_balance_general_alpha(alpha, seed):
  rng = np.random.default_rng(60 + seed)
  g = conflicting_g(rng, 5, 8)
  k = g @ g.T
  ref = np_power_balance(k, alpha)
  assert power_residual(k, ref, alpha) < 1e-9
  w, iters = power_balance(gram32(g), alpha=alpha)
  assert 0 < int(iters) <= 20
  assert np.all(c64(w) > 0)
  assert power_residual(k, w, alpha) < 1e-3
  np.testing.assert_allclose(c64(w), ref, rtol=1e-3)
  # FairGrad solves the same condition on the raw Gramian.
  fw = c64(fairgrad(gram32(g), alpha=alpha))
  assert power_residual(k, fw, alpha) < 1e-3
  np.testing.assert_allclose(fw, ref, rtol=1e-3)


@pytest.mark.parametrize('alpha', [2.0, 5.0])
def test_power_balance_float32_converges(alpha):
  """Weights spread over three decades (α = 5): the float32 Newton iteration
  still converges to the float64 root, to about eps · cond(K), instead of
  stalling when the decrease of φ falls below its rounding error (it used to
  stop up to 30% away)."""
  worst = 0
  for seed in range(8):
    rng = np.random.default_rng(1000 + seed)
    g = conflicting_g(rng, 5, 8)
    ref = np_power_balance(g @ g.T, alpha)
    w = c64(fairgrad(gram32(g), alpha=alpha))
    worst = max(worst, np.max(np.abs(w / ref - 1)))
  assert worst < 2e-4


@pytest.mark.parametrize('seed', [0, 1])
def test_fairgrad_proportional_fairness_on_raw_gramian(seed):
  """α = 1 on the raw K (not normalised): scaling G by s scales w by 1/s."""
  rng = np.random.default_rng(70 + seed)
  g = conflicting_g(rng, 5, 8)
  for scale in (0.1, 1.0, 10.0):
    k = (scale * g) @ (scale * g).T
    w = c64(fairgrad(gram32(scale * g)))
    assert power_residual(k, w) < 1e-3
    np.testing.assert_allclose(w, np_power_balance(k), rtol=1e-3)
    np.testing.assert_allclose(w * scale, c64(fairgrad(gram32(g))),
                               rtol=1e-3)


def test_fairgrad_zero_gramian():
  np.testing.assert_array_equal(c64(fairgrad(jnp.zeros((5, 5)))), 0)
  np.testing.assert_array_equal(c64(nash_mtl(jnp.zeros((5, 5)))), 0)


@pytest.mark.parametrize('zero', [0, 3])
def test_bargaining_zero_gradient_capped(zero):
  rng = np.random.default_rng(80 + zero)
  g = conflicting_g(rng, 5, 8)
  g[zero] = 0
  rest = np.delete(np.arange(5), zero)
  k = g @ g.T
  k_tilde = k / np.linalg.norm(k)
  for w, kk in ((nash_mtl(gram32(g)), k_tilde), (fairgrad(gram32(g)), k)):
    w = c64(w)
    assert np.all(np.isfinite(w))
    # The zero gradient's weight runs to the cap (it does not affect d).
    assert w[zero] >= 1e5
    assert w[zero] <= 1e6 * (1 + 1e-6)
    # The others solve the system of the non-zero gradients.
    sub = kk[np.ix_(rest, rest)]
    assert power_residual(sub, w[rest]) < 1e-3
    np.testing.assert_allclose(w[rest], np_power_balance(sub), rtol=1e-3)


def test_power_balance_invalid_alpha():
  with pytest.raises(ValueError):
    W.solve_power_balance(jnp.eye(3), alpha=0.0)
  with pytest.raises(ValueError):
    W.fairgrad(jnp.eye(3), alpha=-1.0)


# ----------------------------------------------------------------------------
# UPGrad and DualProj.
# ----------------------------------------------------------------------------


def np_project(g, x):
  """Projection of x onto ``{d : G d ≥ 0}`` from the dual NNLS
  ``min_{v≥0} ‖x + Gᵀ v‖`` (scipy's active-set solver)."""
  v, _ = optimize.nnls(g.T, -x)
  return x + g.T @ v


def slsqp_project(g, x):
  """The same projection from the primal QP, by SLSQP."""
  res = optimize.minimize(
      lambda d: 0.5 * (d - x) @ (d - x), x, jac=lambda d: d - x,
      method='SLSQP',
      constraints=[{'type': 'ineq', 'fun': lambda d: g @ d,
                    'jac': lambda d: g}],
      options={'ftol': 1e-15, 'maxiter': 1000})
  return res.x


def assert_no_conflict(d, g):
  norms = np.linalg.norm(g, axis=1)
  assert np.all(g @ d >= -1e-3 * np.linalg.norm(d) * norms)


@pytest.mark.parametrize('t,p', [(3, 5), (5, 8)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_upgrad_dualproj_match_exact_projection(t, p, seed):
  rng = np.random.default_rng(90 + seed)
  g = conflicting_g(rng, t, p)
  assert np.min(g @ g.T) < 0
  ref_up = sum(np_project(g, gi) for gi in g)
  ref_dp = np_project(g, g.sum(0))
  # The sum conflicts with some task: the projection is not the identity.
  assert rel_err(g.sum(0), ref_dp) > 1e-3
  # The NNLS reference agrees with the primal QP.
  assert rel_err(slsqp_project(g, g.sum(0)), ref_dp) < 1e-6
  k = gram32(g)
  d_up = c64(upgrad(k)) @ g
  d_dp = c64(dualproj(k)) @ g
  assert rel_err(d_up, ref_up) < 2e-3
  assert rel_err(d_dp, ref_dp) < 2e-3
  assert_no_conflict(d_up, g)
  assert_no_conflict(d_dp, g)


@pytest.mark.parametrize('seed', [0, 1])
def test_upgrad_dualproj_preferences(seed):
  rng = np.random.default_rng(100 + seed)
  t, p = 5, 8
  g = conflicting_g(rng, t, p)
  w = rng.uniform(0.2, 3, t)
  k = gram32(g)
  ref_up = sum(wi * np_project(g, gi) for wi, gi in zip(w, g))
  ref_dp = np_project(g, w @ g)
  assert rel_err(c64(upgrad(k, f32(w))) @ g, ref_up) < 2e-3
  assert rel_err(c64(dualproj(k, f32(w))) @ g, ref_dp) < 2e-3
  # A one-hot preference: UPGrad is that task's projected gradient.
  e = np.eye(t)[1]
  assert rel_err(c64(upgrad(k, f32(e))) @ g, np_project(g, g[1])) < 2e-3
  # Default preferences are ones (a sum).
  np.testing.assert_allclose(c64(upgrad(k, f32(np.ones(t)))), c64(upgrad(k)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_upgrad_dualproj_without_conflict_is_sum(seed):
  rng = np.random.default_rng(110 + seed)
  t, p = 5, 8
  g = 3 * rng.standard_normal(p)[None] + rng.standard_normal((t, p))
  assert np.min(g @ g.T) >= 0
  k = gram32(g)
  np.testing.assert_allclose(c64(upgrad(k)), np.ones(t), atol=1e-5)
  np.testing.assert_allclose(c64(dualproj(k)), np.ones(t), atol=1e-5)
  w = rng.uniform(0.2, 3, t)
  np.testing.assert_allclose(c64(upgrad(k, f32(w))), w, rtol=1e-5)
  np.testing.assert_allclose(c64(dualproj(k, f32(w))), w, rtol=1e-5)


def test_project_to_dual_cone_columns():
  """Several vectors at once (``[T, M]``) give each one's projection."""
  rng = np.random.default_rng(120)
  t, p = 5, 8
  g = conflicting_g(rng, t, p)
  u = rng.standard_normal((t, 3))
  out = c64(jax.jit(W.project_to_dual_cone)(gram32(g), f32(u)))
  assert out.shape == (t, 3)
  for m in range(3):
    assert rel_err(out[:, m] @ g, np_project(g, u[:, m] @ g)) < 2e-3


# ----------------------------------------------------------------------------
# GradVac.
# ----------------------------------------------------------------------------


def np_gradvac(g, targets, orders, beta=0.5, w=None):
  """The vector rule: running ``g_i'``, cosine with the original ``g_j``,
  raised to the target when below it, EMA of the target with the cosine
  measured before the change; the result is ``Σ w_i g_i'``."""
  g = np.asarray(g, np.float64)
  t = g.shape[0]
  w = np.ones(t) if w is None else np.asarray(w, np.float64)
  new = np.array(targets, np.float64)
  out = np.zeros(g.shape[1])
  for i in range(t):
    gi = g[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      gj = g[j]
      phi = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj))
      goal = targets[i, j]
      if phi < goal:
        gi = gi + np.linalg.norm(gi) * (
            goal * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - goal**2)) / (
                np.linalg.norm(gj) * np.sqrt(1 - goal**2)) * gj
      new[i, j] = (1 - beta) * goal + beta * phi
    out += w[i] * gi
  return out, new


@pytest.mark.parametrize('t,p', [(3, 5), (5, 8)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gradvac_matches_vector_rule(t, p, seed):
  rng = np.random.default_rng(130 + seed)
  g = conflicting_g(rng, t, p)
  targets = rng.uniform(-0.5, 0.5, (t, t))
  orders = np_orders(t, rng)
  beta = 0.3
  w = rng.uniform(0.5, 2, t)
  ref, ref_targets = np_gradvac(g, targets, orders, beta, w)
  assert rel_err(ref, w @ g) > 1e-2          # the rule changes something
  c, new = gradvac(gram32(g), f32(targets), jnp.asarray(orders), beta,
                   f32(w))
  assert rel_err(c64(c) @ g, ref) < 1e-4
  assert new.shape == (t, t)
  np.testing.assert_allclose(c64(new), ref_targets, atol=1e-5)
  # The diagonal (a task with itself) is left as it was.
  np.testing.assert_allclose(np.diag(c64(new)), np.diag(targets), atol=1e-7)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gradvac_zero_targets_is_pcgrad(seed):
  rng = np.random.default_rng(140 + seed)
  t, p = 5, 8
  g = conflicting_g(rng, t, p)
  orders = jnp.asarray(np_orders(t, rng))
  k = gram32(g)
  c, new = gradvac(k, jnp.zeros((t, t), jnp.float32), orders, 0.5, None)
  c_pc = pcgrad(k, orders)
  np.testing.assert_allclose(c64(c), c64(c_pc), rtol=1e-4, atol=1e-5)
  assert rel_err(c64(c) @ g, g.sum(0)) > 1e-2
  # The new targets are half the first measured cosines.
  ref_d, ref_targets = np_gradvac(g, np.zeros((t, t)), np.asarray(orders))
  np.testing.assert_allclose(c64(new), ref_targets, atol=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gradvac_sets_cosine_to_target(seed):
  """Two tasks: when the cosine is below the target the update makes it
  exactly the target; above it, ``g_i`` is untouched."""
  rng = np.random.default_rng(150 + seed)
  g = rng.standard_normal((2, 6))
  cos = g[0] @ g[1] / np.prod(np.linalg.norm(g, axis=1))
  orders = jnp.asarray([[0, 1], [1, 0]])
  for goal in (cos + 0.3, cos - 0.3):
    goal = float(np.clip(goal, -0.95, 0.95))
    targets = np.full((2, 2), goal)
    c0, new = gradvac(gram32(g), f32(targets), orders, 0.5, f32([1., 0.]))
    d = c64(c0) @ g
    new_cos = d @ g[1] / (np.linalg.norm(d) * np.linalg.norm(g[1]))
    if cos < goal:
      np.testing.assert_allclose(new_cos, goal, atol=1e-5)
    else:
      np.testing.assert_allclose(d, g[0], atol=1e-6)
    np.testing.assert_allclose(c64(new)[0, 1], 0.5 * goal + 0.5 * cos,
                               atol=1e-6)


# ----------------------------------------------------------------------------
# ConFIG.
# ----------------------------------------------------------------------------


def np_config(g):
  """``ê = U⁺1 / ‖U⁺1‖`` (numpy pinv of the unit gradients),
  ``d = (Σ_t <g_t, ê>) ê``."""
  e = np.linalg.pinv(units(g)) @ np.ones(g.shape[0])
  e /= np.linalg.norm(e)
  return (g @ e).sum() * e


@pytest.mark.parametrize('t,p', [(2, 7), (3, 5), (5, 8)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_config_matches_pinv(t, p, seed):
  rng = np.random.default_rng(160 + seed)
  g = conflicting_g(rng, t, p) if t > 2 else random_g(rng, t, p)
  ref = np_config(g)
  d = c64(config(gram32(g))) @ g
  assert rel_err(d, ref) < 1e-4
  # Equal projections on the unit gradients: every task improves.
  proj = units(g) @ d
  np.testing.assert_allclose(proj, proj.mean(), rtol=1e-4)
  assert np.all(g @ d > 0)


def test_config_improves_every_task_despite_conflict():
  rng = np.random.default_rng(170)
  g = conflicting_g(rng, 5, 8)
  g[2] = -0.9 * g[3] + 0.2 * rng.standard_normal(8)
  assert np.min(g @ g.sum(0)) < 0       # the sum hurts a task
  d = c64(config(gram32(g))) @ g
  assert np.all(g @ d > 0)


@pytest.mark.parametrize('zero', [0, 4])
def test_config_zero_gradient(zero):
  rng = np.random.default_rng(180 + zero)
  g = conflicting_g(rng, 5, 8)
  g[zero] = 0
  c = c64(config(gram32(g)))
  assert np.all(np.isfinite(c))
  assert c[zero] == 0
  rest = np.delete(np.arange(5), zero)
  assert rel_err(c @ g, np_config(g[rest])) < 1e-4
  np.testing.assert_array_equal(c64(config(jnp.zeros((5, 5)))), 0)


def test_config_docstring_example():
  np.testing.assert_allclose(c64(config(jnp.eye(2))), [1., 1.], rtol=1e-6)


def cancelling_g(kind, rng):
  """Gradients whose unit gradients sum to zero exactly (in float64): no
  direction improves every task, ``U⁺1 = 0``."""
  if kind == 'parallel':       # all along ±v, two unit gradients each way
    return np.array([1., 2., -3., -.5])[:, None] * np.array([.6, -.8, 0.])
  if kind == 'antiparallel':
    return np.array([[1.5, -2., .5], [-.3, .4, -.1]])
  if kind == 'triangle':       # three at 120°, norms over 1.5 decades
    angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    q, _ = np.linalg.qr(rng.standard_normal((5, 2)))
    plane = np.stack([np.cos(angles), np.sin(angles)], 1) @ q.T
    return plane * np.array([[.2], [1.], [7.]])
  if kind == 'pairs':          # ±w_i for three random directions
    w = units(rng.standard_normal((3, 8)))
    return np.concatenate([w, -w]) * rng.uniform(.1, 10, (6, 1))
  if kind == 'simplex':        # five unit vectors summing to 0 in R^4
    e = units(np.eye(5) - 1 / 5)
    q, _ = np.linalg.qr(rng.standard_normal((9, 5)))
    return (e @ q.T) * rng.uniform(.1, 10, (5, 1))
  raise AssertionError(kind)


CANCELLING = ('parallel', 'antiparallel', 'triangle', 'pairs', 'simplex')


@pytest.mark.parametrize('kind', CANCELLING)
@pytest.mark.parametrize('x64', [False, True])
def test_config_cancelling_unit_gradients_give_zeros(kind, x64):
  """``Σ u_t = 0``: the documented answer is zero coefficients. ``U⁺1`` is
  then rounding noise, which must not become a gradient-sized update (it
  did: e.g. -0.5 v for the 'parallel' case), also after eps-sized
  perturbations of the Gramian."""
  rng = np.random.default_rng(CANCELLING.index(kind))
  g = cancelling_g(kind, rng)
  assert np.abs(units(g).sum(0)).max() < 1e-12
  dtype = np.float64 if x64 else np.float32
  eps = np.finfo(dtype).eps
  k = g @ g.T
  with jax.enable_x64(x64):
    grams = [k, (g.astype(dtype) @ g.astype(dtype).T).astype(np.float64)]
    for _ in range(10):
      noise = rng.uniform(-1, 1, k.shape) * eps * np.abs(k)
      grams.append(k + 0.5 * (noise + noise.T))
    for gram in grams:
      c = config(jnp.asarray(gram.astype(dtype)))
      assert c.dtype == dtype
      np.testing.assert_array_equal(c64(c), 0)


def test_config_cancelling_through_the_aggregator():
  g = cancelling_g('parallel', None)
  grads = {'w': jnp.asarray(g, jnp.float32)}
  agg = mtl.conflict_free(num_tasks=4)
  d, state = agg.update(grads, agg.init(None))
  np.testing.assert_array_equal(np.asarray(d['w']), 0)
  np.testing.assert_array_equal(np.asarray(state.weights), 0)
  assert not bool(state.last_skipped)


@pytest.mark.parametrize('delta', [0.3, 0.03])
def test_config_near_cancellation_is_not_zeroed(delta):
  """Three unit gradients at 120° tilted out of their plane by ``delta``
  are linearly independent: the equal-cosine direction exists (along the
  tilt) and ConFIG returns it, small but not zero."""
  angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
  u = np.stack([np.cos(angles), np.sin(angles), np.full(3, delta)], 1)
  g = units(u) * np.array([[.5], [1.], [4.]])
  ref = np_config(g)
  d = c64(config(gram32(g))) @ g
  assert np.linalg.norm(ref) > 1e-3
  assert rel_err(d, ref) < 1e-3
  assert np.all(g @ d > 0)


@pytest.mark.parametrize('t,p', [(2, 3), (3, 5), (5, 8), (8, 12)])
@pytest.mark.parametrize('seed', [0, 1])
def test_config_paper_properties(t, p, seed):
  """ConFIG's properties (Liu et al., ICLR 2025) on random conflicting
  gradients with independent unit gradients: equal cosine with every unit
  gradient, a positive inner product with every gradient, ``d(σG) = σ d(G)``
  and invariance to the order of the tasks; float32 and float64."""
  rng = np.random.default_rng(190 + seed)
  g = conflicting_g(rng, t, p) if t > 2 else random_g(rng, t, p)
  assert np.linalg.matrix_rank(g) == t
  perm = rng.permutation(t)
  for x64, tol in ((False, 1e-4), (True, 1e-10)):
    dtype = np.float64 if x64 else np.float32
    with jax.enable_x64(x64):
      def direction(m):
        return c64(config(jnp.asarray((m @ m.T).astype(dtype)))) @ m
      d = direction(g)
      cosines = units(g) @ d / np.linalg.norm(d)
      np.testing.assert_allclose(cosines, cosines.mean(), rtol=tol)
      assert np.all(g @ d > 0)
      assert rel_err(d, np_config(g)) < tol
      for sigma in (1e-3, 7.0, 1e3):
        assert rel_err(direction(sigma * g), sigma * d) < tol
      assert rel_err(direction(g[perm]), d) < tol


# ----------------------------------------------------------------------------
# Permutation equivariance.
# ----------------------------------------------------------------------------


def all_methods(k):
  return {
      'imtl_g': imtl_g(k),
      'cagrad': cagrad(k, 0.4),
      'nash_mtl': nash_mtl(k),
      'upgrad': upgrad(k),
      'dualproj': dualproj(k),
      'config': config(k),
      'fairgrad': fairgrad(k),
  }


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**32 - 1),
                  perm=st.permutations(range(5)))
def test_permuting_tasks_permutes_coefficients(seed, perm):
  rng = np.random.default_rng(seed)
  g = conflicting_g(rng, 5, 8)
  perm = np.asarray(perm)
  base = all_methods(gram32(g))
  permuted = all_methods(gram32(g[perm]))
  for name, c in base.items():
    c = c64(c)
    np.testing.assert_allclose(
        c64(permuted[name]), c[perm], rtol=2e-3,
        atol=2e-3 * np.abs(c).max(), err_msg=name)


# ----------------------------------------------------------------------------
# Loss-based weightings.
# ----------------------------------------------------------------------------


def test_uncertainty_matches_autodiff():
  rng = np.random.default_rng(190)
  s = f32(rng.uniform(-2, 2, 4))
  losses = f32(rng.uniform(0.1, 5, 4))

  def total(s, losses):
    return jnp.sum(0.5 * jnp.exp(-s) * losses + 0.5 * s)

  d_s, d_l = jax.grad(total, argnums=(0, 1))(s, losses)
  np.testing.assert_allclose(LB.uncertainty(s), d_l, rtol=1e-6)
  np.testing.assert_allclose(LB.uncertainty_log_var_grad(s, losses), d_s,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(c64(LB.uncertainty(s)),
                             0.5 * np.exp(-c64(s)), rtol=1e-6)


def test_dwa_matches_numpy():
  rng = np.random.default_rng(191)
  prev = rng.uniform(0.1, 3, 5)
  before = rng.uniform(0.1, 3, 5)
  for tau in (0.5, 2.0, 10.0):
    r = prev / before / tau
    ref = 5 * np.exp(r) / np.exp(r).sum()
    w = c64(LB.dwa(f32(prev), f32(before), tau))
    np.testing.assert_allclose(w, ref, rtol=1e-5)
    np.testing.assert_allclose(w.sum(), 5, rtol=1e-6)
  # Equal ratios give equal weights.
  np.testing.assert_allclose(c64(LB.dwa(f32(2 * before), f32(before))),
                             np.ones(5), rtol=1e-6)


def test_geometric_mean_matches_autodiff():
  rng = np.random.default_rng(192)
  losses = f32(rng.uniform(0.05, 20, 6))
  ref = jax.grad(lambda l: jnp.prod(l) ** (1 / 6))(losses)
  np.testing.assert_allclose(LB.geometric_mean(losses), ref, rtol=1e-5)
  ll = c64(losses)
  np.testing.assert_allclose(
      c64(LB.geometric_mean(losses)),
      np.exp(np.log(ll).mean()) / (6 * ll), rtol=1e-5)


def test_famo_matches_autodiff():
  rng = np.random.default_rng(193)
  logits = f32(rng.standard_normal(4))
  losses = f32(rng.uniform(0.1, 5, 4))
  prev = f32(rng.uniform(0.1, 5, 4))
  z = jax.nn.softmax(logits)
  grad = jax.grad(lambda l: jnp.sum(z * jnp.log(l)))(losses)
  c = LB.famo(logits, losses)
  np.testing.assert_allclose(c, grad / jnp.sum(grad), rtol=1e-5)
  np.testing.assert_allclose(float(jnp.sum(c)), 1, rtol=1e-6)
  delta = jnp.log(prev) - jnp.log(losses)
  _, vjp = jax.vjp(jax.nn.softmax, logits)
  (ref,) = vjp(delta)
  np.testing.assert_allclose(LB.famo_logits_grad(logits, prev, losses), ref,
                             rtol=1e-5, atol=1e-7)
  # Uniform logits and equal losses: coefficients are uniform.
  np.testing.assert_allclose(
      LB.famo(jnp.zeros(4), jnp.full(4, 3.0)), np.full(4, 0.25), rtol=1e-6)


def test_random_weights():
  key = jax.random.PRNGKey(0)
  w = c64(LB.random_weights(key, 6))
  assert w.shape == (6,)
  assert np.all(w > 0)
  np.testing.assert_allclose(w.sum(), 1, rtol=1e-6)
  np.testing.assert_array_equal(w, c64(LB.random_weights(key, 6)))
  assert not np.allclose(w, c64(LB.random_weights(jax.random.PRNGKey(1), 6)))
  # The softmax of the key's standard normal draws.
  # random_weights draws float32 by default; say so (jax.random.normal's
  # default is float64 under x64, another stream of draws).
  z = c64(jax.random.normal(key, (6,), jnp.float32))
  np.testing.assert_allclose(w, np.exp(z) / np.exp(z).sum(), rtol=1e-5)
  # Over many keys the weights are exchangeable (mean 1/T).
  keys = jax.random.split(jax.random.PRNGKey(2), 2000)
  many = c64(jax.vmap(lambda k: LB.random_weights(k, 6))(keys))
  np.testing.assert_allclose(many.mean(0), np.full(6, 1 / 6), atol=0.01)
