"""The two hot loops of every method: the task Gramian and the weighted sum.

Stacked per-task gradients are a pytree whose leaves all carry a leading task
axis ``T``. Viewed as a matrix ``G`` of shape ``[T, P]`` (the shared leaves
flattened and concatenated), almost every gradient-balancing method returns
``c @ G`` for coefficients ``c`` computed from the Gramian ``K = G Gᵀ``. This
module computes ``K`` and ``c @ G`` without ever concatenating the leaves.

Performance notes (measured on a 2-core CPU, ``G`` of shape ``[40, 1e7]``):
XLA:CPU's plain ``G @ G.T`` runs at a fraction of BLAS speed (1.45 s), while
the same product accumulated over column chunks inside ``lax.fori_loop`` takes
0.42-0.54 s, faster than numpy's BLAS (1.0 s). The chunked form is used on CPU
only; on GPU/TPU one large contraction is what the hardware wants, and
``lax.platform_dependent`` picks the plain dot there.

Sharded gradients (``jax.sharding``): a leaf whose type says it is sharded
over an ``Explicit`` mesh axis, or any leaf when JAX sees more than one device
(``Auto`` axes do not show in types, so any leaf may be sharded), is
contracted in one ``dot_general`` over all its non-task axes, without
reshaping or slicing it: the SPMD partitioner turns that into per-device
partial Gramians and one all-reduce of ``[T, T]``, whichever dimension is
sharded. Under ``Explicit`` axes the output sharding is given (replicated for
the Gramian, the leaf's own for the weighted sum), which a contraction over a
sharded dimension requires. The chunked CPU loop would slice the sharded
dimension and gather whole leaves on every device, so it is kept for the
single-device case.

Precision: every contraction here is ``Precision.HIGHEST`` (``PRECISION``),
full float32 on GPUs and TPUs, where the default (TF32, one bf16 pass)
would make ``K`` about 1e-3 accurate. At ``T << P`` both loops are
memory-bound (about ``T/2`` flop per byte for the Gramian, under 1 for the
weighted sum), so this costs little step time. Zero-size leaves contribute
nothing and come back zero-size.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

PyTree = Any
# A mask saying which leaves are shared: ``None`` (all shared), a pytree of
# bools with the gradients' structure or a prefix of it, or a predicate
# ``fn(key_path, leaf) -> bool``.
SharedMask = PyTree | Callable[[tuple, jax.Array], bool] | None

# Columns per chunk on CPU: about 2^19 elements (2 MiB in float32) per chunk
# keeps a [T, chunk] slab in L2 while it is multiplied with itself.
_CHUNK_ELEMENTS = 1 << 19
_MIN_CHUNK, _MAX_CHUNK = 2048, 65536

# Precision of every contraction that feeds a weighting (the Gramian, the
# weighted sum, and the inner products elsewhere in the package). JAX's
# default lets GPUs (TF32 tensor cores) and TPUs (one bf16 pass) round float32
# inputs to about 3 significant digits, which leaves ``K`` only ~1e-3
# accurate; HIGHEST is full float32 (and a no-op on CPU and for float64).
PRECISION = lax.Precision.HIGHEST


def accumulation_dtype(dtype) -> jnp.dtype:
  """Dtype in which Gramians and weighted sums accumulate: float32 or wider."""
  return jnp.promote_types(dtype, jnp.float32)


# What every entry point that takes stacked gradients expects, and the usual
# way to get something else (quoted in the errors below).
EXPECTED_STACKED = (
    'expected stacked per-task gradients (from mtl_optax.value_and_jacobian): '
    'every leaf with a leading task axis T')
CHAIN_HINT = (
    "Gradients from jax.grad, or the output of another transformation "
    "(optax.adam, or a second aggregator), have the parameters' shapes: an "
    'mtl_optax aggregator must come first in the chain, on the stacked '
    'per-task gradients, e.g. optax.chain(mtl.aligned_mtl(), optax.adam(1e-3)).')


def describe_shapes(tree: PyTree, *, limit: int = 4,
                    include: Sequence[tuple] = ()) -> str:
  """The leaves' key paths and shapes, briefly: ``['a'] (2, 3), ['b'] (3,)``.

  Args:
    tree: any pytree of arrays.
    limit: how many leaves to list (the others are counted).
    include: key paths to list even past ``limit`` (e.g. the leaf at fault).

  Returns:
    A one-line description.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  shown = [(p, x) for i, (p, x) in enumerate(leaves)
           if i < limit or p in include]
  text = ', '.join(f'{jax.tree_util.keystr(p)} {tuple(jnp.shape(x))}'.strip()
                   for p, x in shown)
  if len(shown) < len(leaves):
    text += f', ... ({len(leaves)} leaves in all)'
  return text


def num_tasks(stacked: PyTree) -> int:
  """The size ``T`` of the leading task axis, checked to agree on every leaf.

  Args:
    stacked: stacked per-task gradients (leading axis ``T`` on every leaf).

  Returns:
    ``T`` as a Python int.

  Raises:
    ValueError: naming the first leaf that is a scalar or whose leading axis
      disagrees with the first leaf's, with the leaves' shapes and what is
      expected instead.
  """
  leaves = jax.tree_util.tree_leaves_with_path(stacked)
  if not leaves:
    raise ValueError(f'The stacked gradients have no leaves; {EXPECTED_STACKED}.')
  first_path, first = leaves[0]
  for path, leaf in leaves:
    if jnp.ndim(leaf) == 0:
      raise ValueError(
          f'Leaf {jax.tree_util.keystr(path)} is a scalar, with no task axis: '
          f'mtl_optax {EXPECTED_STACKED}. Received: '
          f'{describe_shapes(stacked, include=(path,))}. {CHAIN_HINT}')
    if leaf.shape[0] != first.shape[0]:
      raise ValueError(
          f'Leaf {jax.tree_util.keystr(path)} has leading axis '
          f'{leaf.shape[0]} but leaf {jax.tree_util.keystr(first_path)} has '
          f'{first.shape[0]}: mtl_optax {EXPECTED_STACKED}, the same T on '
          f'all leaves. Received: {describe_shapes(stacked, include=(path,))}. '
          f'{CHAIN_HINT}')
  return int(first.shape[0])


