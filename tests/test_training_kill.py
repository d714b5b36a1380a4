"""Runs that survive a kill: a real training process is stopped with SIGTERM
and with SIGKILL at random (seeded) steps and restarted; the resumed run ends
bit-identical to an uninterrupted one and its ``log.jsonl`` holds every step
exactly once.

The training process is this file run as a script (``python
tests/test_training_kill.py WORKDIR RESULT``): Aligned-MTL at the parameter
level on a LeNet with 16×16 inputs and random, learnable data, through
``mtl_optax.training.train`` with a checkpoint every ``EVERY`` steps. It writes
the final state's leaves (``.npz``) and its ``TrainResult`` fields
(``.json``) and exits like ``benchmarks/train.py`` (128 + the signal's number
when a signal stopped it). The uninterrupted reference run starts with the
module and runs next to the first killed run; the runs share a persistent
compilation cache, so that only the first ones compile (each run then takes
about 2 s of CPU, half of it imports).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

NUM_STEPS = 160
EVERY = 20              # checkpoint_every_steps: SIGKILL loses < 20 steps
NUM_EXAMPLES = 64
BATCH = 8               # 8 steps per epoch; an evaluation every 5 epochs
STEP_SECONDS = 0.002    # a slow input pipeline, so that a kill lands mid-run


def _config():
  from mtl_optax import training
  return training.Config(
      model='lenet_multimnist', dataset='multi_mnist',
      method='aligned_mtl', level='parameter',
      model_kwargs={'input_shape': (16, 16, 1), 'features': 16},
      batch_size=BATCH, optimizer='adam', learning_rate=3e-3,
      num_steps=NUM_STEPS, log_every_steps=1, eval_every_epochs=5.0,
      checkpoint_every_steps=EVERY, checkpoint_every_seconds=None)


def _data_fn():
  from mtl_optax.data import loader as loader_lib
  rng = np.random.default_rng(0)
  left = rng.integers(0, 10, NUM_EXAMPLES).astype(np.int32)
  right = rng.integers(0, 10, NUM_EXAMPLES).astype(np.int32)
  image = rng.normal(size=(NUM_EXAMPLES, 16, 16, 1)).astype(np.float32) * 0.1
  image[:, 3, 3, 0] += left / 10
  image[:, 12, 12, 0] += right / 10
  arrays = {'image': image, 'left': left, 'right': right}

  def slow(batch):
    time.sleep(STEP_SECONDS)
    return batch

  def data_fn(split, *, batch_size, seed, shuffle, num_epochs,
              drop_remainder, state=None):
    return loader_lib.Loader(
        loader_lib.ArraySource(arrays), batch_size=batch_size, seed=seed,
        shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
        transform=slow if split == 'train' else None, prefetch=0,
        process_index=0, process_count=1, state=state)

  return data_fn


def _child(workdir, result_path):
  """The training process."""
  import jax
  from mtl_optax import training
  result = training.train(_config(), workdir=workdir, progress=True,
                          data_fn=_data_fn(), num_train_examples=NUM_EXAMPLES)
  leaves = jax.tree.leaves(jax.device_get(result.state))
  np.savez(result_path + '.npz', *leaves)
  pathlib.Path(result_path + '.json').write_text(json.dumps({
      'step': int(result.state.step), 'evaluations': result.evaluations,
      'seconds_per_step': result.seconds_per_step,
      'interrupted': result.interrupted}))
  if result.interrupted is not None:
    sys.exit(128 + int(getattr(signal.Signals, result.interrupted)))


# -- the test side --------------------------------------------------------------


def _start(workdir, result, cache):
  err = open(str(result) + '.stderr', 'w')
  root = pathlib.Path(__file__).parents[1]
  env = dict(os.environ, PYTHONPATH=str(root),
             JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return subprocess.Popen([sys.executable, __file__, str(workdir), str(result)],
                          stdout=err, stderr=subprocess.STDOUT, cwd=root,
                          env=env), err


def _finish(proc_err, timeout=120):
  proc, err = proc_err
  code = proc.wait(timeout)
  err.close()
  return code


def _records(workdir, torn_ok=False):
  """The log's records; ``torn_ok``: skip a last line cut by SIGKILL."""
  lines = (pathlib.Path(workdir) / 'log.jsonl').read_text().splitlines()
  if torn_ok and lines:
    try:
      json.loads(lines[-1])
    except ValueError:
      lines = lines[:-1]
  return [json.loads(line) for line in lines]


def _steps(records):
  return [r['step'] for r in records if 'step' in r]


def _last_logged_step(workdir):
  """The last step record of the log (read from its end; 0: none yet)."""
  path = pathlib.Path(workdir) / 'log.jsonl'
  try:
    with open(path, 'rb') as f:
      f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
      lines = f.read().decode(errors='replace').splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and 'step' in record:
      return record['step']
  return 0


def _kill_after(proc, workdir, step, signum):
  """Sends ``signum`` once the log shows ``step``; the last step logged then."""
  while proc.poll() is None:
    logged = _last_logged_step(workdir)
    if logged >= step:
      proc.send_signal(signum)
      return logged
    time.sleep(0.01)
  raise AssertionError(f'the run ended before step {step}')


def _load(result):
  with np.load(str(result) + '.npz') as leaves:
    arrays = [leaves[f'arr_{i}'] for i in range(len(leaves.files))]
  return arrays, json.loads(pathlib.Path(str(result) + '.json').read_text())


