"""Side by side with the PyTorch peers, in one run, on this machine.

Two parts, each timed in two worker processes (one JAX, one PyTorch) that a
parent drives round by round: every round times each entry once in each
framework, alternating which framework goes first, so that a change in the
machine's load (these machines are shared) hits both alike. Only one worker
runs at a time; the other waits on its pipe. Ratios are ours / PyTorch's
(< 1: we are faster), from the medians; minima are shown too.

``aggregators``: every method we share with TorchJD on the same random
Jacobian ``J [T, P]`` (float32, one flat leaf; ``T ∈ {2, 10, 40}``,
``P ∈ {10⁶, 10⁷}``), each framework's jitted/eager call from ``J`` to the
aggregated ``[P]`` vector. A convention check on a small ``J`` says, per
method, whether both return the same vector, or how they differ (TorchJD's
``Mean`` averages the rows; randomised methods draw different weights). The
Gramian alone (ours ``gramians.gramian`` vs ``J @ J.T``) is a reference row.

``steps``: training steps of the papers' models on a fixed random batch,
against the same network and step written plainly in PyTorch, the way LibMTL
and the papers' code compute them:

- LeNet-MultiMNIST (batch 256, T = 2): the single-loss step (backward of the
  summed losses); the parameter-level (θ) MGDA step (per-task gradients:
  ours ``value_and_jacobian``, theirs one ``autograd.grad`` per task with
  ``retain_graph``, TorchJD's MGDA on the shared parameters' ``[T, P]``); the
  representation-level (z, MGDA-UB) step (per-task gradients with respect to
  the encoder's output, MGDA on them, ONE backward through the encoder);
- ResNet-18-CelebA 64×64 (T = 40, batch 32), the z-level MGDA-UB step.

Both sides use Adam (lr 1e-3) and float32 on the CPU; ours is the jitted
``mtl_optax.training`` step with buffer donation, as the training loop runs
it. The networks are the same layer for layer (the table shows both
parameter counts).

Needs the ``peers`` extra (torch, torchjd; install the CPU wheel of torch
first on Linux, see pyproject.toml).

Run:  python benchmarks/vs_pytorch.py [--parts aggregators,steps]
      [--rounds 7] [--out benchmarks/results/vs_pytorch.md]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Callable

import numpy as np

# `benchmarks.step_time` from a clone, whatever the working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Ours -> (TorchJD class name, keyword arguments with T known).
SHARED_METHODS = {
    'linear_scalarization': ('Mean', {}),
    'upgrad': ('UPGrad', {}),
    'mgda': ('MGDA', {}),
    'aligned_mtl': ('AlignedMTL', {}),
    'imtl_g': ('IMTLG', {}),
    'dualproj': ('DualProj', {}),
    'cagrad': ('CAGrad', {'c': 0.4}),
    'pcgrad': ('PCGrad', {}),
    'graddrop': ('GradDrop', {}),
    'conflict_free': ('ConFIG', {}),
    'random_weighting': ('Random', {}),
    'fairgrad': ('FairGrad', {'alpha': 1.0}),
    'gradvac': ('GradVac', {'beta': 0.5}),
    'nash_mtl': ('NashMTL', {}),
    # The two whose weights do not need the Gramian, without the Gramian
    # that our default computes for the diagnostics (dominance rate, ...).
    'linear_scalarization/no_diagnostics': ('Mean', {}),
    'random_weighting/no_diagnostics': ('Random', {}),
}
RANDOMISED = ('pcgrad', 'graddrop', 'random_weighting', 'gradvac',
              'random_weighting/no_diagnostics')
GRAMIAN = 'gramian'
SIZES = ((2, 10**6), (10, 10**6), (40, 10**6), (2, 10**7), (10, 10**7),
         (40, 10**7))
STEPS = (('lenet', 'single'), ('lenet', 'theta'), ('lenet', 'z'),
         ('resnet18', 'z'))
STEP_LABELS = {'single': 'single loss', 'theta': 'θ-level MGDA',
               'z': 'z-level MGDA-UB'}
BATCH = {'lenet': 256, 'resnet18': 32}
CONVENTION_SHAPE = (4, 7)


def random_jacobian(t: int, p: int, seed: int = 0) -> np.ndarray:
  """``[t, p]`` float32 with correlated rows (a shared component), so that
  the tasks conflict and agree in part as real gradients do."""
  rng = np.random.default_rng(seed)
  j = rng.standard_normal((t, p), dtype=np.float32)
  j += 0.5 * rng.standard_normal((1, p), dtype=np.float32)
  return j


# -- JAX side ----------------------------------------------------------------


def _jax_aggregators(t: int, p: int, methods) -> tuple[dict, dict]:
  import jax
  import jax.numpy as jnp
  import mtl_optax as mtl

  def build(name, j):
    method, _, variant = name.partition('/')
    kwargs = {'track_diagnostics': False} if variant == 'no_diagnostics' else {}
    agg = mtl.registry.for_tasks(method, num_tasks=j.shape[0], **kwargs)
    params = {'w': jnp.zeros(j.shape[1:], j.dtype)}
    state = agg.init(params)
    update = jax.jit(lambda g, s: agg.update({'w': g}, s, params)[0]['w'])
    return update, state

  small = jnp.asarray(random_jacobian(*CONVENTION_SHAPE, seed=1))
  outputs = {}
  for name in methods:
    update, state = build(name, small)
    outputs[name] = np.asarray(update(small, state)).tolist()
  outputs[GRAMIAN] = np.asarray(mtl.gramians.gramian(small)).ravel().tolist()

  j = jnp.asarray(random_jacobian(t, p))
  calls = {}
  for name in methods:
    update, state = build(name, j)
    calls[name] = (lambda u=update, s=state: jax.block_until_ready(u(j, s)))
  gram = jax.jit(mtl.gramians.gramian)
  calls[GRAMIAN] = lambda: jax.block_until_ready(gram(j))
  return calls, outputs


def _jax_steps(names) -> tuple[dict, dict]:
  import jax
  from benchmarks import step_time
  from mtl_optax import models, training

  calls, info = {}, {}
  for model, kind in names:
    setup = step_time.SETUPS[model]
    batch = step_time.random_batch(setup)
    config = training.Config(model=setup['model'], dataset=setup['dataset'],
                             batch_size=setup['batch_size'], seed=0,
                             method='mgda')
    if kind == 'single':
      experiment = training.build(config, num_train_examples=2560)
      fm = experiment.model
      step, args = step_time.single_loss_step(
          setup, fm, models.default_task_losses(setup['model']), batch)
      holder = [args]

      def call(step=step, holder=holder):
        params, stats, opt_state, b = holder[0]
        params, stats, opt_state = step(params, stats, opt_state, b)
        jax.block_until_ready(params)
        holder[0] = (params, stats, opt_state, b)
    else:
      level = 'parameter' if kind == 'theta' else 'representation'
      experiment = training.build(config.replace(level=level),
                                  num_train_examples=2560)
      fm = experiment.model
      # Fresh buffers: the step donates its state (as the training loop).
      holder = [jax.tree.map(jax.numpy.copy, experiment.init_state)]

      def call(step=experiment.train_step, holder=holder, batch=batch):
        state, _ = step(holder[0], batch)
        jax.block_until_ready(state.params)
        holder[0] = state
    calls[f'{model}/{kind}'] = call
    info[f'{model}/params'] = int(sum(
        x.size for x in jax.tree.leaves(fm.params)))
  return calls, info


# -- PyTorch side -------------------------------------------------------------


def _torch_aggregators(t: int, p: int, methods) -> tuple[dict, dict]:
  import torch
  import torchjd.aggregation as tja

  def build(name, t):
    cls, kwargs = SHARED_METHODS[name]
    if name == 'nash_mtl':
      kwargs = dict(kwargs, n_tasks=t)
    return getattr(tja, cls)(**kwargs)

  small = torch.from_numpy(random_jacobian(*CONVENTION_SHAPE, seed=1))
  outputs = {}
  with torch.no_grad():
    for name in methods:
      outputs[name] = build(name, small.shape[0])(small).tolist()
    outputs[GRAMIAN] = (small @ small.T).ravel().tolist()

  j = torch.from_numpy(random_jacobian(t, p))
  calls = {}
  for name in methods:
    agg = build(name, t)

    def call(agg=agg):
      with torch.no_grad():
        agg(j)
    calls[name] = call

  def gram():
    with torch.no_grad():
      j @ j.T
  calls[GRAMIAN] = gram
  return calls, outputs


def _torch_modules():
  """LeNet-MultiMNIST and ResNet-18-CelebA, as our zoo builds them."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  class LeNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(1, 10, 5)
      self.conv2 = nn.Conv2d(10, 20, 5)
      self.fc = nn.Linear(320, 50)

    def forward(self, x):
      x = F.relu(F.max_pool2d(self.conv1(x), 2))
      x = F.relu(F.max_pool2d(self.conv2(x), 2))
      return F.relu(self.fc(x.flatten(1)))

  class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = None
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride,
                                                bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))

  class ResNet18(nn.Module):
    """3×3 stride-1 stem, no max-pool, global average pool (512)."""

    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(64), nn.ReLU())
      blocks, cin = [], 64
      for i, cout in enumerate((64, 128, 256, 512)):
        for b in range(2):
          blocks.append(BasicBlock(cin, cout, 2 if (i and not b) else 1))
          cin = cout
      self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
      return self.blocks(self.stem(x)).mean(dim=(2, 3))

  class MultiTask(nn.Module):
    def __init__(self, encoder, features, tasks, classes):
      super().__init__()
      self.encoder = encoder
      self.heads = nn.ModuleList(nn.Linear(features, classes)
                                 for _ in range(tasks))

  return {
      'lenet': lambda: MultiTask(LeNet(), 50, 2, 10),
      'resnet18': lambda: MultiTask(ResNet18(), 512, 40, 2),
  }, torch


