"""Line searches on MultiMNIST (LeNet): constant step vs. Armijo backtracking.

The three step-size rules of Filatov's thesis on the same direction, MGDA-UB
(Sener & Koltun's MultiMNIST set-up: LeNet encoder, an FC-10 head per digit,
the min-norm direction computed on the representation ``z``):

- ``constant``: ``θ ← θ - lr · (Jᵀ d_z, g_heads)``, lr tuned on a grid by
  validation accuracy;
- ``classic``: ``mtl.backtracking_linesearch`` (Algorithm 3.1) on that
  direction; every trial runs the whole model. Its exact Armijo slope needs
  ``∇f`` for the encoder too: the encoder VJP takes two cotangents (``d_z``
  and ``∂f/∂z``), vmapped, still one encoder forward pass;
- ``fast``: ``mtl.fast_backtracking_linesearch`` (Algorithm 3.2); the trials
  run the heads only. Three ``z_step`` readings: ``direction`` (the
  thesis literally, the library default), ``scaled`` and ``linearized``.

Line searches use the library defaults (``lr_ub=1``, ``γ=0.5``, ``c=1e-4``,
``max_steps=20``): no tuning. All runs start from the same initialisation
and see the same batches.

Reported: wall time per epoch of the training loop (compilation and
evaluation excluded); the same measured again with all methods' jitted steps
interleaved on the same batches (robust to the load of a shared machine);
encoder forward passes per step, counted at run time with a
``jax.debug.callback`` in the encoder on a few steps and compared with the
analytic count (constant and fast: 1, classic: 1 + trials; the
``linearized`` fast variant also evaluates one encoder JVP per step, about the
cost of a forward pass, which the target check counts as a pass); trials per step;
the mean accepted step; accuracy on the validation split and the test set.

Run:
  python -m mtl_optax.data.multi_mnist --data-dir DIR --mnist-dir MNIST_DIR
  python benchmarks/linesearch.py --data-dir DIR [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl
from mtl_optax import data
from mtl_optax import models
from mtl_optax.linesearch import backtracking_linesearch
from mtl_optax.linesearch import fast_backtracking_linesearch

T = 2
TASKS = ('left', 'right')


class Method(NamedTuple):
  name: str
  init: Callable[[Any], Any]                   # params -> state
  step: Callable[..., Any]                     # (params, state, batch, encode)
  linesearch: bool
  lr: float = float('nan')                     # the constant step's


def build_methods(fm, lrs, fast_modes, lr_ub_patience):
  """The benchmark's methods as (params, state, batch) -> (params, state, info)."""
  task_losses = models.default_task_losses('lenet_multimnist')
  stats = fm.batch_stats                        # LeNet: no BatchNorm (empty)

  def split(encode_fn):
    def encode(enc, image):
      return encode_fn(enc, stats['encoder'], image, train=True)[0]

    def heads_losses(h, z, batch):
      outputs, _ = fm.decode(h, stats['heads'], z, train=True)
      return fm.task_loss_vector(task_losses, outputs, batch)
    return encode, heads_losses

  def default_encode(enc, stats_, image, *, train):
    return fm.encode(enc, stats_, image, train=train)

  agg = mtl.mgda()
  methods = []

  def info_of(losses, ls_state=None):
    if ls_state is None:
      return {'loss': jnp.sum(losses), 'trials': jnp.zeros((), jnp.int32),
              'lr': jnp.zeros(())}
    return {'loss': jnp.sum(losses), 'trials': ls_state.info.num_trials,
            'lr': ls_state.learning_rate}

  # Constant step on the MGDA-UB direction.
  for lr in lrs:
    def const_step(params, state, batch, encode_fn=default_encode, lr=lr):
      encode, heads_losses = split(encode_fn)
      rep = mtl.representation_grads(encode, heads_losses, agg)
      out = rep(params['encoder'], params['heads'], state, batch['image'],
                batch)
      grads = {'encoder': out.encoder_grads, 'heads': out.head_grads}
      params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
      return params, out.aggregator_state, info_of(out.losses)
    methods.append(Method(f'constant lr={lr:g}', lambda p: agg.init(None),
                          const_step, False, lr))

  # Algorithm 3.1 on the same direction.
  classic = backtracking_linesearch()

  def classic_step(params, state, batch, encode_fn=default_encode):
    encode, heads_losses = split(encode_fn)
    agg_state, ls_state = state
    z, encoder_vjp = jax.vjp(lambda e: encode(e, batch['image']),
                             params['encoder'])
    losses, heads_vjp = jax.vjp(lambda h, zz: heads_losses(h, zz, batch),
                                params['heads'], z)
    z_jac = jax.vmap(lambda e: heads_vjp(e)[1])(jnp.eye(T))
    g_heads, g_z = heads_vjp(jnp.ones(T))
    d_z, agg_state = agg.update(z_jac, agg_state, None, losses=losses)
    # One encoder VJP, two cotangents: the direction and the gradient of f.
    both = jax.vmap(lambda ct: encoder_vjp(ct)[0])(
        jax.tree.map(lambda a, b: jnp.stack([a, b]), d_z, g_z))
    enc_dir = jax.tree.map(lambda x: x[0], both)
    enc_grad = jax.tree.map(lambda x: x[1], both)

    def value_fn(p):
      return heads_losses(p['heads'], encode(p['encoder'], batch['image']),
                          batch)

    updates, ls_state = classic.update(
        {'encoder': enc_dir, 'heads': g_heads}, ls_state, params,
        value=losses, grad={'encoder': enc_grad, 'heads': g_heads},
        value_fn=value_fn, losses=losses)
    params = optax.apply_updates(params, updates)
    return params, (agg_state, ls_state), info_of(losses, ls_state)

  methods.append(Method('classic backtracking',
                        lambda p: (agg.init(None), classic.init(p)),
                        classic_step, True))

  # Algorithm 3.2.
  variants = [(m, None) for m in fast_modes]
  if lr_ub_patience:
    variants.append(('linearized', lr_ub_patience))
  for mode, patience in variants:
    def fast_step(params, state, batch, encode_fn=default_encode, mode=mode,
                  patience=patience):
      encode, heads_losses = split(encode_fn)
      fast = fast_backtracking_linesearch(encode, heads_losses, agg,
                                          z_step=mode,
                                          lr_ub_patience=patience)
      out = fast.step(params['encoder'], params['heads'], state,
                      batch['image'], batch)
      params = optax.apply_updates(
          params, {'encoder': out.encoder_updates, 'heads': out.head_updates})
      return params, out.state, info_of(out.losses, out.state.linesearch)

    def fast_init(p, mode=mode, patience=patience):
      fast = fast_backtracking_linesearch(None, None, agg, z_step=mode,
                                          lr_ub_patience=patience)
      return fast.init(p['encoder'], p['heads'])

    name = f'fast backtracking ({mode})'
    if patience:
      name = f'fast backtracking ({mode}, lr_ub_patience={patience})'
    methods.append(Method(name, fast_init, fast_step, True))
  return methods


