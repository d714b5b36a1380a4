"""Exactness of every method against float64 references, worst case over the
sampler suite of ``tests/matrix_samplers.py``.

For each method and dtype (float32, float64) it runs the aggregator on every
case of the suite (and on the case with its rows permuted) and reports:

- the worst relative error against the reference of
  ``tests/reference_solvers.py`` (``‖d - d_ref‖/‖d_ref‖``, or relative to
  ``‖J‖_F^p`` when ``d_ref = 0``; the reference is solved on the matrix as
  rounded to the dtype), with the case where it occurs;
- how many cases fail the test suite's tolerance (``tests/exactness_harness``:
  the base tolerance 1e-5 / 1e-9, or 10x the Gramian floor), out of the
  cases where the method is defined and not at a truncation threshold;
- the worst permutation-invariance error ``‖d(PJ) - d(J)‖`` (same
  denominator);
- crashes (the call raised) and skipped steps (the NaN guard fired).

Float64 runs inside ``jax.enable_x64``. If the aggregators raise in float64
(as they did before the float64 fixes), the float64 columns fall back to the
weighting functions (``mtl_optax.weightings.*``) applied, as the aggregators
do, to the float64 Gramian normalised to a unit largest diagonal (marked
``*``); the update is then ``cᵀJ`` in float64, or zeros where it is not
finite (the aggregators' NaN guard).

Outputs: stdout, ``<out-dir>/<name>.md`` and ``<name>.json``.

Run:  python benchmarks/exactness.py [--quick | --thorough] [--name N]
      [--methods a,b] [--out-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
# As the tests' conftest.py: compile time dominates, the numerics are the same.
os.environ.setdefault(
    'XLA_FLAGS', '--xla_backend_optimization_level=0 '
    '--xla_llvm_disable_expensive_passes=true')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import exactness_harness as H  # pylint: disable=g-import-not-at-top
import matrix_samplers as ms  # pylint: disable=g-import-not-at-top
import mtl_optax as mtl  # pylint: disable=g-import-not-at-top
import reference_solvers as rs  # pylint: disable=g-import-not-at-top

DTYPES = (np.float32, np.float64)
QUICK_SHAPES = ((1, 1), (2, 5), (3, 3), (5, 7), (20, 10))


def suite(args) -> list[ms.Case]:
  if args.quick:
    return ms.base_cases(QUICK_SHAPES)
  return ms.suite('thorough' if args.thorough else 'default')


def fmt(x: float | None) -> str:
  if x is None:
    return '—'
  if not np.isfinite(x):
    return 'inf'
  return f'{x:.1e}'


def _weighting_directions(matrix, keys):
  """Every method's update from its weighting function on the Gramian
  normalised to a unit largest diagonal (the aggregators' convention,
  including the degree correction of FairGrad and MGDA 'l2' and Nash-MTL's
  clipping); traced under float64."""
  w = mtl.weightings
  gram = matrix @ matrix.T
  top = jnp.max(jnp.diag(gram))
  positive = top > 0
  safe_top = jnp.where(positive, top, 1)
  k = gram / safe_top
  scale = jnp.sqrt(safe_top)
  out = {}
  for key in keys:
    params = H.METHODS[key].params
    if key == 'linear':
      c = w.linear(k)
    elif key.startswith('mgda'):
      c = w.mgda(k, params['normalization'])
      if params['normalization'] == 'l2':
        c = c / scale
    elif key in ('upgrad', 'dualproj', 'imtl_g', 'conflict_free'):
      c = getattr(w, key)(k)
    elif key.startswith('cagrad'):
      c = w.cagrad(k, params['c'], params['rescale'])
    elif key.startswith('aligned') and key.endswith('_svd'):
      big = jnp.max(jnp.abs(matrix))
      big = jnp.where(big > 0, big, 1)
      out[key] = w.aligned_direction_svd(matrix / big, None,
                                         params['scale_mode'])[0] * big
      continue
    elif key.startswith('aligned'):
      c = w.aligned(k, None, params['scale_mode'])
    elif key.startswith('nash_mtl'):
      c = w.nash_mtl(k)
      if key == 'nash_mtl_clip1':
        norm = scale * jnp.sqrt(jnp.maximum(c @ k @ c, 0))
        c = c * jnp.where(norm > 1, 1 / jnp.where(norm > 0, norm, 1), 1)
    elif key.startswith('fairgrad'):
      c = w.fairgrad(k, params['alpha']) * scale**(H.METHODS[key].degree - 1)
    else:
      raise KeyError(key)
    out[key] = c @ matrix
  # The aggregators' NaN guard: a step with non-finite values is all zeros.
  return {k: (jnp.where(jnp.all(jnp.isfinite(v)), v, 0),
              ~jnp.all(jnp.isfinite(v))) for k, v in out.items()}


_weighting_directions_jit = jax.jit(_weighting_directions,
                                    static_argnames='keys')


def run_via_weightings(matrix, keys) -> dict[str, H.Output]:
  """``H.run_library``'s float64 stand-in (see the module docstring)."""
  with jax.enable_x64(True):
    try:
      raw = _weighting_directions_jit(jnp.asarray(matrix, jnp.float64), keys)
      return {k: H.Output(np.asarray(v, np.float64), None, bool(skipped))
              for k, (v, skipped) in raw.items()}
    except Exception as e:  # pylint: disable=broad-except
      return {k: H.Output(None, None, None, f'{type(e).__name__}: {e}'[:300])
              for k in keys}


