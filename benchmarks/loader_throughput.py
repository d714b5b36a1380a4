"""Input-pipeline throughput: MultiMNIST batches through ``mtl_optax.data.load``.

What it measures
----------------
On the real prepared MultiMNIST train split (60 000 examples, prepared with
``python -m mtl_optax.data.multi_mnist``), the examples per second that
``mtl_optax.data.load('multi_mnist', 'train', batch_size=256, ...)`` delivers
to a consumer that does nothing with the batches (each batch is touched by
summing one pixel, so nothing is left lazy). One *epoch* is 234 batches of
256 (``drop_remainder=True``); each configuration runs ``--epochs`` epochs
after one warm-up batch and reports the median, minimum and maximum of the
per-epoch throughput. Configurations:

* ``in memory, prefetch 2``: the default for MultiMNIST: the split is read
  once into numpy arrays (timed separately as *start-up*), then each batch is
  one fancy-indexing gather plus the ``uint8 -> float32 / 255`` conversion,
  prepared in a background thread;
* ``in memory, prefetch 0``: the same in the consumer's thread;
* ``ArrayRecord records, prefetch 2``: ``in_memory=False``: each batch is read
  from the ArrayRecord file with tfds' batched ``__getitems__`` and
  deserialised record by record (fewer epochs: it is slow).

Target: at least 20 000 examples/s through a batch-256 iterator (the default
configuration) on the project's 2-core CPU machine.

How to run
----------
From the repository root::

    python -m mtl_optax.data.multi_mnist --mnist-dir DIR --data-dir /tmp/tfds
    python benchmarks/loader_throughput.py --data-dir /tmp/tfds

Options: ``--epochs`` (5), ``--record-epochs`` (2), ``--batch-size`` (256),
``--out`` (Markdown path, default ``benchmarks/results/loader.md``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

from mtl_optax import data


def _epoch_rates(it, epochs: int, examples_per_epoch: int) -> list[float]:
  next(it)                                     # warm-up: start the thread
  it.set_state({'epoch': 0, 'step': 0})
  rates = []
  for _ in range(epochs):
    start = time.perf_counter()
    for _ in range(it.steps_per_epoch):
      batch = next(it)
      float(batch['image'][0, 0, 0, 0])
    rates.append(examples_per_epoch / (time.perf_counter() - start))
  it.close()
  return rates


def _run(args):
  rows = []
  configs = [('in memory, prefetch 2', True, 2, args.epochs),
             ('in memory, prefetch 0', True, 0, args.epochs),
             ('ArrayRecord records, prefetch 2', False, 2, args.record_epochs)]
  for label, in_memory, prefetch, epochs in configs:
    if epochs <= 0:
      continue
    start = time.perf_counter()
    it = data.load('multi_mnist', 'train', data_dir=args.data_dir,
                   batch_size=args.batch_size, seed=0, in_memory=in_memory,
                   prefetch=prefetch)
    startup = time.perf_counter() - start
    examples = it.steps_per_epoch * it.local_batch_size
    rates = _epoch_rates(it, epochs, examples)
    rows.append((label, startup, rates))
    args.num_examples = it.num_examples
    print(f'{label}: start-up {startup:.2f} s, median '
          f'{statistics.median(rates):,.0f} ex/s (min {min(rates):,.0f}, '
          f'max {max(rates):,.0f}) over {len(rates)} epochs', flush=True)
  return rows


def _markdown(args, rows, load_before, load_after) -> str:
  lines = [
      '# Input-pipeline throughput (MultiMNIST)',
      '',
      f'- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}',
      f'- platform: {platform.platform()} (python {platform.python_version()})',
      f'- cpu_count: {os.cpu_count()}, numpy {np.__version__}',
      f'- load average (1/5/15 min) at start: {load_before}, at end: {load_after}',
      f'- data: multi_mnist train, {args.num_examples:,} examples; batch '
      f'{args.batch_size}, drop_remainder, shuffled (seed 0)',
      f'- command: `{" ".join(["loader_throughput.py"] + sys.argv[1:])}`'
      .replace(args.data_dir, 'DATA_DIR'),
      '',
      'Target: ≥ 20 000 examples/s through the default batch-256 iterator.',
      '',
      '| configuration | start-up (s) | epochs | median ex/s | min ex/s | max ex/s |',
      '|---|---:|---:|---:|---:|---:|',
  ]
  for label, startup, rates in rows:
    lines.append(f'| {label} | {startup:.2f} | {len(rates)} | '
                 f'{statistics.median(rates):,.0f} | {min(rates):,.0f} | '
                 f'{max(rates):,.0f} |')
  target = statistics.median(rows[0][2]) >= 20_000
  lines += ['', f'Default configuration: {"PASS" if target else "FAIL"}.', '']
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data-dir', required=True,
                      help='tfds data dir holding multi_mnist/1.0.0')
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--record-epochs', type=int, default=2)
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'loader.md'))
  args = parser.parse_args(argv)
  load_before = [round(x, 2) for x in os.getloadavg()]
  rows = _run(args)
  load_after = [round(x, 2) for x in os.getloadavg()]
  text = _markdown(args, rows, load_before, load_after)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