def counting_encode(fm, counter):
  """``fm.encode`` that counts its runs (not its traces) on the host."""

  def encode_fn(enc, stats_, image, *, train):
    jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
    return fm.encode(enc, stats_, image, train=train)
  return encode_fn


def accuracy(fm, params, split, data_dir, batch_size=1000):
  apply = jax.jit(lambda p, x: fm.apply(p, fm.batch_stats, x, train=False)[0])
  correct, n = np.zeros(T), 0
  for batch in data.load('multi_mnist', split, data_dir=data_dir,
                         batch_size=batch_size, shuffle=False, num_epochs=1,
                         drop_remainder=False, prefetch=0):
    out = apply(params, batch['image'])
    for i, t in enumerate(TASKS):
      correct[i] += np.sum(np.argmax(np.asarray(out[t]), -1) == batch[t])
    n += len(batch['image'])
  return 100 * correct / n


def train(method, fm, args, log):
  step = jax.jit(method.step)
  params, state = fm.params, method.init(fm.params)
  it = data.load('multi_mnist', args.train_split, data_dir=args.data_dir,
                 batch_size=args.batch_size, seed=args.seed,
                 num_epochs=args.epochs)
  steps = it.steps_per_epoch
  first = next(it)
  t0 = time.perf_counter()
  jax.block_until_ready(step(params, state, first))   # compile
  log(f'  compiled in {time.perf_counter() - t0:.1f} s')
  epoch_times, trials, lrs, losses = [], [], [], []
  batches = [first]
  for epoch in range(args.epochs):
    t0 = time.perf_counter()
    infos = []
    for i in range(steps):
      batch = batches.pop() if batches else next(it)
      params, state, info = step(params, state, batch)
      infos.append(info)
    jax.block_until_ready(params)
    epoch_times.append(time.perf_counter() - t0)
    infos = jax.device_get(infos)
    trials += [int(x['trials']) for x in infos]
    lrs += [float(x['lr']) for x in infos]
    losses.append(float(np.mean([x['loss'] for x in infos])))
    log(f'  epoch {epoch + 1}: {epoch_times[-1]:.1f} s, train loss '
        f'{losses[-1]:.4f}, trials/step {np.mean(trials[-steps:]):.2f}, '
        f'mean step {np.mean(lrs[-steps:]):.4f}')
    if not np.isfinite(losses[-1]):
      break
  return params, {'epoch_times': epoch_times, 'trials': trials, 'lrs': lrs,
                  'losses': losses, 'steps_per_epoch': steps}


