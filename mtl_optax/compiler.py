"""Per-computation XLA options for fast training steps on CPU.

XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default. On the zoo's
networks its kernels are the slow part of a CPU step: a 3×3, 64→64
convolution on ``[32, 64, 64, 64]`` takes 74 ms forward and 287 ms forward +
both gradients through YNNPACK, 42 and 105 ms through XLA's Eigen
convolutions (PyTorch 2.13 with oneDNN: 43 and 165 ms; 2-core AMD EPYC).
``cpu_compiler_options()`` returns the ``jax.jit(..., compiler_options=...)``
that keep YNNPACK for matrix products and reductions only. They apply to the one
computation they are given to, never globally (no ``XLA_FLAGS``), and are
empty off CPU, or when this jaxlib does not know the option.

``mtl_optax.training`` compiles its steps with them (``Config.
fast_cpu_convolutions``, through ``jit`` below); pass them to your own
``jax.jit`` the same way. JAX accepts ``compiler_options`` on the outermost
``jax.jit`` only: ``jit`` returns a function that uses them when called
directly and compiles plainly when traced inside someone else's ``jax.jit``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mtl_optax import compiler
  >>> step = jax.jit(lambda x: x * 2,
  ...                compiler_options=compiler.cpu_compiler_options())
  >>> step(jnp.ones(2)).tolist()
  [2.0, 2.0]
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

# YNNPACK's default fusion kinds (matrix products, reductions, convolutions)
# without the convolutions. Adding elementwise fusions was measured too:
# 7% faster on ResNet-18, 40% slower on LeNet's parameter-level step.
_YNN_FUSION_TYPES = 'xla_cpu_experimental_ynn_fusion_type'
_NO_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'


@functools.cache
def _accepted(option: str, value: str) -> bool:
  """Whether this jaxlib's CPU compiler accepts ``option=value``."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(
        jnp.zeros((), jnp.float32)).compile()
  except Exception:   # pylint: disable=broad-except  (unknown option/value)
    return False
  return True


def cpu_compiler_options(backend: str | None = None) -> Mapping[str, str]:
  """``compiler_options`` for ``jax.jit`` that make CPU convolutions fast.

  Args:
    backend: the backend the computation will run on; default
      ``jax.default_backend()``.

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type':
    'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'}`` (YNNPACK's
    default kinds less convolutions) on CPU when this jaxlib accepts it, else ``{}`` (GPU, TPU, or a jaxlib
    without the option: nothing to change).
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != 'cpu' or not _accepted(_YNN_FUSION_TYPES, _NO_CONVOLUTIONS):
    return {}
  return {_YNN_FUSION_TYPES: _NO_CONVOLUTIONS}


def jit(fn: Callable[..., Any], *, options: Mapping[str, Any] | None = None,
        **jit_kwargs) -> Callable[..., Any]:
  """``jax.jit(fn, **jit_kwargs)`` with compiler ``options`` where JAX allows.

  JAX takes ``compiler_options`` on the outermost ``jax.jit`` only (a nested
  one raises a ValueError). The returned function calls the ``options``-
  compiled ``fn`` when called with concrete arrays, and the plain jitted
  ``fn`` when its arguments are tracers (inside your own ``jax.jit``,
  ``lax.scan``, ...), where the outer computation's options apply.

  Args:
    fn: the function to compile.
    options: compiler options; default ``cpu_compiler_options()``.
    **jit_kwargs: ``jax.jit``'s other arguments (``donate_argnums``, ...).

  Returns:
    A callable with ``fn``'s signature; ``.lower`` lowers the
    ``options``-compiled version, ``.__wrapped__`` is ``fn``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mtl_optax import compiler
    >>> double = compiler.jit(lambda x: 2 * x)
    >>> double(jnp.ones(2)).tolist(), jax.jit(double)(jnp.ones(2)).tolist()
    ([2.0, 2.0], [2.0, 2.0])
  """
  options = cpu_compiler_options() if options is None else dict(options)
  plain = jax.jit(fn, **jit_kwargs)
  if not options:
    return plain
  fast = jax.jit(fn, compiler_options=options, **jit_kwargs)

  @functools.wraps(fn)
  def call(*args, **kwargs):
    traced = any(isinstance(x, jax.core.Tracer)
                 for x in jax.tree.leaves((args, kwargs)))
    return (plain if traced else fast)(*args, **kwargs)

  call.lower = fast.lower
  return call
