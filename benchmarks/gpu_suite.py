"""GPU suite: aggregators on a [40, 10⁷] J, ResNet-18 steps, MultiMNIST.

One script for one GPU (sized for an NVIDIA H200: an estimated 7 minutes,
within the default ``--budget-seconds 480``; not yet run on one) that writes
one Markdown file of tables and a JSON file of the raw numbers next to it.
Memory: the θ-level ResNet-18 step at batch 256 needs about 70 GB (XLA:CPU's
analysis at batches 16 and 64, extrapolated); lower ``--step-batch`` on a
smaller GPU.

What it measures
----------------
a. **Aggregators on J.** A float32 Jacobian ``J`` of shape ``[T, P]`` (default
   ``[40, 10⁷]``, 1.6 GB; Gaussian rows, the first half minus 0.5× the second
   half so that pairs of tasks conflict) on the device. Every Gramian-based
   method registered in ``mtl_optax.registry`` (all but GradDrop and the
   loss-based ones, which need the task losses), built with
   ``registry.for_tasks(name, num_tasks=T)``, its ``update`` compiled with
   ``benchmarks.speed.compile_fn``; plus the two primitives
   ``mtl.gramian`` and ``mtl.combine``. Next to each, TorchJD 0.18's
   aggregator of the same method (Mean, UPGrad, MGDA, AlignedMTL, IMTLG,
   DualProj, CAGrad, NashMTL, PCGrad, FairGrad, ConFIG, GradVac, Random) on
   the same ``J`` on the same device, when ``torch`` is importable (with CUDA
   when JAX runs on a GPU; else the column is skipped and the reason
   written). Per call: median and min wall time (warm-up first, then
   ``--rounds`` interleaved rounds, each timing every method once,
   ``jax.block_until_ready`` / ``torch.cuda.synchronize``) and the ratio to
   the HBM-bandwidth floor, one read of ``J`` (``4·T·P`` bytes at
   ``--hbm-tb-per-s``, 4.8 TB/s for an H200: 0.33 ms). An aggregator reads
   ``J`` at least twice (the Gramian, then the weighted sum), so 2× the
   floor is the unfused ideal. Also: ours/TorchJD time, and how the two
   directions compare (``scale = <u, v>/<v, v>`` and the cosine; see the
   conventions in the table's header).
b. **Training steps.** ResNet-18-CelebA (``resnet18_celeba``, T = 40,
   64×64, batch ``--step-batch``) for ``--step-method`` and
   ``linear_scalarization``, each at the parameter level (θ, the ``[T, P]``
   Jacobian), the representation level (z, one backward pass) and the
   Jacobian-free parameter level (``jacobian_free_grads``: the Gramian by
   forward-over-reverse products, ``--step-chunk`` tasks at a time, the
   update by one VJP), and the single-loss step (``jax.grad`` of the summed
   losses + Adam, ``benchmarks.step_time.single_loss_step``) as the floor.
   Steps are built by ``mtl_optax.training.build`` (the Jacobian-free one
   from the same Config, optimizer and aggregator), compiled once, timed
   round-robin on a fixed random batch (median and min of
   ``--step-repeats``). Peak memory: XLA's compiled memory analysis
   (arguments + outputs + temporaries) and, where the device reports it,
   ``memory_stats()['peak_bytes_in_use']`` after the step's first call: a
   process-wide high-water mark, so the steps run in increasing order of
   their compiled peak and this part runs first.
c. **LeNet-MultiMNIST.** ``--mnist-epochs`` (100) epochs of each of
   ``--mnist-methods`` (``aligned_mtl,mgda``; ``name:z`` for the
   representation level) with the protocol of the MultiMNIST config
   (``mtl_optax.configs.multi_mnist``: batch 256, SGD momentum 0.9, lr
   1e-2 halved every 30 epochs) through ``mtl_optax.training.train``:
   test accuracy per task (left, right), seconds per step and wall time.
   It reads the prepared dataset from ``--data-dir`` (prepared there first
   from the four MNIST IDX files of ``--mnist-dir`` if given); nothing is
   ever downloaded. Without
   ``--data-dir`` the script stops at once with an error naming the flag,
   unless ``--skip-multimnist`` is given (the table says it was skipped).

The parts run in the order b, a, c. ``--budget-seconds`` is checked before
each part and before each MultiMNIST run: what would start past it (or, for
a MultiMNIST run, would end past it at the previous run's pace) is skipped,
and the table says so. Each part's wall time is in the table. A failing
measurement (say, out of memory) is written in its cell; the others go on.
The exit status is 0 when everything asked for ran, 1 otherwise.

How to run on a GPU machine
---------------------------
Once, where there is internet (PyPI's Linux torch wheel is a CUDA build)::

    pip install -e '.[all,peers]' 'jax[cuda12]' 'torchjd[full]>=0.18,<0.19'

and the four MNIST IDX files (``train-images-idx3-ubyte.gz``, ...) in a
directory ``MNIST``. Then the one command, from the repository root::

    python benchmarks/gpu_suite.py --data-dir DATA --mnist-dir MNIST

(``--mnist-dir`` is only needed until ``DATA`` holds the prepared
MultiMNIST; ``python -m mtl_optax.data.multi_mnist --data-dir DATA
--mnist-dir MNIST`` prepares it on its own.) It writes
``benchmarks/results/gpu_suite.md`` and ``.json`` (``--out``).

``--smoke`` runs every part on whatever backend is there (a CPU is enough)
in seconds: ``J`` of ``[4, 10⁴]``, LeNet-MultiMNIST instead of ResNet-18 in
part b (batch 4), and 3 MultiMNIST steps at batch 2 with 2 evaluation
batches (give a small prepared ``--data-dir``, as ``tests/test_gpu_suite.py``
does). Any explicit flag overrides the smoke size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import pathlib
import statistics
import sys
import time
import traceback
import warnings
from typing import Any, Callable

if __package__ in (None, ''):     # run as a script: `benchmarks` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top,wrong-import-position
# pylint: disable=import-outside-toplevel,protected-access
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtl_optax as mtl
from mtl_optax import data
from mtl_optax import models
from mtl_optax import registry
from mtl_optax import training
from mtl_optax.jacobian import jacobian_free_grads
from benchmarks import memory as memory_bench
from benchmarks import speed
from benchmarks import step_time

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / 'results' / \
    'gpu_suite.md'
PARTS = ('a', 'b', 'c')
RUN_ORDER = ('b', 'a', 'c')
PART_TITLES = {
    'a': 'a. Aggregators on J',
    'b': 'b. Training steps',
    'c': 'c. LeNet-MultiMNIST',
}
H200_HBM_TB_PER_S = 4.8

# Registered methods that part a does not run, and why.
NOT_ON_J = {'graddrop': 'not Gramian-based (per-coordinate sign masks)'}
LOSS_BASED = 'loss-based (needs the task losses)'

# Our registry name -> (TorchJD 0.18 aggregator, its keyword arguments given
# T, how the two outputs relate). Checked on small Jacobians on CPU: TorchJD
# combines the rows with weights from its weighting, whose preferences are
# 1/T (Mean, UPGrad, DualProj, AlignedMTL); ours default to preferences 1 (a
# sum of rows).
TORCHJD: dict[str, tuple[str, Callable[[int], dict], str]] = {
    'linear_scalarization': ('Mean', lambda t: {}, 'T× (Σ vs mean)'),
    'upgrad': ('UPGrad', lambda t: {}, 'T× (preferences 1 vs 1/T)'),
    'dualproj': ('DualProj', lambda t: {}, 'T× (preferences 1 vs 1/T)'),
    'aligned_mtl': ('AlignedMTL', lambda t: {}, 'T× (preferences 1 vs 1/T)'),
    'mgda': ('MGDA', lambda t: {},
             '1× (TorchJD: Frank-Wolfe, ε=1e-3; ours exact)'),
    'imtl_g': ('IMTLG', lambda t: {}, '1×'),
    'cagrad': ('CAGrad', lambda t: {'c': 0.4},
               '1/(1+c²) (ours rescale=1; c=0.4 both)'),
    'nash_mtl': ('NashMTL', lambda t: {'n_tasks': t},
                 '1× (both clip the norm to 1)'),
    'fairgrad': ('FairGrad', lambda t: {'alpha': 1.0}, '1× (α=1)'),
    'conflict_free': ('ConFIG', lambda t: {}, '1×'),
    'pcgrad': ('PCGrad', lambda t: {}, 'same sum, other projection orders'),
    'gradvac': ('GradVac', lambda t: {}, 'same sum, other visiting orders'),
    'random_weighting': ('Random', lambda t: {}, 'other random weights'),
}
PRIMITIVES = ('gramian', 'combine')


################################################################################
# Timing and small helpers.


def interleaved_runs(calls: dict[str, Callable[[], Any]], rounds: int, *,
                     warmup: int = 1, cap_seconds: float | None = None,
                     min_runs: int = 3
                     ) -> tuple[dict[str, list[float]], dict[str, str]]:
  """Times every call in round-robin rounds (each round times each once).

  Every call is warmed up first; a call that raises is dropped and its error
  kept. Each call must block until its device work is done.

  Args:
    calls: ``name -> fn()``.
    rounds: number of rounds.
    warmup: untimed calls of each before the rounds.
    cap_seconds: a call stops being timed once it has ``min_runs`` runs
      summing to more than this (slow ones do not eat the budget).
    min_runs: see ``cap_seconds``.

  Returns:
    ``(runs, errors)``: seconds of each timed call, and ``name -> message``
    of those that raised.
  """
  errors: dict[str, str] = {}
  live = {}
  for name, fn in calls.items():
    try:
      for _ in range(warmup):
        fn()
      live[name] = fn
    except Exception as e:  # noqa: BLE001 (recorded in the table)
      errors[name] = _error(e)
  runs: dict[str, list[float]] = {name: [] for name in live}
  for _ in range(rounds):
    for name, fn in list(live.items()):
      done = runs[name]
      if (cap_seconds is not None and len(done) >= min_runs
          and sum(done) > cap_seconds):
        continue
      try:
        start = time.perf_counter()
        fn()
        done.append(time.perf_counter() - start)
      except Exception as e:  # noqa: BLE001
        errors[name] = _error(e)
        del live[name], runs[name]
  return runs, errors


@contextlib.contextmanager
def _quiet_cvxpy():
  """Silences cvxpy's note that TorchJD's NashMTL problem is not DPP (the
  solver runs as TorchJD wrote it; the note is about re-solve speed)."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='You are solving a parameterized '
                            'problem that is not DPP', category=UserWarning)
    yield


