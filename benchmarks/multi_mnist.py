"""MultiMNIST reproduction: the papers' protocol, staged and resumable.

The protocol of Sener & Koltun (2018, App. C.1), which Senushkin et al.
(2023, §5.2, Table 2) follow: LeNet (``lenet_multimnist``), batch 256, SGD
with momentum 0.9, 100 epochs, the learning rate halved every 30 epochs and
chosen per method from {1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2} as the one with
the highest validation accuracy; test accuracy reported
(``mtl_optax.configs.multi_mnist``).

Validation: the papers hold a validation split out of the 60 000 training
images without saying which; ours is the last 10 000 (``train[-10000:]``,
``--valid-size``), and every run trains on the first 50 000
(``train[:-10000]``). The test set is never used to choose anything.

Stages (each run has its own work directory under ``--workdir``, checkpoints
every two minutes and resumes where it stopped; a finished run leaves a
``result.json`` and is not run again, so a stage is continued by running
the same command again, in as many sessions as it takes):

``select``
  every method × every rate, one seed, on a shortened schedule (``--epochs``,
  default 10, with the halvings at the same fractions of it, epochs 3, 6,
  9): the rate with the highest mean left/right accuracy on the validation
  split at the end is the method's rate. Writes ``OUT_select.json``.
``final``
  every method at its selected rate for the full 100 epochs, evaluated every
  5 epochs on the validation split and the test set; the reported model is
  the evaluation with the highest validation accuracy ("the model with the
  highest validation accuracy"), the last one is kept too. ``--seeds 3`` for
  the rows of Table 2, ``--other-seeds 1`` for the others. Writes
  ``OUT.json``, ``OUT.md`` and ``OUT.png``.
``ablate``
  the final stage's runs with one protocol detail changed (``--ablations``:
  the rate, PyTorch's initialisation, all 60 000 training images; see
  ``ABLATIONS``), ``--ablation-seeds`` seeds each; writes
  ``OUT_ablation.json`` and ``OUT_ablation.md`` (Δ against the final runs of
  the same seeds), to read the differences from the papers' numbers.
``render``
  rewrites ``OUT.md`` and ``OUT.png`` from ``OUT.json``.

Examples::

    # prepare MultiMNIST once from the four MNIST IDX files (or, where there
    # is internet, download them: --download instead of --mnist-dir)
    python -m mtl_optax.data.multi_mnist --mnist-dir MNIST_DIR --data-dir DATA
    python benchmarks/multi_mnist.py select --data-dir DATA
    python benchmarks/multi_mnist.py final --data-dir DATA

Methods are ``name``, ``name:z`` (the representation level, "-UB") or
``name[key=value,...]`` with factory keyword arguments (Python literals),
names from ``mtl_optax.available()``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import re
import sys
import time

import numpy as np

from mtl_optax.configs import multi_mnist as mnist_config

RESULTS = pathlib.Path(__file__).resolve().parent / 'results'
TEST_SPLIT = 'test'
TABLE2 = ('aligned_mtl', 'aligned_mtl:z', 'mgda', 'mgda:z', 'pcgrad',
          'uncertainty_weighting', 'gradnorm')
OTHERS = ('linear_scalarization', 'imtl_g', 'cagrad', 'nash_mtl', 'mamg',
          'mamg[mode="algorithm1"]')
DEFAULT_METHODS = TABLE2 + OTHERS
LEVELS = {'': 'parameter', 'z': 'representation'}
FULL_EPOCHS = 100
FULL_DECAY_EPOCHS = (30, 60, 90)
FINAL_EVAL_EVERY = 5

# Table 2 of Senushkin et al. (2023): D mean, std, max, min; left, right [%].
PAPER = {
    'mgda': (1.63, 1.45, 38.03, 1.004, 96.83, 95.06),
    'mgda:z': (1.41, 0.36, 4.00, 1.004, 96.76, 94.96),
    'pcgrad': (1.45, 0.37, 3.76, 1.005, 97.04, 95.29),
    'gradnorm': (3.12, 0.83, 8.91, 1.704, 96.51, 95.31),
    'uncertainty_weighting': (1.47, 0.44, 5.17, 1.007, 97.03, 95.06),
    'aligned_mtl': (1.00, 0.0, 1.00, 1.000, 97.10, 95.45),
    'aligned_mtl:z': (1.36, 0.29, 3.17, 1.005, 96.98, 95.45),
}
# Table 3 of Sener & Koltun (2018): left, right [%] ("Ours" is MGDA-UB).
PAPER_SENER = {
    'linear_scalarization': (96.46, 94.99),
    'uncertainty_weighting': (96.47, 95.29),
    'gradnorm': (96.27, 94.84),
    'mgda:z': (97.30, 95.90),
}
PAPER_NAMES = {'mgda:z': 'MGDA-UB', 'aligned_mtl': 'θ-aligned',
               'aligned_mtl:z': 'Z-aligned', 'mgda': 'MGDA',
               'pcgrad': 'PCGrad', 'gradnorm': 'GradNorm',
               'uncertainty_weighting': 'Uncertainty',
               'linear_scalarization': 'uniform scaling'}


# -- methods ------------------------------------------------------------------

_SPEC = re.compile(r'^(?P<name>\w+)(\[(?P<kwargs>.*)\])?(:(?P<level>\w*))?$')


def parse_method(spec: str) -> tuple[str, dict, str]:
  """``'name[k=v,...]:z'`` -> ``(name, kwargs, level)``."""
  match = _SPEC.match(spec.strip())
  if match is None:
    raise SystemExit(f'{spec!r}: write a method as name, name:z or '
                     'name[key=value,...] (e.g. mamg[mode="algorithm1"]).')
  level = match['level'] or ''
  if level not in LEVELS:
    raise SystemExit(f'{spec!r}: the level suffix is ":z" or nothing.')
  kwargs = {}
  if match['kwargs']:
    try:
      call = ast.parse(f'f({match["kwargs"]})', mode='eval').body
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
      if call.args or None in kwargs:
        raise ValueError
    except (SyntaxError, ValueError):
      raise SystemExit(f'{spec!r}: the arguments in [...] must be '
                       'key=value pairs of Python literals.') from None
  return match['name'], kwargs, LEVELS[level]


def run_name(spec: str) -> str:
  """A file-system name for a method spec."""
  return re.sub(r'[^A-Za-z0-9_.=-]+', '_', spec).strip('_')


# -- one run --------------------------------------------------------------------


def dominance_stats(dominance: np.ndarray) -> dict[str, float]:
  """Mean, std, max and min of the finite per-step dominance rates."""
  d = dominance[np.isfinite(dominance)]
  if d.size == 0:
    return dict.fromkeys(('mean', 'std', 'max', 'min'), float('nan'))
  return {'mean': float(d.mean()), 'std': float(d.std()),
          'max': float(d.max()), 'min': float(d.min())}


def read_log(workdir: pathlib.Path) -> dict[str, np.ndarray]:
  """The per-step records of a run's ``log.jsonl`` (every step once)."""
  steps = {}
  with open(workdir / 'log.jsonl') as f:
    for line in f:
      record = json.loads(line)
      if 'step' in record:
        steps[record['step']] = record
  ordered = [steps[s] for s in sorted(steps)]
  return {key: np.asarray([r[key] for r in ordered], np.float64)
          for key in ('losses', 'weights', 'dominance_rate', 'skipped')}