def _torch_steps(names) -> tuple[dict, dict]:
  import torchjd.aggregation as tja
  builders, torch = _torch_modules()
  import torch.nn.functional as F
  torch.manual_seed(0)
  mgda = tja.MGDA()
  calls, info = {}, {}
  for model, kind in names:
    net = builders[model]()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    b, t = BATCH[model], len(net.heads)
    shape = (b, 1, 28, 28) if model == 'lenet' else (b, 3, 64, 64)
    classes = net.heads[0].out_features
    x = torch.randn(shape)
    y = torch.randint(0, classes, (b, t))
    shared = list(net.encoder.parameters())

    def losses_of(z, net=net, y=y):
      return [F.cross_entropy(head(z), y[:, i])
              for i, head in enumerate(net.heads)]

    if kind == 'single':
      def call(net=net, opt=opt, x=x, losses_of=losses_of):
        opt.zero_grad(set_to_none=True)
        torch.stack(losses_of(net.encoder(x))).sum().backward()
        opt.step()
    elif kind == 'theta':
      def call(net=net, opt=opt, x=x, losses_of=losses_of, shared=shared):
        opt.zero_grad(set_to_none=True)
        losses = losses_of(net.encoder(x))
        rows = []
        for i, loss in enumerate(losses):
          grads = torch.autograd.grad(
              loss, shared + list(net.heads[i].parameters()),
              retain_graph=i + 1 < len(losses))
          rows.append(torch.cat([g.flatten() for g in grads[:len(shared)]]))
          for prm, g in zip(net.heads[i].parameters(), grads[len(shared):]):
            prm.grad = g
        with torch.no_grad():
          combined = mgda(torch.stack(rows))
        offset = 0
        for prm in shared:
          prm.grad = combined[offset:offset + prm.numel()].view_as(prm)
          offset += prm.numel()
        opt.step()
    else:
      def call(net=net, opt=opt, x=x, losses_of=losses_of):
        opt.zero_grad(set_to_none=True)
        z = net.encoder(x)
        z_detached = z.detach().requires_grad_()
        losses = losses_of(z_detached)
        rows = [torch.autograd.grad(loss, z_detached, retain_graph=True)[0]
                .flatten() for loss in losses]
        with torch.no_grad():
          cotangent = mgda(torch.stack(rows)).view_as(z)
        torch.stack(losses).sum().backward()   # the heads' gradients
        z.backward(cotangent)                  # ONE pass through the encoder
        opt.step()
    calls[f'{model}/{kind}'] = call
    info[f'{model}/params'] = int(sum(p.numel() for p in net.parameters()))
  return calls, info


