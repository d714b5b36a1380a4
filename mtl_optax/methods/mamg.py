"""MAMG (Chai et al., IEEE TCYB 2022): the gradient clipping rule in
coefficient form, in two modes.

The clipping rule (Def. 2, Eqs. 2-4). When ``g_i`` conflicts with ``g_j``
(``<g_i, g_j> < 0``, Def. 1)::

    Pγ = g_i - g_j                                    (Def. 2)
    cos φ_i = <g_i, Pγ> / (‖g_i‖ ‖Pγ‖),  cos φ_j = <g_j, Pγ> / (‖g_j‖ ‖Pγ‖)   (2)
    Δg_ij = ‖g_i cos φ_i - g_j cos φ_j‖               (3)
    g_i' = g_i - Δg_ij Pγ / ‖Pγ‖                      (4)

Eq. (3) is read literally: ``g cos φ`` is the gradient *vector* scaled by its
cosine with ``Pγ``, and ``Δg`` is the norm of the difference of the two
scaled vectors. (Reading it as the difference of the two projections' lengths
on ``Pγ`` would give ``Δg_ij = ‖Pγ‖`` and ``g_i' = g_j`` always.) A zero
``g_i`` or ``g_j`` cannot conflict (the inner product is 0), nor can equal
ones (``Pγ = 0``).

What the clip does (derived from Eqs. 2-4; pinned by ``tests/test_mamg.py``).
Write ``ψ`` for the angle between ``g_i`` and ``g_j``. Then
``λ = Δg_ij / ‖Pγ‖`` lies in ``[0, 1)`` and

    g_i' = (1 - λ) g_i + λ g_j,

a point of the segment from ``g_i`` to ``g_j``: the clip turns ``g_i``
towards ``g_j`` and the angle to ``g_j`` shrinks ("from ψ to β", Fig. 2(c)),
except for exactly opposite gradients (``g_i' = -g_j``, the angle stays π).
When ``‖g_j‖ ≪ ‖g_i‖``, ``λ → 1``: a much smaller conflicting gradient
nearly replaces the larger one (``g_i' ≈ g_j``). It does *not* always
remove the conflict: ``<g_i', g_j> ≥ 0`` holds whenever
``cos ψ > -0.62`` (any norms), but for more strongly opposed gradients it can
remain negative (e.g. ``cos ψ = -0.9``, equal norms). ``Δg`` does not
vanish as ``<g_i, g_j>`` rises to 0 (for equal norms it tends to ``‖g_i‖``):
the rule jumps where the conflict starts. And with ``g^MG = g_i' + g_j``,

    ‖g^MG‖² = ‖g_i + g_j‖² - 2 Δg_ij (‖g_i‖² - ‖g_j‖²) / ‖Pγ‖ + Δg_ij²,

so Lemma 1 (``‖g^MG‖ ≤ ‖g_i + g_j‖``) holds exactly when
``Δg_ij ≤ 2 (‖g_i‖² - ‖g_j‖²) / ‖Pγ‖``: always when the clipped gradient is
the larger one by a factor ``‖g_j‖ ≤ 0.645 ‖g_i‖``, for some angles only
between that and equal norms, and never (strictly, ``‖g^MG‖ > ‖g‖``) when
the clipped gradient is the smaller one.

Mode ``'one_sided'`` (``mamg_one_sided``): the paper's analysis. Fig. 2(c)-(d),
§III-B ("when we use g_i' to substitute g_i"), Lemma 1
(``g^MG = g_i' + g_j``) and the proofs of Theorems 1-2
(``θ⁺ = θ - t (g_1 - Δg_12 Pγ/‖Pγ‖ + g_2)``) clip ONE gradient of a
conflicting pair and keep the other, and sum. For T tasks, per step:

- the tasks enter in an order ``π`` (random per step in the aggregator);
  when task ``π_k`` enters it meets the tasks already in, ``π_1, ...,
  π_{k-1}``, in that order: every unordered pair is visited once, in the
  order ``(π_2, π_1), (π_3, π_1), (π_3, π_2), (π_4, π_1), ...``;
- at each visit the *running* gradients are used (earlier clips included):
  if they conflict, one of them is clipped against the other by Eqs. 2-4
  and replaced by the result, the other is kept;
- which one (``clip``): ``'larger_norm'`` the one with the larger running
  norm, the dominating gradient of Fig. 1(a) (on an exact tie, the one with
  the smaller task index); ``'random'`` a fair coin per pair (``coins``);
  ``'sequential'`` the entering task ``π_k``: each task is clipped, in turn,
  against the final gradients of the tasks that entered before it, and the
  first task is never clipped;
- the result is ``Σ_i w_i g_i'`` (``reduction='sum'``, Lemma 1) or that over
  ``T`` (``'mean'``).

For T = 2 there is one pair: ``g^MG = g_i' + g_j`` with ``i`` the clipped
task (for ``'larger_norm'`` the larger gradient, whatever the order).

Mode ``'algorithm1'`` (``mamg``): Algorithm 1 read literally. For each task
``i`` and each other task ``j`` in a random order, the running ``g_i'`` is
clipped against the *original* ``g_j`` when they conflict; the result is the
mean ``(1/T) Σ_i w_i g_i'`` (line 13; ``reduction='sum'`` drops the ``1/T``).
For T = 2 this is exactly the plain mean gradient: with ``λ`` as above,
``g_1' = (1 - λ) g_1 + λ g_2`` and ``g_2' = (1 - λ) g_2 + λ g_1``
(``Δg_12 = Δg_21`` and ``‖Pγ‖`` is the same), so ``g_1' + g_2' = g_1 + g_2``.

Everything is tracked as coefficient vectors over the task gradients, with
norms and inner products read off the Gramian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from optax.experimental import aggregating

from mtl_optax import _checks
from mtl_optax import gramians as gram_lib
from mtl_optax.gramians import preference_vector
from mtl_optax.methods.pcgrad import _random_order_aggregator
from mtl_optax.methods.pcgrad import _surgery
from mtl_optax.methods.pcgrad import random_orders

REDUCTIONS = ('sum', 'mean')
CLIPS = ('larger_norm', 'random', 'sequential')


def _safe_div(x, y):
  ok = y > 0
  return jnp.where(ok, x / jnp.where(ok, y, 1), 0)


def _clip_fraction(gi_gi, gi_gj, gj_gj):
  """``λ = Δg_ij / ‖Pγ‖`` of Eqs. 2-4 from ``‖g_i‖²``, ``<g_i, g_j>`` and
  ``‖g_j‖²`` (both squared norms ``>= 0``), or 0 when the two do not
  conflict: ``g_i' = g_i - λ Pγ``."""
  p_p = jnp.maximum(gi_gi - 2 * gi_gj + gj_gj, 0)
  norm_p = jnp.sqrt(p_p)
  cos_i = _safe_div(gi_gi - gi_gj, jnp.sqrt(gi_gi) * norm_p)  # <g_i,Pγ>
  cos_j = _safe_div(gi_gj - gj_gj, jnp.sqrt(gj_gj) * norm_p)  # <g_j,Pγ>
  # Δg = ‖cos_i g_i - cos_j g_j‖
  delta2 = (cos_i**2 * gi_gi - 2 * cos_i * cos_j * gi_gj + cos_j**2 * gj_gj)
  delta = jnp.sqrt(jnp.maximum(delta2, 0))
  conflict = (gi_gj < 0) & (norm_p > 0)
  return jnp.where(conflict, _safe_div(delta, norm_p), 0)