def _accuracies(metrics) -> tuple[float, float]:
  return 100 * metrics['left']['accuracy'], 100 * metrics['right']['accuracy']


def summarize(evaluations: list[dict], log: dict[str, np.ndarray]) -> dict:
  """Accuracies at the best-validation and the last evaluation, D, weights."""
  def at(e):
    out = {'step': e['step'], 'valid': _accuracies(e['metrics'])}
    if 'extra_metrics' in e:
      out['test'] = _accuracies(e['extra_metrics'][TEST_SPLIT])
    return out
  best = max(evaluations, key=lambda e: sum(_accuracies(e['metrics'])))
  return {
      'best': at(best), 'last': at(evaluations[-1]),
      'dominance': dominance_stats(log['dominance_rate']),
      'mean_weights': np.nanmean(log['weights'], axis=0).tolist(),
      'skipped_steps': int(log['skipped'].sum()),
      'final_losses': log['losses'][-50:].mean(0).tolist(),
  }


def splits(valid_size: int) -> tuple[str, str]:
  """The training and validation splits: the last ``valid_size`` of the
  training images are the validation split."""
  return f'train[:-{valid_size}]', f'train[-{valid_size}:]'


def train_run(spec: str, *, data_dir: str, workdir: pathlib.Path,
              geometry: str, valid_size: int, learning_rate: float,
              seed: int, epochs: float, decay_epochs: tuple[float, ...],
              eval_every: float, with_test: bool, progress: bool,
              model_kwargs: dict | None = None,
              dataset_options: dict | None = None,
              split_pair: tuple[str, str] | None = None) -> dict:
  """Trains (or resumes, or reads) one run; returns its ``result.json``.

  ``model_kwargs`` go to ``lenet_multimnist``, ``dataset_options`` to the
  data (beside the geometry); ``split_pair`` replaces the (training,
  validation) splits of ``valid_size``.
  """
  from mtl_optax import training
  done = workdir / 'result.json'
  if done.exists():
    return json.loads(done.read_text())
  name, kwargs, level = parse_method(spec)
  train_split, valid_split = split_pair or splits(valid_size)
  config = mnist_config.get_config(
      method=name, level=level, method_kwargs=kwargs, data_dir=data_dir,
      model_kwargs=dict(model_kwargs or {}),
      dataset_options={'config': geometry, **(dataset_options or {})},
      train_split=train_split, eval_split=valid_split,
      extra_eval_splits=(TEST_SPLIT,) if with_test else (),
      num_epochs=epochs, lr_decay_epochs=decay_epochs,
      learning_rate=learning_rate, seed=seed, eval_every_epochs=eval_every,
      log_every_steps=100, checkpoint_every_steps=None,
      checkpoint_every_seconds=120.0)
  start = time.perf_counter()
  result = training.train(config, workdir=workdir, progress=progress)
  wall = time.perf_counter() - start
  walls = workdir / 'wall_seconds.json'
  previous = json.loads(walls.read_text()) if walls.exists() else []
  walls.write_text(json.dumps(previous + [wall]))
  if result.interrupted is not None:
    raise SystemExit(f'{spec} lr={learning_rate:g} seed={seed}: interrupted '
                     f'by {result.interrupted}; run the same command again '
                     'to resume.')
  record = {'method': spec, 'level': level, 'learning_rate': learning_rate,
            'seed': seed, 'epochs': epochs, 'steps': int(result.state.step),
            'seconds_per_step': result.seconds_per_step,
            'wall_seconds': sum(previous) + wall,
            **summarize(result.evaluations, read_log(workdir))}
  tmp = done.with_suffix('.tmp')
  tmp.write_text(json.dumps(record, indent=1))
  os.replace(tmp, done)
  return record