def _summary(runs: list[float]) -> dict[str, Any]:
  return {'median_s': statistics.median(runs), 'min_s': min(runs),
          'runs': len(runs), 'all_s': runs}


def _error(e: BaseException) -> str:
  """A one-line description of an exception (first line, 300 characters)."""
  text = f'{type(e).__name__}: {e}'.strip().splitlines()[0]
  return text[:300]


def _cell(text: str) -> str:
  """``text`` safe in a Markdown table cell."""
  return text.replace('|', '\\|').replace('\n', ' ')


def _ms(seconds: float | None) -> str:
  """Milliseconds, 3 significant digits (no exponent)."""
  if seconds is None:
    return '—'
  ms = seconds * 1e3
  return f'{ms:.3g}' if ms < 100 else f'{ms:,.0f}'


def _mib(n: int | None) -> str:
  return '—' if n is None else f'{n / 2**20:,.0f}'


def device_peak_bytes() -> int | None:
  """The default device's ``peak_bytes_in_use``, None where not reported."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 (a backend without memory stats)
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return int(stats['peak_bytes_in_use'])


################################################################################
# a. Aggregators on J.


def make_jacobian(t: int, p: int, seed: int) -> np.ndarray:
  """A float32 ``[t, p]`` Jacobian whose task pairs conflict.

  Gaussian rows, then the first ``t // 2`` rows minus 0.5× the next
  ``t // 2`` (cosine about -0.45 within those pairs), so that the weighting
  solves have active constraints, as in ``benchmarks/speed.py``'s weighting
  timings.

  Args:
    t: number of tasks.
    p: number of parameters.
    seed: numpy seed.

  Returns:
    The ``[t, p]`` float32 array.
  """
  rng = np.random.default_rng(seed)
  j = rng.standard_normal((t, p), dtype=np.float32)
  h = t // 2
  if h:
    j[:h] -= 0.5 * j[h:2 * h]
  return j


def gramian_methods() -> tuple[list[str], dict[str, str]]:
  """The registered methods part a runs, and those it does not (why)."""
  run, skipped = [], {}
  for name in registry.available():
    if name in NOT_ON_J:
      skipped[name] = NOT_ON_J[name]
    elif name in registry.NEEDS_LOSSES:
      skipped[name] = LOSS_BASED
    elif name in registry.NEEDS_SECOND_GRADS:
      skipped[name] = 'needs second_grads= (another batch\'s gradients)'
    elif name in registry.TRACKS_GRADIENTS:
      skipped[name] = 'its state is shaped like the parameters (init needs them)'
    else:
      run.append(name)
  return run, skipped


def torch_device(backend: str) -> tuple[Any, Any, str | None]:
  """``(torch, device, None)`` for TorchJD on JAX's device kind, or
  ``(None, None, reason)`` when that is not possible."""
  try:
    import torch
    import torchjd.aggregation  # noqa: F401 pylint: disable=unused-import
  except Exception as e:  # noqa: BLE001
    return None, None, f'torch/torchjd not importable ({_error(e)})'
  if backend == 'gpu':
    if not torch.cuda.is_available():
      return None, None, (f'torch {torch.__version__} has no CUDA device '
                          '(JAX runs on the GPU; a CPU column would not '
                          'compare)')
    return torch, torch.device('cuda'), None
  if backend != 'cpu':
    return None, None, f'no torch device for JAX backend {backend!r}'
  return torch, torch.device('cpu'), None


def _torch_info(torch) -> dict[str, Any]:
  """Versions and matmul settings of torch (and torchjd)."""
  import torchjd
  from importlib import metadata
  info = {'torch': torch.__version__,
          'torchjd': getattr(torchjd, '__version__', None) or
                     metadata.version('torchjd'),
          'cuda': torch.version.cuda,
          'cuda_device': (torch.cuda.get_device_name(0)
                          if torch.cuda.is_available() else None),
          'allow_tf32': None}
  try:
    info['allow_tf32'] = bool(torch.backends.cuda.matmul.allow_tf32)
  except Exception:  # noqa: BLE001 (informative only)
    pass
  return info


def _compare(u: np.ndarray, v: np.ndarray) -> dict[str, float]:
  """``scale = <u, v>/<v, v>`` and ``cos(u, v)``, in float64."""
  u = np.asarray(u, np.float64).reshape(-1)
  v = np.asarray(v, np.float64).reshape(-1)
  uv, vv, uu = float(u @ v), float(v @ v), float(u @ u)
  scale = uv / vv if vv > 0 else math.nan
  cos = uv / math.sqrt(uu * vv) if uu > 0 and vv > 0 else math.nan
  return {'scale': scale, 'cos': cos}


def aggregators_part(args, log: Callable[..., None]) -> dict[str, Any]:
  """Part a: ours and TorchJD's aggregators on the same ``J``.

  Args:
    args: the parsed flags (``tasks``, ``params``, ``rounds``, ``methods``,
      ``hbm_tb_per_s``, ``method_cap_seconds``, ``no_torch``, ``seed``).
    log: prints a progress line.

  Returns:
    The part's record: sizes, the floor, one row per method (ours and
    TorchJD's times, compile time, comparison), the methods not run.
  """
  t, p = args.tasks, args.params
  backend = jax.default_backend()
  nbytes = 4 * t * p
  floor_s = nbytes / (args.hbm_tb_per_s * 1e12)
  methods, skipped = gramian_methods()
  if args.methods:
    methods = [m for m in methods if m in args.methods]
  record: dict[str, Any] = {
      'T': t, 'P': p, 'bytes': nbytes, 'hbm_tb_per_s': args.hbm_tb_per_s,
      'floor_s': floor_s, 'rounds': args.rounds, 'rows': {},
      'not_run': skipped, 'jacobian': 'gaussian, rows[:T/2] -= 0.5 rows[T/2:]'}
  start = time.perf_counter()
  matrix = make_jacobian(t, p, args.seed)
  grads = {'w': jax.device_put(matrix)}
  coefficients = jax.device_put(
      np.random.default_rng(args.seed + 1).standard_normal(t).astype(
          np.float32))
  jax.block_until_ready(grads)
  log(f'[a] J [{t}, {p:,}] float32 ({nbytes / 1e9:.3g} GB) on {backend}: '
      f'{time.perf_counter() - start:.1f} s; floor {floor_s * 1e3:.3g} ms')

  rows: dict[str, dict[str, Any]] = {}
  calls: dict[str, Callable[[], Any]] = {}
  directions: dict[str, np.ndarray] = {}

  def add_ours(name, fn, *fn_args, direction=None):
    row = rows.setdefault(name, {'method': name})
    try:
      compiled, lower_s, compile_s = speed.compile_fn(fn, *fn_args)
    except Exception as e:  # noqa: BLE001
      row['ours_error'] = _error(e)
      log(f'[a] {name}: {row["ours_error"]}')
      return
    row['compile_s'] = lower_s + compile_s
    calls[f'ours|{name}'] = (
        lambda: jax.block_until_ready(compiled(*fn_args)))
    try:                    # the first, untimed call (and the direction)
      out = compiled(*fn_args)
      if direction is not None:
        directions[name] = np.asarray(direction(out))
      jax.block_until_ready(out)
    except Exception as e:  # noqa: BLE001
      row['ours_error'] = _error(e)
      del calls[f'ours|{name}']

  add_ours('gramian', mtl.gramian, grads)
  add_ours('combine', mtl.combine, coefficients, grads)
  for name in methods:
    try:
      tx = registry.for_tasks(name, num_tasks=t)
      state = tx.init(None)
    except Exception as e:  # noqa: BLE001
      rows[name] = {'method': name, 'ours_error': _error(e)}
      continue
    add_ours(name, tx.update, grads, state,
             direction=lambda out: out[0]['w'])
    log(f'[a] compiled {name} in {rows[name].get("compile_s", math.nan):.2f}'
        ' s')

  torch, device, reason = (None, None, '--no-torch') if args.no_torch else \
      torch_device(backend)
  record['torch_skipped'] = reason
  if torch is not None:
    import torchjd.aggregation as tja
    record['torch'] = _torch_info(torch)
    matrix_t = torch.from_numpy(matrix).to(device)
    sync = (torch.cuda.synchronize if device.type == 'cuda'
            else (lambda: None))
    for name in methods:
      if name not in TORCHJD:
        continue
      cls_name, kwargs, _ = TORCHJD[name]
      row = rows[name]
      row['torchjd'] = cls_name
      cls = getattr(tja, cls_name, None)
      if cls is None:
        row['torchjd_error'] = f'torchjd has no {cls_name}'
        continue
      try:
        agg = cls(**kwargs(t))
        first = time.perf_counter()
        with torch.no_grad(), _quiet_cvxpy():
          directions[f'torch|{name}'] = agg(matrix_t).cpu().numpy()
        sync()
        first = time.perf_counter() - first
      except Exception as e:  # noqa: BLE001 (e.g. missing optional deps)
        row['torchjd_error'] = _error(e)
        log(f'[a] TorchJD {cls_name}: {row["torchjd_error"]}')
        continue
      if first > args.method_cap_seconds / 3:
        # Too slow to time repeatedly within the cap: the first call only.
        row['torchjd_time'] = dict(_summary([first]), first_call_only=True)
        log(f'[a] TorchJD {cls_name}: first call {first:.1f} s, not '
            'repeated')
        continue

      def call(agg=agg):
        with torch.no_grad(), _quiet_cvxpy():
          out = agg(matrix_t)
        sync()
        return out

      calls[f'torch|{name}'] = call
  del matrix

  log(f'[a] timing {len(calls)} calls, {args.rounds} interleaved rounds')
  # One warm-up call each, after the untimed call that gave the direction.
  runs, errors = interleaved_runs(calls, args.rounds, warmup=1,
                                  cap_seconds=args.method_cap_seconds)
  for key, value in errors.items():
    side, name = key.split('|', 1)
    rows[name][f'{side if side == "ours" else "torchjd"}_error'] = value
  for key, value in runs.items():
    side, name = key.split('|', 1)
    rows[name]['ours' if side == 'ours' else 'torchjd_time'] = _summary(value)
  for name, row in rows.items():
    for side in ('ours', 'torchjd_time'):
      if side in row:
        row[side]['x_floor'] = row[side]['median_s'] / floor_s
    if name in directions and f'torch|{name}' in directions:
      row['compare'] = _compare(directions[name], directions[f'torch|{name}'])
    if 'ours' in row and 'torchjd_time' in row:
      row['ours_over_torchjd'] = (row['ours']['median_s'] /
                                  row['torchjd_time']['median_s'])
  record['rows'] = rows
  del grads
  return record


def aggregators_markdown(record: dict[str, Any]) -> list[str]:
  """Part a's table."""
  t, p = record['T'], record['P']
  torch_note = (f'TorchJD {record["torch"]["torchjd"]} on torch '
                f'{record["torch"]["torch"]} (CUDA {record["torch"]["cuda"]}, '
                f'allow_tf32={record["torch"]["allow_tf32"]})'
                if record.get('torch') else
                f'TorchJD column skipped: {record["torch_skipped"]}')
  lines = [
      f'J: float32 [{t}, {p:,}] ({record["bytes"] / 1e9:.3g} GB; '
      f'{record["jacobian"]}). HBM floor: one read of J at '
      f'{record["hbm_tb_per_s"]:g} TB/s = {record["floor_s"] * 1e3:.3g} ms '
      '(`--hbm-tb-per-s`); an aggregator reads J at least twice (Gramian, '
      f'then weighted sum): 2× is the unfused ideal. {record["rounds"]} '
      'interleaved rounds after two untimed calls of each; median and min '
      'ms (¹: one call only, it took over a third of '
      '`--method-cap-seconds`). '
      f'{torch_note}.',
      '',
      'Conventions: TorchJD aggregators return a combination of the rows of '
      'J, Σ_t w_t J_t, with weights from their weighting (preferences 1/T '
      'for Mean, UPGrad, DualProj, AlignedMTL); ours default to preferences '
      '1 (a sum), so for those ours = T × TorchJD\'s. Column "expected": '
      'ours/TorchJD as found on small Jacobians on CPU; "scale" = '
      '<u, v>/<v, v> and "cos" measured here (u ours, v TorchJD). Our '
      'linear_scalarization (the registry default, track_diagnostics=True) '
      'also computes the Gramian for its diagnostics; TorchJD\'s Mean does '
      'not.',
      '',
      '| method | ours median | ours min | ours × floor | compile (s) | '
      'TorchJD | TorchJD median | TorchJD min | TorchJD × floor | '
      'ours / TorchJD time | expected | scale | cos |',
      '|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|',
  ]
  for name, row in record['rows'].items():
    ours = row.get('ours')
    tj = row.get('torchjd_time')
    if ours:
      ours_cells = [_ms(ours['median_s']), _ms(ours['min_s']),
                    _ratio(ours['x_floor']), f'{row["compile_s"]:.2f}']
    else:
      ours_cells = [_cell(row.get('ours_error', '—')), '—', '—', '—']
    if tj:
      mark = '¹' if tj.get('first_call_only') else ''
      tj_cells = [_ms(tj['median_s']) + mark, _ms(tj['min_s']) + mark,
                  _ratio(tj['x_floor'])]
    elif 'torchjd_error' in row:
      tj_cells = [_cell('skipped: ' + row['torchjd_error']), '—', '—']
    else:
      tj_cells = ['—', '—', '—']
    ratio = row.get('ours_over_torchjd')
    compare = row.get('compare', {})
    expected = TORCHJD[name][2] if name in TORCHJD else '—'
    lines.append(
        f'| {name} | ' + ' | '.join(ours_cells) +
        f' | {row.get("torchjd", "—")} | ' + ' | '.join(tj_cells) +
        f' | {"—" if ratio is None else f"{ratio:.2f}"} | {expected} | '
        f'{_fmt(compare.get("scale"), ".4g")} | '
        f'{_fmt(compare.get("cos"), ".6f")} |')
  lines.append('')
  lines.append('Primitives: `gramian` = `mtl.gramian(J)` (one read of J), '
               '`combine` = `mtl.combine(c, J)` (one read). Not run (not '
               'applicable to J alone): ' + '; '.join(
                   f'{k}: {v}' for k, v in record['not_run'].items()) + '.')
  return lines


