"""Gradient sources: where the stacked per-task gradients come from.

- ``value_and_jacobian``: parameter level. One forward pass, then the T
  vector-Jacobian products vmapped (what ``jax.jacrev`` does), so every leaf of
  the result carries a leading task axis ``T``.
- ``representation_grads``: representation level (the "-UB" methods). For an
  encoder-decoder ``z = encode(θ_enc, x)``, ``losses = heads(θ_heads, z)``, the
  per-task gradients are taken with respect to ``z``, any aggregator turns them
  into one cotangent for ``z``, and ONE VJP through the encoder maps it to the
  encoder's parameters: the cost of an ordinary training step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def _check_losses(losses) -> int:
  if jnp.ndim(losses) != 1:
    raise ValueError(
        'The loss function must return a vector of task losses of shape [T]; '
        f'got shape {jnp.shape(losses)}.')
  return losses.shape[0]


def value_and_jacobian(
    loss_fn: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any]]:
  """Task losses and their stacked per-task gradients from one forward pass.

  Args:
    loss_fn: returns the ``[T]`` vector of task losses (and an auxiliary value
      if ``has_aux``).
    argnums: which positional argument(s) to differentiate.
    has_aux: whether ``loss_fn`` returns ``(losses, aux)``.

  Returns:
    A function with ``loss_fn``'s arguments returning ``(losses, jac)``, or
    ``((losses, aux), jac)`` if ``has_aux``; ``jac`` has the structure of the
    differentiated argument(s) with a leading axis ``T`` on every leaf (a
    tuple of such trees if ``argnums`` is a sequence).

  Example:
    >>> import jax.numpy as jnp, mtl_optax as mtl
    >>> def losses(p, x):
    ...   return jnp.stack([jnp.sum(p['w'] * x), jnp.sum(p['w'] ** 2)])
    >>> l, g = mtl.value_and_jacobian(losses)({'w': jnp.ones(3)}, jnp.ones(3))
    >>> g['w'].shape
    (2, 3)
  """
  multiple = not isinstance(argnums, int)
  nums = tuple(argnums) if multiple else (argnums,)

  def wrapped(*args, **kwargs):
    for n in nums:
      if n >= len(args):
        raise ValueError(
            f'argnums={argnums} but only {len(args)} positional arguments.')

    def partial_fn(*diff_args):
      full = list(args)
      for n, a in zip(nums, diff_args):
        full[n] = a
      return loss_fn(*full, **kwargs)

    primals = tuple(args[n] for n in nums)
    if has_aux:
      losses, vjp_fn, aux = jax.vjp(partial_fn, *primals, has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(partial_fn, *primals)
    t = _check_losses(losses)
    jac = jax.vmap(vjp_fn)(jnp.eye(t, dtype=losses.dtype))
    jac = jac if multiple else jac[0]
    return ((losses, aux), jac) if has_aux else (losses, jac)

  return wrapped


class RepresentationGrads(NamedTuple):
  """Result of one representation-level step."""
  losses: jax.Array               # [T]
  encoder_grads: PyTree           # the encoder parameters' structure
  head_grads: PyTree              # the head parameters' structure
  aggregator_state: Any           # the aggregator's new state
  encoder_aux: Any = None         # encode's aux (e.g. BatchNorm statistics)
  heads_aux: Any = None           # heads_losses's aux


def representation_grads(
    encode: Callable[..., Any],
    heads_losses: Callable[..., Any],
    aggregator: optax.GradientTransformationExtraArgs,
    *,
    preferences: jax.Array | None = None,
    encoder_has_aux: bool = False,
    heads_has_aux: bool = False,
) -> Callable[..., RepresentationGrads]:
  """The representation-level ("-UB") step for any aggregator.

  ``Aligned-MTL-UB`` (Z-aligned, Def. 3 of Senushkin et al.) is
  ``representation_grads(encode, heads, mtl.aligned_mtl())`` and ``MGDA-UB``
  (Sener & Koltun §3.3) is ``representation_grads(encode, heads, mtl.mgda())``:
  the same weighting code, applied to the Gramian of ``∂L_t/∂z`` (flattened
  over batch × features) instead of ``∂L_t/∂θ``.

  Cost: one forward and ONE backward pass through the encoder (its VJP with
  the aggregated cotangent ``Σ_t c_t ∂L_t/∂z``); T backward passes through the
  heads only (for ``∂L_t/∂z``) plus one for the heads' own gradients.

  Args:
    encode: ``encode(encoder_params, inputs) -> z`` (any pytree ``z``), or
      ``(z, aux)`` if ``encoder_has_aux``.
    heads_losses: ``heads_losses(head_params, z, batch) -> [T] losses``, or
      ``(losses, aux)`` if ``heads_has_aux``.
    aggregator: any mtl_optax aggregator (or ``Aggregator``); it receives the
      stacked ``∂L_t/∂z`` and returns the cotangent for ``z``. Its state is
      initialised with ``aggregator.init(z)``-compatible structure: use
      ``aggregator.init(None)`` for mtl_optax aggregators.
    preferences: ``[T]`` weights of the heads' gradient ``Σ_t w_t ∇L_t``;
      default all ones.
    encoder_has_aux: whether ``encode`` returns ``(z, aux)``.
    heads_has_aux: whether ``heads_losses`` returns ``(losses, aux)``.

  Returns:
    ``step(encoder_params, head_params, aggregator_state, inputs, batch,
    **extra) -> RepresentationGrads``; ``extra`` (e.g. ``losses=``-free
    keywords) is passed on to the aggregator, which also receives the task
    losses as ``losses=``.

  Example:
    >>> import jax, jax.numpy as jnp, mtl_optax as mtl
    >>> encode = lambda w, x: jnp.tanh(x @ w)
    >>> def heads(h, z, y):
    ...   return jnp.stack([jnp.mean((z @ h[0] - y[:, 0]) ** 2),
    ...                     jnp.mean((z @ h[1] - y[:, 1]) ** 2)])
    >>> agg = mtl.aligned_mtl()
    >>> step = jax.jit(mtl.representation_grads(encode, heads, agg))
    >>> x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
    >>> out = step(jnp.ones((3, 4)) * .1, jnp.ones((2, 4)), agg.init(None),
    ...            x, y)
    >>> out.encoder_grads.shape, out.head_grads.shape
    ((3, 4), (2, 4))
  """

  def step(encoder_params, head_params, aggregator_state, inputs, batch,
           **extra):
    encoded = jax.vjp(lambda p: encode(p, inputs), encoder_params,
                      has_aux=encoder_has_aux)
    if encoder_has_aux:
      z, encoder_vjp, encoder_aux = encoded
    else:
      (z, encoder_vjp), encoder_aux = encoded, None

    heads_fn = lambda h, zz: heads_losses(h, zz, batch)
    vjp_out = jax.vjp(heads_fn, head_params, z, has_aux=heads_has_aux)
    if heads_has_aux:
      losses, heads_vjp, heads_aux = vjp_out
    else:
      (losses, heads_vjp), heads_aux = vjp_out, None
    t = _check_losses(losses)

    # ∂L_t/∂z for every task: T VJPs through the heads (the heads' parameter
    # cotangents are unused here and removed by XLA).
    z_jacobian = jax.vmap(lambda e: heads_vjp(e)[1])(
        jnp.eye(t, dtype=losses.dtype))
    w = jnp.ones((t,), losses.dtype) if preferences is None else jnp.asarray(
        preferences, losses.dtype)
    head_grads, _ = heads_vjp(w)

    extra = dict(extra)
    extra.setdefault('losses', losses)
    z_cotangent, aggregator_state = aggregator.update(
        z_jacobian, aggregator_state, None, **extra)
    z_cotangent = jax.tree.map(lambda c, zz: c.astype(zz.dtype), z_cotangent,
                               z)
    (encoder_grads,) = encoder_vjp(z_cotangent)
    return RepresentationGrads(
        losses=losses,
        encoder_grads=encoder_grads,
        head_grads=head_grads,
        aggregator_state=aggregator_state,
        encoder_aux=encoder_aux,
        heads_aux=heads_aux,
    )

  return step


def stack_tasks(per_task: Sequence[PyTree]) -> PyTree:
  """Stacks T per-task gradient pytrees along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_task)


__all__ = [
    'RepresentationGrads',
    'representation_grads',
    'stack_tasks',
    'value_and_jacobian',
]
