"""Sharded runs on 8 simulated CPU devices give the single-device answers.

JAX fixes its device count when it starts, and this pytest process has
already started it with one CPU device, so the sharded runs happen in a child
process (this file run as a script, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``). The child saves its
results (flattened pytrees) to an ``.npz`` file and prints one JSON line of
metadata (compile counts, HLO facts, tracebacks of failed checks). While it
runs, this process computes the single-device references (the child's
compilations are single-threaded, so the two overlap on two cores), then the
tests compare.

Checked under both mesh axis types (``Explicit``, the default of
``jax.make_mesh``, and ``Auto``) with a batch-sharded input:
- every registered method on FSDP-sharded parameters vs one device;
- the Gramian of sharded stacked gradients has no all-gather (the partial
  Gramians are all-reduced);
- a few training steps of LeNet-MultiMNIST (``models.functional``),
  replicated and FSDP-sharded, materialised and Jacobian-free, vs one device,
  with one compilation for all steps;
- the Jacobian-free Gramian on sharded parameters vs the materialised one;
- the pitfall: averaging per-device aggregates is not the global aggregate
  for a nonlinear method (it is for a linear one), and averaging the
  per-task gradients first is.
Single-device tests of the Jacobian-free Gramian and step run here, while
the child works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback

import pytest

CHILD_FLAG = '--sharding-child'
NUM_DEVICES = 8
TOL = 1e-5
T = 3
SHARED = {'encoder': True, 'heads': False}
TRAIN_STEPS = 3
TRAIN_CASES = (  # (mesh axis type, parameter layout, step)
    ('explicit', 'replicated', 'materialised'),
    ('auto', 'fsdp', 'materialised'),
    ('explicit', 'fsdp', 'jacobian_free'),
)
LOCAL_METHODS = ('aligned_mtl', 'mgda', 'linear_scalarization')


# ---------------------------------------------------------------------------
# Problems and steps, shared by both processes.


def _problem(seed=0, n=64, d=16, h=64, e=32):
  """A 3-task MLP: ``(params, x, y)``."""
  import jax
  import jax.numpy as jnp
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.normal(k[0], (n, d))
  y = jnp.stack([jnp.sin(x[:, i]) + 0.3 * x[:, i + 1] for i in range(T)], 1)
  params = {
      'encoder': {'w1': jax.random.normal(k[1], (d, h)) / 4,
                  'b1': jnp.zeros(h),
                  'w2': jax.random.normal(k[2], (h, e)) / 8},
      'heads': jax.random.normal(k[3], (T, e)) * 0.3,
  }
  return params, x, y


def _losses_fn(params, x, y):
  """The MLP's ``[T]`` losses; gathers FSDP-sharded parameters first."""
  import jax.numpy as jnp
  from mtl_optax import sharding
  p = sharding.gather(params)   # FSDP's all-gather under Explicit axes
  enc = p['encoder']
  z = jnp.tanh(jnp.tanh(x @ enc['w1'] + enc['b1']) @ enc['w2'])
  # Unequal scales: the methods' coefficients differ from a plain sum.
  return jnp.mean((z @ p['heads'].T - y) ** 2, axis=0) * jnp.array(
      [1., 5., 20.])


def _aggregator(name):
  import mtl_optax as mtl
  kwargs = dict(num_tasks=T, shared=SHARED)
  if name == 'ema_weighting':
    kwargs['weighting'] = mtl.weightings.mgda
  return mtl.get_aggregator(name, **kwargs)


def _all_updates_fn():
  """``fn(params, x, y) -> {'grads': ..., name: update}`` for every method."""
  import mtl_optax as mtl
  aggs = {n: _aggregator(n) for n in _method_names()}

  def all_updates(params, x, y):
    losses, grads = mtl.value_and_jacobian(_losses_fn)(params, x, y)
    out = {n: a.update(grads, a.init(params), params, losses=losses)[0]
           for n, a in aggs.items()}
    out['grads'] = grads
    return out

  return all_updates