def _ratio(x: float) -> str:
  return f'{x:.2f}' if x < 100 else f'{x:,.0f}'


def _fmt(x: float | None, spec: str) -> str:
  return '—' if x is None else format(x, spec)


################################################################################
# b. Training steps.


def _has_config_field(name: str) -> bool:
  return name in {f.name for f in dataclasses.fields(training.Config)}


def jacobian_free_step(config, num_train_examples: int, chunk_size: int | None
                       ) -> tuple[Callable, tuple]:
  """The Jacobian-free parameter-level training step of ``config``.

  Uses the training loop's own selection when ``training.Config`` has a
  ``jacobian_free`` flag; otherwise builds the step from the same parts as
  ``training.build``: the model, its training-mode loss, the registry's
  aggregator with the model's shared mask, the Config's optimizer and
  schedule, and ``jacobian_free_grads``.

  Args:
    config: a parameter-level ``training.Config``.
    num_train_examples: for the schedule's steps per epoch.
    chunk_size: tasks per chunk of the Gramian (None: all at once).

  Returns:
    ``(step, args)``: ``step(*args)`` runs one step (not donating).
  """
  if _has_config_field('jacobian_free'):
    experiment = training.build(config.replace(jacobian_free=True),
                                num_train_examples=num_train_examples)
    return step_time._undonated(experiment), (experiment.init_state,)
  experiment = training.build(config, num_train_examples=num_train_examples)
  fm = experiment.model
  task_losses = models.default_task_losses(config.model,
                                           **config.model_kwargs)
  loss_fn = fm.loss_fn(task_losses, train=True)
  aggregator = registry.for_tasks(config.method, num_tasks=len(fm.tasks),
                                  shared=fm.shared_mask,
                                  **config.method_kwargs)
  optimizer = training.make_optimizer(
      config, training.learning_rate_schedule(config,
                                              experiment.steps_per_epoch))
  grads_fn = jacobian_free_grads(loss_fn, aggregator, shared=fm.shared_mask,
                                 chunk_size=chunk_size, has_aux=True)

  def step(state, batch):
    out = grads_fn(state.params, state.aggregator_state, state.batch_stats,
                   batch)
    updates, opt_state = optimizer.update(out.grads, state.opt_state,
                                          state.params)
    return training.TrainState(
        state.step + 1, optax.apply_updates(state.params, updates), out.aux,
        opt_state, out.aggregator_state), out.losses

  state = training.TrainState(jnp.zeros((), jnp.int32), fm.params,
                              fm.batch_stats, optimizer.init(fm.params),
                              aggregator.init(None))
  return step, (state,)


