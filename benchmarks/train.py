"""Train one config (``benchmarks/configs``) with any method, on any device.

Examples::

    # MultiMNIST, Aligned-MTL at the parameter level, the paper's 100 epochs
    python benchmarks/train.py --config multi_mnist --data-dir ~/tensorflow_datasets \\
        --workdir /tmp/mnist_aligned
    # its representation-level variant (Aligned-MTL-UB), 10 epochs
    python benchmarks/train.py --config multi_mnist --level representation \\
        --set num_epochs=10 --data-dir ~/tensorflow_datasets
    # Cityscapes with MGDA; a 7-Scenes scene
    python benchmarks/train.py --config cityscapes --method mgda --data-dir DIR
    python benchmarks/train.py --config seven_scenes --arg scene=fire --data-dir DIR

With a ``--workdir`` the run checkpoints every ``checkpoint_every_steps``
steps and ``checkpoint_every_seconds`` seconds (``--set`` either; None turns
it off) and on SIGTERM/SIGINT, after which it exits with status 128 + the
signal's number (143, 130); ``WORKDIR/log.jsonl`` gets every step as it goes.
Run again with the same ``--workdir`` to resume from its latest checkpoint
("resumed from step N"); a finished run reports its stored evaluations.
``--data-parallel`` shards every batch over all devices (one host, or every
host of a multi-host job started with ``--distributed``, which calls
``jax.distributed.initialize()`` first).
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from configs import NAMES, get_config  # noqa: E402


def _pairs(items):
  result = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'expected key=value, got {item!r}')
    try:
      result[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      result[key] = value
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, choices=NAMES)
  parser.add_argument('--method', default=None)
  parser.add_argument('--level', default=None,
                      choices=('parameter', 'representation'))
  parser.add_argument('--data-dir', default=None)
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--arg', action='append', metavar='KEY=VALUE',
                      help="the config module's own arguments (scene=, arch=)")
  parser.add_argument('--set', action='append', metavar='KEY=VALUE',
                      help='override a Config field (Python literal values)')
  parser.add_argument('--data-parallel', action='store_true',
                      help='shard batches over all devices (a 1-D mesh)')
  parser.add_argument('--distributed', action='store_true',
                      help='call jax.distributed.initialize() (multi-host)')
  args = parser.parse_args(argv)

  import jax
  if args.distributed:
    jax.distributed.initialize()
  from mtl_optax import training
  overrides = _pairs(args.set)
  for key in ('method', 'level', 'data_dir'):
    if getattr(args, key) is not None:
      overrides[key] = getattr(args, key)
  config = get_config(args.config, **_pairs(args.arg), **overrides)
  mesh = (jax.make_mesh((jax.device_count(),), ('data',))
          if args.data_parallel else None)
  result = training.train(config, workdir=args.workdir, mesh=mesh,
                          progress=jax.process_index() == 0)
  print(json.dumps({'evaluations': result.evaluations,
                    'seconds_per_step': result.seconds_per_step,
                    'step': int(result.state.step),
                    'interrupted': result.interrupted}, indent=1))
  if result.interrupted is not None:
    # The checkpoint is saved: "killed by the signal", to whoever waits.
    number = getattr(signal.Signals, result.interrupted, signal.SIGTERM)
    sys.exit(128 + int(number))


if __name__ == '__main__':
  main()
