"""Test-session settings, applied before JAX starts.

The tests' programs are small and run a few steps, so XLA's compile time
dominates them: compiling at the CPU backend's lowest optimisation level
makes the model-zoo and config tests about 3x faster (MTAN: 182 s -> 66 s)
with the same numerics up to float rounding. An ``XLA_FLAGS`` already set
in the environment is respected.
"""

import os

os.environ.setdefault(
    'XLA_FLAGS',
    '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')


def pytest_report_header(config):
  """Says which pass this is: CI runs the core numerics a second time with
  ``JAX_ENABLE_X64=1`` (see ``.ci/run``), where float64 is JAX's default."""
  del config
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return f'jax_enable_x64: {bool(jax.config.jax_enable_x64)}'


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Drops JAX's compiled programs and traces after each test module.

  A test worker runs hundreds of modules, each compiling its own programs;
  kept, they grew a worker to 5-6 GB, two workers to half of a 24 GB
  machine's memory. Programs are rarely shared across modules, so clearing
  costs little time.
  """
  yield
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  jax.clear_caches()
  gc.collect()