# -- the two workers and the parent -------------------------------------------

BUILDERS: dict[str, Callable] = {
    ('jax', 'aggregators'): _jax_aggregators,
    ('jax', 'steps'): _jax_steps,
    ('torch', 'aggregators'): _torch_aggregators,
    ('torch', 'steps'): _torch_steps,
}


def _serve(conn, framework: str, part: str, args: tuple) -> None:
  """Worker: builds its calls, then times the one the parent names."""
  try:
    calls, info = BUILDERS[(framework, part)](*args)
    if framework == 'torch':
      import torch
      info['threads'] = torch.get_num_threads()
    conn.send(('ready', info))
    while True:
      message = conn.recv()
      if message is None:
        break
      name, n = message
      times = []
      for _ in range(n):
        start = time.perf_counter()
        calls[name]()
        times.append(time.perf_counter() - start)
      conn.send(times)
  except BaseException as e:   # report to the parent, which stops the run
    conn.send(('error', f'{framework} {part}: {type(e).__name__}: {e}'))
    raise


class Worker:
  """A worker process and its pipe."""

  def __init__(self, framework: str, part: str, args: tuple):
    ctx = multiprocessing.get_context('spawn')
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_serve,
                               args=(child, framework, part, args),
                               daemon=True)
    self.process.start()
    status, self.info = self.conn.recv()
    if status != 'ready':
      raise RuntimeError(self.info)

  def time(self, name: str, n: int = 1) -> list[float]:
    self.conn.send((name, n))
    out = self.conn.recv()
    if isinstance(out, tuple):
      raise RuntimeError(out[1])
    return out

  def close(self):
    self.conn.send(None)
    self.process.join(60)