def run(matrix, keys, fallback: bool):
  """The aggregators' outputs; in float64, the weighting functions' where
  an aggregator raised (``fallback``). Returns (outputs, keys that fell
  back)."""
  outputs = H.run_library(matrix, keys)
  failed = tuple(k for k in keys if outputs[k].error is not None)
  if fallback and failed and matrix.dtype == np.float64:
    outputs = dict(outputs, **run_via_weightings(matrix, failed))
    return outputs, failed
  return outputs, ()


def measure(cases, keys, dtype) -> dict[str, dict]:
  """Per method: worst error and case, failures, permutation error, crash
  and skip counts."""
  stats = {k: {'worst': 0.0, 'worst_case': None, 'failures': 0, 'count': 0,
               'perm': 0.0, 'perm_case': None, 'crash': None, 'skipped': 0,
               'excluded': 0, 'ill_posed': 0, 'worst_floor': None,
               'via_weightings': False}
           for k in keys}
  for case in cases:
    matrix = case.as_dtype(dtype)
    outputs, fell_back = run(matrix, keys, fallback=True)
    t = matrix.shape[0]
    permuted = None
    if t > 1:
      order = H.permutation_of(t, case.seed)
      permuted, _ = run(matrix[order], keys, fallback=True)
    for key in keys:
      s = stats[key]
      out = outputs[key]
      if key in fell_back:
        s['via_weightings'] = True
        s['aggregator_error'] = H.run_library(matrix, keys)[key].error
      if out.error is not None:
        s['crash'] = s['crash'] or out.error
        continue
      s['skipped'] += int(out.skipped)
      if H.applies(key, case, matrix) is not None:
        s['excluded'] += 1
        continue
      try:
        d_ref = H.reference(key, matrix)
      except rs.ReferenceFailure:
        s['excluded'] += 1
        continue
      err = H.relative_error(key, matrix, out.direction, d_ref)
      s['count'] += 1
      verdict = H.judge('exact', key, matrix, err)
      if verdict.status == 'ill-posed':
        s['count'] -= 1
        s['ill_posed'] += 1
        continue
      s['failures'] += int(not verdict.ok)
      if err > s['worst'] or s['worst_case'] is None:
        s['worst'], s['worst_case'] = err, case.name
        s['worst_floor'] = verdict.floor
      if permuted is not None and permuted[key].error is None:
        denom = H.denominator(key, matrix, d_ref)
        diff = float(np.linalg.norm(permuted[key].direction -
                                    out.direction))
        perm = diff / denom if denom > 0 else (0.0 if diff == 0 else np.inf)
        if perm > s['perm']:
          s['perm'], s['perm_case'] = perm, case.name
  return stats


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  size = parser.add_mutually_exclusive_group()
  size.add_argument('--quick', action='store_true',
                    help='five shapes, scale 1 only')
  size.add_argument('--thorough', action='store_true',
                    help='the thorough suite (seeds 0-2, every scale)')
  parser.add_argument('--methods', default=','.join(H.KEYS))
  parser.add_argument('--name', default='exactness')
  parser.add_argument('--out-dir', default=str(ROOT / 'benchmarks' /
                                               'results'))
  args = parser.parse_args()
  keys = tuple(k for k in args.methods.split(',') if k)
  unknown = set(keys) - set(H.KEYS)
  if unknown:
    parser.error(f'unknown methods {sorted(unknown)}; known: {H.KEYS}')
  cases = suite(args)
  start = time.time()
  results = {np.dtype(dt).name: measure(cases, keys, dt) for dt in DTYPES}
  elapsed = time.time() - start
  library = pathlib.Path(mtl.__file__).resolve().parent

  which = 'quick' if args.quick else 'thorough' if args.thorough else 'default'
  lines = [
      '# Exactness against float64 references',
      '',
      f'{len(cases)} matrices ({which} suite of '
      '`tests/matrix_samplers.py`), float32 and float64, '
      f'{elapsed:.0f} s, library at `{library}`. '
      'Error: `‖d - d_ref‖/‖d_ref‖` (or `/‖J‖_F^p` when '
      '`d_ref = 0`), the reference solved in float64 on the matrix rounded '
      'to the dtype. "fail": cases over the test tolerance (max(base, 10 x '
      'Gramian floor); base 1e-5 float32, 1e-9 float64) / cases compared '
      '(undefined or truncation-ambiguous cases excluded; in parentheses the '
      'ill-posed ones, Gramian floor > 1e-2, also excluded). "perm": worst '
      '`‖d(PJ) - d(J)‖` relative to the same denominator. "floor": the '
      'Gramian floor at the worst case, when computed.',
      '',
      '| method | f32 worst | f32 floor | f32 worst case | f32 fail | '
      'f64 worst | f64 floor | f64 worst case | f64 fail | perm f32 | '
      'perm f64 | skipped |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  crashes = []
  for key in keys:
    row = [key]
    for dt in ('float32', 'float64'):
      s = results[dt][key]
      if s['crash'] and s['count'] == 0:
        row += ['crash', '—', '—', '—']
        crashes.append(f'{key} ({dt}): {s["crash"]}')
        continue
      if s['crash']:
        crashes.append((dt, key, s['crash']))
      if s['via_weightings']:
        crashes.append((dt, key, s['aggregator_error']))
      mark = '*' if s['via_weightings'] else ''
      row += [fmt(s['worst']) + mark, fmt(s['worst_floor']),
              s['worst_case'] or '—',
              f'{s["failures"]}/{s["count"]} ({s["ill_posed"]})']
    row += [fmt(results['float32'][key]['perm']),
            fmt(results['float64'][key]['perm']),
            str(results['float32'][key]['skipped'] +
                results['float64'][key]['skipped'])]
    lines.append('| ' + ' | '.join(row) + ' |')
  if any(results[dt][k]['via_weightings'] for dt in results for k in keys):
    lines += ['', '`*`: the aggregator raised in this dtype; the column is '
              'computed via the weighting functions (module docstring).']
  if crashes:
    lines += ['', 'Crashes (the aggregator raised):', '']
    by_error = {}
    for dt, key, error in crashes:
      first = ' '.join(str(error).split())[:160]
      by_error.setdefault((dt, first), []).append(key)
    for (dt, error), names in by_error.items():
      lines.append(f'- {dt}, {", ".join(names)}: `{error}`')
  text = '\n'.join(lines) + '\n'
  print(text)
  out_dir = pathlib.Path(args.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f'{args.name}.md').write_text(text)
  (out_dir / f'{args.name}.json').write_text(json.dumps(
      {'cases': len(cases), 'seconds': elapsed, 'results': results},
      indent=1, default=str))


if __name__ == '__main__':
  main()