def _lenet():
  """LeNet-MultiMNIST: ``(fm, loss_fn, batch)``, one example per device."""
  import jax.numpy as jnp
  from mtl_optax import models
  from mtl_optax import sharding
  from mtl_optax.data import synthetic
  fm = models.functional(models.create('lenet_multimnist', rngs=0))
  base = fm.loss_fn(models.default_task_losses('lenet_multimnist'))

  def loss_fn(params, batch_stats, batch):
    return base(sharding.gather(params), batch_stats, batch)

  batch = synthetic.random_batch('multi_mnist', NUM_DEVICES, seed=0)
  return fm, loss_fn, {k: jnp.asarray(v) for k, v in batch.items()}


def _train_step(kind, fm, loss_fn, agg, tx):
  """A training step ``(params, state, batch) -> (params, state)``."""
  import optax
  import mtl_optax as mtl
  from mtl_optax.jacobian import jacobian_free_grads
  free = jacobian_free_grads(loss_fn, agg, shared=fm.shared_mask,
                             chunk_size=1, has_aux=True)

  def train_step(params, state, batch):
    opt_state, agg_state = state
    if kind == 'materialised':
      _, grads = mtl.value_and_jacobian(loss_fn, has_aux=True)(
          params, fm.batch_stats, batch)
      direction, agg_state = agg.update(grads, agg_state, params)
    else:
      out = free(params, agg_state, fm.batch_stats, batch)
      direction, agg_state = out.grads, out.aggregator_state
    updates, opt_state = tx.update(direction, opt_state, params)
    return optax.apply_updates(params, updates), (opt_state, agg_state)

  return train_step


def _train(params, batch, kind='materialised'):
  """``TRAIN_STEPS`` Adam steps of Aligned-MTL on LeNet from ``params``.

  States come from a jitted init (so they are laid out like the parameters)
  and the step's outputs are pinned to the inputs' shardings (under Auto
  axes the compiler might pick others, and the next call would recompile).
  """
  import jax
  import optax
  import mtl_optax as mtl
  fm, loss_fn, _ = _lenet()
  agg = mtl.aligned_mtl(shared=fm.shared_mask)
  tx = optax.adam(1e-2)
  state = jax.jit(lambda p: (tx.init(p), agg.init(p)))(params)
  shardings = jax.tree.map(lambda a: a.sharding, (params, state))
  step = jax.jit(_train_step(kind, fm, loss_fn, agg, tx),
                 out_shardings=shardings)
  for _ in range(TRAIN_STEPS):
    params, state = step(params, state, batch)
  return jax.block_until_ready(params)


def _local_problem():
  """Non-iid shards (sorted by the first feature), as when each host reads
  its own files: the local per-task gradients differ between devices."""
  params, x, y = _problem(seed=2)
  order = x[:, 0].argsort()
  return params, x[order], y[order]


def _global_updates(params, x, y):
  """The LOCAL_METHODS' updates from the global per-task gradients."""
  import mtl_optax as mtl
  _, grads = mtl.value_and_jacobian(_losses_fn)(params, x, y)
  return _encoder_updates(grads, params)


def _encoder_updates(grads, params):
  """The LOCAL_METHODS' updates of the encoder from ``grads``."""
  out = {}
  for name in LOCAL_METHODS:
    agg = _aggregator(name)
    out[name] = agg.update(grads, agg.init(params), params)[0]['encoder']
  return out


def _flatten(tree, prefix):
  """``{prefix + key path: numpy array}`` for every leaf of ``tree``."""
  import jax
  import numpy as np
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------------------
# The child process: everything that needs 8 devices.


def _meshes():
  import jax
  from jax.sharding import AxisType
  return {kind: jax.make_mesh((NUM_DEVICES,), ('data',), axis_types=(axis,))
          for kind, axis in (('explicit', AxisType.Explicit),
                             ('auto', AxisType.Auto))}