def interleaved(workers: dict[str, Worker], names, rounds: int,
                warmup: int, burst: int = 1) -> dict:
  """``{framework: {name: [seconds per call]}}``; each round times every
  name in each framework, the framework order alternating.

  A round times ``burst`` consecutive calls of each (every call timed), as
  a training loop runs its steps back to back: the first call after the
  other framework ran pays to wake its thread pool (measured: a 0.2 s idle
  gap before every call made our LeNet step 11 -> 17 ms, PyTorch's not at
  all), the next ones run as in training. Medians over all the calls.
  """
  order = list(workers)
  first = {fw: {} for fw in order}
  for name in names:
    for fw in order:
      first[fw][name] = workers[fw].time(name, max(warmup, 1))[0]
  times = {fw: {name: [] for name in names} for fw in order}
  for r in range(rounds):
    for name in names:
      for fw in (order if r % 2 == 0 else order[::-1]):
        times[fw][name] += workers[fw].time(name, burst)
  return {'first': first, 'times': times}


def convention(ours: list, theirs: list, name: str) -> str:
  """How our output on the small ``J`` relates to TorchJD's: the best scalar
  ``s`` with ``ours ≈ s · theirs`` and the relative residual."""
  a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if name in RANDOMISED:
    return 'randomised (different draws)'
  s = float(a @ b / max(b @ b, 1e-300))
  residual = float(np.linalg.norm(a - s * b) / max(np.linalg.norm(a), 1e-300))
  t = CONVENTION_SHAPE[0]
  scale = ('same scale' if abs(s - 1) < 1e-3 else
           f'ours = T × theirs (sum vs mean)' if abs(s - t) < 1e-3 * t else
           f'ours = {s:.4g} × theirs')
  return f'{scale}, residual {residual:.0e}'


