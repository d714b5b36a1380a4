"""Quickstart: every method on a small two-task problem, θ- and z-level.

Methods are taken from the registry (``mtl_optax.available()``); the
representation-level rows are Aligned-MTL-UB and MGDA-UB.

A shared tanh encoder feeds two linear regression heads whose teachers
disagree, and task 2's loss is scaled up 30× so that its gradient dominates
(the situation Aligned-MTL and MGDA are made for). Each method trains the
same initial model for a fixed number of Adam steps; the table reports the
final per-task losses, the mean dominance rate seen during training and the
time per jitted step.

Run:  python benchmarks/quickstart.py [--steps 300] [--out PATH.md]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl

NUM_TASKS = 2
TASK_SCALE = jnp.array([1.0, 30.0])   # task 2 dominates


def make_problem(seed: int = 0, n: int = 256, d_in: int = 16, d_hid: int = 32):
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  x = jax.random.normal(k[0], (n, d_in))
  teacher = jax.random.normal(k[1], (d_in, d_hid)) / jnp.sqrt(d_in)
  feats = jnp.tanh(x @ teacher)
  y = jnp.stack([feats @ jax.random.normal(k[2], (d_hid,)),
                 feats @ jax.random.normal(k[3], (d_hid,)) + jnp.sin(x[:, 0])],
                axis=1)
  params = {
      'encoder': {'w': jax.random.normal(k[4], (d_in, d_hid)) / jnp.sqrt(d_in),
                  'b': jnp.zeros(d_hid)},
      'heads': {'w': jax.random.normal(k[5], (NUM_TASKS, d_hid)) * 0.1,
                'b': jnp.zeros(NUM_TASKS)},
  }
  return params, x, y


def encode(enc, x):
  return jnp.tanh(x @ enc['w'] + enc['b'])


def heads_losses(heads, z, y):
  pred = z @ heads['w'].T + heads['b']
  return TASK_SCALE * jnp.mean((pred - y) ** 2, axis=0)


def losses_fn(params, x, y):
  return heads_losses(params['heads'], encode(params['encoder'], x), y)


SHARED = {'encoder': True, 'heads': False}


def parameter_level(aggregator, params, x, y, steps, lr):
  tx = optax.chain(aggregator, optax.adam(lr))

  @jax.jit
  def step(params, opt_state):
    losses, grads = mtl.value_and_jacobian(losses_fn)(params, x, y)
    # Full batch: the two-batch methods' (modo, sdmgrad) second batch is
    # the same one (no sampling noise to decorrelate); the others ignore it.
    updates, opt_state = tx.update(grads, opt_state, params, losses=losses,
                                   second_grads=grads)
    return optax.apply_updates(params, updates), opt_state, losses

  return _train(step, params, tx.init(params), steps)


def representation_level(aggregator, params, x, y, steps, lr):
  tx = optax.adam(lr)
  grads_fn = mtl.representation_grads(encode, heads_losses, aggregator)

  @jax.jit
  def step(params, state):
    opt_state, agg_state = state
    out = grads_fn(params['encoder'], params['heads'], agg_state, x, y)
    grads = {'encoder': out.encoder_grads, 'heads': out.head_grads}
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates),
            (opt_state, out.aggregator_state), out.losses)

  return _train(step, params, (tx.init(params), aggregator.init(None)), steps)


def _train(step, params, state, steps):
  params, state, _ = step(params, state)          # compile
  jax.block_until_ready(params)
  dominance = []
  start = time.perf_counter()
  for _ in range(steps - 1):
    params, state, losses = step(params, state)
    dominance.append(mtl.aggregator_state(state).diagnostics.dominance_rate)
  jax.block_until_ready(params)
  seconds = (time.perf_counter() - start) / max(steps - 1, 1)
  return np.asarray(losses), float(np.mean(np.asarray(dominance))), seconds


def _registered(name):
  return lambda: mtl.registry.for_tasks(name, num_tasks=NUM_TASKS,
                                        shared=SHARED)


# Every registered method at the parameter level, plus MGDA's l2 variant.
METHODS = {name: _registered(name) for name in mtl.available()}
METHODS['mgda (l2)'] = lambda: mtl.mgda('l2', shared=SHARED)
REPRESENTATION_METHODS = {
    'aligned_mtl_ub (z)': mtl.aligned_mtl,
    'mgda_ub (z)': mtl.mgda,
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--lr', type=float, default=1e-2)
  parser.add_argument('--out', type=pathlib.Path, default=None)
  args = parser.parse_args(argv)

  params, x, y = make_problem()
  init = np.asarray(losses_fn(params, x, y))
  rows = [('initial', init, float('nan'), float('nan'))]
  for name, make in METHODS.items():
    rows.append((name, *parameter_level(make(), params, x, y, args.steps,
                                        args.lr)))
  for name, make in REPRESENTATION_METHODS.items():
    rows.append((name, *representation_level(make(), params, x, y, args.steps,
                                             args.lr)))

  lines = [
      f'Two-task regression (task 2 scaled ×{float(TASK_SCALE[1]):g}), '
      f'{args.steps} Adam steps, lr {args.lr}, {jax.default_backend()}',
      '',
      '| method | loss 1 | loss 2 (scaled) | mean dominance rate | ms/step |',
      '|---|---|---|---|---|',
  ]
  for name, losses, dom, sec in rows:
    lines.append(f'| {name} | {losses[0]:.4f} | {losses[1]:.4f} | '
                 f'{dom:.2f} | {sec * 1e3:.2f} |')
  table = '\n'.join(lines)
  print(table)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + '\n')


if __name__ == '__main__':
  main()