def _place(params, batch, mesh, layout, min_size=64):
  """Parameters replicated or FSDP-sharded, the batch sharded."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from mtl_optax import sharding
  shardings = (sharding.fsdp_sharding(params, mesh, min_size=min_size)
               if layout == 'fsdp' else NamedSharding(mesh, P()))
  return jax.device_put(params, shardings), sharding.shard_batch(batch, mesh)


def _child_methods(arrays, meta):
  """Every registered method (and the per-task gradients), FSDP-sharded."""
  import jax
  params, x, y = _problem()
  all_updates = _all_updates_fn()
  for kind, mesh in _meshes().items():
    with jax.set_mesh(mesh):
      p, (xs, ys) = _place(params, (x, y), mesh, 'fsdp')
      out = jax.jit(all_updates)(p, xs, ys)
    arrays.update(_flatten(out, f'methods/{kind}'))
    # Sharded leaves stay sharded in the update (no gather to one device).
    meta[f'methods/{kind}'] = {
        'w1_type': str(jax.typeof(out['aligned_mtl']['encoder']['w1']))}


def _child_gramian_no_gather(arrays, meta):
  """The Gramian of sharded stacked gradients: all-reduce, no all-gather."""
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  import mtl_optax as mtl
  g, specs = _sharded_grads(), {'a': P(None, 'data'), 'b': P(None, None,
                                                               'data')}
  for kind, mesh in _meshes().items():
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
               for k, v in g.items()}
    compiled = jax.jit(mtl.gramian).lower(sharded).compile()
    hlo = compiled.as_text()
    arrays[f'gramian/{kind}'] = np.asarray(compiled(sharded))
    meta[f'gramian/{kind}'] = {'all_gather': 'all-gather' in hlo,
                               'all_reduce': 'all-reduce' in hlo}


def _sharded_grads():
  import numpy as np
  rng = np.random.default_rng(0)
  return {'a': rng.normal(size=(T, 256, 64)).astype(np.float32),
          'b': rng.normal(size=(T, 8, 128)).astype(np.float32)}


class _CompileCounter:
  """Counts XLA compilations of ``jit(train_step)`` (``jax_log_compiles``)."""

  def __init__(self):
    import logging
    counter = self
    self.count = 0

    class Handler(logging.Handler):

      def emit(self, record):
        if 'Compiling jit(train_step)' in record.getMessage():
          counter.count += 1

    self.handler = Handler()

  def __enter__(self):
    import logging
    import jax
    jax.config.update('jax_log_compiles', True)
    logging.getLogger('jax').addHandler(self.handler)
    return self

  def __exit__(self, *exc):
    import logging
    import jax
    logging.getLogger('jax').removeHandler(self.handler)
    jax.config.update('jax_log_compiles', False)


def _child_training(arrays, meta):
  """LeNet training steps on the meshes, each case as its own check."""
  import jax
  fm, _, batch = _lenet()
  meshes = _meshes()
  for kind, layout, step in TRAIN_CASES:
    key = f'train/{kind}/{layout}/{step}'
    try:
      with _CompileCounter() as counter, jax.set_mesh(meshes[kind]):
        params, placed_batch = _place(fm.params, batch, meshes[kind], layout)
        out = _train(params, placed_batch, step)
      arrays.update(_flatten(out, key))
      meta[key] = {'compiles': counter.count, 'same_sharding': all(
          a.sharding.is_equivalent_to(b.sharding, a.ndim)
          for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params)))}
    except Exception:  # pylint: disable=broad-except
      meta[key] = {'error': traceback.format_exc()}


def _child_jacobian_free_gramian(arrays, meta):
  """The Jacobian-free Gramian on FSDP-sharded parameters."""
  import jax
  from mtl_optax.jacobian import jacobian_free_gramian
  del meta
  params, x, y = _problem()
  fn = jax.jit(jacobian_free_gramian(_losses_fn, shared=SHARED, chunk_size=2))
  for kind, mesh in _meshes().items():
    with jax.set_mesh(mesh):
      p, (xs, ys) = _place(params, (x, y), mesh, 'fsdp')
      arrays.update(_flatten(fn(p, xs, ys)[1], f'jf_gramian/{kind}'))


def _child_local_vs_global(arrays, meta):
  """Per-device aggregates averaged, and per-task gradients averaged first,
  under ``jax.shard_map`` (the ``pmap`` habit)."""
  import jax
  from jax.sharding import PartitionSpec as P
  import mtl_optax as mtl
  del meta
  params, x, y = _local_problem()
  mesh = _meshes()['explicit']

  def per_device(params, x, y):
    # Wrong: aggregate the local per-task gradients, average the updates.
    return jax.lax.pmean(_global_updates(params, x, y), 'data')

  def grads_first(params, x, y):
    # Right: average the per-task gradients, then aggregate.
    _, grads = mtl.value_and_jacobian(_losses_fn)(params, x, y)
    return _encoder_updates(jax.lax.pmean(grads, 'data'), params)

  p, (xs, ys) = _place(params, (x, y), mesh, 'replicated')
  for name, fn in (('per_device', per_device), ('grads_first', grads_first)):
    # check_vma=False: per-device gradients stay local (pmap semantics; with
    # check_vma=True JAX sums replicated parameters' gradients itself).
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh,
                                    in_specs=(P(), P('data'), P('data')),
                                    out_specs=P(), check_vma=False))
    arrays.update(_flatten(sharded(p, xs, ys), f'local/{name}'))


CHILD_CHECKS = (_child_gramian_no_gather, _child_methods,
                _child_jacobian_free_gramian, _child_local_vs_global,
                _child_training)


def _child_main(path):
  import time
  import jax
  import numpy as np
  arrays, meta = {}, {'device_count': jax.device_count(), 'seconds': {}}
  for check in CHILD_CHECKS:
    start = time.perf_counter()
    try:
      check(arrays, meta)
    except Exception:  # pylint: disable=broad-except
      meta[check.__name__] = {'error': traceback.format_exc()}
    meta['seconds'][check.__name__] = round(time.perf_counter() - start, 1)
  np.savez(path, **arrays)
  print('RESULTS ' + json.dumps(meta), flush=True)


# ---------------------------------------------------------------------------
# The parent process: start the child, compute the references, compare.


class _Child:
  """The 8-device child process; ``results()`` waits for it."""

  def __init__(self, workdir):
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_force_host_'
                        f'platform_device_count={NUM_DEVICES}')
    env['JAX_PLATFORMS'] = 'cpu'
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    self.npz = os.path.join(workdir, 'arrays.npz')
    # Files, not pipes: a full pipe would stall the child while we compute.
    self.stdout = open(os.path.join(workdir, 'stdout'), 'w+')
    self.stderr = open(os.path.join(workdir, 'stderr'), 'w+')
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), CHILD_FLAG, self.npz],
        env=env, stdout=self.stdout, stderr=self.stderr, text=True)
    self._results = None

  def results(self):
    """``(meta, arrays)``; fails the test with the child's output if it died."""
    if self._results is None:
      import numpy as np
      rc = self.proc.wait(timeout=900)
      self.stdout.seek(0)
      self.stderr.seek(0)
      out, err = self.stdout.read(), self.stderr.read()
      lines = [l for l in out.splitlines() if l.startswith('RESULTS ')]
      if rc or not lines:
        pytest.fail(f'The {NUM_DEVICES}-device child process failed '
                    f'(rc={rc}).\nstdout:\n{out[-4000:]}\nstderr:\n'
                    f'{err[-8000:]}')
      with np.load(self.npz) as f:
        arrays = dict(f)
      self._results = (json.loads(lines[-1][len('RESULTS '):]), arrays)
    return self._results

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.stdout.close()
    self.stderr.close()