def _write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


# -- stages -----------------------------------------------------------------------


def scaled_decay(epochs: float) -> tuple[float, ...]:
  """The halvings at 30/60/90 % of a schedule of ``epochs`` epochs."""
  return tuple(e * epochs / FULL_EPOCHS for e in FULL_DECAY_EPOCHS)


def select(methods, *, args) -> dict:
  """Stage 1: every rate of the grid; the best on validation per method."""
  out = pathlib.Path(args.out + '_select.json')
  old = json.loads(out.read_text()) if out.exists() else {}
  # Other methods' results of earlier calls are kept.
  runs = [r for r in old.get('runs', ()) if r['method'] not in methods]
  chosen = {k: v for k, v in old.get('chosen', {}).items()
            if k not in methods}
  train_split, valid_split = splits(args.valid_size)
  for spec in methods:
    candidates = []
    for lr in args.rates:
      record = train_run(
          spec, data_dir=args.data_dir,
          workdir=pathlib.Path(args.workdir) / 'select' / run_name(spec)
          / f'lr{lr:g}', geometry=args.geometry, valid_size=args.valid_size,
          learning_rate=lr, seed=args.select_seed, epochs=args.epochs,
          decay_epochs=scaled_decay(args.epochs), eval_every=args.epochs,
          with_test=False, progress=not args.no_progress)
      print(json.dumps({'method': spec, 'learning_rate': lr,
                        'valid': record['last']['valid'],
                        'seconds_per_step': record['seconds_per_step']}),
            flush=True)
      candidates.append(record)
    runs += candidates
    best = max(candidates, key=lambda r: sum(r['last']['valid']))
    chosen[spec] = best['learning_rate']
    selection = {'epochs': args.epochs,
                 'decay_epochs': scaled_decay(args.epochs),
                 'seed': args.select_seed, 'geometry': args.geometry,
                 'train_split': train_split, 'valid_split': valid_split,
                 'chosen': chosen, 'runs': runs}
    _write_json(out, selection)
    out.with_suffix('.md').write_text(selection_markdown(selection))
  return chosen


def selection_markdown(selection: dict) -> str:
  """The selection stage as a table: validation accuracy per rate."""
  rates = sorted({r['learning_rate'] for r in selection['runs']})
  lines = [
      '# MultiMNIST: learning-rate selection on the validation split', '',
      f'MultiMNIST geometry `{selection.get("geometry", "?")}`; trained on '
      f'`{selection["train_split"]}` for {selection["epochs"]:g} epochs '
      '(SGD momentum 0.9, batch 256, the rate halved at epochs '
      f'{", ".join(f"{e:g}" for e in selection["decay_epochs"])}; seed '
      f'{selection["seed"]}); mean of the left and right accuracy [%] on '
      f'`{selection["valid_split"]}`. Bold: the chosen rate. The test set is '
      'not used.', '',
      '| method | ' + ' | '.join(f'{lr:g}' for lr in rates) + ' | s/step |',
      '|---|' + '---|' * (len(rates) + 1)]
  by_method: dict[str, dict[float, dict]] = {}
  for r in selection['runs']:
    by_method.setdefault(r['method'], {})[r['learning_rate']] = r
  for spec, runs in by_method.items():
    cells = []
    for lr in rates:
      if lr not in runs:
        cells.append('–')
        continue
      text = f'{np.mean(runs[lr]["last"]["valid"]):.2f}'
      cells.append(f'**{text}**' if selection['chosen'].get(spec) == lr
                   else text)
    step = np.median([r['seconds_per_step'] for r in runs.values()])
    lines.append(f'| {_label(spec)} | ' + ' | '.join(cells) +
                 f' | {step:.4f} |')
  total = sum(r['wall_seconds'] for r in selection['runs'])
  lines += ['', f'{len(selection["runs"])} runs, {total / 3600:.2f} h of '
            'wall time on 2 shared CPU cores.', '']
  return '\n'.join(lines)