def _check_reduction(reduction, method):
  _checks.check_one_of(
      'reduction', reduction, REDUCTIONS, method=method,
      hint="'sum' is Lemma 1's g_i' + g_j, 'mean' divides it by T")


def mamg_weights(
    gram: jax.Array,
    orders: jax.Array,
    preferences: jax.Array | None = None,
    *,
    reduction: str = 'mean',
) -> jax.Array:
  """Algorithm 1 read literally: coefficients of ``(1/T) Σ_i w_i g_i'``.

  Each task's running ``g_i'`` is clipped against every other original
  ``g_j`` it conflicts with, in the order ``orders[i]`` (see the module
  docstring). For T = 2 the result is the plain mean gradient. The paper's
  one-sided rule (the ``mtl_optax.mamg`` default) is ``mamg_one_sided``.

  Args:
    gram: ``[T, T]`` Gramian.
    orders: ``[T, T]`` visiting orders (``mtl_optax.weightings.random_orders``).
    preferences: ``[T]`` weights of the clipped gradients; default all ones.
    reduction: ``'mean'`` (Algorithm 1 line 13, ``1/T``) or ``'sum'``.

  Returns:
    ``[T]`` coefficients.

  Raises:
    ValueError: for an unknown ``reduction``.

  References:
    Chai et al., "A Model-Agnostic Approach to Mitigate Gradient Interference
    for Multi-Task Learning", IEEE Trans. Cybern. 2022: Algorithm 1.

  Example:
    >>> import jax, jax.numpy as jnp, mtl_optax as mtl
    >>> g = jnp.array([[2., 0.], [-1., 1.]])                 # conflicting
    >>> orders = mtl.weightings.random_orders(jax.random.PRNGKey(0), 2)
    >>> c = mtl.weightings.mamg(g @ g.T, orders)
    >>> [round(x, 5) for x in c.tolist()]                    # T = 2: the mean
    [0.5, 0.5]
  """
  _check_reduction(reduction, 'mtl_optax.weightings.mamg')
  t = gram.shape[0]
  w = preference_vector(preferences, t, gram.dtype)
  eye = jnp.eye(t, dtype=gram.dtype)

  def clip(a, j):
    k_a = gram @ a
    gi_gi = jnp.maximum(a @ k_a, 0)          # ‖g_i'‖²
    lam = _clip_fraction(gi_gi, k_a[j], gram[j, j])
    return a - lam * (a - eye[j])            # g_i' - λ Pγ

  rows = _surgery(gram, orders, clip)
  out = w @ rows
  return out / t if reduction == 'mean' else out