@pytest.fixture(scope='module', autouse=True)
def child():
  # Autouse: the child starts before this module's first test, so that the
  # single-device work below overlaps with it.
  with tempfile.TemporaryDirectory() as workdir:
    proc = _Child(workdir)
    try:
      yield proc
    finally:
      proc.close()


def _check_errors(meta):
  """Fails with the tracebacks of the child's checks that raised."""
  errors = {k: v['error'] for k, v in meta.items()
            if isinstance(v, dict) and 'error' in v}
  if errors:
    pytest.fail('raised in the child process:\n' + '\n'.join(
        f'{k}:\n{e}' for k, e in errors.items()))


def _meta(child, key):
  """The child's metadata for ``key``."""
  meta, _ = child.results()
  if key not in meta or 'error' in meta[key]:
    _check_errors(meta)
  assert key in meta, f'{key} missing from the child results'
  return meta[key]


def _rel_err(child, prefix, reference):
  """Largest error over the leaves of ``reference``, each leaf's relative to
  its own largest entry (floored at 1e-3 of the tree's, for leaves that are
  nearly zero)."""
  import numpy as np
  meta, arrays = child.results()
  ref = _flatten(reference, prefix)
  missing = sorted(set(ref) - set(arrays))
  if missing:
    _check_errors(meta)
  assert not missing, f'missing from the child results: {missing[:5]}'
  scale = max(float(np.max(np.abs(v))) for v in ref.values())
  return max(float(np.max(np.abs(arrays[k].astype(np.float64) - v)) /
                   max(float(np.max(np.abs(v))), 1e-3 * scale, 1e-30))
             for k, v in ref.items())


