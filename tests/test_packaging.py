"""Packaging: a lean core, the rest behind pip extras.

``pip install mtl-optax`` installs jax, jaxlib, optax, chex and numpy only;
``import mtl_optax`` and every aggregator must work with nothing else, and
the optional parts (``mtl.models``, ``mtl.data``, ``mtl.training``) are
imported on first use and name their extra when it is missing.
"""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / 'pyproject.toml'

CORE = {'jax', 'jaxlib', 'optax', 'chex', 'numpy'}
# The modules the optional parts need and the core must never import.
HEAVY = ('flax', 'tensorflow', 'tensorflow_datasets', 'orbax', 'tqdm',
         'matplotlib', 'PIL', 'array_record', 'torch', 'torchjd')

# Put in front of `import mtl_optax` in a fresh interpreter: any import of a
# heavy module fails as if it were not installed.
_BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class _Blocker(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HEAVY:
          raise ModuleNotFoundError(f'No module named {{name!r}} (blocked)',
                                    name=name)
        return None
    sys.meta_path.insert(0, _Blocker())
    """)


def _run(code: str, *, block: bool) -> dict:
  """Runs ``code`` in a fresh interpreter; it prints one JSON line last."""
  script = (f'HEAVY = {HEAVY!r}\n' + (_BLOCKER if block else '')
            + textwrap.dedent(code))
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _requirement_name(requirement: str) -> str:
  name = re.match(r'[A-Za-z0-9._-]+', requirement).group(0)
  return re.sub(r'[-_.]+', '-', name).lower()


def _pyproject() -> dict:
  return tomllib.loads(PYPROJECT.read_text())


# -- (a) the core alone ---------------------------------------------------------


def test_core_works_without_the_optional_dependencies():
  out = _run("""
      import json, sys
      import jax, jax.numpy as jnp, optax
      import mtl_optax as mtl

      T = 3
      params = {'w': jnp.ones((4,)), 'b': jnp.zeros(())}
      def losses_fn(p, x):
        return jnp.stack([jnp.sum((p['w'] * x - k) ** 2) + p['b'] ** 2
                          for k in range(T)])
      losses, grads = mtl.value_and_jacobian(losses_fn)(params, jnp.arange(4.))
      assert losses.shape == (T,) and grads['w'].shape == (T, 4)

      ran = []
      for name in mtl.available():
        tx = mtl.registry.for_tasks(name, num_tasks=T)
        state = tx.init(params)
        # second_grads: modo and sdmgrad need another batch (here the same).
        update = jax.jit(lambda g, s, p, l, tx=tx: tx.update(
            g, s, p, losses=l, second_grads=g))
        updates, state = update(grads, state, params, losses)
        assert jax.tree.structure(updates) == jax.tree.structure(params), name
        assert all(bool(jnp.all(jnp.isfinite(u)))
                   for u in jax.tree.leaves(updates)), name
        ran.append(name)

      errors = {}
      for part in ('models', 'data', 'training'):
        try:
          getattr(mtl, part)
        except ImportError as e:
          errors[part] = str(e)
      # The training command line and the papers' configs: the names need
      # only the core, the command line and a Config the 'train' extra.
      import importlib
      from mtl_optax import configs
      names = list(configs.NAMES)
      for part, load in (('cli', lambda: importlib.import_module(
                              'mtl_optax.train')),
                         ('configs', lambda: configs.get_config(names[0]))):
        try:
          load()
        except ImportError as e:
          errors[part] = str(e)
      heavy = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
      print(json.dumps({'ran': ran, 'available': list(mtl.available()),
                        'errors': errors, 'heavy': heavy, 'configs': names}))
      """, block=True)
  assert out['ran'] == out['available'] and len(out['ran']) >= 10
  assert out['heavy'] == []
  assert set(out['errors']) == {'models', 'data', 'training', 'cli',
                                'configs'}, out['errors']
  assert 'multi_mnist' in out['configs']
  expected = {'models': ('mtl_optax.models needs Flax', 'zoo'),
              'data': ('mtl_optax.data needs TensorFlow Datasets', 'data'),
              'training': ('mtl_optax.training needs ', 'train'),
              'cli': ('mtl_optax.train (the training command line) needs ',
                      'train'),
              'configs': ('mtl_optax.training needs ', 'train')}
  for part, (start, extra) in expected.items():
    message = out['errors'][part]
    assert message.startswith(start), message
    assert f"pip install 'mtl-optax[{extra}]'" in message, message


def test_require_names_the_extra(monkeypatch):
  from mtl_optax import _extras
  _extras._require('json', 'zoo', 'mtl_optax.models')   # present: no error
  with pytest.raises(ImportError, match=re.escape(
      "mtl_optax.spam needs not_a_module_: pip install 'mtl-optax[eggs]'")):
    _extras._require('not_a_module_', 'eggs', 'mtl_optax.spam')
  monkeypatch.setattr(_extras, '_missing', lambda module: True)
  with pytest.raises(ImportError, match=re.escape(
      "mtl_optax.models needs Flax: pip install 'mtl-optax[zoo]'")) as info:
    _extras._require('flax', 'zoo', 'mtl_optax.models')
  assert isinstance(info.value, ModuleNotFoundError)
  assert info.value.name == 'flax'


def test_unknown_attribute_is_still_an_attribute_error():
  import mtl_optax as mtl
  with pytest.raises(AttributeError, match='no attribute'):
    mtl.not_a_part  # pylint: disable=pointless-statement
  assert not hasattr(mtl, 'not_a_part')
  assert {'models', 'data', 'training'} <= set(dir(mtl))
  assert not {'models', 'data', 'training'} & set(mtl.__all__)


# -- (b) the optional parts, when installed ------------------------------------


def _installed(*modules: str) -> bool:
  return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.skipif(
    not _installed('flax', 'tensorflow_datasets', 'orbax', 'tqdm'),
    reason="needs the 'train' extra")
def test_optional_parts_resolve_lazily():
  out = _run("""
      import json, sys
      import mtl_optax as mtl
      before = sorted(m for m in sys.modules
                      if m.split('.')[0] in HEAVY
                      or m in ('mtl_optax.models', 'mtl_optax.data',
                               'mtl_optax.training'))
      found = {
          'models': callable(mtl.models.create),
          'data': callable(mtl.data.load),
          'training': callable(mtl.training.train),
      }
      same = (mtl.models is sys.modules['mtl_optax.models']
              and mtl.data is sys.modules['mtl_optax.data']
              and mtl.training is sys.modules['mtl_optax.training'])
      print(json.dumps({'before': before, 'found': found, 'same': same}))
      """, block=False)
  assert out['before'] == []          # nothing optional imported up front
  assert out['found'] == {'models': True, 'data': True, 'training': True}
  assert out['same']


# -- (c) pyproject ----------------------------------------------------------------


def test_training_command_line_is_a_console_script():
  scripts = _pyproject()['project']['scripts']
  assert scripts['mtl-optax-train'] == 'mtl_optax.train:main'
  from mtl_optax import configs
  assert all((ROOT / 'mtl_optax' / 'configs' / f'{name}.py').exists()
             for name in configs.NAMES)


def test_core_dependencies_are_the_lean_set():
  project = _pyproject()['project']
  names = {_requirement_name(r) for r in project['dependencies']}
  assert names == CORE
  optax_req = next(r for r in project['dependencies']
                   if _requirement_name(r) == 'optax')
  assert '<0.3' in optax_req   # optax.experimental.aggregating may move


def test_extras():
  extras = _pyproject()['project']['optional-dependencies']
  names = {k: {_requirement_name(r) for r in v} for k, v in extras.items()}
  assert {'zoo', 'data', 'train', 'bench', 'peers', 'test', 'all'} <= set(names)
  assert 'flax' in names['zoo']
  assert {'tensorflow-datasets', 'array-record', 'pillow'} <= names['data']
  assert {'mtl-optax', 'orbax-checkpoint', 'tqdm'} <= names['train']
  assert {'matplotlib', 'tqdm'} <= names['bench']
  assert {'torch', 'torchjd'} <= names['peers']
  assert {'pytest', 'hypothesis', 'scipy', 'pytest-xdist'} <= names['test']
  # The self-references: train = zoo + data, all = everything but peers/test.
  assert 'mtl-optax[zoo,data]' in extras['train']
  assert extras['all'] == ['mtl-optax[zoo,data,train,bench]']
  # Nothing heavy in the test extra (the core-only CI step installs it).
  assert not names['test'] & {'flax', 'tensorflow-datasets', 'orbax-checkpoint',
                              'torch', 'matplotlib', 'mtl-optax'}