def steps_part(args, log: Callable[..., None]) -> dict[str, Any]:
  """Part b: time and peak memory of the training steps.

  Args:
    args: the parsed flags (``step_model``, ``step_batch``, ``step_method``,
      ``step_repeats``, ``step_chunk``, ``step_width``, ``step_tasks``,
      ``seed``).
    log: prints a progress line.

  Returns:
    The part's record: the set-up and one row per step.
  """
  model = args.step_model
  dataset = models.spec(model).dataset
  model_kwargs: dict[str, Any] = {}
  if args.step_width is not None:
    model_kwargs['width'] = args.step_width
  if args.step_tasks is not None:
    model_kwargs['tasks'] = tuple(models.CELEBA_ATTRIBUTES[:args.step_tasks])
  setup = {'model': model, 'dataset': dataset, 'batch_size': args.step_batch}
  config = training.Config(model=model, dataset=dataset,
                           batch_size=args.step_batch, seed=args.seed,
                           model_kwargs=model_kwargs)
  batch = step_time.random_batch(setup)
  num_train = 10 * args.step_batch
  methods = list(dict.fromkeys(['linear_scalarization', args.step_method]))
  record: dict[str, Any] = {
      'model': model, 'dataset': dataset, 'batch': args.step_batch,
      'model_kwargs': {k: list(v) if isinstance(v, tuple) else v
                       for k, v in model_kwargs.items()},
      'chunk_size': args.step_chunk, 'repeats': args.step_repeats,
      'jacobian_free_via': ('Config(jacobian_free=True)'
                            if _has_config_field('jacobian_free') else
                            'jacobian_free_grads'),
      'methods': methods, 'rows': []}
  entries: list[dict[str, Any]] = []
  calls_args: dict[str, tuple[Any, tuple]] = {}
  fm = None

  def add(row: dict[str, Any], build: Callable[[], tuple[Callable, tuple]]):
    key = f'{row["method"]}|{row["level"]}'
    row['key'] = key
    entries.append(row)
    start = time.perf_counter()
    try:
      fn, fn_args = build()
      compiled, lower_s, compile_s = speed.compile_fn(fn, *fn_args, batch)
    except Exception as e:  # noqa: BLE001 (e.g. out of memory)
      row['error'] = _error(e)
      log(f'[b] {key}: {row["error"]}')
      return
    row['compile_s'] = lower_s + compile_s
    row['xla_peak_bytes'] = int(memory_bench._peak_bytes(compiled)['peak'])
    calls_args[key] = (compiled, (*fn_args, batch))
    log(f'[b] built {key} in {time.perf_counter() - start:.1f} s (XLA peak '
        f'{row["xla_peak_bytes"] / 2**20:,.0f} MiB)')

  for method in methods:
    for level in ('parameter', 'representation'):
      def build(method=method, level=level):
        nonlocal fm
        experiment = training.build(
            config.replace(method=method, level=level),
            num_train_examples=num_train)
        fm = experiment.model
        return step_time._undonated(experiment), (experiment.init_state,)
      add({'method': method, 'level': level}, build)
    add({'method': method, 'level': 'jacobian_free'},
        lambda method=method: jacobian_free_step(
            config.replace(method=method, level='parameter'), num_train,
            args.step_chunk))

  def build_single():
    task_losses = models.default_task_losses(model, **model_kwargs)
    fn, fn_args = step_time.single_loss_step(setup, fm, task_losses, batch)
    return fn, fn_args[:-1]          # the batch is appended by `add`

  if fm is not None:
    add({'method': 'single loss', 'level': '—'}, build_single)

  # First calls, in increasing compiled peak: the device's high-water mark
  # after each is (up to what ran before this part) that step's peak.
  order = sorted(calls_args, key=lambda k: next(
      e['xla_peak_bytes'] for e in entries if e.get('key') == k))
  by_key = {e['key']: e for e in entries}
  for key in list(order):
    compiled, fn_args = calls_args[key]
    try:
      jax.block_until_ready(compiled(*fn_args))
    except Exception as e:  # noqa: BLE001
      by_key[key]['error'] = _error(e)
      del calls_args[key]
      continue
    by_key[key]['device_peak_bytes'] = device_peak_bytes()
  calls = {key: (lambda c=c, a=a: jax.block_until_ready(c(*a)))
           for key, (c, a) in calls_args.items()}
  log(f'[b] timing {len(calls)} steps, {args.step_repeats} rounds')
  runs, errors = interleaved_runs(calls, args.step_repeats, warmup=0)
  for key, value in errors.items():
    by_key[key]['error'] = value
  for key, value in runs.items():
    by_key[key].update(_summary(value))
  base = by_key.get('linear_scalarization|parameter', {}).get('median_s')
  floor = by_key.get('single loss|—', {}).get('median_s')
  for e in entries:
    if 'median_s' in e:
      e['x_ls_theta'] = e['median_s'] / base if base else None
      e['x_single_loss'] = e['median_s'] / floor if floor else None
  record['rows'] = entries
  record['device_peak_available'] = any(
      e.get('device_peak_bytes') is not None for e in entries)
  return record


