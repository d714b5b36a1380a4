"""Tests of the gradient sources: mtl.value_and_jacobian (parameter level)
and mtl.representation_grads (representation level, the "-UB" methods)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import mtl_optax as mtl


def _tree_allclose(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in jax.tree.leaves(tree)])


def _stacked_matrix(tree):
  leaves = jax.tree.leaves(tree)
  t = leaves[0].shape[0]
  return np.concatenate([np.asarray(x, np.float64).reshape(t, -1)
                         for x in leaves], axis=1)


def _np_aligned_coefficients(g):
  """c with c @ g = σ_min U Vᵀ 1 (thin SVD of the [T, P] matrix)."""
  a, s, bt = np.linalg.svd(g, full_matrices=False)
  return s[-1] * a @ ((a.T @ np.ones(g.shape[0])) / s)


def _np_min_norm_coefficients(g):
  t = g.shape[0]
  k = g @ g.T
  res = scipy.optimize.minimize(
      lambda a: a @ k @ a, np.full(t, 1 / t), jac=lambda a: 2 * k @ a,
      bounds=[(0, 1)] * t,
      constraints=[{'type': 'eq', 'fun': lambda a: np.sum(a) - 1}],
      method='SLSQP', options={'ftol': 1e-15, 'maxiter': 1000})
  return res.x


# ---------------------------------------------------------------------------
# value_and_jacobian


def _model():
  r = np.random.default_rng(0)
  params = {'w': jnp.asarray(r.standard_normal((3, 4)), jnp.float32),
            'b': [jnp.asarray(r.standard_normal(4), jnp.float32),
                  jnp.asarray(0.3, jnp.float32)]}
  x = jnp.asarray(r.standard_normal((5, 3)), jnp.float32)
  return params, x


def _losses(params, x, scale=1.0):
  h = jnp.tanh(x @ params['w'] + params['b'][0]) * params['b'][1]
  return jnp.stack([jnp.mean(h**2), jnp.mean(h) * scale,
                    jnp.sum(jnp.sin(h[:, 0]))])


def test_value_and_jacobian_matches_jacrev():
  params, x = _model()
  losses, jac = mtl.value_and_jacobian(_losses)(params, x)
  np.testing.assert_allclose(losses, _losses(params, x), rtol=1e-6)
  ref = jax.jacrev(_losses)(params, x)
  _tree_allclose(jac, ref)
  for leaf, p in zip(jax.tree.leaves(jac), jax.tree.leaves(params)):
    assert leaf.shape == (3,) + p.shape and leaf.dtype == p.dtype


def test_value_and_jacobian_argnums_int_and_kwargs():
  params, x = _model()
  losses, jac = mtl.value_and_jacobian(_losses, argnums=1)(params, x,
                                                           scale=2.0)
  np.testing.assert_allclose(losses, _losses(params, x, scale=2.0), rtol=1e-6)
  ref = jax.jacrev(lambda p, xx: _losses(p, xx, scale=2.0), argnums=1)(
      params, x)
  np.testing.assert_allclose(jac, ref, rtol=1e-5, atol=1e-6)
  assert jac.shape == (3,) + x.shape


def test_value_and_jacobian_argnums_tuple():
  params, x = _model()
  q = jnp.asarray([1.5, -0.5], jnp.float32)

  def f(p, xx, qq):
    return _losses(p, xx) * qq[0] + qq[1] ** 2

  losses, jac = mtl.value_and_jacobian(f, argnums=(0, 2))(params, x, q)
  ref = jax.jacrev(f, argnums=(0, 2))(params, x, q)
  assert isinstance(jac, tuple) and len(jac) == 2
  _tree_allclose(jac, ref)
  np.testing.assert_allclose(losses, f(params, x, q), rtol=1e-6)
  # A one-element sequence also gives a tuple, like jacrev.
  _, jac1 = mtl.value_and_jacobian(f, argnums=(2,))(params, x, q)
  assert isinstance(jac1, tuple) and len(jac1) == 1
  np.testing.assert_allclose(jac1[0], ref[1], rtol=1e-5, atol=1e-6)


def test_value_and_jacobian_has_aux():
  params, x = _model()

  def f(p, xx):
    l = _losses(p, xx)
    return l, {'sum': jnp.sum(l), 'x0': xx[0]}

  (losses, aux), jac = mtl.value_and_jacobian(f, has_aux=True)(params, x)
  ref_jac, ref_aux = jax.jacrev(f, has_aux=True)(params, x)
  _tree_allclose(jac, ref_jac)
  _tree_allclose(aux, ref_aux)
  np.testing.assert_allclose(losses, _losses(params, x), rtol=1e-6)


def test_value_and_jacobian_under_jit():
  params, x = _model()
  losses, jac = jax.jit(mtl.value_and_jacobian(_losses))(params, x)
  _tree_allclose(jac, jax.jacrev(_losses)(params, x))
  np.testing.assert_allclose(losses, _losses(params, x), rtol=1e-6)


@pytest.mark.parametrize('bad', [
    lambda p, x: jnp.sum(_losses(p, x)),                  # scalar
    lambda p, x: jnp.outer(_losses(p, x), _losses(p, x)),  # matrix
])
def test_value_and_jacobian_non_vector_raises(bad):
  params, x = _model()
  with pytest.raises(ValueError, match='vector'):
    mtl.value_and_jacobian(bad)(params, x)


def test_value_and_jacobian_argnums_out_of_range():
  params, x = _model()
  with pytest.raises(ValueError, match='argnums'):
    mtl.value_and_jacobian(_losses, argnums=3)(params, x)


def test_stack_tasks_roundtrip():
  params, x = _model()
  _, jac = mtl.value_and_jacobian(_losses)(params, x)
  per_task = [jax.tree.map(lambda g, i=i: g[i], jac) for i in range(3)]
  _tree_allclose(mtl.stack_tasks(per_task), jac, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# representation_grads


def _rep_problem(t=3, seed=1):
  r = np.random.default_rng(seed)
  enc = {'w': jnp.asarray(r.standard_normal((4, 5)) * 0.7, jnp.float32),
         'b': jnp.asarray(r.standard_normal(5) * 0.1, jnp.float32)}
  heads = jnp.asarray(r.standard_normal((t, 5)), jnp.float32)
  x = jnp.asarray(r.standard_normal((6, 4)), jnp.float32)
  y = jnp.asarray(r.standard_normal((6, t)), jnp.float32)
  return enc, heads, x, y


def _encode(p, x):
  # z is a pytree (two features); jnp.sin marks the encoder in jaxprs.
  h = jnp.sin(x @ p['w'] + p['b'])
  return {'h': h, 'h2': h[:, :2] ** 2}


def _heads_losses(h, z, y):
  feat = jnp.concatenate([z['h'][:, :3], z['h2']], axis=1)
  preds = jnp.tanh(feat @ h.T)          # [batch, T]
  return jnp.mean((preds - y) ** 2, axis=0)


@pytest.mark.parametrize('method', ['aligned', 'mgda'])
def test_representation_grads_matches_manual(method):
  enc, heads, x, y = _rep_problem()
  w = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
  agg = mtl.aligned_mtl(num_tasks=3) if method == 'aligned' else mtl.mgda(
      num_tasks=3)
  step = jax.jit(mtl.representation_grads(_encode, _heads_losses, agg,
                                          preferences=w))
  out = step(enc, heads, agg.init(None), x, y)
  assert isinstance(out, mtl.RepresentationGrads)

  # Manual: z, the stacked ∂L_t/∂z, the coefficients from numpy, one VJP.
  z, enc_vjp = jax.vjp(lambda p: _encode(p, x), enc)
  losses = _heads_losses(heads, z, y)
  np.testing.assert_allclose(out.losses, losses, rtol=1e-6)
  jz = jax.jacrev(lambda zz: _heads_losses(heads, zz, y))(z)
  gz = _stacked_matrix(jz)
  c = (_np_aligned_coefficients(gz) if method == 'aligned'
       else _np_min_norm_coefficients(gz))
  np.testing.assert_allclose(out.aggregator_state.weights, c, rtol=2e-3,
                             atol=2e-4)
  cot = jax.tree.map(lambda g: jnp.tensordot(jnp.asarray(c, jnp.float32), g,
                                             axes=1), jz)
  (ref_enc,) = enc_vjp(cot)
  ref_enc_flat = _flat(ref_enc)
  np.testing.assert_allclose(_flat(out.encoder_grads), ref_enc_flat,
                             rtol=2e-3, atol=2e-3 * np.max(np.abs(
                                 ref_enc_flat)))
  # And with the aggregator's own coefficients the match is tight.
  c_agg = out.aggregator_state.weights   # the state's dtype (f64 under x64)
  cot = jax.tree.map(
      lambda g: jnp.tensordot(c_agg, g, axes=1).astype(g.dtype), jz)
  _tree_allclose(out.encoder_grads, enc_vjp(cot)[0], rtol=1e-4, atol=1e-6)
  # Heads: gradient of Σ w_t L_t.
  ref_heads = jax.grad(lambda h: jnp.dot(w, _heads_losses(h, z, y)))(heads)
  np.testing.assert_allclose(out.head_grads, ref_heads, rtol=1e-5, atol=1e-6)
  assert out.encoder_aux is None and out.heads_aux is None


def test_representation_grads_linear_scalarization_is_plain_gradient():
  # With the sum, the representation-level step is the ordinary gradient.
  enc, heads, x, y = _rep_problem()
  agg = mtl.linear_scalarization()
  out = jax.jit(mtl.representation_grads(_encode, _heads_losses, agg))(
      enc, heads, agg.init(None), x, y)
  total = lambda e, h: jnp.sum(_heads_losses(h, _encode(e, x), y))
  ge, gh = jax.grad(total, argnums=(0, 1))(enc, heads)
  _tree_allclose(out.encoder_grads, ge, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.head_grads, gh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('method', ['aligned', 'mgda'])
def test_representation_level_equals_parameter_level_for_isometry(method):
  # Linear encoder z = x W. Its Jacobian J (vec W -> vec z) is I ⊗ x, so
  # G_θ = G_z J and K_θ = G_z J Jᵀ G_zᵀ with J Jᵀ = I ⊗ x xᵀ. With x having
  # orthonormal rows scaled by sqrt(λ), x xᵀ = λ I and K_θ = λ K_z. Aligned
  # and MGDA coefficients are invariant to scaling K, so the θ-level and the
  # representation-level updates of W coincide exactly.
  lam = 3.7
  r = np.random.default_rng(2)
  q, _ = np.linalg.qr(r.standard_normal((6, 4)))      # [6, 4], orthonormal cols
  x = jnp.asarray(np.sqrt(lam) * q.T, jnp.float32)     # [4, 6], rows orthonormal
  np.testing.assert_allclose(np.asarray(x @ x.T), lam * np.eye(4), atol=1e-5)
  w0 = jnp.asarray(r.standard_normal((6, 5)) * 0.5, jnp.float32)
  heads = jnp.asarray(r.standard_normal((3, 5)), jnp.float32)
  y = jnp.asarray(r.standard_normal((4, 3)), jnp.float32)

  encode = lambda w, xx: xx @ w
  def heads_losses(h, z, yy):
    return jnp.mean((jnp.tanh(z @ h.T) - yy) ** 2, axis=0) + jnp.array(
        [0.0, 0.1, 0.0]) * jnp.sum(z ** 2)

  def make():
    return mtl.aligned_mtl(num_tasks=3) if method == 'aligned' else mtl.mgda(
        num_tasks=3, tol=1e-9, max_iters=2000)

  agg_z = make()
  out = jax.jit(mtl.representation_grads(encode, heads_losses, agg_z))(
      w0, heads, agg_z.init(None), x, y)

  agg_t = make()
  loss_theta = lambda w: heads_losses(heads, encode(w, x), y)
  _, g_theta = mtl.value_and_jacobian(loss_theta)(w0)
  d_theta, s_theta = jax.jit(agg_t.update)(g_theta, agg_t.init(None))

  # Precondition: K_θ = λ K_z.
  jz = jax.jacrev(lambda z: heads_losses(heads, z, y))(encode(w0, x))
  k_z = np.asarray(mtl.gramian(jz), np.float64)
  k_t = np.asarray(mtl.gramian(g_theta), np.float64)
  np.testing.assert_allclose(k_t, lam * k_z, rtol=1e-4,
                             atol=1e-5 * np.max(np.abs(k_t)))

  np.testing.assert_allclose(out.aggregator_state.weights, s_theta.weights,
                             rtol=1e-3, atol=1e-5)
  ref = np.asarray(d_theta, np.float64)
  np.testing.assert_allclose(np.asarray(out.encoder_grads), ref, rtol=1e-3,
                             atol=1e-4 * np.max(np.abs(ref)))


def _count_primitive(jaxpr, name):
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == name:
      count += 1
    for param in eqn.params.values():
      subs = param if isinstance(param, (tuple, list)) else (param,)
      for sub in subs:
        if hasattr(sub, 'eqns'):                      # Jaxpr
          count += _count_primitive(sub, name)
        elif hasattr(getattr(sub, 'jaxpr', None), 'eqns'):   # ClosedJaxpr
          count += _count_primitive(sub.jaxpr, name)
  return count


@pytest.mark.parametrize('method', ['aligned', 'mgda'])
def test_encoder_runs_forward_once(method):
  enc, heads, x, y = _rep_problem()
  calls = []

  def encode(p, xx):
    calls.append(1)
    return _encode(p, xx)

  agg = mtl.aligned_mtl() if method == 'aligned' else mtl.mgda()
  step = mtl.representation_grads(encode, _heads_losses, agg)
  # Trace the jitted step (no compilation needed to inspect it).
  traced = jax.jit(step).trace(enc, heads, agg.init(None), x, y)
  assert len(calls) == 1
  # The counter works: the plain forward has one sin.
  assert _count_primitive(jax.make_jaxpr(_encode)(enc, x).jaxpr, 'sin') == 1
  # The whole step (forward, T head VJPs, aggregation, one encoder VJP) runs
  # the encoder's forward once: a per-task pass would add sin equations.
  assert _count_primitive(traced.jaxpr.jaxpr, 'sin') == 1
  # Versus the parameter-level Jacobian of the full model, which is also one
  # forward but T backward passes through the encoder: its jaxpr has a
  # batched (vmapped) cotangent through the encoder, shape [T, ...].
  full = lambda e: _heads_losses(heads, _encode(e, x), y)
  full_jaxpr = jax.make_jaxpr(mtl.value_and_jacobian(full))(enc).jaxpr
  assert _count_primitive(full_jaxpr, 'sin') == 1


def test_aux_pass_through():
  enc, heads, x, y = _rep_problem()

  def encode(p, xx):
    z = _encode(p, xx)
    return z, {'mean': jnp.mean(z['h']), 'tag': jnp.arange(3)}

  def heads_losses(h, z, yy):
    l = _heads_losses(h, z, yy)
    return l, {'per_task': l * 2.0, 'z_sum': jnp.sum(z['h'])}

  agg = mtl.aligned_mtl()
  step = jax.jit(mtl.representation_grads(
      encode, heads_losses, agg, encoder_has_aux=True, heads_has_aux=True))
  out = step(enc, heads, agg.init(None), x, y)
  z = _encode(enc, x)
  np.testing.assert_allclose(out.encoder_aux['mean'], jnp.mean(z['h']),
                             rtol=1e-6)
  np.testing.assert_array_equal(out.encoder_aux['tag'], np.arange(3))
  losses = _heads_losses(heads, z, y)
  np.testing.assert_allclose(out.heads_aux['per_task'], 2 * losses, rtol=1e-6)
  np.testing.assert_allclose(out.heads_aux['z_sum'], jnp.sum(z['h']),
                             rtol=1e-5)
  np.testing.assert_allclose(out.losses, losses, rtol=1e-6)
  # Same gradients as without aux.
  ref = jax.jit(mtl.representation_grads(_encode, _heads_losses, agg))(
      enc, heads, agg.init(None), x, y)
  _tree_allclose(out.encoder_grads, ref.encoder_grads, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out.head_grads, ref.head_grads, rtol=1e-6)


def test_representation_grads_passes_losses_to_aggregator():
  enc, heads, x, y = _rep_problem()
  agg = mtl.mgda('loss', num_tasks=3)
  step = jax.jit(mtl.representation_grads(_encode, _heads_losses, agg))
  out = step(enc, heads, agg.init(None), x, y)
  assert not bool(out.aggregator_state.last_skipped)
  # 'loss': the min-norm point of the hull of (∂L_t/∂z) / L_t.
  z = _encode(enc, x)
  losses = np.asarray(_heads_losses(heads, z, y), np.float64)
  jz = jax.jacrev(lambda zz: _heads_losses(heads, zz, y))(z)
  gz = _stacked_matrix(jz)
  alpha = _np_min_norm_coefficients(gz / losses[:, None])
  np.testing.assert_allclose(out.aggregator_state.weights, alpha / losses,
                             rtol=3e-3, atol=1e-4)
  # An explicit losses= overrides the computed ones.
  out2 = step(enc, heads, agg.init(None), x, y,
              losses=jnp.asarray(losses[::-1].copy(), jnp.float32))
  assert not np.allclose(out2.aggregator_state.weights,
                         out.aggregator_state.weights)


def test_representation_grads_non_vector_losses_raise():
  enc, heads, x, y = _rep_problem()
  agg = mtl.aligned_mtl()
  step = mtl.representation_grads(
      _encode, lambda h, z, yy: jnp.sum(_heads_losses(h, z, yy)), agg)
  with pytest.raises(ValueError, match='vector'):
    step(enc, heads, agg.init(None), x, y)


def test_representation_grads_nonfinite_skips():
  enc, heads, x, y = _rep_problem()
  agg = mtl.aligned_mtl(num_tasks=3)
  step = jax.jit(mtl.representation_grads(_encode, _heads_losses, agg))
  ok = step(enc, heads, agg.init(None), x, y)
  bad_y = y.at[0, 1].set(jnp.nan)
  out = step(enc, heads, ok.aggregator_state, x, bad_y)
  assert bool(out.aggregator_state.last_skipped)
  assert int(out.aggregator_state.num_skipped) == 1
  np.testing.assert_array_equal(_flat(out.encoder_grads), 0)
  np.testing.assert_array_equal(out.aggregator_state.weights,
                                ok.aggregator_state.weights)
