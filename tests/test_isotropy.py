"""The Jacobian-isotropy diagnostic and what it says about the "-UB" step.

MGDA-UB (Sener & Koltun 2018) solves MGDA on the Gramian ``K_z`` of the
per-task gradients with respect to the shared representation ``z`` and maps
the result to the encoder's parameters with ``Jᵀ`` (``J = ∂z/∂θ``). Theorem
1(b) (no task's loss increases) holds when ``J Jᵀ`` is isotropic on the span
of the tasks' z-gradients, ``mtl.diagnostics.jacobian_isotropy == 1``, and
can fail otherwise. Here:

- an isotropic ``J`` (``J Jᵀ = c I``): the diagnostic is 1 and the mapped
  MGDA-UB direction conflicts with no task;
- random full-rank anisotropic ``J``: the diagnostic exceeds 1, and the
  mapped direction conflicts with a task in a fraction of the cases that
  depends on how much the tasks conflict at ``z`` (measured below, quoted in
  the docs); it never conflicts while ``cos(d_z, g_t) > (ι² - 1)/(ι² + 1)``;
- the diagnostic against scipy's generalized symmetric eigensolver and
  against its definition ``cond(Jᵀ Q)`` (``Q`` a basis of the span), in
  float32 and float64, on random and ill-conditioned inputs;
- rank-deficient ``K_z`` (duplicated tasks, zero gradients): finite,
  documented values;
- ``mtl.representation_gramians`` and ``FunctionalModel.representation_gramians``
  against a direct computation, and on the zoo's MultiMNIST LeNet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import mtl_optax as mtl
from mtl_optax import diagnostics
from mtl_optax import weightings

isotropy = jax.jit(diagnostics.jacobian_isotropy)
mgda = jax.jit(weightings.mgda)

DTYPES = ('float32', 'float64')


def _x64(dtype):
  """A context with x64 on for float64 (a no-op for float32)."""
  return jax.enable_x64(True) if dtype == 'float64' else jax.enable_x64(
      bool(jax.config.jax_enable_x64))


def _eps(dtype):
  return float(np.finfo(np.dtype(dtype)).eps)


def _cap(t, dtype):
  """The documented largest value, ``(T eps)^(-1/2)``."""
  return (t * _eps(dtype)) ** -0.5


# ----------------------------------------------------------------------------
# Samplers (numpy, float64).
# ----------------------------------------------------------------------------


def orthonormal(rng, n, k):
  """``[n, k]`` with orthonormal columns."""
  q, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return q


def jacobian(rng, z, p, spread):
  """``J`` (``[Z, P]``, full row rank) with singular values log-uniform over
  ``[1, spread]``; ``spread = 1`` gives ``J Jᵀ = I``."""
  s = np.exp(rng.uniform(0, np.log(spread), z))
  return orthonormal(rng, z, z) @ np.diag(s) @ orthonormal(rng, p, z).T


def conflicting_pair(rng, z, cosine):
  """Two z-gradients at the given cosine, norms within a factor e^2."""
  g1 = rng.standard_normal(z)
  g1 /= np.linalg.norm(g1)
  u = rng.standard_normal(z)
  u -= (u @ g1) * g1
  u /= np.linalg.norm(u)
  g2 = cosine * g1 + np.sqrt(1 - cosine**2) * u
  return np.stack([g1, g2 * np.exp(rng.uniform(-1, 1))])


def with_spectrum(rng, t, z, singular_values):
  """``[T, Z]`` with the given singular values."""
  return (orthonormal(rng, t, t) @ np.diag(singular_values)
          @ orthonormal(rng, z, t).T)


def np_isotropy(g_z, j, rtol=1e-10):
  """The definition: ``cond(Jᵀ Q)``, ``Q`` an orthonormal basis of the span
  of the rows of ``g_z`` (singular values above ``rtol`` of the largest)."""
  _, s, vt = np.linalg.svd(g_z, full_matrices=False)
  if s.max() == 0:
    return 1.0
  q = vt[s > rtol * s.max()].T
  sv = np.linalg.svd(j.T @ q, compute_uv=False)
  return sv.max() / sv.min()


def scipy_isotropy(k_theta, k_z):
  """``sqrt(λ_max / λ_min)`` of ``K_θ v = λ K_z v`` (``K_z`` definite)."""
  lam = scipy.linalg.eigh(k_theta, k_z, eigvals_only=True)
  return np.sqrt(lam.max() / lam.min())


def np_grams(g_z, j):
  """``(K_θ, K_z)`` in float64 numpy."""
  g_theta = g_z @ j
  return g_theta @ g_theta.T, g_z @ g_z.T


def grams(g_z, j, dtype):
  """``(K_θ, K_z)`` computed in float64, rounded to ``dtype`` (JAX arrays)."""
  return tuple(jnp.asarray(k, dtype) for k in np_grams(g_z, j))


def ub_inner_products(g_z, j, dtype):
  """``<Jᵀ d_z, g_θ,t>`` per task for MGDA-UB's ``d_z`` (mgda on ``K_z``),
  by mapping the direction explicitly; also the z-level ones."""
  k_z = jnp.asarray(g_z @ g_z.T, dtype)
  alpha = np.asarray(mgda(k_z), np.float64)
  d_z = alpha @ g_z
  d_theta = d_z @ j              # Jᵀ d_z
  return (g_z @ j) @ d_theta, g_z @ d_z, d_z


# ----------------------------------------------------------------------------
# (a) Isotropic J: ι = 1, no conflict at the parameter level.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('t', [2, 3, 5])
def test_isotropic_jacobian_gives_one_and_no_conflict(dtype, t):
  rng = np.random.default_rng(t)
  with _x64(dtype):
    for c in (1e-3, 1.0, 40.0):
      for _ in range(10):
        g_z = rng.standard_normal((t, 12)) * np.exp(rng.uniform(-2, 2, (t, 1)))
        g_z[1] -= 1.5 * g_z[0]                      # a conflicting pair
        j = np.sqrt(c) * orthonormal(rng, 30, 12).T  # J Jᵀ = c I, [12, 30]
        np.testing.assert_allclose(j @ j.T, c * np.eye(12), atol=1e-12 * c)
        value = isotropy(*grams(g_z, j, dtype))
        assert value.dtype == jnp.dtype(dtype)
        # Accurate to about eps · cond(K_z) (the whitening), in either dtype.
        cond = np.linalg.cond(g_z @ g_z.T)
        assert 1.0 <= float(value) <= 1 + 10 * _eps(dtype) * cond
        inner_theta, inner_z, d_z = ub_inner_products(g_z, j, dtype)
        scale = c * np.linalg.norm(g_z, axis=1) * np.linalg.norm(d_z)
        # z level: <d_z, g_t> ≥ ‖d_z‖² (MGDA); θ level: c times the same.
        assert (inner_z >= np.dot(d_z, d_z) - 1e-4 * scale / c).all()
        assert (inner_theta >= -1e-9 * scale).all()
        np.testing.assert_allclose(inner_theta, c * inner_z,
                                   atol=1e-9 * scale.max())


def test_isotropic_jacobian_through_representation_grads():
  """The same with the library's own step: a linear encoder with J Jᵀ = c I
  on a batch, MGDA-UB via ``representation_grads``, θ-level inner products
  from ``value_and_jacobian``."""
  rng = np.random.default_rng(0)
  n, f, d = 4, 3, 20                      # z: [4, 3], Z = 12, θ_enc: [12, 20]
  q = orthonormal(rng, d, n * f).T * 2.0  # [Z, P] with J Jᵀ = 4 I
  w = jnp.asarray(rng.standard_normal(d), jnp.float32)

  def encode(theta, x):                   # z = J θ (+ a constant), J = q
    return (jnp.asarray(q, jnp.float32) @ (theta + x)).reshape(n, f)

  y = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
  head = jnp.asarray([[1., -2., .5], [-1., 1.5, 1.]], jnp.float32)

  def heads(h, z, yy):
    return jnp.mean((z @ h.T - yy) ** 2, axis=0)

  agg = mtl.mgda()
  out = jax.jit(mtl.representation_grads(encode, heads, agg))(
      w * 0.1, head, agg.init(None), w, y)
  _, g_theta = mtl.value_and_jacobian(
      lambda th: heads(head, encode(th, w), y))(w * 0.1)
  inner = g_theta @ out.encoder_grads
  scale = jnp.linalg.norm(g_theta, axis=1) * jnp.linalg.norm(out.encoder_grads)
  assert (inner >= -1e-5 * scale).all()
  gr = mtl.representation_gramians(encode, heads)(w * 0.1, head, w, y)
  assert float(gr.jacobian_isotropy) == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------
# (b) Anisotropic J: ι > 1, and MGDA-UB conflicts at θ in many cases.
# ----------------------------------------------------------------------------

# (setting, T, Z, P, spread of J's singular values, expected conflict fraction
# range) for 400 random cases each, seed 0. The measured fractions (float64)
# are quoted in the docs (README "Readings of the papers", representation_grads).
CONFLICT_SETTINGS = {
    # Two tasks at cosine -0.9 (strongly conflicting at z).
    'pair_cos-0.9_spread10': (2, 10, 40, 10.0, (0.40, 0.65)),
    'pair_cos-0.9_spread100': (2, 10, 40, 100.0, (0.55, 0.80)),
    # Two orthogonal tasks: rare.
    'pair_cos0_spread10': (2, 10, 40, 10.0, (0.0, 0.15)),
    # Ten Gaussian tasks in Z = 10.
    'gauss_T10_Z10_spread10': (10, 10, 40, 10.0, (0.85, 1.0)),
    # Two Gaussian tasks in Z = 50 (nearly orthogonal): none.
    'gauss_T2_Z50_spread10': (2, 50, 200, 10.0, (0.0, 0.02)),
}
CONFLICT_CASES = 400


def conflict_cases(name, rng):
  t, z, p, spread, _ = CONFLICT_SETTINGS[name]
  for _ in range(CONFLICT_CASES):
    if name.startswith('pair'):
      cosine = -0.9 if 'cos-0.9' in name else 0.0
      g_z = conflicting_pair(rng, z, cosine)
    else:
      g_z = rng.standard_normal((t, z))
    yield g_z, jacobian(rng, z, p, spread)


def measure_conflicts(name):
  """(fraction of cases where MGDA-UB conflicts with a task at θ, number of
  bound violations, smallest ι) over the setting's random cases."""
  rng = np.random.default_rng(0)
  conflicts, violations, smallest = 0, 0, np.inf
  with jax.enable_x64(True):
    for g_z, j in conflict_cases(name, rng):
      inner_theta, inner_z, d_z = ub_inner_products(g_z, j, 'float64')
      iota = float(isotropy(*grams(g_z, j, 'float64')))
      smallest = min(smallest, iota)
      conflicts += bool((inner_theta < 0).any())
      cosines = inner_z / (np.linalg.norm(g_z, axis=1) * np.linalg.norm(d_z))
      safe = cosines > (iota**2 - 1) / (iota**2 + 1) + 1e-9
      violations += int(np.sum(safe & (inner_theta < 0)))
  return conflicts / CONFLICT_CASES, violations, smallest