# -- `shared` masks -----------------------------------------------------------

_PREDICATE_HINT = (
    "A mask is a pytree of bools with the parameters' structure or a prefix "
    "of it ({'encoder': True, 'heads': False}); or pass a predicate, "
    "shared=lambda path, leaf: path[0].key == 'encoder', or, for "
    'mtl_optax.models, models.functional(model).shared_mask.')


def _nnx():
  """``flax.nnx`` if it is imported (an NNX object exists only then), else
  None: the core never imports flax itself."""
  return sys.modules.get('flax.nnx')


def _is_nnx_node(x) -> bool:
  nnx = _nnx()
  return nnx is not None and isinstance(x, (nnx.State, nnx.Variable))


def _pure(tree: PyTree) -> PyTree:
  """``tree`` with every ``nnx.State`` turned into a dict and every
  ``nnx.Variable`` into its value (what ``nnx.to_pure_dict`` gives, but
  keeping empty sub-states and any other container around them). The
  leaves are the same objects, in the same order."""
  if _nnx() is None:
    return tree

  def one(x):
    if not _is_nnx_node(x):
      return x
    if isinstance(x, _nnx().Variable):
      value = x.get_value() if hasattr(x, 'get_value') else x.value
      return _pure(value)
    return {k: _pure(v) for k, v in x.items()}

  return jax.tree.map(one, tree, is_leaf=_is_nnx_node)


def _has_nnx(tree: PyTree) -> bool:
  if _nnx() is None:
    return False
  return any(_is_nnx_node(x)
             for x in jax.tree.leaves(tree, is_leaf=_is_nnx_node))


def _prefix_map(shared: PyTree, tree: PyTree) -> PyTree:
  """Each entry of the prefix ``shared`` broadcast over its subtree."""
  return jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: m, sub), shared, tree)


def _short_list(items, limit: int = 6) -> str:
  items = sorted(items, key=repr)
  text = ', '.join(repr(k) for k in items[:limit])
  return f'[{text}{", ..." if len(items) > limit else ""}]'


def _first_mismatch(mask, tree, path: tuple = ()) -> tuple[tuple, str] | None:
  """``(key path, what differs)`` at the first place where ``mask`` is not a
  prefix of ``tree`` (both without NNX nodes), or None."""
  if mask is not None and jax.tree_util.treedef_is_leaf(
      jax.tree.structure(mask)):
    return None     # one entry for the whole subtree
  if isinstance(mask, Mapping) and isinstance(tree, Mapping):
    missing, extra = set(tree) - set(mask), set(mask) - set(tree)
    if missing or extra:
      parts = []
      if missing:
        parts.append(f'missing from the mask: {_short_list(missing)}')
      if extra:
        parts.append(f'not in the gradients: {_short_list(extra)}')
      return path, 'keys ' + '; '.join(parts)
    for k in sorted(tree, key=repr):
      found = _first_mismatch(mask[k], tree[k],
                              path + (jax.tree_util.DictKey(k),))
      if found:
        return found
    return None
  if (isinstance(mask, (list, tuple)) and isinstance(tree, (list, tuple))
      and type(mask) is type(tree)):
    if len(mask) != len(tree):
      return path, (f'the mask has {len(mask)} entries, the gradients '
                    f'{len(tree)}')
    for i, (m, t) in enumerate(zip(mask, tree)):
      found = _first_mismatch(m, t, path + (jax.tree_util.SequenceKey(i),))
      if found:
        return found
    return None
  if type(mask) is not type(tree):
    return path, (f'the mask has a {type(mask).__name__} where the gradients '
                  f'have a {type(tree).__name__}')
  return path, f'the {type(mask).__name__} nodes differ'


def _mask_mismatch(shared: PyTree, tree: PyTree) -> ValueError:
  pure_mask, pure_tree = _pure(shared), _pure(tree)
  found = _first_mismatch(pure_mask, pure_tree)
  if found is None:    # not expected; fall back to the structures
    where, what = 'at the top level', (
        f'mask {jax.tree.structure(pure_mask)}, gradients '
        f'{jax.tree.structure(pure_tree)}')
  else:
    path, what = found
    where = (f'at {jax.tree_util.keystr(path)}' if path
             else 'at the top level')
  return ValueError(
      f'The `shared` mask does not match the gradients {where}: {what}. '
      f'{_PREDICATE_HINT}')


def resolve_shared_mask(shared: SharedMask, tree: PyTree) -> PyTree:
  """Turns ``shared`` into a pytree of Python bools with ``tree``'s structure.

  Flax NNX containers are understood on either side: an ``nnx.State`` (or
  ``nnx.Variable``) is matched as the plain dict (value) it holds, so
  ``{'encoder': True, 'heads': False}`` is a mask for gradients that are an
  ``nnx.State`` with those two keys (flax is not imported for this).

  Args:
    shared: ``None`` (every leaf shared), a pytree of bools with the structure
      of ``tree`` or a prefix of it (``{'encoder': True, 'heads': False}``), or
      a predicate called as ``shared(key_path, leaf)``.
    tree: the gradients (stacked or not) whose leaves the mask describes.

  Returns:
    A pytree of bools with exactly ``tree``'s structure.

  Raises:
    ValueError: if a mask pytree does not match ``tree``, naming the first
      place where they differ.
    TypeError: if a mask entry is not a bool.
  """
  if shared is None:
    return jax.tree.map(lambda _: True, tree)
  if callable(shared):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(shared(path, leaf)), tree)
  try:
    mask = _prefix_map(shared, tree)
  except ValueError:
    mask = None
    if _has_nnx(shared) or _has_nnx(tree):
      mask = _resolve_pure(shared, tree)
    if mask is None:
      raise _mask_mismatch(shared, tree) from None

  def check(path, m):
    if not isinstance(m, bool) and not (
        hasattr(m, 'dtype') and jnp.ndim(m) == 0 and m.dtype == bool):
      raise TypeError(
          f'`shared` mask entry at {jax.tree_util.keystr(path)} is {m!r}; '
          'expected a Python bool.')
    return bool(m)

  return jax.tree_util.tree_map_with_path(check, mask)