def run_aggregators(args) -> list[dict]:
  methods = list(SHARED_METHODS)
  rows = []
  for t, p in args.sizes:
    print(f'aggregators T={t} P={p:.0e}', flush=True)
    workers = {'ours': Worker('jax', 'aggregators', (t, p, methods)),
               'torch': Worker('torch', 'aggregators', (t, p, methods))}
    result = interleaved(workers, methods + [GRAMIAN], args.rounds,
                         args.warmup)
    for name in methods + [GRAMIAN]:
      ours, theirs = (result['times'][k][name] for k in ('ours', 'torch'))
      rows.append({
          'part': 'aggregators', 'T': t, 'P': p, 'method': name,
          'torchjd': SHARED_METHODS[name][0] if name in SHARED_METHODS
                     else 'J @ J.T',
          'ours_s': ours, 'torch_s': theirs,
          'ours_first_s': result['first']['ours'][name],
          'convention': convention(workers['ours'].info[name],
                                   workers['torch'].info[name], name),
      })
      print(json.dumps(_summary(rows[-1])), flush=True)
    for w in workers.values():
      w.close()
  return rows


def run_steps(args) -> list[dict]:
  rows = []
  for model in dict.fromkeys(m for m, _ in args.steps):
    names = [f'{m}/{k}' for m, k in args.steps if m == model]
    kinds = [(m, k) for m, k in args.steps if m == model]
    print(f'steps {model}', flush=True)
    workers = {'ours': Worker('jax', 'steps', (kinds,)),
               'torch': Worker('torch', 'steps', (kinds,))}
    rounds = args.rounds if model == 'lenet' else args.resnet_rounds
    result = interleaved(workers, names, rounds, args.warmup, args.burst)
    for name in names:
      rows.append({
          'part': 'steps', 'model': model, 'step': name.split('/')[1],
          'batch': BATCH[model],
          'ours_s': result['times']['ours'][name],
          'torch_s': result['times']['torch'][name],
          'ours_first_s': result['first']['ours'][name],
          'ours_params': workers['ours'].info[f'{model}/params'],
          'torch_params': workers['torch'].info[f'{model}/params'],
          'torch_threads': workers['torch'].info['threads'],
      })
      print(json.dumps(_summary(rows[-1])), flush=True)
    for w in workers.values():
      w.close()
  return rows


def _summary(row: dict) -> dict:
  out = {k: v for k, v in row.items() if not k.endswith('_s')}
  out['ratio_median'] = ratio(row)
  return out


def ratio(row: dict, stat=np.median) -> float:
  return float(stat(row['ours_s']) / stat(row['torch_s']))


def _ms(x) -> str:
  return f'{1e3 * x:.1f}' if x < 10 else f'{x:.2f} s'