@pytest.mark.parametrize('name', sorted(CONFLICT_SETTINGS))
def test_anisotropic_jacobian_conflicts(name):
  fraction, violations, smallest = measure_conflicts(name)
  low, high = CONFLICT_SETTINGS[name][-1]
  print(f'{name}: MGDA-UB conflicts at θ in {fraction:.3f} of '
        f'{CONFLICT_CASES} cases; smallest ι {smallest:.3f}')
  assert smallest > 1.0 + 1e-6          # every random J is anisotropic
  assert violations == 0                # the cosine bound is never wrong
  assert low <= fraction <= high


def test_conflict_is_real_at_first_order():
  """One conflicting case, checked on the actual losses: a small step along
  ``-Jᵀ d_z`` of a linear encoder with quadratic task losses raises one."""
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    for _ in range(100):
      g_z = conflicting_pair(rng, 10, -0.9)
      j = jacobian(rng, 10, 40, 100.0)
      inner_theta, _, d_z = ub_inner_products(g_z, j, 'float64')
      if (inner_theta < 0).any():
        break
    else:
      raise AssertionError('no conflicting case found')
    # Linear task losses L_t(θ) = <g_z,t, J θ>, so ∇_θ L_t = Jᵀ g_z,t.
    losses = lambda th: g_z @ (j @ th)
    step = 1e-3 * (d_z @ j)
    change = losses(-step) - losses(np.zeros(40))
    worst = int(np.argmin(inner_theta))
    assert change[worst] > 0            # that task's loss goes up
    assert (g_z @ d_z > 0).all()        # although every z-level loss goes down