def _resolve_pure(shared: PyTree, tree: PyTree) -> PyTree | None:
  """The mask matched on the NNX-free forms, with ``tree``'s structure; None
  if it does not match there either."""
  pure_tree = _pure(tree)
  try:
    pure_mask = _prefix_map(_pure(shared), pure_tree)
  except ValueError:
    return None
  leaves = jax.tree.leaves(tree)
  pure_leaves = jax.tree.leaves(pure_tree)
  flags = jax.tree.leaves(pure_mask)
  if (len(flags) != len(leaves) or len(pure_leaves) != len(leaves)
      or any(a is not b for a, b in zip(leaves, pure_leaves))):
    return None
  return jax.tree.unflatten(jax.tree.structure(tree), flags)


def _chunk_columns(num_rows: int) -> int:
  chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, _CHUNK_ELEMENTS // max(num_rows, 1)))
  return 1 << (chunk.bit_length() - 1)  # round down to a power of two


def _plain_gram(m: jax.Array, scale, out_dtype) -> jax.Array:
  if scale is not None:
    # Scale in the accumulation dtype: rounding `scale` (and the product) to
    # bf16/f16 would put a ~0.3% error into normalized_gramian's `scale`.
    m = m.astype(out_dtype) * scale.astype(out_dtype)
  return lax.dot_general(
      m, m, (((1,), (1,)), ((), ())), precision=PRECISION,
      preferred_element_type=out_dtype)


def _chunked_gram(m: jax.Array, scale, out_dtype) -> jax.Array:
  """``m @ m.T`` accumulated over column chunks (the fast form on CPU)."""
  rows, cols = m.shape
  chunk = _chunk_columns(rows)
  num_chunks, rest = divmod(cols, chunk)

  def body(i, acc):
    block = lax.dynamic_slice_in_dim(m, i * chunk, chunk, axis=1)
    return acc + _plain_gram(block, scale, out_dtype)

  # Unrolled 8×: at T = 40, P = 10⁷ the loop took 0.20-0.33 s rolled and
  # 0.15-0.22 s unrolled on a 2-core CPU (neutral at T = 2 and 10).
  acc = lax.fori_loop(0, num_chunks, body, jnp.zeros((rows, rows), out_dtype),
                      unroll=8)
  if rest:
    acc = acc + _plain_gram(m[:, num_chunks * chunk:], scale, out_dtype)
  return acc