def _method_names():
  import mtl_optax as mtl
  from mtl_optax import registry
  # The two-batch methods need second_grads= (tests/test_modo.py).
  return tuple(n for n in mtl.available()
               if n not in registry.NEEDS_SECOND_GRADS)


# -- single-device tests, run while the child works --------------------------


@pytest.mark.parametrize('chunk_size,max_unrolled', [
    (1, 4), (2, 4), (None, 4), (1, 1)])   # (1, 1): 3 chunks, looped
def test_jacobian_free_gramian_equals_materialised(chunk_size, max_unrolled,
                                                   monkeypatch):
  import jax
  import numpy as np
  import mtl_optax as mtl
  from mtl_optax import jacobian
  from mtl_optax.jacobian import jacobian_free_gramian
  monkeypatch.setattr(jacobian, 'MAX_UNROLLED_CHUNKS', max_unrolled)
  params, x, y = _problem()
  _, jac = mtl.value_and_jacobian(_losses_fn)(params, x, y)
  ref = np.asarray(mtl.gramian(jac, SHARED))
  fn = jacobian_free_gramian(_losses_fn, shared=SHARED, chunk_size=chunk_size)
  losses, k = jax.jit(fn)(params, x, y)
  np.testing.assert_allclose(k, ref, rtol=TOL, atol=TOL * np.abs(ref).max())
  np.testing.assert_allclose(losses, _losses_fn(params, x, y), rtol=1e-6)


@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda', 'dwa',
                                  'random_weighting'])
def test_jacobian_free_step_equals_materialised(name):
  import jax
  import mtl_optax as mtl
  from mtl_optax.jacobian import jacobian_free_grads
  agg = _aggregator(name)
  params, x, y = _problem()
  losses, jac = mtl.value_and_jacobian(_losses_fn)(params, x, y)
  ref, ref_state = jax.jit(lambda g, l: agg.update(g, agg.init(None), params,
                                                   losses=l))(jac, losses)
  out = jax.jit(jacobian_free_grads(_losses_fn, agg, shared=SHARED,
                                    chunk_size=2))(params, agg.init(None), x, y)
  for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref)):
    assert float(abs(a - b).max()) <= TOL * float(abs(b).max()) + 1e-7, name
  assert float(abs(out.aggregator_state.weights - ref_state.weights).max()
               ) <= TOL * float(abs(ref_state.weights).max()) + 1e-7