def markdown(rows: list[dict], args, info: dict) -> str:
  lines = [
      '# Side by side with the PyTorch peers',
      '',
      f'{info["machine"]}; jax {info["jax"]}, torch {info["torch"]}, '
      f'torchjd {info["torchjd"]}. One run of `benchmarks/vs_pytorch.py '
      f'{" ".join(info["argv"])}`. Each framework runs in its own worker '
      'process; every round times each entry in each (alternating '
      'which goes first), only one worker running at a time. Ratio = ours '
      '/ PyTorch (< 1: ours is faster), of the medians (and of the minima). '
      'Ours: jitted, first call (compilation) excluded and shown apart.',
      '',
  ]
  steps = [r for r in rows if r['part'] == 'steps']
  if steps:
    lines += [
        '## Training steps (CPU, float32, Adam)',
        '',
        f'Medians over {args.rounds} rounds (ResNet-18: '
        f'{args.resnet_rounds}) of {args.burst} consecutive steps each, '
        'every step timed (a training loop runs them back to back). '
        'PyTorch: the same network written plainly, per-task '
        '`autograd.grad` with `retain_graph` at θ and TorchJD\'s MGDA on the '
        'shared parameters\' `[T, P]`; at z, per-task gradients with respect '
        'to the encoder\'s output, MGDA on them, the heads\' backward and '
        'one backward through the encoder.',
        '',
        '| model | batch | step | ours ms | PyTorch ms | ratio (median) | '
        'ratio (min) | ours compile+first s | params ours / PyTorch |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in steps:
      lines.append(
          f'| {r["model"]} | {r["batch"]} | {STEP_LABELS[r["step"]]} | '
          f'{_ms(np.median(r["ours_s"]))} | {_ms(np.median(r["torch_s"]))} | '
          f'**{ratio(r):.2f}** | {ratio(r, np.min):.2f} | '
          f'{r["ours_first_s"]:.1f} | '
          f'{r["ours_params"]:,} / {r["torch_params"]:,} |')
    lines.append('')
  aggs = [r for r in rows if r['part'] == 'aggregators']
  if aggs:
    lines += [
        '## Aggregators on the same J [T, P] (CPU, float32)',
        '',
        f'Medians of {args.rounds} rounds; each call maps `J` to the '
        'aggregated `[P]` vector. "Convention": our output against '
        'TorchJD\'s on a small `J [4, 7]` (same vector up to solver '
        'tolerance, a stated scaling, or different random draws).',
        '',
    ]
    for t, p in args.sizes:
      group = [r for r in aggs if r['T'] == t and r['P'] == p]
      lines += [
          f'### T = {t}, P = {p:.0e}',
          '',
          '| ours | TorchJD | ours ms | TorchJD ms | ratio (median) | '
          'ratio (min) | ours compile+first s | convention |',
          '|---|---|---|---|---|---|---|---|',
      ]
      for r in group:
        lines.append(
            f'| {r["method"]} | {r["torchjd"]} | '
            f'{_ms(np.median(r["ours_s"]))} | '
            f'{_ms(np.median(r["torch_s"]))} | **{ratio(r):.2f}** | '
            f'{ratio(r, np.min):.2f} | {r["ours_first_s"]:.2f} | '
            f'{r["convention"]} |')
      lines.append('')
  return '\n'.join(lines)


def machine() -> str:
  from benchmarks import speed   # its machine_info reads the CPU model
  info = speed.machine_info()
  return f'{info["cpu_model"]}, {info["cpu_count"]} cores'


def _sizes(text: str):
  return [tuple(int(float(v)) for v in item.split('x'))
          for item in text.split(',')]


def _steps(text: str):
  return [tuple(item.split('/')) for item in text.split(',')]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--parts', default='steps,aggregators')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--resnet-rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed calls per entry before the rounds')
  parser.add_argument('--burst', type=int, default=5,
                      help='consecutive training steps per round and '
                      'framework (each timed), as a training loop runs them')
  parser.add_argument('--sizes', type=_sizes,
                      default=list(SIZES),
                      help='TxP list, e.g. 2x1e6,40x1e7')
  parser.add_argument('--steps', type=_steps, default=list(STEPS),
                      help='model/kind list, e.g. lenet/single,lenet/z')
  parser.add_argument('--out', type=pathlib.Path, default=None)
  parser.add_argument('--render', type=pathlib.Path, default=None,
                      help='only re-render the Markdown of a stored JSON')
  args = parser.parse_args(argv)
  for model, kind in args.steps:
    if model not in BATCH or kind not in STEP_LABELS:
      parser.error(f'unknown step {model}/{kind}; models {sorted(BATCH)}, '
                   f'kinds {sorted(STEP_LABELS)}')
  return args


def render(json_path: pathlib.Path) -> str:
  """The Markdown of a stored run (its JSON), e.g. after a report change."""
  stored = json.loads(json_path.read_text())
  return markdown(stored['rows'], parse_args(stored['info']['argv']),
                  stored['info'])


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.render:
    text = render(args.render)
    print(text)
    if args.out:
      args.out.write_text(text + '\n')
    return 0
  try:
    import torch
    import torchjd
  except ImportError as e:
    raise SystemExit(
        f'vs_pytorch needs the peers extra ({e}): pip install torch '
        '--index-url https://download.pytorch.org/whl/cpu && '
        "pip install -e '.[peers]'") from e
  import jax
  rows = []
  parts = args.parts.split(',')
  if 'steps' in parts:
    rows += run_steps(args)
  if 'aggregators' in parts:
    rows += run_aggregators(args)
  info = {'machine': machine(), 'jax': jax.__version__,
          'torch': torch.__version__,
          'torchjd': importlib.metadata.version('torchjd'),
          'argv': list(argv) if argv is not None else sys.argv[1:]}
  text = markdown(rows, args, info)
  print(text)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + '\n')
    args.out.with_suffix('.json').write_text(
        json.dumps({'info': info, 'rows': rows}, indent=1))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