def explicit_sharding(x: jax.Array) -> NamedSharding | None:
  """The sharding in ``x``'s type when some dimension is sharded, else None.

  Only ``Explicit`` mesh axes appear in JAX types; under ``Auto`` axes (and
  for unsharded arrays) this is None.

  Args:
    x: an array or a tracer.

  Returns:
    A ``NamedSharding`` (whose mesh may be abstract) or None.
  """
  sharding = getattr(jax.typeof(x), 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is None or all(s is None for s in spec):
    return None
  return sharding


def _distributed(leaf: jax.Array) -> bool:
  """Whether ``leaf`` may be sharded: sharded by type or several devices."""
  return explicit_sharding(leaf) is not None or jax.device_count() > 1


def _sharded_gram(leaf: jax.Array, scale, out_dtype) -> jax.Array:
  """``leaf`` contracted with itself over all non-task axes, no reshape."""
  x = leaf
  if scale is not None:
    x = x.astype(out_dtype) * scale.astype(out_dtype)
  dims = tuple(range(1, leaf.ndim))
  sharding = explicit_sharding(leaf)
  out = (None if sharding is None else
         NamedSharding(sharding.mesh, PartitionSpec()))
  return lax.dot_general(x, x, ((dims, dims), ((), ())), precision=PRECISION,
                         preferred_element_type=out_dtype, out_sharding=out)


def _leaf_gram(leaf: jax.Array, scale=None) -> jax.Array:
  if _distributed(leaf):
    return _sharded_gram(leaf, scale, accumulation_dtype(leaf.dtype))
  m = leaf.reshape(leaf.shape[0], -1)
  out_dtype = accumulation_dtype(m.dtype)
  if m.shape[1] < 2 * _chunk_columns(m.shape[0]):
    return _plain_gram(m, scale, out_dtype)
  return lax.platform_dependent(
      m,
      cpu=lambda x: _chunked_gram(x, scale, out_dtype),
      default=lambda x: _plain_gram(x, scale, out_dtype),
  )


def leaf_cross_gramian(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
  """``[T, T]`` products ``<a_i, b_j>`` of two same-shaped unsharded leaves.

  On CPU accumulated over column chunks like the Gramian: XLA:CPU's one
  ``[T, P] × [P, T]`` product is several times slower (1.0 s against
  0.25 s at T = 40, P = 10⁷ on 2 cores). Full precision.
  """
  a2 = a.reshape(a.shape[0], -1).astype(out_dtype)
  b2 = b.reshape(b.shape[0], -1).astype(out_dtype)

  def step(acc, blocks):
    x, y = blocks
    return acc + lax.dot_general(x, y, (((1,), (1,)), ((), ())),
                                 precision=PRECISION,
                                 preferred_element_type=out_dtype)

  return _fold_columns(lambda x, y: (x, y), [a2, b2], step,
                       jnp.zeros((a.shape[0],) * 2, out_dtype), unroll=8)


def _leaf_gram_of(fn: Callable[..., jax.Array],
                  leaves: Sequence[jax.Array]) -> jax.Array:
  """The ``[T, T]`` Gramian of ``fn(*leaves)``; on CPU without storing it."""
  mapped = jax.eval_shape(fn, *leaves)
  if mapped.shape != leaves[0].shape or any(
      x.shape != leaves[0].shape for x in leaves):
    raise ValueError(
        'gramian_of: fn must map same-shaped leaves elementwise to one of '
        f'their shape; got leaves {[tuple(x.shape) for x in leaves]} -> '
        f'{tuple(mapped.shape)}.')
  out_dtype = accumulation_dtype(mapped.dtype)
  if _distributed(leaves[0]):
    return _sharded_gram(fn(*leaves), None, out_dtype)
  t = leaves[0].shape[0]
  return _fold_columns(
      fn, leaves, lambda acc, block: acc + _plain_gram(block, None, out_dtype),
      jnp.zeros((t, t), out_dtype), unroll=8)


def gramian_of(fn: Callable[..., jax.Array], trees: Sequence[PyTree],
               shared: SharedMask = None) -> jax.Array:
  """The task Gramian of ``jax.tree.map(fn, *trees)``, not stored on CPU.

  For methods whose Gramian is of a map of the gradients and their state
  (MoCo's tracked gradients ``y - β (y - g)``): on CPU the map is applied
  chunk by chunk as the Gramian reads its inputs, so the mapped ``[T, P]``
  tree is never written (XLA:CPU does not fuse a producer into a matrix
  product, and writing a fresh ``[T, P]`` buffer, page faults included,
  cost more than the Gramian itself: 0.45 s against 1.17 s for MoCo's step
  at T = 40, P = 10⁷ on 2 cores). Elsewhere it is ``gramian`` of the mapped
  tree.

  Args:
    fn: an elementwise function of one leaf from each tree (same shapes),
      returning an array of that shape; it is applied to column blocks of
      the leaves reshaped to ``[T, -1]``.
    trees: stacked trees of the same structure (leading axis ``T``).
    shared: which leaves enter the Gramian (a mask of the first tree's
      structure; see ``resolve_shared_mask``).

  Returns:
    A symmetric ``[T, T]`` array, that of ``gramian(jax.tree.map(fn,
    *trees), shared)``.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> y, g = {'w': jnp.ones((2, 3))}, {'w': jnp.eye(2, 3)}
    >>> mtl.gramians.gramian_of(lambda a, b: a - 0.5 * (a - b),
    ...                         (y, g)).tolist()
    [[1.5, 1.25], [1.25, 1.5]]
  """
  t, groups = _mapped_groups(trees, shared)
  if not groups:
    return jnp.zeros((t, t), jnp.float32)
  grams = [_leaf_gram_of(fn, group) for group in groups]
  dtype = jnp.result_type(*[k.dtype for k in grams])
  return functools.reduce(jnp.add, [k.astype(dtype) for k in grams])


def _scaled_squares(block: jax.Array, scale: jax.Array, ssq: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """One block ``[T, n]`` into per-row ``(scale, ssq)`` with ``‖row‖² =
  scale² · ssq``: squares of entries divided by the running row maximum,
  so that huge entries do not overflow and tiny ones do not underflow."""
  axes = tuple(range(1, block.ndim))
  top = jnp.max(jnp.abs(block), axis=axes)
  new = jnp.maximum(scale, top)
  safe = jnp.where(new > 0, new, jnp.ones_like(new))
  ssq = (ssq * jnp.square(scale / safe)
         + jnp.sum(jnp.square(block / safe.reshape((-1,) + (1,) * len(axes))),
                   axis=axes))
  return new, ssq


def _fold_columns(fn, leaves, step, init, unroll: int = 2):
  """``step(carry, fn(*blocks))`` over column blocks of the ``[T, -1]``
  leaves; on CPU chunk by chunk (the mapped matrix is never stored), else
  in one block. ``step`` reduces over every axis but the first. A sharded
  leaf is not reshaped (it keeps its sharding). ``unroll``: 8 for the
  compute-bound products (as ``_chunked_gram``), 2 for the memory-bound
  reductions (DB-MTL over 62 leaves compiled in 12 s at 8×, 7 s at 2×)."""

  def whole(*xs):
    return step(init, fn(*xs))

  if _distributed(leaves[0]):
    return whole(*leaves)
  ms = [x.reshape(x.shape[0], -1) for x in leaves]
  rows, cols = ms[0].shape
  if cols < 2 * _chunk_columns(rows):
    return whole(*ms)

  def chunked(*xs):
    chunk = _chunk_columns(rows)
    num_chunks, rest = divmod(cols, chunk)

    def body(i, carry):
      return step(carry, fn(*[lax.dynamic_slice_in_dim(x, i * chunk, chunk,
                                                       axis=1) for x in xs]))

    carry = lax.fori_loop(0, num_chunks, body, init, unroll=unroll)
    if rest:
      carry = step(carry, fn(*[x[:, num_chunks * chunk:] for x in xs]))
    return carry

  return lax.platform_dependent(*ms, cpu=chunked, default=whole)


def _mapped_groups(trees, shared):
  """``(T, [[leaf of each tree], ...])`` for the shared non-empty leaves."""
  trees = tuple(trees)
  flags = jax.tree.leaves(resolve_shared_mask(shared, trees[0]))
  columns = [jax.tree.leaves(tree) for tree in trees]
  groups = [list(group) for group, flag in zip(zip(*columns), flags)
            if flag and group[0].size > 0]
  return num_tasks(trees[0]), groups


def _mapped_dtype(fn, groups):
  return jnp.result_type(*[accumulation_dtype(
      jax.eval_shape(fn, *group).dtype) for group in groups])


def row_sums_of(fn: Callable[..., jax.Array], trees: Sequence[PyTree],
                shared: SharedMask = None) -> jax.Array:
  """Each task's sum of the entries of ``jax.tree.map(fn, *trees)``.

  Over the shared leaves, accumulated in float32 (float64 for float64
  inputs); on CPU chunk by chunk as the leaves are read, so the mapped
  ``[T, P]`` tree is never written (see ``gramian_of``).

  Args:
    fn: an elementwise function of one leaf from each tree (same shapes).
    trees: stacked trees of the same structure (leading axis ``T``).
    shared: which leaves count (a mask of the first tree's structure).

  Returns:
    ``[T]`` sums (zeros if no leaf is shared).

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g = {'w': jnp.array([[3., 4.], [1., 0.]])}
    >>> mtl.gramians.row_sums_of(jnp.square, (g,)).tolist()
    [25.0, 1.0]
  """
  t, groups = _mapped_groups(trees, shared)
  if not groups:
    return jnp.zeros((t,), jnp.float32)
  dtype = _mapped_dtype(fn, groups)
  step = lambda acc, block: acc + jnp.sum(
      block.astype(dtype), axis=tuple(range(1, block.ndim)))
  return sum(_fold_columns(fn, group, step, jnp.zeros((t,), dtype))
             for group in groups)


def row_norms_of(fn: Callable[..., jax.Array], trees: Sequence[PyTree],
                 shared: SharedMask = None) -> jax.Array:
  """Each task's Euclidean norm in ``jax.tree.map(fn, *trees)``, not stored.

  The norms over the shared leaves, computed with a running per-task scale
  (no overflow for huge entries, no underflow for tiny ones), in float32
  (float64 for float64 inputs); on CPU chunk by chunk as the leaves are
  read, so the mapped ``[T, P]`` tree is never written (see
  ``gramian_of``). A NaN/Inf entry makes its task's norm NaN or Inf.

  Args:
    fn: an elementwise function of one leaf from each tree (same shapes).
    trees: stacked trees of the same structure (leading axis ``T``).
    shared: which leaves count (a mask of the first tree's structure).

  Returns:
    ``[T]`` norms (zeros if no leaf is shared).

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> y = {'w': jnp.array([[3., 0.], [0., 0.]])}
    >>> g = {'w': jnp.array([[0., 1.], [0., 1.]])}
    >>> mtl.gramians.row_norms_of(lambda a, b: a + 4 * b, (y, g)).tolist()
    [5.0, 4.0]
  """
  t, groups = _mapped_groups(trees, shared)
  if not groups:
    return jnp.zeros((t,), jnp.float32)
  dtype = _mapped_dtype(fn, groups)
  zeros = jnp.zeros((t,), dtype)
  step = lambda carry, block: _scaled_squares(block.astype(dtype), *carry)
  parts = [_fold_columns(fn, group, step, (zeros, zeros))
           for group in groups]
  return _norms_from_parts(parts)


def _norms_from_parts(parts) -> jax.Array:
  """Per-row norms from per-group ``(scale, ssq)`` of ``_scaled_squares``."""
  scale = functools.reduce(jnp.maximum, [sc for sc, _ in parts])
  safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  ssq = sum(q * jnp.square(sc / safe) for sc, q in parts)
  return scale * jnp.sqrt(ssq)


def row_norms_and_gramian_of(
    fn: Callable[..., jax.Array], gramian_fn: Callable[..., jax.Array],
    trees: Sequence[PyTree], shared: SharedMask = None
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """``row_norms_of(fn, ...)`` and the normalised Gramian of ``gramian_fn``'s
  map, both from one read of the inputs.

  For a method that needs the norms of a map of its gradients and state and,
  for the diagnostics, the Gramian of the gradients themselves (DB-MTL: the
  norms of its gradient averages, the dominance rate of the gradients): on
  CPU each column block of the inputs is read once for both, instead of once
  per reduction, and the norms cost little more than the Gramian alone
  (0.72 s against 0.71 s for ``normalized_gramian`` and 0.47 s for
  ``row_norms_of`` at T = 40, P = 10⁷ on 2 loaded cores). The Gramian is
  ``normalized_gramian``'s, values and rescaling included.

  Args:
    fn: an elementwise function of one leaf from each tree (same shapes);
      the norms are those of ``jax.tree.map(fn, *trees)``.
    gramian_fn: an elementwise function of the same leaves; the Gramian is
      that of ``jax.tree.map(gramian_fn, *trees)``.
    trees: stacked trees of the same structure (leading axis ``T``).
    shared: which leaves count (a mask of the first tree's structure).

  Returns:
    ``(norms, (K_hat, scale))``: the ``[T]`` norms of ``row_norms_of`` and
    the Gramian as ``normalized_gramian`` returns it (``K = scale² ·
    K_hat``, ``max(diag(K_hat)) = 1``; zeros and 1 when the map is zero). A
    NaN/Inf entry makes its task's norm and ``K_hat`` non-finite.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> m = {'w': jnp.array([[3., 0.], [0., 0.]])}
    >>> g = {'w': jnp.array([[0., 2.], [0., 1.]])}
    >>> norms, (k_hat, scale) = mtl.gramians.row_norms_and_gramian_of(
    ...     lambda a, b: a + b, lambda a, b: b, (m, g))
    >>> norms.tolist(), k_hat.tolist(), scale.tolist()
    ([3.605551242828369, 1.0], [[1.0, 0.5], [0.5, 0.25]], 2.0)
  """
  t, groups = _mapped_groups(trees, shared)
  if not groups:
    return (jnp.zeros((t,), jnp.float32),
            (jnp.zeros((t, t), jnp.float32), jnp.ones((), jnp.float32)))
  dtype = jnp.result_type(_mapped_dtype(fn, groups),
                          _mapped_dtype(gramian_fn, groups))
  pair = lambda *xs: (fn(*xs), gramian_fn(*xs))
  zeros = jnp.zeros((t,), dtype)

  def reduce(inv):
    # The norms' (scale, ssq) and the Gramian of the map times `inv`, in one
    # fold (8× unrolled, as the Gramian's loop: the product dominates).
    def step(carry, blocks):
      return (_scaled_squares(blocks[0].astype(dtype), *carry[0]),
              carry[1] + _sharded_gram(blocks[1], inv, dtype))
    parts = [_fold_columns(pair, group, step,
                           ((zeros, zeros), jnp.zeros((t, t), dtype)),
                           unroll=8) for group in groups]
    return (functools.reduce(jnp.add, [p[1] for p in parts]),
            _norms_from_parts([p[0] for p in parts]))

  def largest_entry():
    step = lambda acc, block: jnp.maximum(
        acc, jnp.max(jnp.abs(block)).astype(dtype))
    return functools.reduce(jnp.maximum, [
        _fold_columns(gramian_fn, group, step, jnp.zeros((), dtype))
        for group in groups])

  # normalized_gramian's passes (the norms are safe either way).
  gram, norms = _normalized_with_retry(reduce, largest_entry, t, dtype, zeros)
  return norms, gram


def _shared_leaves(stacked: PyTree, shared: SharedMask) -> list[jax.Array]:
  mask = resolve_shared_mask(shared, stacked)
  return [g for g, m in zip(jax.tree.leaves(stacked), jax.tree.leaves(mask))
          if m]


def gramian(stacked: PyTree, shared: SharedMask = None) -> jax.Array:
  """The task Gramian ``K[i, j] = <g_i, g_j>`` over the shared leaves.

  Accumulates in float32 (float64 for float64 inputs) whatever the gradients'
  dtype, so bf16/f16 gradients give a float32 Gramian.

  Args:
    stacked: stacked per-task gradients, leading axis ``T`` on every leaf.
    shared: which leaves enter the Gramian (see ``resolve_shared_mask``);
      ``None`` means all of them.

  Returns:
    A symmetric ``[T, T]`` array. Zeros if no leaf is shared.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g = {'w': jnp.array([[1., 0.], [1., 1.]])}
    >>> mtl.gramian(g).tolist()
    [[1.0, 1.0], [1.0, 2.0]]
  """
  leaves = _shared_leaves(stacked, shared)
  return _sum_grams(leaves, num_tasks(stacked), _gram_dtype(leaves))


def _gram_dtype(leaves: list[jax.Array]) -> jnp.dtype:
  if not leaves:
    return jnp.dtype(jnp.float32)
  return jnp.result_type(*[accumulation_dtype(x.dtype) for x in leaves])


def _sum_grams(leaves: list[jax.Array], t: int, dtype, scale=None
               ) -> jax.Array:
  """Σ over leaves of each leaf's [T, T] Gramian (of ``leaf · scale``).

  Zero-size leaves (e.g. a ``[T, 0]`` bias) contribute nothing and are
  skipped.
  """
  k = jnp.zeros((t, t), dtype)
  for leaf in _nonempty(leaves):
    k = k + _leaf_gram(leaf, scale).astype(dtype)
  return k


def _nonempty(leaves: list[jax.Array]) -> list[jax.Array]:
  """The leaves with at least one entry per task."""
  return [x for x in leaves if x.size > 0]


def _max_abs(leaves: list[jax.Array]) -> jax.Array:
  """Largest ``|entry|`` over ``leaves`` in their accumulation dtype; 0 when
  there is no entry (no leaf, or only zero-size leaves)."""
  nonempty = _nonempty(leaves)
  if not nonempty:
    return jnp.zeros((), _gram_dtype(leaves))
  return jnp.max(jnp.stack([
      jnp.max(jnp.abs(x)).astype(_gram_dtype(nonempty)) for x in nonempty]))


def _inverse_scale(m: jax.Array, dtype) -> jax.Array:
  """A power of two ``r`` that brings entries up to ``m`` in magnitude below
  8 (``|x · r| < 8``), kept a normal number; 1 when ``m`` is 0 or not finite.

  ``1 / m`` itself is subnormal for ``m`` above ~8.5e37 in float32, which
  XLA:CPU flushes to zero: the rescaled Gramian of such gradients was all
  zeros. A power of two also scales exactly.
  """
  m = jnp.asarray(m, dtype)
  info = jnp.finfo(dtype)
  _, exponent = jnp.frexp(m)              # m = f · 2^e, f in [0.5, 1)
  power = jnp.clip(3 - exponent, info.minexp, info.maxexp - 1)
  inv = jnp.ldexp(jnp.ones((), dtype), power.astype(jnp.int32))
  return jnp.where((m > 0) & jnp.isfinite(m), inv, 1).astype(dtype)


def max_abs(stacked: PyTree, shared: SharedMask = None) -> jax.Array:
  """Largest absolute entry over the shared leaves (0 if none), as float32+."""
  return _max_abs(_shared_leaves(stacked, shared))


def normalized_gramian(
    stacked: PyTree, shared: SharedMask = None
) -> tuple[jax.Array, jax.Array]:
  """The Gramian as ``K = scale² · K_hat`` with ``max(diag(K_hat)) = 1``.

  ``K`` itself overflows float32 for gradients around 1e20 and underflows for
  gradients around 1e-20. This computes ``K`` directly and, only when it is
  not finite or its diagonal leaves float32's safe range, computes it again
  from the gradients divided by their largest entry. Gradients that contain
  NaN or Inf give a non-finite ``K_hat``: callers detect it there.

  Args:
    stacked: stacked per-task gradients, leading axis ``T`` on every leaf.
    shared: which leaves enter the Gramian.

  Returns:
    ``(K_hat, scale)``: ``K_hat`` is ``[T, T]`` with largest diagonal entry 1
    (all zeros if every gradient is zero) and ``scale`` a positive scalar, the
    largest task-gradient norm (1 if every gradient is zero).
  """
  t = num_tasks(stacked)
  leaves = _shared_leaves(stacked, shared)
  dtype = _gram_dtype(leaves)
  (k_hat, scale), _ = _normalized_with_retry(
      lambda inv: (_sum_grams(leaves, t, dtype, inv), ()),
      lambda: _max_abs(leaves), t, dtype, ())
  return k_hat, scale


def _normalized_with_retry(reduce, largest_entry, t: int, dtype, extra_init):
  """``normalized_gramian``'s two passes around ``reduce(inv) -> (K of the
  inputs times inv, extra)``; returns ``((K_hat, scale), extra)``.

  At most two passes, in a while_loop so that the (chunked) Gramian code is
  compiled once: the first with the inputs as they are, the second, only
  when the first is unsafe (not finite, or its diagonal outside [1e-30,
  1e30]), with the inputs divided by ``largest_entry()`` (a power of two,
  ``_inverse_scale``). An underflowed Gramian is exactly 0, so 0 counts as
  unsafe (the second pass is cheap to decide when the inputs really are
  zero).
  """
  lo, hi = 1e-30, 1e30

  def body(carry):
    _, _, inv, attempt = carry
    k, extra = reduce(inv)
    top = jnp.max(jnp.diag(k))
    safe = jnp.all(jnp.isfinite(k)) & (top >= lo) & (top <= hi)
    retry = ~safe & (attempt == 0)
    inv = lax.cond(
        retry, lambda: _inverse_scale(largest_entry().astype(dtype), dtype),
        lambda: inv)
    return k, extra, inv, jnp.where(retry, 1, 2).astype(attempt.dtype)

  k, extra, inv, _ = lax.while_loop(
      lambda carry: carry[3] < 2, body,
      (jnp.zeros((t, t), dtype), extra_init, jnp.ones((), dtype),
       jnp.zeros((), jnp.int32)))
  top = jnp.max(jnp.diag(k))
  positive = top > 0
  k_hat = jnp.where(positive, k / jnp.where(positive, top, 1), k)
  scale = jnp.where(positive, jnp.sqrt(jnp.where(positive, top, 1)) / inv, 1)
  return (k_hat, scale.astype(dtype)), extra


def weighted_sum(
    coefficients: jax.Array, stacked: PyTree, shared: SharedMask = None,
    task_weights: jax.Array | None = None,
) -> PyTree:
  """``Σ_t c_t g_t`` leaf by leaf: the update with the parameters' structure.

  Shared leaves are combined with ``coefficients``; task-specific leaves (mask
  False) with ``task_weights`` (the plain preference-weighted sum; defaults to
  ``coefficients``). Accumulates in float32 or wider and returns each leaf in
  its own dtype.

  Args:
    coefficients: ``[T]`` coefficients for the shared leaves.
    stacked: stacked per-task gradients, leading axis ``T`` on every leaf.
    shared: which leaves are shared.
    task_weights: ``[T]`` weights for the task-specific leaves.

  Returns:
    A pytree with the structure of one task's gradient.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g = {'w': jnp.array([[1., 0.], [1., 1.]])}
    >>> mtl.combine(jnp.array([2., 1.]), g)['w'].tolist()
    [3.0, 1.0]
  """
  num_tasks(stacked)
  mask = resolve_shared_mask(shared, stacked)
  if task_weights is None:
    task_weights = coefficients

  def one(leaf, is_shared):
    c = coefficients if is_shared else task_weights
    return _leaf_weighted_sum(c, leaf)

  return jax.tree.map(one, stacked, mask)


def _leaf_weighted_sum(c: jax.Array, leaf: jax.Array) -> jax.Array:
  """``Σ_t c_t leaf[t]`` in ``leaf``'s dtype (accumulated in float32+)."""
  acc = accumulation_dtype(leaf.dtype)
  if _distributed(leaf):
    # No reshape: merging a sharded axis with others is not expressible
    # under Explicit mesh axes, and under Auto axes it may reshard.
    sharding = explicit_sharding(leaf)
    spec = None if sharding is None else NamedSharding(
        sharding.mesh, PartitionSpec(*sharding.spec[1:]))
    out = lax.dot_general(c.astype(acc), leaf, (((0,), (0,)), ((), ())),
                          precision=PRECISION, preferred_element_type=acc,
                          out_sharding=spec)
    return out.astype(leaf.dtype)
  out = lax.dot_general(
      c.astype(acc)[None, :], leaf.reshape(leaf.shape[0], -1),
      (((1,), (0,)), ((), ())), precision=PRECISION,
      preferred_element_type=acc)
  return out.reshape(leaf.shape[1:]).astype(leaf.dtype)


def combine(coefficients: jax.Array, stacked: PyTree) -> PyTree:
  """``Σ_t c_t g_t`` over every leaf (see ``weighted_sum`` for masks).

  Args:
    coefficients: ``[T]`` coefficients.
    stacked: stacked per-task gradients, leading axis ``T`` on every leaf.

  Returns:
    A pytree with the structure of one task's gradient, leaves in their dtype.
  """
  return weighted_sum(coefficients, stacked)


# -- Per-group Gramians (``per_group=``) ---------------------------------------

# What ``per_group`` may be (quoted in its errors).
PER_GROUP_OPTIONS = (
    "per_group must be None (one Gramian over all shared leaves), 'leaf' "
    '(each shared leaf its own group) or a function key_path -> hashable '
    "group id (e.g. lambda path: path[0].key for the top-level module)")

# ``None``, ``'leaf'`` or ``fn(key_path) -> hashable``.
PerGroup = str | Callable[[tuple], Any] | None


def check_per_group(per_group: PerGroup, *, method: str) -> None:
  """Raises ValueError unless ``per_group`` is None, ``'leaf'`` or callable.

  Args:
    per_group: the option as given.
    method: the factory's name, for the message.

  Raises:
    ValueError: naming the options.
  """
  if per_group is None or callable(per_group):
    return
  if isinstance(per_group, str) and per_group == 'leaf':
    return
  raise ValueError(f'{method}: got per_group={per_group!r}; {PER_GROUP_OPTIONS}.')


def leaf_groups(per_group: PerGroup, stacked: PyTree, mask: PyTree
                ) -> tuple[list[int | None], list[Any]]:
  """The group index of every leaf (None for task-specific leaves).

  Args:
    per_group: ``'leaf'`` or a function ``key_path -> hashable group id``.
    stacked: the stacked gradients.
    mask: the resolved ``shared`` mask (Python bools, ``stacked``'s structure).

  Returns:
    ``(index per leaf in flattening order, group ids in order of first
    appearance)``. With no shared leaf, one empty group (a zero Gramian, as
    without ``per_group``).

  Raises:
    ValueError: if ``per_group`` is not an option, or returns an unhashable
      id.
  """
  check_per_group(per_group, method='per_group')
  paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(stacked)]
  flags = jax.tree.leaves(mask)
  ids: dict[Any, int] = {}
  index: list[int | None] = []
  for i, (path, is_shared) in enumerate(zip(paths, flags)):
    if not is_shared:
      index.append(None)
      continue
    gid = ('leaf', i) if per_group == 'leaf' else per_group(path)
    try:
      hash(gid)
    except TypeError:
      raise ValueError(
          f'per_group returned {gid!r} for leaf '
          f'{jax.tree_util.keystr(path)}, which is not hashable; '
          f'{PER_GROUP_OPTIONS}.') from None
    index.append(ids.setdefault(gid, len(ids)))
  names = list(ids) or [None]
  return index, names


def normalized_group_gramians(
    stacked: PyTree, mask: PyTree, groups: Sequence[int | None],
    num_groups: int) -> tuple[jax.Array, jax.Array]:
  """Every group's normalised Gramian, ``[G, T, T]``, in one pass.

  Each shared leaf's ``[T, T]`` Gramian is added to its group's block (one
  contraction per leaf, as for ``normalized_gramian``), and each block is
  normalised as ``normalized_gramian`` does: ``K_g = scale_g² K_hat_g`` with
  ``max(diag(K_hat_g)) = 1``, recomputed from rescaled gradients (a second
  pass, only then) when some block is not finite or leaves the safe range.

  Args:
    stacked: stacked per-task gradients.
    mask: the resolved ``shared`` mask.
    groups: the group index of every leaf (None: not shared), e.g. from
      ``leaf_groups``.
    num_groups: ``G``.

  Returns:
    ``(K_hat [G, T, T], scale [G])``.
  """
  t = num_tasks(stacked)
  leaves = jax.tree.leaves(stacked)
  members = [[x for x, g in zip(leaves, groups) if g == i]
             for i in range(num_groups)]
  del mask
  dtype = _gram_dtype([x for m in members for x in m])
  lo, hi = 1e-30, 1e30

  def grams(inv):
    return jnp.stack([_sum_grams(m, t, dtype, inv[i])
                      for i, m in enumerate(members)])

  def body(carry):
    _, inv, attempt = carry
    k = grams(inv)
    top = jnp.max(jnp.diagonal(k, axis1=1, axis2=2), axis=1)
    safe = (jnp.all(jnp.isfinite(k), axis=(1, 2)) & (top >= lo)
            & (top <= hi))
    retry = ~safe & (attempt == 0)

    def rescale():
      m = jnp.stack([_max_abs(g).astype(dtype) for g in members])
      new = _inverse_scale(m, dtype)
      return jnp.where(retry, new, inv)

    inv = lax.cond(jnp.any(retry), rescale, lambda: inv)
    return k, inv, jnp.where(jnp.any(retry), 1, 2).astype(attempt.dtype)

  k, inv, _ = lax.while_loop(
      lambda carry: carry[2] < 2, body,
      (jnp.zeros((num_groups, t, t), dtype), jnp.ones((num_groups,), dtype),
       jnp.zeros((), jnp.int32)))
  top = jnp.max(jnp.diagonal(k, axis1=1, axis2=2), axis=1)
  positive = top > 0
  safe_top = jnp.where(positive, top, 1)
  k_hat = jnp.where(positive[:, None, None], k / safe_top[:, None, None], k)
  scale = jnp.where(positive, jnp.sqrt(safe_top) / inv, 1)
  return k_hat, scale.astype(dtype)


def group_gramians(stacked: PyTree, per_group: PerGroup,
                   shared: SharedMask = None) -> jax.Array:
  """The ``[G, T, T]`` Gramians of the groups of shared leaves (unnormalised).

  Args:
    stacked: stacked per-task gradients.
    per_group: ``'leaf'`` or a function ``key_path -> hashable group id``.
    shared: which leaves are shared.

  Returns:
    ``K[g] = J_g J_gᵀ`` for the groups in order of first appearance.
  """
  mask = resolve_shared_mask(shared, stacked)
  groups, names = leaf_groups(per_group, stacked, mask)
  k_hat, scale = normalized_group_gramians(stacked, mask, groups, len(names))
  return k_hat * (scale ** 2)[:, None, None]


def grouped_weighted_sum(
    coefficients: jax.Array, stacked: PyTree, groups: Sequence[int | None],
    task_weights: jax.Array) -> PyTree:
  """``Σ_t c_{g,t} g_t`` on each shared leaf of group ``g``;
  ``Σ_t w_t g_t`` on the task-specific leaves (group None).

  Args:
    coefficients: ``[G, T]``.
    stacked: stacked per-task gradients.
    groups: the group index of every leaf.
    task_weights: ``[T]`` weights of the task-specific leaves.

  Returns:
    A pytree with the structure of one task's gradient.
  """
  leaves, treedef = jax.tree.flatten(stacked)
  out = [_leaf_weighted_sum(task_weights if g is None else coefficients[g],
                            leaf) for leaf, g in zip(leaves, groups)]
  return jax.tree.unflatten(treedef, out)


# Helpers of the weighting functions, below the methods so that the methods,
# the diagnostics and the line searches can share them without an import
# circle.


def preference_vector(preferences: jax.Array | None, num_tasks: int,
                      dtype=jnp.float32) -> jax.Array:
  """The ``[T]`` task preferences: all ones (the sum convention) by default.

  Args:
    preferences: ``None`` or anything broadcastable to ``[T]``.
    num_tasks: ``T``.
    dtype: dtype of the result.

  Returns:
    A ``[T]`` array.
  """
  if preferences is None:
    return jnp.ones((num_tasks,), dtype)
  return jnp.broadcast_to(jnp.asarray(preferences, dtype), (num_tasks,))


def kept_spectrum(squared: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Which eigenvalues of a Gramian count: ``λ > λ_max · T · eps``.

  Args:
    squared: ``[T]`` eigenvalues of ``K`` (squared singular values of ``G``).

  Returns:
    ``(keep, rank)``: a ``[T]`` bool mask and the number of kept values.
  """
  t = squared.shape[0]
  eps = jnp.finfo(squared.dtype).eps
  tol = jnp.max(squared) * t * eps
  keep = squared > jnp.maximum(tol, 0)
  return keep, jnp.sum(keep)


def unstack(stacked: PyTree) -> Sequence[PyTree]:
  """The ``T`` per-task gradient pytrees (for tests and small problems)."""
  t = num_tasks(stacked)
  return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(t)]