def test_jacobian_free_rejects_graddrop():
  from mtl_optax.jacobian import jacobian_free_grads
  with pytest.raises(ValueError, match='GradDrop'):
    jacobian_free_grads(_losses_fn, _aggregator('graddrop'), shared=SHARED)


# -- sharded (child) vs single-device (here) ---------------------------------


@pytest.fixture(scope='module')
def method_reference():
  import jax
  return jax.jit(_all_updates_fn())(*_problem())


@pytest.fixture(scope='module')
def train_reference():
  """Materialised steps on one device: the reference of every case (the
  Jacobian-free step included)."""
  fm, _, batch = _lenet()
  return _train(fm.params, batch)


def test_child_sees_eight_devices(child):
  assert child.results()[0]['device_count'] == NUM_DEVICES


@pytest.mark.parametrize('kind', ['explicit', 'auto'])
def test_sharded_gramian_reduces_without_gathering(child, kind):
  import numpy as np
  out = _meta(child, f'gramian/{kind}')
  ref = sum(v.reshape(T, -1).astype(np.float64) @
            v.reshape(T, -1).astype(np.float64).T
            for v in _sharded_grads().values())
  assert _rel_err(child, f'gramian/{kind}', ref) < TOL
  assert not out['all_gather'], 'a sharded leaf was gathered'
  assert out['all_reduce']


@pytest.mark.parametrize('kind', ['explicit', 'auto'])
@pytest.mark.parametrize('name', ['grads'] + list(_method_names()))
def test_every_method_sharded_equals_single_device(child, method_reference,
                                                   kind, name):
  _meta(child, f'methods/{kind}')
  err = _rel_err(child, f'methods/{kind}[{name!r}]', method_reference[name])
  assert err < TOL, (name, err)


def test_explicit_update_keeps_parameter_sharding(child):
  assert '@data' in _meta(child, 'methods/explicit')['w1_type']


@pytest.mark.parametrize('kind', ['explicit', 'auto'])
def test_sharded_jacobian_free_gramian_equals_materialised(child, kind):
  import mtl_optax as mtl
  params, x, y = _problem()
  _, jac = mtl.value_and_jacobian(_losses_fn)(params, x, y)
  assert _rel_err(child, f'jf_gramian/{kind}', mtl.gramian(jac, SHARED)) < TOL


@pytest.mark.parametrize('case', ['/'.join(c) for c in TRAIN_CASES])
def test_training_steps_sharded_equal_single_device(child, train_reference,
                                                    case):
  out = _meta(child, f'train/{case}')
  assert _rel_err(child, f'train/{case}', train_reference) < TOL
  assert out['compiles'] == 1, f'recompiled across steps: {out}'
  assert out['same_sharding'], out


@pytest.fixture(scope='module')
def local_reference():
  import jax
  return jax.jit(_global_updates)(*_local_problem())


@pytest.mark.parametrize('name', ['aligned_mtl', 'mgda'])
def test_averaging_per_device_aggregates_is_wrong(child, local_reference,
                                                  name):
  ref = local_reference[name]
  per_device = _rel_err(child, f'local/per_device[{name!r}]', ref)
  grads_first = _rel_err(child, f'local/grads_first[{name!r}]', ref)
  assert per_device > 1e-2, per_device     # a visibly different direction
  assert grads_first < TOL, grads_first    # global per-task grads: correct


def test_linear_method_may_average_per_device(child, local_reference):
  ref = local_reference['linear_scalarization']
  for name in ('per_device', 'grads_first'):
    assert _rel_err(child, f'local/{name}[\'linear_scalarization\']',
                    ref) < TOL


if __name__ == '__main__' and CHILD_FLAG in sys.argv:
  _child_main(sys.argv[sys.argv.index(CHILD_FLAG) + 1])