def count_encoder_runs(method, fm, batches):
  """Encoder forward passes per step, counted at run time."""
  counter = [0]
  step = jax.jit(lambda p, s, b: method.step(
      p, s, b, encode_fn=counting_encode(fm, counter)))
  params, state = fm.params, method.init(fm.params)
  trials = []
  for b in batches:
    params, state, info = step(params, state, b)
    trials.append(int(info['trials']))
  jax.effects_barrier()
  return counter[0] / len(batches), float(np.mean(trials))


def interleaved_step_times(methods, fm, batches, rounds):
  """Median seconds per step, the methods' jitted steps taking turns."""
  steps = [jax.jit(m.step) for m in methods]
  states = [(fm.params, m.init(fm.params)) for m in methods]
  for i, s in enumerate(steps):                      # compile and warm up
    p, st, _ = s(*states[i], batches[0])
    states[i] = (p, st)
  times = [[] for _ in methods]
  for _ in range(rounds):
    for i, s in enumerate(steps):
      p, st = states[i]
      t0 = time.perf_counter()
      for b in batches:
        p, st, info = s(p, st, b)
      jax.block_until_ready(p)
      times[i].append((time.perf_counter() - t0) / len(batches))
      states[i] = (p, st)
  return [float(np.median(t)) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--train-split', default='train[:50000]')
  parser.add_argument('--val-split', default='train[50000:]')
  parser.add_argument('--test-split', default='test')
  parser.add_argument('--lrs', default='0.03,0.1,0.3,1')
  parser.add_argument('--fast-modes', default='direction,scaled,linearized')
  parser.add_argument('--lr-ub-patience', type=int, default=0)
  parser.add_argument('--only', default='',
                      help='comma-separated substrings of method names')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--timing-rounds', type=int, default=5)
  parser.add_argument('--timing-steps', type=int, default=10)
  parser.add_argument('--out', default=str(
      pathlib.Path(__file__).parent / 'results' / 'linesearch.md'))
  parser.add_argument('--json', default=str(
      pathlib.Path(__file__).parent / 'results' / 'linesearch.json'))
  args = parser.parse_args()

  model = models.create('lenet_multimnist', rngs=args.seed)
  fm = models.functional(model)
  lrs = [float(x) for x in args.lrs.split(',') if x]
  methods = build_methods(fm, lrs, [m for m in args.fast_modes.split(',') if m],
                          args.lr_ub_patience)
  if args.only:
    keys = args.only.split(',')
    methods = [m for m in methods if any(k in m.name for k in keys)]

  def log(msg):
    print(msg, flush=True)

  results = {}
  for m in methods:
    log(f'{m.name}')
    params, rec = train(m, fm, args, log)
    rec['val'] = accuracy(fm, params, args.val_split, args.data_dir).tolist()
    rec['test'] = accuracy(fm, params, args.test_split, args.data_dir).tolist()
    log(f'  val {rec["val"]}, test {rec["test"]}')
    results[m.name] = rec

  probe = list(data.load('multi_mnist', args.train_split,
                         data_dir=args.data_dir, batch_size=args.batch_size,
                         seed=args.seed + 1, num_epochs=1,
                         prefetch=0))[:args.timing_steps]
  for m in methods:
    runs, trials = count_encoder_runs(m, fm, probe)
    results[m.name]['encoder_runs_counted'] = runs
    results[m.name]['probe_trials'] = trials
    log(f'{m.name}: {runs:.2f} encoder runs/step counted, {trials:.2f} '
        'trials/step')
  times = interleaved_step_times(methods, fm, probe, args.timing_rounds)
  for m, t in zip(methods, times):
    results[m.name]['interleaved_step_s'] = t

  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  write_table(methods, results, args)


def write_table(methods, results, args):
  consts = [m.name for m in methods if m.name.startswith('constant')]
  best = max(consts, key=lambda n: np.mean(results[n]['val'])) if consts else None
  ref = results[best] if best else None
  ref_epoch = np.median(ref['epoch_times']) if ref else np.nan
  ref_step = ref['interleaved_step_s'] if ref else np.nan
  ref_acc = np.mean(ref['test']) if ref else np.nan
  lines = [
      '# Line searches on MultiMNIST (LeNet, MGDA-UB direction)',
      '',
      f'`python benchmarks/linesearch.py --epochs {args.epochs} --batch-size '
      f'{args.batch_size} --lrs {args.lrs}` (train `{args.train_split}`, '
      f'validation `{args.val_split}`, test `{args.test_split}`; '
      f'{results[methods[0].name]["steps_per_epoch"]} steps per epoch), '
      f'CPU, {jax.device_count()} {jax.devices()[0].platform} device(s), '
      f'jax {jax.__version__}.',
      '',
      '| method | time/epoch (s) | × const | interleaved time/step (ms) | '
      '× const | encoder fwd/step (analytic) | counted | trials/step | '
      'mean step | train loss | val acc | test acc (L / R) | mean test '
      '| Δ vs tuned const |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for m in methods:
    r = results[m.name]
    trials = float(np.mean(r['trials'])) if m.linesearch else 0.0
    epoch = float(np.median(r['epoch_times']))
    if m.name.startswith('classic'):
      analytic = f'1 + {trials:.2f} = {1 + trials:.2f}'
    elif 'linearized' in m.name:
      analytic = '1 (+ 1 JVP)'
    else:
      analytic = '1'
    name = m.name + (' **(tuned)**' if m.name == best else '')
    mean_test = float(np.mean(r['test']))
    lines.append(
        f'| {name} | {epoch:.1f} | {epoch / ref_epoch:.2f} | '
        f'{1e3 * r["interleaved_step_s"]:.1f} | '
        f'{r["interleaved_step_s"] / ref_step:.2f} | {analytic} | '
        f'{r["encoder_runs_counted"]:.2f} | '
        f'{trials:.2f} | '
        f'{float(np.mean(r["lrs"])) if m.linesearch else m.lr:.4f} | '
        f'{r["losses"][-1]:.4f} | {np.mean(r["val"]):.2f} | '
        f'{r["test"][0]:.2f} / {r["test"][1]:.2f} | {mean_test:.2f} | '
        f'{mean_test - ref_acc:+.2f} |')
  classic = next((results[m.name] for m in methods
                  if m.name.startswith('classic')), None)
  if ref and classic:
    c_trials = float(np.mean(classic['trials']))
    lines += [
        '',
        "Targets (the thesis' claims) for each fast variant: time per epoch "
        '≤ 1.2× the tuned constant step; encoder forward passes per step '
        'fewer than classic backtracking by at least its mean trials '
        f'({c_trials:.2f}); mean test accuracy within 0.3 points of the tuned '
        'constant step.',
        '',
        '| fast variant | time ratio (epoch / interleaved) | ≤ 1.2× | '
        'encoder passes saved vs classic | ≥ trials | Δ accuracy | '
        '≥ -0.3 |',
        '|---|---|---|---|---|---|---|',
    ]
    for m in methods:
      if not m.name.startswith('fast'):
        continue
      r = results[m.name]
      ratio_e = float(np.median(r['epoch_times'])) / ref_epoch
      ratio_s = r['interleaved_step_s'] / ref_step
      # A JVP through the encoder costs about one forward pass: count it.
      jvps = 1.0 if 'linearized' in m.name else 0.0
      saved = (1 + c_trials) - (r['encoder_runs_counted'] + jvps)
      delta = float(np.mean(r['test'])) - ref_acc
      ok = lambda b: 'yes' if b else 'no'
      lines.append(
          f'| {m.name} | {ratio_e:.2f} / {ratio_s:.2f} | '
          f'{ok(max(ratio_e, ratio_s) <= 1.2)} | {saved:.2f} | '
          f'{ok(saved >= c_trials)} | {delta:+.2f} | {ok(delta >= -0.3)} |')
  pathlib.Path(args.out).write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