def _output(result):
  return pathlib.Path(str(result) + '.stderr').read_text()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """The runs' shared JAX compilation cache."""
  return tmp_path_factory.mktemp('jax_cache')


class _Reference:
  """The uninterrupted run, started at once and waited for when needed."""

  def __init__(self, root, cache):
    self.root = root
    self.proc = _start(root / 'run', root / 'result', cache)
    self.done = None

  def compiled(self):
    """Waits until the run has compiled (and filled the cache)."""
    while self.proc[0].poll() is None and not _last_logged_step(
        self.root / 'run'):
      time.sleep(0.05)

  def get(self):
    """(final leaves, result JSON, log records)."""
    if self.done is None:
      assert _finish(self.proc) == 0, _output(self.root / 'result')
      self.done = (*_load(self.root / 'result'), _records(self.root / 'run'))
    return self.done


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache):
  ref = _Reference(tmp_path_factory.mktemp('reference'), cache)
  yield ref
  if ref.proc[0].poll() is None:
    ref.proc[0].kill()
  _finish(ref.proc)


def _run_kill_and_resume(tmp_path, cache, reference, signum, seed):
  rng = np.random.default_rng(seed)
  workdir = tmp_path / 'run'
  reference.compiled()          # the runs below find the compiled steps
  killed = _start(workdir, tmp_path / 'killed', cache)
  # Mid-interval, so that SIGKILL loses logged steps after a checkpoint.
  at = EVERY * int(rng.integers(1, NUM_STEPS // EVERY - 3)) + int(
      rng.integers(5, EVERY - 5))
  logged = _kill_after(killed[0], workdir, at, signum)
  code = _finish(killed)
  before = _records(workdir, torn_ok=signum == signal.SIGKILL)
  if signum == signal.SIGTERM:
    # Stopped cleanly at a step boundary, after a checkpoint there.
    assert code == 128 + signum, _output(tmp_path / 'killed')
    stopped = before[-1]['interrupted']['step']
    assert stopped >= logged and stopped < NUM_STEPS
    assert _steps(before) == list(range(1, stopped + 1))
    resumed_from = stopped
  else:
    assert code == -signal.SIGKILL
    assert max(_steps(before)) >= logged
    checkpoints = [int(p.name) for p in (workdir / 'checkpoints').iterdir()
                   if p.name.isdigit()]
    resumed_from = max(checkpoints)
    assert resumed_from % EVERY == 0 and resumed_from <= max(_steps(before))

  resumed = _start(workdir, tmp_path / 'resumed', cache)
  assert _finish(resumed) == 0, _output(tmp_path / 'resumed')
  assert f'resumed from step {resumed_from}' in _output(tmp_path / 'resumed')

  want, want_result, reference_records = reference.get()
  got, got_result = _load(tmp_path / 'resumed')
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.dtype == b.dtype and np.array_equal(a, b)   # bit-identical
  assert got_result['step'] == NUM_STEPS
  assert got_result['evaluations'] == want_result['evaluations']
  assert [e['step'] for e in got_result['evaluations']] == list(
      range(40, NUM_STEPS + 1, 40))
  assert np.isfinite(got_result['seconds_per_step'])

  # Every step exactly once, each record equal to the uninterrupted run's.
  records = _records(workdir)
  assert _steps(records) == list(range(1, NUM_STEPS + 1))
  step_records = [r for r in records if 'step' in r]
  assert step_records == [r for r in reference_records if 'step' in r]
  evals = [r['eval'] for r in records if 'eval' in r]
  assert evals == want_result['evaluations']
  assert [r['resumed']['step'] for r in records if 'resumed' in r] == [
      resumed_from]
  return workdir, resumed_from, max(_steps(before))


def test_sigterm_saves_and_resumes_bit_identically(tmp_path, cache,
                                                   reference, capfd):
  workdir, _, _ = _run_kill_and_resume(tmp_path, cache, reference,
                                       signal.SIGTERM, seed=0)
  # The finished run run again (here, in this process: nothing to compile)
  # reports its stored evaluations and timing, puts the caller's signal
  # handlers back and drops a log line torn by a kill.
  from mtl_optax import training
  with open(workdir / 'log.jsonl', 'a') as f:
    f.write('{"step": 161, "losses": [1.0')
  mine = lambda signum, frame: None
  previous = {s: signal.signal(s, mine) for s in (signal.SIGTERM,
                                                  signal.SIGINT)}
  capfd.readouterr()
  try:
    again = training.train(_config(), workdir=workdir, progress=False,
                           data_fn=_data_fn(), num_train_examples=NUM_EXAMPLES)
    assert all(signal.getsignal(s) is mine for s in previous)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  assert f'resumed from step {NUM_STEPS}' in capfd.readouterr().err
  _, first = _load(tmp_path / 'resumed')
  assert int(again.state.step) == NUM_STEPS and again.interrupted is None
  assert again.evaluations == first['evaluations']
  assert again.seconds_per_step == first['seconds_per_step']
  assert _steps(_records(workdir)) == list(range(1, NUM_STEPS + 1))


def test_sigkill_recomputes_lost_steps_identically(tmp_path, cache,
                                                   reference):
  _, resumed_from, logged = _run_kill_and_resume(
      tmp_path, cache, reference, signal.SIGKILL, seed=1)
  # Steps after the last checkpoint were logged, lost with the process and
  # recomputed: each is in the log once, equal to the uninterrupted run's.
  assert logged > resumed_from


if __name__ == '__main__':
  _child(*sys.argv[1:3])