def final(methods, *, args) -> list[dict]:
  """Stage 2: the selected rate, 100 epochs, the seeds; the table."""
  selection = json.loads(pathlib.Path(args.out + '_select.json').read_text())
  out = pathlib.Path(args.out)
  old = (json.loads(out.with_suffix('.json').read_text())
         if out.with_suffix('.json').exists() else {})
  # Other methods' runs of earlier calls are kept (those of this protocol:
  # a file of another format is replaced).
  results = [r for r in old.get('runs', ())
             if r['method'] not in methods and 'best' in r]
  for spec in methods:
    if spec not in selection['chosen']:
      raise SystemExit(f'{spec}: no selected rate in {args.out}_select.json; '
                       'run the select stage for it first.')
    lr = selection['chosen'][spec]
    seeds = range(args.seeds if spec in TABLE2 else args.other_seeds)
    for seed in seeds:
      record = train_run(
          spec, data_dir=args.data_dir,
          workdir=pathlib.Path(args.workdir) / 'final' / run_name(spec)
          / f'lr{lr:g}_seed{seed}', geometry=args.geometry,
          valid_size=args.valid_size,
          learning_rate=lr, seed=seed, epochs=args.final_epochs,
          decay_epochs=scaled_decay(args.final_epochs),
          eval_every=args.final_epochs * FINAL_EVAL_EVERY / FULL_EPOCHS,
          with_test=True, progress=not args.no_progress)
      print(json.dumps({'method': spec, 'seed': seed,
                        'test': record['best']['test']}), flush=True)
      results.append(record)
      _write_json(out.with_suffix('.json'), {
          'protocol': protocol_text(selection, args.final_epochs),
          'selection': selection,
          'runs': results})
      render(out)      # after every run: a long stage shows what it has
  return results


# Protocol details that differ between ours and the papers' code, each a
# change of the final stage's run: (what it is, the run's overrides). Joined
# with '+' they combine.
ABLATIONS = {
    'rate_1e-2': ('the rate 1e-2 instead of the selected one (the 10-epoch '
                  'selection may favour the largest rate)',
                  {'learning_rate': 1e-2}),
    'pytorch_init': ("PyTorch's default initialisation (uniform ±1/√fan_in "
                     "weights and biases, the papers' code) instead of "
                     "Flax's (LeCun-normal weights, zero biases)",
                     {'model_kwargs': {'init': 'pytorch'}}),
    'mnist_normalize': ("inputs standardised with MNIST's mean and std "
                        "(0.1307, 0.3081) as the papers' code, instead of "
                        '[0, 1] pixels', {'dataset_options': {'normalize':
                                                              True}}),
    'train_60k': ('all 60 000 training images; MNIST\'s test set is the '
                  'only held-out set, so the last epoch is reported (the '
                  "papers' code trains on the whole training set and "
                  'validates on the test set)',
                  {'split_pair': ('train', TEST_SPLIT)}),
    'sener_dropout': ("Sener & Koltun's regularised LeNet (their code's "
                      'MultiLeNetR/O): channel dropout 0.5 after the second '
                      'convolution, heads FC 50 → ReLU → dropout 0.5 → FC 10, '
                      "instead of Table 7's dropout-free LeNet with FC-10 "
                      'heads', {'model_kwargs': {'dropout': 0.5,
                                                 'head_hidden': 50}}),
}


def ablation_overrides(variant: str) -> dict:
  """The run overrides of ``variant`` (``name`` or ``name+name+...``)."""
  overrides: dict = {}
  for part in variant.split('+'):
    if part not in ABLATIONS:
      raise SystemExit(f'unknown ablation {part!r}; choose from '
                       f'{", ".join(ABLATIONS)}, joined with "+".')
    for key, value in ABLATIONS[part][1].items():
      if key in ('model_kwargs', 'dataset_options'):
        overrides.setdefault(key, {}).update(value)
      else:
        overrides[key] = value
  return overrides


def reported_test(record: dict) -> tuple[float, float]:
  """The test accuracies a run reports: at its best validation evaluation,
  or at its last one where the validation split is the test set."""
  if 'test' in record['best']:
    return tuple(record['best']['test'])
  return tuple(record['last']['valid'])


def ablate(methods, variants, *, args) -> list[dict]:
  """Stage 3: the final stage's runs with one protocol detail changed."""
  selection = json.loads(pathlib.Path(args.out + '_select.json').read_text())
  out = pathlib.Path(args.out + '_ablation.json')
  old = json.loads(out.read_text()) if out.exists() else {}
  results = [r for r in old.get('runs', ())
             if (r['method'], r['variant']) not in
             {(m, v) for m in methods for v in variants}]
  for variant in variants:
    overrides = ablation_overrides(variant)
    for spec in methods:
      lr = overrides.get('learning_rate', selection['chosen'][spec])
      split_pair = overrides.get('split_pair')
      for seed in range(args.ablation_seeds):
        record = train_run(
            spec, data_dir=args.data_dir,
            workdir=pathlib.Path(args.workdir) / 'ablate' / variant
            / run_name(spec) / f'lr{lr:g}_seed{seed}',
            geometry=args.geometry, valid_size=args.valid_size,
            learning_rate=lr, seed=seed, epochs=args.final_epochs,
            decay_epochs=scaled_decay(args.final_epochs),
            eval_every=args.final_epochs * FINAL_EVAL_EVERY / FULL_EPOCHS,
            with_test=split_pair is None or split_pair[1] != TEST_SPLIT,
            progress=not args.no_progress,
            model_kwargs=overrides.get('model_kwargs'),
            dataset_options=overrides.get('dataset_options'),
            split_pair=split_pair)
        record = dict(record, variant=variant)
        print(json.dumps({'method': spec, 'variant': variant, 'seed': seed,
                          'test': reported_test(record)}), flush=True)
        results.append(record)
        _write_json(out, {'runs': results})
        out.with_suffix('.md').write_text(ablation_markdown(
            results, pathlib.Path(args.out).with_suffix('.json')))
        render(pathlib.Path(args.out))    # the main table's readings
  return results