# ----------------------------------------------------------------------------
# (c) Against scipy and the definition, float32 and float64.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('t', [1, 2, 4, 8])
def test_against_scipy_random(dtype, t):
  rng = np.random.default_rng(10 + t)
  rtol = 2e-4 if dtype == 'float32' else 1e-10
  with _x64(dtype):
    for spread in (1.0, 3.0, 30.0):
      for _ in range(5):
        g_z = rng.standard_normal((t, 16)) * np.exp(rng.uniform(-3, 3, (t, 1)))
        j = jacobian(rng, 16, 40, spread)
        want = scipy_isotropy(*np_grams(g_z, j))
        np.testing.assert_allclose(want, np_isotropy(g_z, j), rtol=1e-9)
        got = isotropy(*grams(g_z, j, dtype))
        assert got.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(float(got), want, rtol=rtol)
        if t == 1:
          assert float(got) == 1.0


# (cond(G_z), spread of J, rtol) per dtype: the accuracy is about
# eps · cond(K_z) = eps · cond(G_z)², up to the span's resolution: the scaled
# K_z's eigenvalues above sqrt(eps) of the largest, i.e. cond(G_z) up to about
# eps^(-1/4) (float32: 54; float64: 8200).
ILL_CONDITIONED = {
    'float32': [(10.0, 10.0, 1e-5), (30.0, 1e3, 1e-3)],
    'float64': [(1e2, 1e3, 1e-10), (1e3, 1e3, 2e-9), (3e3, 1e3, 2e-8)],
}
# Beyond the resolution a nearly dependent direction is left out: the value
# is then that of a subspace of the span, at most the true one (interlacing).
BEYOND = {'float32': 1e3, 'float64': 1e5}


