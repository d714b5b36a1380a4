"""The package layout: one file per method, its public names kept.

Every registered factory and every public weighting function lives in
``mtl_optax/methods/``; the modules below the methods import none of them
(no import circle); the former module paths and ConFIG's former name
``config`` still work.
"""

import ast
import importlib
import inspect
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import mtl_optax as mtl
from mtl_optax import registry

PACKAGE = pathlib.Path(mtl.__file__).parent
METHODS = PACKAGE / 'methods'


@pytest.mark.parametrize('name', mtl.available())
def test_every_method_is_defined_in_its_own_module(name):
  factory = registry.get_aggregator.__globals__['_FACTORIES'][name]
  assert factory is getattr(mtl, name)
  module = factory.__module__
  assert module.startswith('mtl_optax.methods.'), (name, module)
  assert not module.endswith('._core'), name
  assert (METHODS / (module.rpartition('.')[2] + '.py')).is_file()


def test_the_methods_package_lists_every_method_and_its_file():
  import mtl_optax.methods
  for name in mtl.available():
    file = getattr(mtl, name).__module__.rpartition('.')[2]
    line = next((l for l in mtl_optax.methods.__doc__.splitlines()
                 if l.startswith(f'``{file}`` ')), '')
    assert f'``{name}``' in line, (name, file)


def test_every_weighting_function_lives_in_methods():
  for name in mtl.weightings.__all__:
    value = getattr(mtl.weightings, name)
    if inspect.isfunction(value):
      assert value.__module__.startswith('mtl_optax.methods.'), (
          name, value.__module__)


def _imports(path: pathlib.Path) -> set[str]:
  """The ``mtl_optax`` modules ``path`` imports (``from a import b`` counts
  ``a.b`` too, since ``b`` may be a module)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names |= {f'{node.module}.{a.name}' for a in node.names}
  return {n for n in names if n.startswith('mtl_optax')}


@pytest.mark.parametrize('low', ['gramians.py', 'active_set.py',
                                 'diagnostics.py', 'methods/_core.py',
                                 'jacobian.py', 'linesearch.py'])
def test_the_layers_below_the_methods_import_no_method(low):
  above = ('mtl_optax.methods.', 'mtl_optax.weightings', 'mtl_optax.registry',
           'mtl_optax.aggregators', 'mtl_optax.baselines',
           'mtl_optax.loss_weighting')
  bad = sorted(n for n in _imports(PACKAGE / low)
               if n.startswith(above)
               and not n.startswith('mtl_optax.methods._core'))
  assert not bad, (low, bad)


@pytest.mark.parametrize('path', sorted(METHODS.glob('*.py')),
                         ids=lambda p: p.name)
def test_a_method_file_imports_only_the_machinery_and_other_methods(path):
  allowed = ('mtl_optax._checks', 'mtl_optax.gramians', 'mtl_optax.active_set',
             'mtl_optax.diagnostics', 'mtl_optax.methods')
  bad = sorted(n for n in _imports(path) if not n.startswith(allowed)
               and n != 'mtl_optax')
  assert not bad, (path.name, bad)


def test_former_module_paths_reexport_the_same_objects():
  aggregators = importlib.import_module('mtl_optax.aggregators')
  baselines = importlib.import_module('mtl_optax.baselines')
  loss_weighting = importlib.import_module('mtl_optax.loss_weighting')
  for name in ('aggregator_state', 'AggregatorState', 'gramian_direction',
               'linear_scalarization', 'aligned_mtl', 'mgda', 'pcgrad',
               'mamg'):
    assert getattr(aggregators, name) is getattr(mtl, name), name
  assert mtl.aggregators is aggregators
  assert aggregators.state_dtype() == jnp.dtype(
      jnp.ones(()).dtype)   # the machinery's helpers too
  for name in baselines.__all__:
    assert getattr(baselines, name) is getattr(mtl, name), name
  for name in loss_weighting.__all__:
    assert getattr(loss_weighting, name) is getattr(mtl, name), name
  from mtl_optax.methods import famo
  from mtl_optax.weightings import active_set
  from mtl_optax.weightings import loss_based
  assert active_set is importlib.import_module('mtl_optax.active_set')
  assert loss_based.famo is famo.famo_weights
  assert loss_based.random_weights is mtl.weightings.loss_based.random_weights


def test_config_is_a_deprecated_name_of_conflict_free():
  assert 'config' not in mtl.available()
  assert 'config' not in mtl.__all__ and 'conflict_free' in mtl.__all__
  grads = {'w': jnp.array([[1., 0., 0.], [-0.5, 1., 0.]])}
  k = grads['w'] @ grads['w'].T
  new = mtl.conflict_free()
  d_new, _ = new.update(grads, new.init(None))
  with pytest.warns(DeprecationWarning, match='mtl_optax.conflict_free'):
    old = mtl.config()
  d_old, _ = old.update(grads, old.init(None))
  np.testing.assert_array_equal(d_old['w'], d_new['w'])
  with pytest.warns(DeprecationWarning,
                    match='mtl_optax.weightings.conflict_free'):
    c_old = mtl.weightings.config(k)
  np.testing.assert_array_equal(c_old, mtl.weightings.conflict_free(k))
  for call in (lambda: mtl.get_aggregator('config', num_tasks=2),
               lambda: registry.for_tasks('config', num_tasks=2),
               lambda: registry.takes_keyword('config', 'shared')):
    with pytest.warns(DeprecationWarning, match="now 'conflict_free'"):
      built = call()
    assert built is True or isinstance(built, type(new))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    mtl.get_aggregator('conflict_free')
    mtl.weightings.conflict_free(k)