def ablation_markdown(runs: list[dict], final_json: pathlib.Path) -> str:
  """Each variant against the final stage's runs of the same seeds."""
  final_runs = (json.loads(final_json.read_text())['runs']
                if final_json.exists() else [])
  base = {(r['method'], r['seed']): r for r in final_runs}
  lines = [
      '# MultiMNIST: which protocol details move the accuracy', '',
      "Each variant is the final stage's 100-epoch run with one detail "
      'changed (joined with +: several); Δ is against the final stage\'s '
      'runs of the same method and seeds. Test accuracy [%] at the best '
      'validation evaluation (`train_60k`: at the last epoch).', '',
      '| variant | method | lr | seeds | left | right | protocol left / '
      'right (same seeds) | Δ left / right | paper left / right (A) '
      '| D mean ± std (max, min) | protocol D | paper D (A) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|']
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in runs:
    groups.setdefault((r['variant'], r['method']), []).append(r)
  for (variant, spec), rs in groups.items():
    test = np.asarray([reported_test(r) for r in rs])
    mine = test.mean(0)
    ref = [base[(spec, r['seed'])] for r in rs if (spec, r['seed']) in base]
    if len(ref) == len(rs):
      ref_test = np.asarray([reported_test(r) for r in ref]).mean(0)
      ref_text = f'{ref_test[0]:.2f} / {ref_test[1]:.2f}'
      delta = f'{mine[0] - ref_test[0]:+.2f} / {mine[1] - ref_test[1]:+.2f}'
    else:
      ref_text = delta = '–'
    ref_d = (_dominance_text(_mean_dominance(ref))
             if len(ref) == len(rs) else '–')
    pd = PAPER.get(spec)
    lines.append(
        f'| {variant} | {_label(spec)} | {rs[0]["learning_rate"]:g} '
        f'| {len(rs)} | {mine[0]:.2f} ± {test[:, 0].std():.2f} '
        f'| {mine[1]:.2f} ± {test[:, 1].std():.2f} | {ref_text} | {delta} '
        f'| {f"{pd[4]:.2f} / {pd[5]:.2f}" if pd else "–"} '
        f'| {_dominance_text(_mean_dominance(rs))} | {ref_d} '
        f'| {_dominance_text(dict(zip(("mean", "std", "max", "min"), pd[:4]))) if pd else "–"} |')
  lines += ['', 'Variants:', '']
  lines += [f'- `{name}`: {text}.' for name, (text, _) in ABLATIONS.items()]
  return '\n'.join(lines) + '\n'


def protocol_text(selection: dict, epochs: float) -> str:
  return (f'MultiMNIST geometry `{selection.get("geometry", "?")}` '
          '(`mtl_optax.data.multi_mnist`). '
          f'LeNet, batch 256, SGD momentum 0.9; trained on '
          f'`{selection["train_split"]}`, validation '
          f'`{selection["valid_split"]}`, test `{TEST_SPLIT}`. Rate chosen '
          'from '
          f'{list(mnist_config.LEARNING_RATE_GRID)} by the mean validation '
          f'accuracy after {selection["epochs"]:g} epochs (halvings at epochs '
          f'{", ".join(f"{e:g}" for e in selection["decay_epochs"])}; seed '
          f'{selection["seed"]}); then {epochs:g} epochs halving at '
          f'{", ".join(f"{e:g}" for e in scaled_decay(epochs))}, evaluated '
          f'every {epochs * FINAL_EVAL_EVERY / FULL_EPOCHS:g} epochs; '
          'reported: test accuracy of the '
          'evaluation with the highest validation accuracy.')


# -- the table and the figure -------------------------------------------------------


def aggregate(runs: list[dict]) -> dict[str, dict]:
  """Per method: mean ± std over seeds of the reported accuracies, etc."""
  by_method: dict[str, list[dict]] = {}
  for r in runs:
    by_method.setdefault(r['method'], []).append(r)
  rows = {}
  for spec, rs in by_method.items():
    test = np.asarray([r['best']['test'] for r in rs])
    last = np.asarray([r['last']['test'] for r in rs])
    rows[spec] = {
        'seeds': len(rs), 'learning_rate': rs[0]['learning_rate'],
        'level': rs[0]['level'],
        'test_mean': test.mean(0).tolist(), 'test_std': test.std(0).tolist(),
        'last_mean': last.mean(0).tolist(),
        'dominance': _mean_dominance(rs),
        'seconds_per_step': float(np.median([r['seconds_per_step']
                                             for r in rs])),
        'wall_seconds': float(sum(r['wall_seconds'] for r in rs)),
    }
  return rows


def _mean_dominance(runs: list[dict]) -> dict[str, float]:
  """The runs' dominance statistics (mean, std, max, min), seeds averaged."""
  return {k: float(np.mean([r['dominance'][k] for r in runs]))
          for k in ('mean', 'std', 'max', 'min')}


def _dominance_text(d: dict[str, float]) -> str:
  return f'{d["mean"]:.2f} ± {d["std"]:.2f} ({d["max"]:.2f}, {d["min"]:.3f})'


def _label(spec: str) -> str:
  return f'{spec} ({PAPER_NAMES[spec]})' if spec in PAPER_NAMES else spec