LEVEL_LABELS = {'parameter': 'θ', 'representation': 'z',
                'jacobian_free': 'θ, Jacobian-free', '—': '—'}


def steps_markdown(record: dict[str, Any]) -> list[str]:
  """Part b's table."""
  kwargs = ', '.join(f'{k}={v if not isinstance(v, list) else len(v)}'
                     for k, v in record['model_kwargs'].items())
  lines = [
      f'`{record["model"]}`{f" ({kwargs})" if kwargs else ""} on a random '
      f'`{record["dataset"]}` batch of {record["batch"]}; Adam; steps built '
      'by `mtl_optax.training.build` (Jacobian-free: '
      f'`{record["jacobian_free_via"]}`, chunk size {record["chunk_size"]}), '
      'compiled once, '
      f'{record["repeats"]} interleaved rounds (median and min ms). XLA '
      'peak: compiled memory analysis (arguments + outputs + temporaries). '
      'Device peak: `memory_stats()["peak_bytes_in_use"]` after the step\'s '
      'first call, a process-wide high-water mark (steps run in increasing '
      'XLA peak, this part first)' +
      ('' if record['device_peak_available'] else
       '; not reported by this backend') + '.',
      '',
      '| method | level | ms/step median | ms/step min | × LS (θ) | '
      '× single loss | compile (s) | XLA peak (MiB) | device peak (MiB) |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for e in record['rows']:
    level = LEVEL_LABELS.get(e['level'], e['level'])
    if 'median_s' not in e:
      lines.append(f'| {e["method"]} | {level} | '
                   f'{_cell(e.get("error", "not run"))} | — | — | — | '
                   f'{_fmt(e.get("compile_s"), ".1f")} | '
                   f'{_mib(e.get("xla_peak_bytes"))} | '
                   f'{_mib(e.get("device_peak_bytes"))} |')
      continue
    lines.append(
        f'| {e["method"]} | {level} | {_ms(e["median_s"])} | '
        f'{_ms(e["min_s"])} | {_fmt(e.get("x_ls_theta"), ".2f")} | '
        f'{_fmt(e.get("x_single_loss"), ".2f")} | {e["compile_s"]:.1f} | '
        f'{_mib(e["xla_peak_bytes"])} | {_mib(e.get("device_peak_bytes"))} |')
  return lines


################################################################################
# c. LeNet-MultiMNIST.


def _parse_method(spec: str) -> tuple[str, str]:
  """``'name'`` -> parameter level, ``'name:z'`` -> representation level."""
  name, _, suffix = spec.partition(':')
  if suffix not in ('', 'z'):
    raise ValueError(f'{spec!r}: the level suffix is ":z" or nothing')
  return name, 'representation' if suffix == 'z' else 'parameter'


def mnist_config(args, spec: str):
  """The ``training.Config`` of one MultiMNIST run."""

  try:                      # the configs ship with the package ...
    from mtl_optax.configs import multi_mnist
  except ImportError:       # ... or, in older checkouts, with the benchmarks
    from benchmarks.configs import multi_mnist
  name, level = _parse_method(spec)
  overrides: dict[str, Any] = dict(
      method=name, level=level, data_dir=str(args.data_dir),
      num_epochs=args.mnist_epochs, eval_every_epochs=args.mnist_epochs,
      seed=args.seed, checkpoint_every_steps=None,
      checkpoint_every_seconds=None, log_every_steps=1000)
  for flag, field in (('mnist_batch', 'batch_size'),
                      ('mnist_lr', 'learning_rate'),
                      ('mnist_steps', 'num_steps'),
                      ('mnist_eval_batches', 'max_eval_batches')):
    if getattr(args, flag) is not None:
      overrides[field] = getattr(args, flag)
  return multi_mnist.get_config(**overrides)


def multimnist_part(args, log: Callable[..., None],
                    seconds_left: Callable[[], float]) -> dict[str, Any]:
  """Part c: train LeNet on MultiMNIST with each method.

  Args:
    args: the parsed flags (``data_dir``, ``mnist_methods``,
      ``mnist_epochs``, ``mnist_batch``, ``mnist_lr``, ``mnist_steps``,
      ``mnist_eval_batches``, ``seed``).
    log: prints a progress line.
    seconds_left: the budget left; a run that would not fit at the previous
      run's pace is skipped.

  Returns:
    The part's record: one row per method.
  """
  num_train = data.num_examples('multi_mnist', 'train', data_dir=args.data_dir)
  rows = []
  previous = None
  for spec in args.mnist_methods:
    row: dict[str, Any] = {'method': spec}
    rows.append(row)
    left = seconds_left()
    if left <= 0 or (previous is not None and previous > left):
      row['skipped'] = (f'budget: {max(left, 0):.0f} s left'
                        + (f', the previous run took {previous:.0f} s'
                           if previous is not None else ''))
      log(f'[c] {spec}: skipped ({row["skipped"]})')
      continue
    config = mnist_config(args, spec)
    row.update(level=config.level, batch=config.batch_size,
               learning_rate=config.learning_rate)
    start = time.perf_counter()
    try:
      result = training.train(config, progress=False)
    except Exception as e:  # noqa: BLE001
      row['error'] = _error(e)
      log(f'[c] {spec}: {row["error"]}')
      continue
    wall = time.perf_counter() - start
    previous = wall
    metrics = result.evaluations[-1]['metrics']
    steps = int(result.state.step)
    steps_per_epoch = max(num_train // config.batch_size, 1)
    row.update(
        steps=steps, epochs=steps / steps_per_epoch,
        left=100 * metrics['left']['accuracy'],
        right=100 * metrics['right']['accuracy'],
        eval_examples=int(metrics['left'].get('count', 0)),
        seconds_per_step=float(result.seconds_per_step),
        wall_s=wall,
        skipped_steps=int(np.sum(result.history.get('skipped', 0))))
    log(f'[c] {spec}: left {row["left"]:.2f} % right {row["right"]:.2f} % '
        f'({row["steps"]} steps, {wall:.1f} s)')
  return {'data_dir': str(args.data_dir), 'train_examples': num_train,
          'rows': rows}


def multimnist_markdown(record: dict[str, Any]) -> list[str]:
  """Part c's table."""
  lines = [
      'The MultiMNIST config (`get_config` of `mtl_optax.configs.'
      'multi_mnist`: LeNet, SGD momentum 0.9, lr halved every 30 epochs) via '
      '`mtl_optax.training.train`; data from '
      f'`{record["data_dir"]}` ({record["train_examples"]:,} training '
      'examples). Epochs: steps run / steps per epoch. Test '
      'accuracy after the last step; s/step excludes compilation and '
      'evaluation; wall includes them.',
      '',
      '| method | level | epochs | steps | batch | lr | left [%] | '
      'right [%] | s/step | wall (s) |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in record['rows']:
    if 'left' not in r:
      reason = r.get('skipped') or r.get('error') or 'not run'
      lines.append(f'| {r["method"]} | {_cell(reason)} | — | — | — | — | — '
                   '| — | — | — |')
      continue
    lines.append(
        f'| {r["method"].partition(":")[0]} | '
        f'{LEVEL_LABELS[r["level"]]} | {r["epochs"]:.3g} | {r["steps"]} | '
        f'{r["batch"]} | {r["learning_rate"]:g} | {r["left"]:.2f} | '
        f'{r["right"]:.2f} | {r["seconds_per_step"]:.4f} | '
        f'{r["wall_s"]:.1f} |')
  return lines


def check_multimnist_data(args, parser: argparse.ArgumentParser) -> None:
  """Fails at once (naming the flags) unless part c can read its data.

  With ``--mnist-dir`` an unprepared ``--data-dir`` is prepared from the
  MNIST IDX files there (never downloaded).
  """
  if args.data_dir is None:
    parser.error(
        'part c (LeNet-MultiMNIST) needs the prepared dataset: pass '
        '--data-dir DIR (with --mnist-dir MNIST_IDX_DIR to prepare it there '
        'first), or --skip-multimnist to skip part c. Nothing is downloaded.')

  try:
    data.num_examples('multi_mnist', 'test', data_dir=args.data_dir)
    return
  except FileNotFoundError as e:
    if args.mnist_dir is None:
      parser.error(
          f'--data-dir {args.data_dir}: MultiMNIST is not prepared there; '
          'pass --mnist-dir MNIST_IDX_DIR (the four MNIST IDX files) to '
          'prepare it, or --skip-multimnist. Nothing is downloaded.\n'
          f'{e}')
  from mtl_optax.data import multi_mnist
  try:
    multi_mnist.prepare(data_dir=args.data_dir, mnist_dir=args.mnist_dir)
  except (FileNotFoundError, ValueError) as e:
    parser.error(f'--mnist-dir {args.mnist_dir}: cannot prepare MultiMNIST '
                 f'in --data-dir {args.data_dir}: {e}')


################################################################################
# The report.


def header_lines(info: dict[str, Any], args, total_s: float,
                 complete: bool = True) -> list[str]:
  """The report's title and set-up lines."""
  devices = ', '.join(info['jax_devices'])
  return [
      '# GPU suite: aggregators on J, training steps, MultiMNIST',
      '',
      f'- backend: **{info["jax_backend"]}** ({devices}; device kind '
      f'{info["device_kind"]})' +
      (' — SMOKE RUN (tiny sizes)' if args.smoke else ''),
      f'- date: {info["date"]}; platform: {info["platform"]}, '
      f'{info["cpu_count"]} CPUs',
      f'- jax {info["jax"]} (jaxlib {info["jaxlib"]}), optax '
      f'{info["optax"]}, numpy {info["numpy"]}, mtl_optax '
      f'{info["mtl_optax"]}; XLA_FLAGS: `{info["XLA_FLAGS"]}`; '
      f'jax_default_matmul_precision: {info["matmul_precision"]}',
      f'- command: `{info["command"]}`',
      f'- budget: {args.budget_seconds:g} s (`--budget-seconds`), checked '
      f'before each part; total wall time {total_s:.1f} s; parts run in the '
      f'order {", ".join(RUN_ORDER)}',
  ] + ([] if complete else [
      '- **incomplete**: the report is written after each part, and this '
      'run had not finished when this was written'
  ]) + ['']


def markdown(report: dict[str, Any], args) -> str:
  """The whole Markdown report."""
  lines = header_lines(report['machine'], args, report['wall_s'],
                       report.get('complete', True))
  lines += ['## Parts', '', '| part | status | wall (s) |', '|---|---|---:|']
  for part in PARTS:
    entry = report['parts'][part]
    lines.append(f'| {PART_TITLES[part]} | {_cell(entry["status"])} | '
                 f'{entry["wall_s"]:.1f} |')
  lines.append('')
  renderers = {'a': aggregators_markdown, 'b': steps_markdown,
               'c': multimnist_markdown}
  for part in PARTS:
    entry = report['parts'][part]
    lines += [f'## {PART_TITLES[part]}', '']
    if entry.get('record') is not None:
      lines += renderers[part](entry['record'])
    else:
      lines.append(f'Not run: {entry["status"]}.')
    lines.append('')
  return '\n'.join(lines)


def machine(argv: list[str]) -> dict[str, Any]:
  """``benchmarks.speed.machine_info()`` plus the device kind and command."""
  info = speed.machine_info()
  info['device_kind'] = jax.devices()[0].device_kind
  info['matmul_precision'] = str(jax.config.jax_default_matmul_precision)
  info['command'] = ' '.join(['python benchmarks/gpu_suite.py'] + argv)
  info['date'] = datetime.datetime.now().astimezone().isoformat(
      timespec='seconds')
  return info


################################################################################
# CLI.


def _methods_list(text: str) -> list[str]:
  return [x.strip() for x in text.split(',') if x.strip()]


def _count(text: str) -> int:
  return int(float(text))


SMOKE = dict(tasks=4, params=10_000, rounds=3, step_model='lenet_multimnist',
             step_batch=4, step_repeats=2, mnist_steps=3, mnist_batch=2,
             mnist_eval_batches=2, method_cap_seconds=5.0)
FULL = dict(tasks=40, params=10_000_000, rounds=20,
            step_model='resnet18_celeba', step_batch=256, step_repeats=5,
            mnist_steps=None, mnist_batch=None, mnist_eval_batches=None,
            method_cap_seconds=15.0)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true',
                      help='tiny sizes on any backend (CPU is enough), '
                      'seconds; explicit flags win')
  parser.add_argument('--out', default=str(DEFAULT_OUT),
                      help='Markdown path; the JSON goes next to it '
                      '(default benchmarks/results/gpu_suite.md)')
  parser.add_argument('--budget-seconds', type=float, default=480.0,
                      help='checked before each part (default 480)')
  parser.add_argument('--parts', default='a,b,c',
                      help='comma-separated subset of a,b,c to run')
  parser.add_argument('--seed', type=int, default=0)
  group = parser.add_argument_group('a. aggregators on J')
  group.add_argument('--tasks', type=_count, default=None,
                     help='T (default 40; smoke 4)')
  group.add_argument('--params', type=_count, default=None,
                     help='P, e.g. 1e7 (default; smoke 1e4)')
  group.add_argument('--rounds', type=int, default=None,
                     help='interleaved timing rounds (default 20; smoke 3)')
  group.add_argument('--methods', type=_methods_list, default=None,
                     help='comma-separated registry names (default: every '
                     'Gramian-based one; the primitives always run)')
  group.add_argument('--hbm-tb-per-s', type=float, default=H200_HBM_TB_PER_S,
                     help='HBM bandwidth of the floor, TB/s (default 4.8, '
                     'H200)')
  group.add_argument('--method-cap-seconds', type=float, default=None,
                     help='stop timing a call after 3 runs summing to more '
                     '(default 15; smoke 5)')
  group.add_argument('--no-torch', action='store_true',
                     help='skip the TorchJD column')
  group = parser.add_argument_group('b. training steps')
  group.add_argument('--step-model', default=None,
                     help='model of the zoo (default resnet18_celeba; smoke '
                     'lenet_multimnist)')
  group.add_argument('--step-batch', type=int, default=None,
                     help='batch size (default 256; smoke 4)')
  group.add_argument('--step-method', default='upgrad',
                     help='the method next to linear_scalarization '
                     '(default upgrad)')
  group.add_argument('--step-repeats', type=int, default=None,
                     help='timed rounds (default 5; smoke 2)')
  group.add_argument('--step-chunk', type=int, default=1,
                     help='Jacobian-free chunk size (default 1; 0 = all '
                     'tasks at once)')
  group.add_argument('--step-width', type=int, default=None,
                     help="the model's width (default its own, 64)")
  group.add_argument('--step-tasks', type=int, default=None,
                     help='ResNet-18-CelebA: the first N attributes as '
                     'tasks (default all 40)')
  group = parser.add_argument_group('c. LeNet-MultiMNIST')
  group.add_argument('--data-dir', default=None,
                     help='tfds data directory holding the prepared '
                     'multi_mnist (required unless --skip-multimnist)')
  group.add_argument('--mnist-dir', default=None,
                     help='the four MNIST IDX files: prepare --data-dir '
                     'from them if needed (nothing is downloaded)')
  group.add_argument('--skip-multimnist', action='store_true',
                     help='skip part c (the table says so)')
  group.add_argument('--mnist-methods', type=_methods_list,
                     default=['aligned_mtl', 'mgda'],
                     help='comma-separated, name or name:z (default '
                     'aligned_mtl,mgda)')
  group.add_argument('--mnist-epochs', type=float, default=100.0)
  group.add_argument('--mnist-steps', type=int, default=None,
                     help='train this many steps instead (smoke 3)')
  group.add_argument('--mnist-batch', type=int, default=None,
                     help="batch size (default the config's 256; smoke 2)")
  group.add_argument('--mnist-lr', type=float, default=None,
                     help="learning rate (default the config's 1e-2)")
  group.add_argument('--mnist-eval-batches', type=int, default=None,
                     help='evaluate on at most this many batches (default '
                     'all; smoke 2)')
  return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The flags, with the smoke or full defaults filled in and checked."""
  parser = build_parser()
  args = parser.parse_args(argv)
  for key, value in (SMOKE if args.smoke else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.parts = _methods_list(args.parts)
  for part in args.parts:
    if part not in PARTS:
      parser.error(f'--parts: unknown part {part!r} (a, b, c)')
  if args.step_chunk == 0:
    args.step_chunk = None
  elif args.step_chunk < 0:
    parser.error('--step-chunk must be >= 0')
  if args.step_model not in models.available():
    parser.error(f'--step-model: unknown model {args.step_model!r}')
  if args.step_tasks is not None and (
      args.step_model != 'resnet18_celeba' or
      not 1 <= args.step_tasks <= len(models.CELEBA_ATTRIBUTES)):
    parser.error('--step-tasks: 1 to 40, with --step-model resnet18_celeba')
  for spec in args.mnist_methods:
    try:
      name, _ = _parse_method(spec)
    except ValueError as e:
      parser.error(f'--mnist-methods: {e}')
    if name not in registry.available():
      parser.error(f'--mnist-methods: unknown method {name!r}')
  if args.methods:
    known = gramian_methods()[0]
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
      parser.error(f'--methods: {", ".join(unknown)} not among the '
                   f'Gramian-based methods {", ".join(known)}')
  if args.step_method not in registry.available():
    parser.error(f'--step-method: unknown method {args.step_method!r}')
  if min(args.tasks, args.params, args.rounds, args.step_batch,
         args.step_repeats) < 1:
    parser.error('sizes, rounds and repeats must be >= 1')
  if 'c' in args.parts and not args.skip_multimnist:
    check_multimnist_data(args, parser)
  return args


def main(argv: list[str] | None = None) -> int:
  """Runs the suite; writes the Markdown and the JSON.

  Args:
    argv: the command line (default ``sys.argv[1:]``).

  Returns:
    0 when every part asked for ran without errors, else 1.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  args = parse_args(argv)
  info = machine(argv)

  def log(*parts):
    print(f'[{time.perf_counter() - start:6.1f} s]', *parts, flush=True)

  log(f'gpu_suite on {info["jax_backend"]} ({info["device_kind"]})'
      + (' — smoke' if args.smoke else ''))
  if not args.smoke and info['jax_backend'] != 'gpu':
    log('WARNING: not on a GPU: the sizes are the GPU ones; use --smoke for '
        'a quick check')

  def seconds_left() -> float:
    return args.budget_seconds - (time.perf_counter() - start)

  runners = {
      'a': lambda: aggregators_part(args, log),
      'b': lambda: steps_part(args, log),
      'c': lambda: multimnist_part(args, log, seconds_left),
  }
  out = pathlib.Path(args.out)
  parts: dict[str, dict[str, Any]] = {
      part: {'status': 'not reached (the run stopped before it)',
             'wall_s': 0.0, 'record': None} for part in PARTS}
  ok = True

  def write(final: bool) -> str:
    """Writes the report so far (after every part: a run that dies keeps
    the parts before)."""
    report = {'machine': info, 'args': _jsonable(vars(args)),
              'wall_s': time.perf_counter() - start, 'ok': ok,
              'complete': final, 'parts': parts}
    text = markdown(report, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + '\n')
    out.with_suffix('.json').write_text(json.dumps(_jsonable(report),
                                                   indent=1))
    return text

  for part in RUN_ORDER:
    entry = parts[part]
    if part not in args.parts:
      entry['status'] = 'skipped (not in --parts)'
      continue
    if part == 'c' and args.skip_multimnist:
      entry['status'] = 'skipped (--skip-multimnist)'
      continue
    if seconds_left() <= 0:
      entry['status'] = (f'skipped: budget of {args.budget_seconds:g} s '
                         'spent before it started')
      ok = False
      log(f'part {part}: {entry["status"]}')
      continue
    part_start = time.perf_counter()
    try:
      entry['record'] = runners[part]()
      entry['status'] = 'ran'
    except Exception as e:  # noqa: BLE001 (the other parts go on)
      entry['status'] = f'failed: {_error(e)}'
      entry['traceback'] = traceback.format_exc()
      log(f'part {part}: {entry["status"]}')
    entry['wall_s'] = time.perf_counter() - part_start
    if not _part_ok(part, entry):
      ok = False
      if entry['record'] is not None:
        entry['status'] = 'ran; some measurements failed or were skipped'
    log(f'part {part}: {entry["status"]} in {entry["wall_s"]:.1f} s')
    write(final=False)

  text = write(final=True)
  print('\n' + text)
  log(f'wrote {out} and {out.with_suffix(".json")}')
  return 0 if ok else 1


def _part_ok(part: str, entry: dict[str, Any]) -> bool:
  """Whether a part that ran measured everything it was asked to (TorchJD
  methods missing their optional dependencies do not count)."""
  record = entry.get('record')
  if record is None:
    return entry['status'] == 'ran'
  if part == 'a':
    return all('ours' in r for r in record['rows'].values())
  if part == 'b':
    return all('median_s' in r for r in record['rows'])
  return all('left' in r for r in record['rows'])


def _jsonable(x: Any) -> Any:
  """``x`` with numpy scalars, tuples and paths made JSON-ready."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, (str, int, float, bool)) or x is None:
    return x
  return str(x)


if __name__ == '__main__':
  sys.exit(main())
