"""A learning-rate / seed grid as one vmapped program (``train(sweep=...)``).

Each run of a sweep must train as the single run it stands for: the same
losses, parameters and evaluations up to float32 rounding. Not bit for bit:
the vmapped step computes the same values with batched kernels (batched
convolutions and matrix products), whose sums run in another order, and the
run's rate multiplies the rate-1 optimizer's update instead of being its
learning rate (``(u·f)·r`` against ``u·(r·f)``). With SGD the runs agree to
~1e-7 after a few steps. Adam divides by ``√v``: where a gradient entry is
near zero (a sum that cancels) its rounding noise decides the sign of an
O(lr) step, so Adam runs agree to a fraction of one step (``ADAM_ATOL``
below), the losses still to ~1e-6. A killed sweep resumes bit-identically
(the same vmapped program), and bad sweeps fail at once with a message that
says what to give.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtl_optax import training
from mtl_optax import train as train_cli
from test_training import NUM_EXAMPLES, _config, _data_fn

RATES = [3e-3, 1e-2]                  # Adam's (the tests' _config)
SGD_RATES = [3e-2, 1e-1]
# Adam: parameters within 10% of one step of the larger rate (see above).
ADAM_ATOL = 0.1 * max(RATES)


def _assert_run_matches(sweep_run: training.TrainResult,
                        single: training.TrainResult, *,
                        params_atol: float = 1e-6, accuracy_atol: float = 0.0):
  """Run ``r`` of a sweep (``result.run(r)``) against the single run."""
  np.testing.assert_allclose(sweep_run.history['losses'],
                             single.history['losses'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sweep_run.history['weights'],
                             single.history['weights'], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(sweep_run.history['learning_rate'],
                                single.history['learning_rate'])
  np.testing.assert_array_equal(sweep_run.history['skipped'],
                                single.history['skipped'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=params_atol),
               sweep_run.state.params, single.state.params)
  assert [e['step'] for e in sweep_run.evaluations] == [
      e['step'] for e in single.evaluations]
  for mine, theirs in zip(sweep_run.evaluations, single.evaluations):
    for task, values in theirs['metrics'].items():
      assert mine['metrics'][task]['count'] == values['count']
      assert mine['metrics'][task]['accuracy'] == pytest.approx(
          values['accuracy'], abs=accuracy_atol)


@pytest.mark.parametrize('level', ['parameter', 'representation'])
@pytest.mark.parametrize('method', ['aligned_mtl', 'pcgrad'])
def test_learning_rate_sweep_runs_are_the_single_runs(level, method):
  config = _config(level=level, method=method, num_steps=6, optimizer='sgd',
                   lr_decay_epochs=(0.5,), lr_decay_factor=0.5)
  swept = training.train(config, progress=False, data_fn=_data_fn(),
                         sweep={'learning_rate': SGD_RATES})
  assert swept.runs == ({'learning_rate': 3e-2}, {'learning_rate': 1e-1})
  assert swept.history['losses'].shape == (6, 2, 2)       # [S, R, T]
  assert swept.history['dominance_rate'].shape == (6, 2)  # [S, R]
  assert swept.state.step.shape == ()
  (evaluation,) = swept.evaluations
  assert evaluation['runs'] == list(swept.runs)
  assert len(evaluation['metrics']) == 2
  # The logged rate is the run's rate times the schedule (halved at step 3).
  np.testing.assert_allclose(
      swept.history['learning_rate'],
      [SGD_RATES] * 3 + [[r / 2 for r in SGD_RATES]] * 3, rtol=1e-7)
  for r, rate in enumerate(SGD_RATES):
    single = training.train(config.replace(learning_rate=rate),
                            progress=False, data_fn=_data_fn())
    _assert_run_matches(swept.run(r), single)


def test_adam_learning_rate_sweep_runs_are_the_single_runs():
  config = _config(num_steps=6)
  swept = training.train(config, progress=False, data_fn=_data_fn(),
                         sweep={'learning_rate': RATES})
  for r, rate in enumerate(RATES):
    single = training.train(config.replace(learning_rate=rate),
                            progress=False, data_fn=_data_fn())
    _assert_run_matches(swept.run(r), single, params_atol=ADAM_ATOL,
                        accuracy_atol=2 / NUM_EXAMPLES)


def test_seed_sweep_runs_share_the_base_seeds_data_order():
  base_seed, seeds = 5, [1, 2]
  config = _config(method='pcgrad', num_steps=6, seed=base_seed,
                   optimizer='sgd', learning_rate=SGD_RATES[0])
  swept = training.train(config, progress=False, data_fn=_data_fn(),
                         sweep={'seed': seeds})
  assert swept.runs == ({'seed': 1}, {'seed': 2})

  def base_order(split, *, seed, **kwargs):   # the sweep's one data stream
    del seed
    return _data_fn()(split, seed=base_seed, **kwargs)

  for r, seed in enumerate(seeds):
    single = training.train(config.replace(seed=seed), progress=False,
                            data_fn=base_order)
    _assert_run_matches(swept.run(r), single)
  # The seeds gave the runs different initialisations and PCGrad orders.
  first = jax.tree.leaves(swept.run(0).state.params)[0]
  second = jax.tree.leaves(swept.run(1).state.params)[0]
  assert not np.allclose(first, second)


def test_a_diverging_run_skips_its_steps_alone():
  # Rate 1e30 blows run 1 up after one step: its later steps have
  # non-finite gradients and are skipped (its parameters and optimizer
  # state frozen), while run 0 trains on as it would alone.
  config = _config(num_steps=4, optimizer='sgd', eval_split=None)
  swept = training.train(config, progress=False, data_fn=_data_fn(),
                         sweep={'learning_rate': [SGD_RATES[0], 1e30]})
  skipped = swept.history['skipped']
  assert not skipped[:, 0].any() and skipped[1:, 1].all()
  frozen = swept.run(1).state.params
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(frozen))
  single = training.train(config.replace(learning_rate=SGD_RATES[0]),
                          progress=False, data_fn=_data_fn())
  _assert_run_matches(swept.run(0), single)


def _same(a, b) -> bool:
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x),
                                                  np.asarray(y)), a, b)
  return all(jax.tree.leaves(same))


def test_sweep_resumes_bit_identically(tmp_path):
  config = _config(level='representation', method='pcgrad', num_steps=10,
                   checkpoint_every_steps=4, log_every_steps=3)
  sweep = {'learning_rate': RATES, 'seed': [0, 1]}
  straight = training.train(config, progress=False, data_fn=_data_fn(),
                            sweep=sweep)
  stopped = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn(), sweep=sweep, stop_after=7)
  assert int(stopped.state.step) == 7 and len(stopped.runs) == 4
  resumed = training.train(config, workdir=tmp_path, progress=False,
                           data_fn=_data_fn(), sweep=sweep)
  assert int(resumed.state.step) == 10
  assert _same(straight.state, resumed.state)
  np.testing.assert_array_equal(straight.history['losses'][7:],
                                resumed.history['losses'])
  assert resumed.evaluations == straight.evaluations

  records = [json.loads(line) for line in
             (tmp_path / 'log.jsonl').read_text().splitlines()]
  assert records[0]['sweep'] == {'learning_rate': RATES, 'seed': [0, 1]}
  assert records[0]['runs'] == list(straight.runs)
  steps = [r for r in records if 'step' in r]
  assert [r['step'] for r in steps] == list(range(1, 11))
  assert np.array(steps[-1]['losses']).shape == (4, 2)      # [R][T]
  assert steps[-1]['learning_rate'] == pytest.approx([3e-3, 3e-3, 1e-2, 1e-2])
  assert len(steps[-1]['dominance_rate']) == 4
  np.testing.assert_array_equal(np.float32([r['losses'] for r in steps]),
                                straight.history['losses'])

  # A checkpoint resumes with its own sweep only: other values, another
  # number of runs, a single run.
  for other in ({'learning_rate': RATES, 'seed': [0, 2]},
                {'learning_rate': RATES}, None):
    with pytest.raises(ValueError, match='resume it with the same sweep'):
      training.train(config, workdir=tmp_path, progress=False,
                     data_fn=_data_fn(), sweep=other)


@pytest.mark.parametrize('sweep, match', [
    ({'batch_size': [8, 16]}, 'sweepable fields are learning_rate, seed'),
    ({'learning_rate': []}, 'is empty'),
    ({'learning_rate': ['fast']}, 'positive finite numbers'),
    ({'learning_rate': [1e-3, -1.0]}, 'positive finite numbers'),
    ({'learning_rate': 1e-3}, 'must be a list'),
    ({'seed': [0.5]}, 'must be integers'),
    ({'seed': [0, 0]}, 'give each value once'),
    ({}, 'non-empty dict'),
])
def test_bad_sweeps_name_the_fix(sweep, match):
  with pytest.raises(ValueError, match=match):
    training.sweep_runs(sweep)
  with pytest.raises(ValueError, match=match):    # before any data is read
    training.train(_config(), progress=False, sweep=sweep,
                   data_fn=lambda *a, **k: pytest.fail('data was read'))


def test_runs_are_the_product_in_lexicographic_order():
  runs = training.sweep_runs({'seed': [1, 0], 'learning_rate': [1, 2e-3]})
  assert runs == ({'seed': 1, 'learning_rate': 1.0},
                  {'seed': 1, 'learning_rate': 2e-3},
                  {'seed': 0, 'learning_rate': 1.0},
                  {'seed': 0, 'learning_rate': 2e-3})


def test_a_single_runs_result_has_no_runs():
  result = training.TrainResult(None, {}, [], 0.0)
  with pytest.raises(ValueError, match='use it as is'):
    result.run(0)


def test_cli_sweep_flag_parses():
  assert train_cli._sweep(None) is None
  assert train_cli._sweep(['learning_rate=1e-3,1e-2', 'seed=3']) == {
      'learning_rate': (1e-3, 1e-2), 'seed': (3,)}
  assert train_cli._sweep(['seed=[0, 1]']) == {'seed': (0, 1)}
  assert train_cli._sweep(['learning_rate=1e-3,fast']) == {
      'learning_rate': (1e-3, 'fast')}     # sweep_axes names 'fast'
  with pytest.raises(ValueError, match='given twice'):
    train_cli._sweep(['seed=0', 'seed=1'])
  with pytest.raises(ValueError, match='FIELD=V1,V2'):
    train_cli._sweep(['seed'])


def test_cli_trains_a_sweep_on_synthetic_data(tmp_path):
  flags = ['--config', 'multi_mnist', '--synthetic', '32',
           '--set', 'num_steps=2', '--set', 'batch_size=8',
           '--set', "model_kwargs={'features': 4}",
           '--sweep', 'learning_rate=1e-3,1e-2', '--sweep', 'seed=0,1']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'mtl_optax.train', *flags, '--workdir',
       str(tmp_path / 'run')], env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout)
  assert out['step'] == 2
  assert out['runs'] == [{'learning_rate': 1e-3, 'seed': 0},
                         {'learning_rate': 1e-3, 'seed': 1},
                         {'learning_rate': 1e-2, 'seed': 0},
                         {'learning_rate': 1e-2, 'seed': 1}]
  (evaluation,) = out['evaluations']
  assert len(evaluation['metrics']) == 4
  assert set(evaluation['metrics'][3]) == {'left', 'right'}
  assert 'run 3 (learning_rate=0.01 seed=1)' in proc.stderr

  bad = subprocess.run(
      [sys.executable, '-m', 'mtl_optax.train', *flags[:-4], '--sweep',
       'momentum=0.5,0.9'], env=env, capture_output=True, text=True,
      timeout=600)
  assert bad.returncode == 2
  assert 'sweepable fields are learning_rate, seed' in bad.stderr


def test_cli_help_documents_the_sweep():
  help_text = train_cli._parser().format_help()
  assert '--sweep FIELD=V1,V2,...' in help_text
  assert 'learning_rate or seed' in help_text


def test_sweep_evaluates_extra_splits_per_run():
  config = _config(eval_split='valid', extra_eval_splits=('test',),
                   num_steps=6)
  by_split = {'train': None, 'valid': None, 'test': None}

  def data_fn(split, **kwargs):
    assert split in by_split
    return _data_fn()(split, **kwargs)

  swept = training.train(config, progress=False, data_fn=data_fn,
                         sweep={'learning_rate': RATES})
  (evaluation,) = swept.evaluations
  assert len(evaluation['extra_metrics']['test']) == 2
  # Every split holds the same examples here: the same metrics per run.
  assert evaluation['extra_metrics']['test'] == evaluation['metrics']
  assert evaluation['metrics'][0] != evaluation['metrics'][1]
  assert swept.run(1).evaluations[0]['extra_metrics']['test'] == (
      evaluation['metrics'][1])


def test_experiment_of_a_sweep_stacks_the_states():
  experiment = training.build_sweep(_config(), {'seed': [0, 1, 2]},
                                    num_train_examples=NUM_EXAMPLES)
  assert experiment.runs == ({'seed': 0}, {'seed': 1}, {'seed': 2})
  kernel = experiment.init_state.params['encoder']['conv1']['kernel']
  assert kernel.shape[0] == 3
  assert not np.array_equal(kernel[0], kernel[1])
  rates = training._run_learning_rate(experiment.init_state.opt_state)
  np.testing.assert_array_equal(rates, np.float32([3e-3] * 3))