def markdown(data: dict, ablation: list[dict] | None = None) -> str:
  """The table, its readings (``ablation``: the ablation stage's runs) and
  the wall time."""
  rows = aggregate(data['runs'])
  lines = [
      '# MultiMNIST (LeNet): the papers\' protocol', '',
      data['protocol'], '',
      'Ours: test accuracy [%], mean ± std over the seeds (the std of the '
      'population, n = seeds). Paper: Table 2 of Senushkin et al. (2023) '
      '[A]; Table 3 of Sener & Koltun (2018) [S]. Δ = ours − paper. '
      'D = dominance rate (Def. 1 of [A]) of the per-task gradients the '
      'method receives, mean ± std, max, min over all steps (seeds '
      'averaged); for θ-aligned, [A] reports D of the aligned system, 1 '
      'by construction. MGDA and MGDA-UB: the exact min-norm solver '
      "(`solver='active_set'`; at T = 2 the same α as the papers' "
      'closed-form two-point rule, Algorithm 1 of [S]), no gradient '
      'normalisation.', '',
      '| method | level | lr | seeds | left | right | paper left / right '
      '| Δ left / right | last epoch left / right | D mean ± std | D max '
      '| D min | paper D (A) | s/step |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for spec, row in rows.items():
    (left, right), (sl, sr) = row['test_mean'], row['test_std']
    papers, deltas = [], []
    for tag, table in (('A', {k: v[4:] for k, v in PAPER.items()}),
                       ('S', PAPER_SENER)):
      if spec in table:
        pl, pr = table[spec]
        papers.append(f'{pl:.2f} / {pr:.2f} [{tag}]')
        deltas.append(f'{left - pl:+.2f} / {right - pr:+.2f} [{tag}]')
    d = row['dominance']
    pd = PAPER.get(spec)
    lines.append(
        f'| {_label(spec)} | {"z" if row["level"] == "representation" else "θ"}'
        f' | {row["learning_rate"]:g} | {row["seeds"]} '
        f'| {left:.2f} ± {sl:.2f} | {right:.2f} ± {sr:.2f} '
        f'| {"<br>".join(papers) or "–"} | {"<br>".join(deltas) or "–"} '
        f'| {row["last_mean"][0]:.2f} / {row["last_mean"][1]:.2f} '
        f'| {d["mean"]:.2f} ± {d["std"]:.2f} | {d["max"]:.2f} '
        f'| {d["min"]:.3f} '
        f'| {f"{pd[0]:.2f} ± {pd[1]:.2f} ({pd[2]:.2f}, {pd[3]:.3f})" if pd else "–"}'
        f' | {row["seconds_per_step"]:.4f} |')
  lines += readings(rows, ablation or [], data['runs'])
  total = sum(r['wall_seconds'] for r in data['runs'])
  select_total = sum(r['wall_seconds'] for r in data['selection']['runs'])
  lines += ['', f'Wall time: selection {select_total / 3600:.2f} h '
            f'({len(data["selection"]["runs"])} runs), final runs '
            f'{total / 3600:.2f} h ({len(data["runs"])} runs), on 2 shared '
            'CPU cores: the sum of the runs\' own wall times (some ran two '
            'at a time, each then slower).', '']
  return '\n'.join(lines)


READING_TOLERANCE = 0.3   # points: the target for "reproduced"


def readings(rows: dict[str, dict], ablation: list[dict],
             final_runs: list[dict]) -> list[str]:
  """The reading of the differences from Table 2 of [A], from the numbers.

  A difference shared by every row is a protocol difference, not a
  method's: the readings split each Δ into the mean Δ over [A]'s rows (the
  shared offset) and the row's residual, which is what the ranking of the
  methods depends on; the residual is judged against the tolerance and the
  measured seed spread. The ablation's runs of Sener & Koltun's
  regularised LeNet say how much of the offset that protocol detail makes.
  """
  table = [s for s in rows if s in PAPER]
  if not table:
    return []
  delta = np.asarray([np.asarray(rows[s]['test_mean']) - PAPER[s][4:]
                      for s in table])
  offset = delta.mean(0)
  out = ['', '## Readings', '',
         f'**A shared offset.** Every row of Table 2 run so far sits below '
         f'[A]: Δ from {delta[:, 0].min():+.2f} to {delta[:, 0].max():+.2f} '
         f'(left) and {delta[:, 1].min():+.2f} to {delta[:, 1].max():+.2f} '
         f'(right), mean {offset[0]:+.2f} / {offset[1]:+.2f} over '
         f'{len(table)} rows, against a seed spread (std) of at most '
         f'{max(max(rows[s]["test_std"]) for s in table):.2f}. A gap this '
         'much larger than the seeds\' spread and common to every method is '
         'a difference of protocol, not of method: it moves all rows '
         'together and leaves their ranking. Each row\'s residual '
         '(Δ − the mean Δ) is what compares the methods with [A]:', '',
         '| method | seeds | Δ left / right | residual left / right '
         '| seed std left / right | residual within '
         f'{READING_TOLERANCE} or 2 std | mean weights left / right '
         '| final training losses left / right |',
         '|---|---|---|---|---|---|---|---|']
  for s, d in zip(table, delta):
    res = d - offset
    std = np.asarray(rows[s]['test_std'])
    bound = np.maximum(READING_TOLERANCE, 2 * std)
    ok = 'yes' if np.all(np.abs(res) <= bound) else (
        'no (' + ', '.join(side for side, r, b in zip(('left', 'right'),
                                                       res, bound)
                           if abs(r) > b) + ')')
    mine = [r for r in final_runs if r['method'] == s]
    weights = (np.mean([r['mean_weights'] for r in mine], 0)
               if mine and all('mean_weights' in r for r in mine) else None)
    losses = (np.mean([r['final_losses'] for r in mine], 0)
              if mine and all('final_losses' in r for r in mine) else None)
    out.append(f'| {_label(s)} | {rows[s]["seeds"]} | {d[0]:+.2f} / '
               f'{d[1]:+.2f} | {res[0]:+.2f} / {res[1]:+.2f} | {std[0]:.2f} '
               f'/ {std[1]:.2f} | {ok} '
               f'| {"–" if weights is None else f"{weights[0]:.2f} / {weights[1]:.2f}"} '
               f'| {"–" if losses is None else f"{losses[0]:.1e} / {losses[1]:.1e}"} |')
  out += ['', 'The weights are those the method gave the two tasks (the '
          'mean over steps; 1 / 1 for uniform scaling); a method whose '
          'weights sum well above 2 takes larger steps than the others at '
          'the same rate, which the 10-epoch selection of the rate may not '
          'see (Uncertainty: its learned weights grow as its losses fall).']
  if 'mgda:z' in PAPER and 'mgda:z' in PAPER_SENER:
    a, b = np.asarray(PAPER['mgda:z'][4:]), np.asarray(PAPER_SENER['mgda:z'])
    out += ['', f'**The papers disagree by more than the target.** MGDA-UB '
            f'under the same protocol: {b[0]:.2f} / {b[1]:.2f} in [S], '
            f'{a[0]:.2f} / {a[1]:.2f} in [A] ({a[0] - b[0]:+.2f} / '
            f'{a[1] - b[1]:+.2f}); neither paper gives seeds or a spread, so '
            f'a {READING_TOLERANCE}-point agreement with either is finer '
            'than the two agree with each other.']
  dropout = [r for r in ablation if r['variant'] == 'sener_dropout']
  if dropout:
    out += ['', '**What the offset is: the regularised LeNet.** The '
            "ablation's `sener_dropout` runs (Sener & Koltun's code's "
            'LeNet with dropout, `multi_mnist_ablation.md`) against [A]:', '',
            '| method | seeds | left / right | Δ left / right (A) | D mean ± '
            'std (max, min) | D, Table 7 LeNet | paper D (A) |',
            '|---|---|---|---|---|---|---|']
    by_method: dict[str, list[dict]] = {}
    for r in dropout:
      by_method.setdefault(r['method'], []).append(r)
    for s, rs in by_method.items():
      test = np.asarray([reported_test(r) for r in rs]).mean(0)
      pd = PAPER.get(s)
      out.append(
          f'| {_label(s)} | {len(rs)} | {test[0]:.2f} / {test[1]:.2f} '
          f'| {f"{test[0] - pd[4]:+.2f} / {test[1] - pd[5]:+.2f}" if pd else "–"} '
          f'| {_dominance_text(_mean_dominance(rs))} '
          f'| {_dominance_text(rows[s]["dominance"]) if s in rows else "–"} '
          f'| {_dominance_text(dict(zip(("mean", "std", "max", "min"), pd[:4]))) if pd else "–"} |')
    plain_loss = np.median([min(r['final_losses']) for s in by_method
                            for r in final_runs if r['method'] == s])
    dropout_loss = np.median([min(r['final_losses']) for r in dropout])
    base = {(r['method'], r['seed']): reported_test(r) for r in final_runs}
    rise = np.asarray([np.subtract(reported_test(r), base[r['method'],
                                                          r['seed']])
                       for r in dropout if (r['method'], r['seed']) in base])
    rise_text = (f'by {rise.min():+.2f} to {rise.max():+.2f} points against '
                 'the same seeds without dropout' if len(rise) else '')
    out += ['', f'With dropout the accuracies rise ({rise_text}; the shared '
            f'offset is {offset[0]:+.2f} / {offset[1]:+.2f}), and '
            'the dominance statistics of the gradients the method receives '
            'become those [A] reports (its D max of 3–5 for Z-aligned, '
            'MGDA-UB, PCGrad and Uncertainty): without dropout the smaller '
            f'of the two training losses ends near {plain_loss:.0e} (median '
            'over the runs above) and one task\'s gradient vanishes against '
            'the other\'s late in training, so D reaches the hundreds; with '
            f'dropout it ends near {dropout_loss:.2f} and D stays near 1. '
            '[A]\'s D statistics match a regularised network\'s, not '
            'those of Table 7\'s dropout-free LeNet (the network the table '
            'above trains, as the papers specify it): evidence that [A]\'s '
            'runs used dropout, which its Table 7 does not list. The rest of '
            'the offset is not explained by the other details measured '
            '(initialisation, input normalisation, all 60 000 training '
            'images, the rate: `multi_mnist_ablation.md`). (θ-aligned: [A] '
            'reports D '
            'of the aligned system, 1 by construction; ours is D of the '
            'gradients it receives.)']
  return out


def figure(data: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = aggregate(data['runs'])
  fig, ax = plt.subplots(figsize=(7.5, 6))
  colors = plt.cm.tab20(np.linspace(0, 1, max(len(rows), 2)))
  for color, (spec, row) in zip(colors, rows.items()):
    (left, right), (sl, sr) = row['test_mean'], row['test_std']
    ax.errorbar(left, right, xerr=sl, yerr=sr, fmt='o', color=color,
                capsize=3, label=_label(spec))
    for table, marker in ((PAPER, 's'), (PAPER_SENER, '^')):
      if spec in table:
        pl, pr = table[spec][-2:]
        ax.plot(pl, pr, marker, mfc='none', color=color, ms=9)
        ax.annotate('', (pl, pr), (left, right), arrowprops=dict(
            arrowstyle='-', color=color, alpha=0.5, linestyle=':'))
  ax.plot([], [], 's', mfc='none', color='gray', label='paper [A] Table 2')
  ax.plot([], [], '^', mfc='none', color='gray', label='paper [S] Table 3')
  ax.set_xlabel('left digit test accuracy [%]')
  ax.set_ylabel('right digit test accuracy [%]')
  ax.set_title('MultiMNIST, LeNet, 100 epochs (ours: mean ± std over seeds)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def render(out: pathlib.Path) -> None:
  """Rewrites the tables (and the figure) from the JSON files there are."""
  select_json = pathlib.Path(f'{out}_select.json')
  if select_json.exists():
    pathlib.Path(f'{out}_select.md').write_text(
        selection_markdown(json.loads(select_json.read_text())))
  if not out.with_suffix('.json').exists():
    return
  data = json.loads(out.with_suffix('.json').read_text())
  ablation_json = pathlib.Path(f'{out}_ablation.json')
  ablation = (json.loads(ablation_json.read_text())['runs']
              if ablation_json.exists() else [])
  out.with_suffix('.md').write_text(markdown(data, ablation))
  if ablation:
    ablation_json.with_suffix('.md').write_text(
        ablation_markdown(ablation, out.with_suffix('.json')))
  figure(data, out.with_suffix('.png'))


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('stage', choices=('select', 'final', 'ablate',
                                        'render'))
  parser.add_argument('--data-dir', help='tfds data directory holding the '
                      'prepared multi_mnist')
  parser.add_argument('--methods', default=','.join(DEFAULT_METHODS),
                      help='methods separated by ";" or "," (outside [...])')
  parser.add_argument('--workdir', default='runs/multi_mnist',
                      help='where the runs checkpoint (git-ignored runs/)')
  parser.add_argument('--out', default=str(RESULTS / 'multi_mnist'),
                      help='results prefix: OUT_select.json, OUT.json, .md, '
                      '.png')
  parser.add_argument('--epochs', type=float, default=10.0,
                      help='select: the shortened schedule')
  parser.add_argument('--rates', type=float, nargs='+',
                      default=list(mnist_config.LEARNING_RATE_GRID))
  parser.add_argument('--final-epochs', type=float, default=FULL_EPOCHS,
                      help='final: the schedule (the papers: 100)')
  parser.add_argument('--valid-size', type=int, default=10_000,
                      help='the last this many training images are the '
                      'validation split')
  parser.add_argument('--geometry', default='sener_koltun',
                      choices=('sener_koltun', 'area'),
                      help="the MultiMNIST builder config (default: the "
                      "papers' code)")
  parser.add_argument('--select-seed', type=int, default=0)
  parser.add_argument('--seeds', type=int, default=3,
                      help="final: seeds of Table 2's rows")
  parser.add_argument('--other-seeds', type=int, default=1,
                      help='final: seeds of the other rows')
  parser.add_argument('--ablations', default=','.join(ABLATIONS),
                      help='ablate: the variants, separated by ","; '
                      f'each one of {", ".join(ABLATIONS)} or several '
                      'joined with "+"')
  parser.add_argument('--ablation-seeds', type=int, default=1,
                      help='ablate: seeds per variant and method')
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)

  if args.stage == 'render':
    render(pathlib.Path(args.out))
    return
  if not args.data_dir:
    parser.error('--data-dir is required for the select, final and ablate '
                 'stages')
  methods = [m for m in re.split(r'[;,](?![^\[]*\])', args.methods)
             if m.strip()]
  for spec in methods:
    parse_method(spec)
  # Before any training: an unprepared --data-dir fails here, with the
  # command that prepares it.
  from mtl_optax import data
  data.num_examples('multi_mnist', TEST_SPLIT, data_dir=args.data_dir,
                    config=args.geometry)
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  variants = [v for v in args.ablations.split(',') if v.strip()]
  for variant in variants:
    ablation_overrides(variant)
  if args.stage == 'select':
    print(json.dumps(select(methods, args=args), indent=1))
  elif args.stage == 'ablate':
    ablate(methods, variants, args=args)
    print(pathlib.Path(args.out + '_ablation.md').read_text())
  else:
    final(methods, args=args)
    print(pathlib.Path(args.out).with_suffix('.md').read_text())
  print(f'{args.stage}: {time.perf_counter() - start:.0f} s', file=sys.stderr)


if __name__ == '__main__':
  main()
