"""Train one config (``mtl_optax.configs``) with any method, on any device.

The training command line: ``python -m mtl_optax.train`` or, installed,
``mtl-optax-train`` (it needs the ``train`` extra). Examples::

    # MultiMNIST, Aligned-MTL at the parameter level, the paper's 100 epochs
    mtl-optax-train --config multi_mnist --data-dir ~/tensorflow_datasets \\
        --workdir /tmp/mnist_aligned
    # its representation-level variant (Aligned-MTL-UB), 10 epochs
    python -m mtl_optax.train --config multi_mnist --level representation \\
        --set num_epochs=10 --data-dir ~/tensorflow_datasets
    # Cityscapes with MGDA; a 7-Scenes scene
    mtl-optax-train --config cityscapes --method mgda --data-dir DIR
    mtl-optax-train --config seven_scenes --arg scene=fire --data-dir DIR
    # your own model (a MultiTaskModel factory) on a config's data and
    # schedule; --synthetic N: N random examples instead of a prepared
    # dataset, to try it before preparing the data
    mtl-optax-train --config multi_mnist --model my_pkg.my_module:make_model \\
        --synthetic 256 --set num_steps=20
    # a learning-rate grid × 2 seeds: 6 runs as one vmapped program
    mtl-optax-train --config multi_mnist --data-dir DIR --workdir /tmp/grid \\
        --sweep learning_rate=1e-3,3e-3,1e-2 --sweep seed=0,1

``--model`` takes a registered name (``mtl_optax.models.available()``) or
``module:callable``: ``callable(rngs=nnx.Rngs(seed), **model_kwargs)``
returns a ``MultiTaskModel``, or a pair ``(model, task_losses)`` (see
``mtl_optax.training.create_model``); the module is looked up on the Python
path, the current directory first. A model other than the config's gets
only the ``model_kwargs`` given with ``--set model_kwargs={...}``.

With a ``--workdir`` the run checkpoints every ``checkpoint_every_steps``
steps and ``checkpoint_every_seconds`` seconds (``--set`` either; None turns
it off) and on SIGTERM/SIGINT, after which it exits with status 128 + the
signal's number (143, 130); ``WORKDIR/log.jsonl`` gets every step as it goes.
Run again with the same ``--workdir`` to resume from its latest checkpoint
("resumed from step N"); a finished run reports its stored evaluations.
``--sweep FIELD=V1,V2,...`` (``learning_rate``, ``seed``; repeat the flag for
both) trains the product of the values as one ``jax.vmap``-ed program that
shares the batches (``mtl_optax.training.build_sweep``; the data order is
the config's ``seed``'s): on a GPU/TPU that one run leaves idle the grid
costs about one run's time; on a CPU, separate runs are faster. The JSON
printed at the end then has ``runs`` and a list of per-run metrics in each
evaluation; the checkpoint resumes with the same ``--sweep`` only.
``--single-task`` trains the config's single-task baselines instead (one
run per task, ``WORKDIR/single_task_<task>``; see ``mtl_optax.protocol``) and
prints ``{"single_task": {task: metrics}}``, the baselines of
``mtl_optax.metrics.delta_mtl_of``.
``--seeds N`` trains N separate runs (seeds ``config.seed`` onwards,
``WORKDIR/seed_<s>``) and prints the mean ± std over them of the final
metrics and of the average of the last ``--last-k`` evaluations
(``mtl_optax.protocol.train_seeds``; with ``--workdir`` also
``WORKDIR/seeds.json`` and ``seeds.md``); ``--baselines FILE`` (what
``--single-task`` printed) adds Δ_MTL's mean ± std over the seeds.
``--data-parallel`` shards every batch over all devices (one host, or every
host of a multi-host job started with ``--distributed``, which calls
``jax.distributed.initialize()`` first).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import sys
from typing import Any, Callable, Sequence

from mtl_optax._extras import _require

# The training loop's dependencies: the 'train' extra.
for _module in ('flax', 'tensorflow_datasets', 'orbax.checkpoint', 'tqdm'):
  _require(_module, 'train', 'mtl_optax.train (the training command line)')

# pylint: disable=g-import-not-at-top,wrong-import-position
from mtl_optax import configs


def _pairs(items: Sequence[str] | None) -> dict[str, Any]:
  """``['key=value', ...]`` as a dict, values read as Python literals."""
  result = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'expected key=value, got {item!r}')
    result[key] = _literal(value)
  return result


def _sweep(items: Sequence[str] | None) -> dict[str, tuple[Any, ...]] | None:
  """``['field=v1,v2', ...]`` (``--sweep``) as ``{field: (v1, v2)}``.

  The values are read as Python literals; the sweep is checked by
  ``training.sweep_axes``. None when there is no ``--sweep``.
  """
  if not items:
    return None
  result = {}
  for item in items:
    key, sep, text = item.partition('=')
    if not sep or not text:
      raise ValueError(f'--sweep expects FIELD=V1,V2,..., got {item!r} (e.g. '
                       '--sweep learning_rate=1e-3,1e-2).')
    if key in result:
      raise ValueError(f'--sweep {key} is given twice; give all its values '
                       f'at once: --sweep {key}=V1,V2,...')
    values = _literal(text)
    if isinstance(values, str):   # some value is not a literal: read each
      values = tuple(_literal(part) for part in text.split(','))
    result[key] = (tuple(values) if isinstance(values, (tuple, list))
                   else (values,))
  return result


def _literal(text: str) -> Any:
  """``text`` as a Python literal, or as the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def synthetic_data_fn(dataset: str, num_examples: int, *,
                      seed: int = 0) -> Callable[..., Any]:
  """A ``training.train`` ``data_fn`` over random examples of ``dataset``.

  Args:
    dataset: a name of ``mtl_optax.data.DATASETS``; the examples follow its
      batch convention (``mtl_optax.data.random_batch``).
    num_examples: how many examples every split has.
    seed: numpy seed of the examples.

  Returns:
    ``data_fn(split, *, batch_size, seed, shuffle, num_epochs,
    drop_remainder, state=None)`` -> a ``Loader`` (a ``MultiInputLoader``
    of ``num_examples`` per task for a multi-input dataset); every split
    yields the same examples.
  """
  from mtl_optax import data
  arrays = data.random_batch(dataset, num_examples, seed=seed)
  multi_input = data.is_multi_input(dataset)

  def data_fn(split, *, batch_size, seed, shuffle, num_epochs,
              drop_remainder, state=None):
    del split
    options = dict(batch_size=batch_size, seed=seed, shuffle=shuffle,
                   num_epochs=num_epochs, drop_remainder=drop_remainder,
                   state=state)
    if multi_input:
      return data.MultiInputLoader(
          {task: data.ArraySource(a) for task, a in arrays.items()},
          **options)
    return data.Loader(data.ArraySource(arrays), **options)

  return data_fn


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog='More: python -m pydoc mtl_optax.train')
  parser.add_argument('--config', required=True, choices=configs.NAMES)
  parser.add_argument('--method', default=None,
                      help='a name of mtl_optax.available() (default: the '
                      "config's)")
  parser.add_argument('--level', default=None,
                      choices=('parameter', 'representation'))
  parser.add_argument('--model', default=None, metavar='NAME|MODULE:CALLABLE',
                      help='a registered model, or your own factory as '
                      'module:callable returning a MultiTaskModel (default: '
                      "the config's)")
  parser.add_argument('--data-dir', default=None)
  parser.add_argument('--synthetic', type=int, default=None, metavar='N',
                      help='train and evaluate on N random examples in the '
                      "dataset's batch convention (no prepared data needed)")
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--arg', action='append', metavar='KEY=VALUE',
                      help="the config module's own arguments (scene=, arch=)")
  parser.add_argument('--set', action='append', metavar='KEY=VALUE',
                      help='override a Config field (Python literal values)')
  parser.add_argument('--sweep', action='append', metavar='FIELD=V1,V2,...',
                      help='train a grid as one vmapped program sharing the '
                      'batches: FIELD is learning_rate or seed; repeat the '
                      'flag for both (their product, e.g. --sweep '
                      'learning_rate=1e-3,1e-2 --sweep seed=0,1: 4 runs)')
  parser.add_argument('--single-task', action='store_true',
                      help='train the single-task baselines instead: one run '
                      "per task of the config's model with only that task's "
                      'loss (mtl_optax.protocol.single_task_baselines); '
                      'prints {"single_task": {task: metrics}}')
  parser.add_argument('--seeds', type=int, default=None, metavar='N',
                      help="train N separate runs, seeds config.seed ... "
                      'config.seed + N - 1, and print the mean ± std over '
                      'them of the final metrics and of the average of the '
                      'last --last-k evaluations (with --workdir: also '
                      'WORKDIR/seeds.json and seeds.md)')
  parser.add_argument('--last-k', type=int, default=10, metavar='K',
                      help='evaluations averaged per seed by --seeds '
                      '(default 10)')
  parser.add_argument('--baselines', default=None, metavar='JSON',
                      help='with --seeds: the single-task baselines (the '
                      'JSON that --single-task prints) to add Δ_MTL over the '
                      'seeds')
  parser.add_argument('--data-parallel', action='store_true',
                      help='shard batches over all devices (a 1-D mesh)')
  parser.add_argument('--distributed', action='store_true',
                      help='call jax.distributed.initialize() (multi-host)')
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  """Parses ``argv`` (default ``sys.argv[1:]``), trains, prints the result.

  Prints ``{"evaluations", "seconds_per_step", "step", "interrupted"}`` (and
  ``"runs"`` with ``--sweep``) as JSON; exits with 128 + the signal's number
  when a signal stopped the run (after its checkpoint).
  """
  parser = _parser()
  args = parser.parse_args(argv)

  import jax
  if args.distributed:
    jax.distributed.initialize()
  from mtl_optax import training
  overrides = _pairs(args.set)
  for key in ('method', 'level', 'data_dir'):
    if getattr(args, key) is not None:
      overrides[key] = getattr(args, key)
  config = configs.get_config(args.config, **_pairs(args.arg), **overrides)
  if args.model is not None and args.model != config.model:
    # The config's model_kwargs are its own model's: not passed to another.
    config = config.replace(model=args.model,
                            model_kwargs=overrides.get('model_kwargs', {}))
  if ':' in config.model and os.getcwd() not in sys.path:
    # As `python -m` does: a module:callable in the current directory.
    sys.path.insert(0, os.getcwd())
  data_fn = None
  if args.synthetic is not None:
    data_fn = synthetic_data_fn(config.dataset, args.synthetic,
                                seed=config.seed)
  try:
    sweep = _sweep(args.sweep)
    if sweep is not None:
      training.sweep_axes(sweep)
  except ValueError as e:
    parser.error(str(e))
  mesh = (jax.make_mesh((jax.device_count(),), ('data',))
          if args.data_parallel else None)
  if args.baselines is not None and args.seeds is None:
    parser.error('--baselines goes with --seeds N (Δ_MTL over the seeds).')
  if args.single_task and args.seeds is not None:
    parser.error('--single-task and --seeds are separate commands: give one.')
  if args.seeds is not None:
    if sweep is not None or mesh is not None:
      parser.error('--seeds trains separate runs: drop --sweep and '
                   '--data-parallel.')
    if args.seeds < 1 or args.last_k < 1:
      parser.error('--seeds N and --last-k K must be >= 1.')
    baselines = None
    if args.baselines is not None:
      with open(args.baselines, encoding='utf-8') as f:
        baselines = json.load(f)
      baselines = baselines.get('single_task', baselines)
    from mtl_optax import protocol
    summary = protocol.train_seeds(
        config, range(config.seed, config.seed + args.seeds), data_fn=data_fn,
        workdir=args.workdir, last_k=args.last_k, baselines=baselines,
        progress=jax.process_index() == 0)
    print(json.dumps(summary, indent=1))
    return
  if args.single_task:
    if sweep is not None or mesh is not None:
      parser.error('--single-task trains one run per task: drop --sweep and '
                   '--data-parallel.')
    from mtl_optax import protocol
    baselines = protocol.single_task_baselines(
        config, data_fn=data_fn, workdir=args.workdir,
        progress=jax.process_index() == 0)
    print(json.dumps({'single_task': baselines}, indent=1))
    return
  result = training.train(config, workdir=args.workdir, mesh=mesh,
                          data_fn=data_fn, sweep=sweep,
                          progress=jax.process_index() == 0)
  out = {'evaluations': result.evaluations,
         'seconds_per_step': result.seconds_per_step,
         'step': int(result.state.step),
         'interrupted': result.interrupted}
  if result.runs is not None:
    out['runs'] = list(result.runs)
  print(json.dumps(out, indent=1))
  if result.interrupted is not None:
    # The checkpoint is saved: "killed by the signal", to whoever waits.
    number = getattr(signal.Signals, result.interrupted, signal.SIGTERM)
    sys.exit(128 + int(number))


if __name__ == '__main__':
  main()