def _pair_positions(t: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions ``(k, l)``, ``l < k``, of the pairs in visiting order."""
  ks = [k for k in range(1, t) for _ in range(k)]
  ls = [l for k in range(1, t) for l in range(k)]
  return np.asarray(ks, np.int32), np.asarray(ls, np.int32)


def mamg_draws(key: jax.Array, num_tasks: int) -> tuple[jax.Array, jax.Array]:
  """Random entry order and coins for ``mamg_one_sided``.

  Args:
    key: a PRNG key.
    num_tasks: ``T``.

  Returns:
    ``(order, coins)``: ``order`` a ``[T]`` random permutation of the tasks,
    ``coins`` a ``[T, T]`` bool array of fair coins (only ``coins[k, l]``,
    ``l < k``, are used, by ``clip='random'``).
  """
  k_order, k_coins = jax.random.split(key)
  order = jax.random.permutation(k_order, num_tasks)
  # From the bits, so that the coins do not depend on the default float
  # dtype (jax_enable_x64).
  bits = jax.random.bits(k_coins, (num_tasks, num_tasks), jnp.uint32)
  coins = (bits >> 31) == 1
  return order, coins


def mamg_one_sided(
    gram: jax.Array,
    order: jax.Array,
    coins: jax.Array | None = None,
    preferences: jax.Array | None = None,
    *,
    clip: str = 'larger_norm',
    reduction: str = 'sum',
) -> jax.Array:
  """The paper's one-sided rule: coefficients of ``Σ_i w_i g_i'``.

  Every conflicting pair clips one of its gradients (Eqs. 2-4) and keeps the
  other, and the (clipped) gradients are summed; for T = 2 this is Lemma 1's
  ``g^MG = g_i' + g_j``. Schedule: the tasks enter in ``order``; the task
  entering ``k``-th meets the ``k - 1`` tasks already in, in their entry
  order, so each unordered pair is visited once. A visit uses the running
  gradients (earlier clips included); if they conflict, one of them is
  replaced by its clip against the other: the one with the larger running
  norm (``'larger_norm'``; on an exact tie the smaller task index), the one
  a coin picks (``'random'``), or the entering one (``'sequential'``: each
  task is clipped, in turn, against the final gradients of the tasks that
  entered before it; the first is never clipped).

  What one clip does (derived from Eqs. 2-4, see the module's docstring):
  ``g_i' = (1 - λ) g_i + λ g_j`` with ``λ = Δg_ij/‖Pγ‖ ∈ [0, 1)``, so the
  angle to ``g_j`` shrinks; the conflict is gone afterwards when
  ``cos ψ > -0.62`` but may remain for more opposed pairs; ``λ → 1`` when
  ``‖g_j‖ ≪ ‖g_i‖`` (a much smaller conflicting gradient nearly replaces
  the larger); Lemma 1's ``‖g^MG‖ ≤ ‖g_i + g_j‖`` holds when the clipped
  gradient is the larger by a factor ``≥ 1/0.645``, and never when it is
  the smaller.

  Args:
    gram: ``[T, T]`` Gramian.
    order: ``[T]`` permutation of the tasks: the entry order
      (``mamg_draws``).
    coins: ``[T, T]`` bools, used by ``clip='random'`` only (may be None
      otherwise): at the visit of the ``k``-th and ``l``-th entered tasks
      (``l < k``), ``coins[k, l]`` True clips the ``k``-th, False the
      ``l``-th.
    preferences: ``[T]`` weights of the (clipped) gradients; default all
      ones.
    clip: which gradient of a conflicting pair is clipped: ``'larger_norm'``
      (larger running norm; exact ties: the smaller task index),
      ``'random'`` (``coins``) or ``'sequential'`` (the later-entered one).
    reduction: ``'sum'`` (Lemma 1) or ``'mean'`` (divided by ``T``).

  Returns:
    ``[T]`` coefficients.

  Raises:
    ValueError: for an unknown ``clip`` or ``reduction``, or
      ``clip='random'`` without ``coins``.

  References:
    Chai et al., "A Model-Agnostic Approach to Mitigate Gradient Interference
    for Multi-Task Learning", IEEE Trans. Cybern. 2022: Eqs. (2)-(4),
    Fig. 2(c)-(d), Lemma 1, proofs of Theorems 1-2.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> g = jnp.array([[2., 0.], [-1., 1.]])     # g_0 larger, conflicting
    >>> c = mtl.weightings.mamg_one_sided(g @ g.T, jnp.arange(2))
    >>> # g_0' + g_1 with g_0' = 0.575 g_0 + 0.425 g_1 (λ = 0.425)
    >>> [round(x, 3) for x in c.tolist()]
    [0.575, 1.425]
  """
  method = 'mtl_optax.weightings.mamg_one_sided'
  _checks.check_one_of(
      'clip', clip, CLIPS, method=method,
      hint="which gradient of a conflicting pair is clipped")
  _check_reduction(reduction, method)
  if clip == 'random' and coins is None:
    raise ValueError(f"{method}: clip='random' needs coins (mamg_draws).")
  t = gram.shape[0]
  w = preference_vector(preferences, t, gram.dtype)
  if t < 2:
    return _reduced(w, t, reduction)
  ks, ls = _pair_positions(t)
  order = jnp.asarray(order)
  late, early = order[ks], order[ls]
  if clip == 'random':
    clip_late = jnp.asarray(coins, bool)[ks, ls]
  else:
    clip_late = jnp.ones(ks.shape, bool)

  def visit(a, pair):
    i_late, i_early, coin = pair
    a_late, a_early = a[i_late], a[i_early]
    k_late, k_early = gram @ a_late, gram @ a_early
    n_late = jnp.maximum(a_late @ k_late, 0)        # running ‖g‖²
    n_early = jnp.maximum(a_early @ k_early, 0)
    dot = a_early @ k_late                          # running <g, g>
    if clip == 'larger_norm':
      this = (n_late > n_early) | ((n_late == n_early) & (i_late < i_early))
    else:
      this = coin
    # g_i is clipped against g_j, which is kept.
    i = jnp.where(this, i_late, i_early)
    a_i = jnp.where(this, a_late, a_early)
    a_j = jnp.where(this, a_early, a_late)
    lam = _clip_fraction(jnp.where(this, n_late, n_early), dot,
                         jnp.where(this, n_early, n_late))
    return a.at[i].set(a_i - lam * (a_i - a_j)), None   # g_i - λ Pγ

  rows, _ = jax.lax.scan(visit, jnp.eye(t, dtype=gram.dtype),
                         (late, early, clip_late))
  return _reduced(w @ rows, t, reduction)


def _reduced(c, t, reduction):
  return c / t if reduction == 'mean' else c


MAMG_MODES = ('one_sided', 'algorithm1')


def mamg(
    preferences: jax.Array | None = None,
    *,
    mode: str = 'one_sided',
    clip: str | None = None,
    reduction: str | None = None,
    shared: gram_lib.SharedMask = None,
    seed: int = 0,
    num_tasks: int | None = None,
) -> aggregating.Aggregator:
  """MAMG (Chai et al., IEEE TCYB 2022): the gradient clipping rule.

  When two task gradients conflict (``<g_i, g_j> < 0``, Def. 1), ``g_i`` is
  clipped along the interfering direction ``Pγ = g_i - g_j`` by ``Δg_ij``
  (Eqs. 2-4): ``g_i' = g_i - Δg_ij Pγ/‖Pγ‖``, a point between ``g_i`` and
  ``g_j``. Two modes (what the clip does and does not guarantee:
  ``mtl_optax.weightings.mamg_one_sided``; derivations in this module's
  docstring):

  - ``'one_sided'`` (default), the rule as the paper analyses it (Fig. 2(d),
    Lemma 1, Theorems 1-2): each conflicting pair clips ONE of its gradients
    and keeps the other; the update is the sum, for T = 2
    ``g^MG = g_i' + g_j``. Pairs are visited once each per step, tasks
    entering in a random order and each meeting the tasks already in, on
    the running (already clipped) gradients. ``clip`` picks the clipped one:
    ``'larger_norm'`` (default; the dominating gradient of Fig. 1(a); on an
    exact tie the smaller task index), ``'random'`` (a coin per pair) or
    ``'sequential'`` (the later-entered task: each task is clipped against
    the final gradients of those that entered before it).
  - ``'algorithm1'``, Algorithm 1 read literally: every task's running
    ``g_i'`` is clipped against every other original ``g_j`` (random order
    per task), and the update is their mean. For T = 2 the two clips cancel
    and this is exactly the plain mean gradient (``Δg_12 = Δg_21``, ``Pγ``
    flips sign).

  The task-specific leaves (``shared`` False) get the preference-weighted
  sum ``Σ w_t g_t``, divided by ``T`` when ``reduction='mean'``, on the scale
  of the shared part.

  Args:
    preferences: ``[T]`` weights of the (clipped) gradients and of the
      task-specific leaves; default all ones.
    mode: ``'one_sided'`` or ``'algorithm1'``.
    clip: ``'larger_norm'``, ``'random'`` or ``'sequential'``
      (``mode='one_sided'`` only; None means ``'larger_norm'`` there).
    reduction: ``'sum'`` or ``'mean'`` (divide by ``T``). None (default)
      means each mode's own: ``'sum'`` for ``'one_sided'`` (Lemma 1),
      ``'mean'`` for ``'algorithm1'`` (its line 13).
    shared: which leaves are shared.
    seed: seed of the PRNG key in the state (entry orders, coins).
    num_tasks: ``T``, to record the coefficients in the state.

  Returns:
    An ``Aggregator``.

  Raises:
    TypeError: for arguments of the wrong type (e.g. a float ``seed``).
    ValueError: for an unknown ``mode``, ``clip`` or ``reduction``, a
      ``clip`` with ``mode='algorithm1'``, invalid ``preferences`` (1-D,
      finite, non-negative, not all zero, ``num_tasks`` entries) or
      ``num_tasks < 1``.

  References:
    Chai et al., "A Model-Agnostic Approach to Mitigate Gradient Interference
    for Multi-Task Learning", IEEE Trans. Cybern. 2022: Defs. 1-2,
    Eqs. (2)-(4), Algorithm 1, Fig. 2, Lemma 1, Theorems 1-2.

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> grads = {'w': jnp.array([[2., 0.], [-1., 1.]])}  # g_0 dominates
    >>> tx = mtl.mamg()                       # one-sided, larger norm, sum
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> [round(x, 3) for x in d['w'].tolist()]     # g_0' + g_1
    [-0.275, 1.425]
    >>> tx = mtl.mamg(mode='algorithm1')      # T = 2: the mean gradient
    >>> d, _ = tx.update(grads, tx.init(None))
    >>> [round(x, 5) for x in d['w'].tolist()]
    [0.5, 0.5]
  """
  _checks.check_one_of(
      'mode', mode, MAMG_MODES, method='mamg',
      hint="'one_sided' clips one gradient per conflicting pair (the "
      "paper's analysis), 'algorithm1' is Algorithm 1 read literally")
  if clip is not None:
    _checks.check_one_of(
        'clip', clip, CLIPS, method='mamg',
        hint='which gradient of a conflicting pair is clipped')
    if mode != 'one_sided':
      raise ValueError(
          f"mamg: clip={clip!r} applies to mode='one_sided' only "
          f"(mode={mode!r} clips every task against every other); drop "
          "clip= or pass mode='one_sided'.")
  if reduction is not None:
    _checks.check_one_of(
        'reduction', reduction, REDUCTIONS, method='mamg',
        hint="None is 'sum' for mode='one_sided' (Lemma 1's g_i' + g_j) "
        "and 'mean' for mode='algorithm1' (its line 13)")
  if mode == 'one_sided':
    clip = 'larger_norm' if clip is None else clip
    reduction = 'sum' if reduction is None else reduction

    def weighting(k, draws, preferences):
      order, coins = draws
      return mamg_one_sided(k, order, coins, preferences,
                            clip=clip, reduction=reduction)

    draw = mamg_draws
  else:
    reduction = 'mean' if reduction is None else reduction

    def weighting(k, orders, preferences):
      return mamg_weights(k, orders, preferences, reduction=reduction)

    draw = random_orders
  return _random_order_aggregator(weighting, preferences, shared, seed,
                                  num_tasks, 'mamg', draw=draw,
                                  heads_reduction=reduction)