@pytest.mark.parametrize('dtype', DTYPES)
def test_against_definition_ill_conditioned(dtype):
  rng = np.random.default_rng(5)
  with _x64(dtype):
    cases = ILL_CONDITIONED[dtype] + [(BEYOND[dtype], 1e3, None)]
    for cond, spread, rtol in cases:
      for t in (3, 6):
        for _ in range(5):
          g_z = with_spectrum(rng, t, 24, np.geomspace(1, 1 / cond, t))
          g_z *= np.exp(rng.uniform(-2, 2, (t, 1)))   # unequal norms too
          j = jacobian(rng, 24, 60, spread)
          want = np_isotropy(g_z, j)
          got = float(isotropy(*grams(g_z, j, dtype)))
          if rtol is None:
            assert 1.0 <= got <= want * (1 + 1e-3)
          else:
            np.testing.assert_allclose(got, want, rtol=rtol)


@pytest.mark.parametrize('dtype', DTYPES)
def test_invariances(dtype):
  """Scale of either Gramian, task order and task-wise scaling (``D K D``)
  leave ι unchanged; magnitudes far from 1 are fine."""
  rng = np.random.default_rng(7)
  with _x64(dtype):
    g_z = rng.standard_normal((4, 10))
    j = jacobian(rng, 10, 30, 20.0)
    k_theta, k_z = np_grams(g_z, j)
    base = float(isotropy(jnp.asarray(k_theta, dtype), jnp.asarray(k_z, dtype)))
    rtol = 1e-4 if dtype == 'float32' else 1e-10
    perm = rng.permutation(4)
    d = np.diag(np.exp(rng.uniform(-3, 3, 4)))
    big = 1e15 if dtype == 'float32' else 1e150
    for a, b in ((k_theta * 1e-15, k_z), (k_theta, k_z * big),
                 (k_theta[perm][:, perm], k_z[perm][:, perm]),
                 (d @ k_theta @ d, d @ k_z @ d)):
      got = float(isotropy(jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
      np.testing.assert_allclose(got, base, rtol=rtol)


# ----------------------------------------------------------------------------
# (d) Rank-deficient K_z, zero gradients, degenerate J.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', DTYPES)
def test_duplicated_and_zero_tasks_are_left_out(dtype):
  """A duplicated task or a zero gradient adds nothing to the span: ι is
  that of the other tasks, finite."""
  rng = np.random.default_rng(11)
  rtol = 1e-3 if dtype == 'float32' else 1e-9
  with _x64(dtype):
    for _ in range(5):
      g_z = rng.standard_normal((3, 12))
      j = jacobian(rng, 12, 30, 10.0)
      want = np_isotropy(g_z, j)
      for extra in (g_z[1:2], 2.5 * g_z[0:1], np.zeros((1, 12))):
        stacked = np.concatenate([g_z, extra])
        got = float(isotropy(*grams(stacked, j, dtype)))
        assert np.isfinite(got)
        np.testing.assert_allclose(got, want, rtol=rtol)


@pytest.mark.parametrize('dtype', DTYPES)
def test_degenerate_inputs_are_finite(dtype):
  """The documented values: 1 for a zero ``K_z`` (no span), 1 for ``K_θ = 0``
  on a non-zero span, 1 for T = 1; ``J Jᵀ`` singular on the span gives a
  finite value of the order of the cap ``(T eps)^(-1/2)``; never NaN."""
  with _x64(dtype):
    z3 = jnp.zeros((3, 3), dtype)
    k = jnp.asarray([[2., 1., 0.], [1., 2., 0.], [0., 0., 1.]], dtype)
    assert float(isotropy(z3, z3)) == 1.0
    assert float(isotropy(k, z3)) == 1.0       # K_θ outside the (empty) span
    assert float(isotropy(z3, k)) == 1.0
    assert float(isotropy(jnp.asarray([[3.]], dtype),
                          jnp.asarray([[5.]], dtype))) == 1.0
    # J kills one direction of the tasks' span: g_z = I_2, J = diag(1, 0).
    g_z = np.eye(2)
    j = np.diag([1.0, 0.0])
    got = float(isotropy(*grams(g_z, j, dtype)))
    assert np.isfinite(got)
    assert 0.5 * _cap(2, dtype) <= got <= _cap(2, dtype) * (1 + 1e-6)
    # Nearly singular but resolvable.
    j = np.diag([1.0, 1e-2])
    np.testing.assert_allclose(float(isotropy(*grams(g_z, j, dtype))), 100.0,
                               rtol=1e-4)
    # Inputs with rounding noise: symmetric part used, never NaN.
    rng = np.random.default_rng(0)
    for _ in range(20):
      a = rng.standard_normal((4, 4))
      noisy = jnp.asarray(a @ a.T + 1e-7 * rng.standard_normal((4, 4)), dtype)
      other = jnp.asarray(rng.standard_normal((4, 4)), dtype)
      assert np.isfinite(float(isotropy(noisy, other @ other.T)))
      assert np.isfinite(float(isotropy(other @ other.T, noisy)))
      assert float(isotropy(noisy, other @ other.T)) >= 1.0


def test_cap_value():
  """The cap is the documented ``(T eps)^(-1/2)``: 2048 for float32, T = 2."""
  assert round(_cap(2, 'float32')) == 2048
  assert _cap(2, 'float64') == pytest.approx(4.74e7, rel=1e-2)


# ----------------------------------------------------------------------------
# (e) The helpers: representation_gramians and the zoo model's method.
# ----------------------------------------------------------------------------


def test_representation_gramians_against_explicit_jacobian():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 5)) * 0.5, jnp.float32)
  h = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
  encode = lambda ww, xx: jnp.tanh(xx @ ww)

  def heads(hh, z, yy):
    return jnp.mean((z @ hh.T - yy) ** 2, axis=0)     # T = 3

  out = jax.jit(mtl.representation_gramians(encode, heads))(w, h, x, y)
  z = encode(w, x)
  g_z = jax.jacrev(lambda zz: heads(h, zz, y))(z).reshape(3, -1)
  jac = jax.jacrev(lambda ww: encode(ww, x))(w).reshape(z.size, -1)
  g_theta = g_z @ jac
  np.testing.assert_allclose(out.gram_z, g_z @ g_z.T, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out.gram_theta, g_theta @ g_theta.T, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(out.losses, heads(h, z, y), rtol=1e-6)
  np.testing.assert_allclose(
      float(out.jacobian_isotropy),
      np_isotropy(np.asarray(g_z, np.float64), np.asarray(jac, np.float64)),
      rtol=1e-3)


def test_representation_gramians_checks_arguments():
  with pytest.raises(TypeError, match='encode'):
    mtl.representation_gramians(None, lambda h, z, b: z)
  with pytest.raises(TypeError, match='heads_has_aux'):
    mtl.representation_gramians(lambda p, x: x, lambda h, z, b: z,
                                heads_has_aux='yes')


def test_zoo_lenet_representation_gramians():
  pytest.importorskip('flax')
  from mtl_optax import models  # pylint: disable=g-import-not-at-top
  from mtl_optax.data import synthetic  # pylint: disable=g-import-not-at-top

  model = models.create('lenet_multimnist', rngs=0)
  fm = models.functional(model)
  task_losses = models.default_task_losses('lenet_multimnist')
  fn = jax.jit(fm.representation_gramians(task_losses))
  batch = synthetic.random_batch('multi_mnist', 4, seed=0)
  out = fn(fm.params, fm.batch_stats, batch)
  assert out.gram_z.shape == out.gram_theta.shape == (2, 2)
  assert np.isfinite(np.asarray(out.gram_theta)).all()
  iota = float(out.jacobian_isotropy)
  assert np.isfinite(iota) and iota >= 1.0

  # K_θ against the parameter level: the encoder block of value_and_jacobian.
  (_, _), grads = mtl.value_and_jacobian(fm.loss_fn(task_losses),
                                         has_aux=True)(
                                             fm.params, fm.batch_stats, batch)
  k_theta = mtl.gramian(grads['encoder'])
  np.testing.assert_allclose(out.gram_theta, k_theta, rtol=1e-4,
                             atol=1e-6 * float(jnp.max(k_theta)))
