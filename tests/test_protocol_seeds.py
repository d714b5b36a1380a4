"""Mean ± std tables over seeds (``protocol.seed_summary``, ``train_seeds``)."""

import json

import numpy as np
import pytest

from mtl_optax import protocol
from mtl_optax import training


def _evals(values):
  """Evaluations whose task 'a' accuracy takes ``values`` in turn."""
  return [{'step': i, 'metrics': {'a': {'accuracy': v, 'count': 9},
                                  'b': {'abs_err': 2 * v}}}
          for i, v in enumerate(values)]


def test_seed_summary_by_hand():
  runs = [_evals([0.1, 0.2, 0.3, 0.5]), _evals([0.0, 0.4, 0.5, 0.7])]
  s = protocol.seed_summary(runs, last_k=2)
  assert (s['num_seeds'], s['last_k'], s['last_k_used']) == (2, 2, 2)
  # final: 0.5 and 0.7 -> mean 0.6, sample std sqrt(0.02) = 0.141421
  assert s['final']['a']['accuracy'] == pytest.approx(
      {'mean': 0.6, 'std': np.sqrt(0.02)})
  # last-2 averages: 0.4 and 0.6 -> mean 0.5, std sqrt(0.02)
  assert s['last_k_average']['a']['accuracy'] == pytest.approx(
      {'mean': 0.5, 'std': np.sqrt(0.02)})
  assert s['last_k_average']['b']['abs_err'] == pytest.approx(
      {'mean': 1.0, 'std': 2 * np.sqrt(0.02)})
  assert 'count' not in s['final']['a']
  # fewer evaluations than K: all of them, recorded
  s = protocol.seed_summary(runs, last_k=10)
  assert s['last_k_used'] == 4
  assert s['last_k_average']['a']['accuracy']['mean'] == pytest.approx(
      (0.275 + 0.4) / 2)
  one = protocol.seed_summary(runs[:1], last_k=1)
  assert one['final']['a']['accuracy'] == {'mean': 0.5, 'std': 0.0}
  md = protocol.seed_table_markdown(protocol.seed_summary(runs, last_k=2))
  assert '| a | accuracy | 0.6000 ± 0.1414 | 0.5000 ± 0.1414 |' in md
  assert 'last 2 evaluations' in md


def test_seed_summary_delta_mtl_over_seeds():
  runs = [_evals([0.1, 0.2, 0.3, 0.5]), _evals([0.0, 0.4, 0.5, 0.7])]
  base = {'a': {'accuracy': 0.5}, 'b': {'abs_err': 1.0}}
  s = protocol.seed_summary(runs, last_k=2, baselines=base)
  # seed 0 final: a +0 %, b 1.0 vs 1.0 +0 % -> 0; seed 1: a +40 %,
  #   b 1.4 vs 1.0 -> -40 % -> 0.  last-2: seed 0 a 0.4 (-20 %), b 0.8
  #   (+20 %) -> 0; seed 1 a 0.6 (+20 %), b 1.2 (-20 %) -> 0
  assert s['delta_mtl']['final'] == pytest.approx({'mean': 0.0, 'std': 0.0},
                                                  abs=1e-9)
  base = {'a': {'accuracy': 0.25}, 'b': {'abs_err': 2.0}}
  s = protocol.seed_summary(runs, last_k=2, baselines=base)
  d = lambda acc, err: ((acc - 0.25) / 0.25 - (err - 2.0) / 2.0) * 50
  finals = [d(0.5, 1.0), d(0.7, 1.4)]
  averages = [d(0.4, 0.8), d(0.6, 1.2)]
  assert s['delta_mtl']['final'] == pytest.approx(
      {'mean': np.mean(finals), 'std': np.std(finals, ddof=1)})
  assert s['delta_mtl']['last_k_average'] == pytest.approx(
      {'mean': np.mean(averages), 'std': np.std(averages, ddof=1)})
  md = protocol.seed_table_markdown(s)
  assert f"| all | Δ_MTL (%) | {np.mean(finals):.2f} ± " in md
  assert 'delta_mtl' not in protocol.seed_summary(runs, last_k=2)


def test_seed_summary_rejects_bad_inputs():
  with pytest.raises(ValueError, match='last_k'):
    protocol.seed_summary([_evals([1.0])], last_k=0)
  with pytest.raises(ValueError, match='eval_split'):
    protocol.seed_summary([[]])
  with pytest.raises(ValueError, match='same config'):
    protocol.seed_summary([_evals([1.0]),
                           [{'step': 0, 'metrics': {'a': {'miou': 1.0}}}]])
  with pytest.raises(ValueError, match='run\\(r\\)'):
    protocol.seed_summary([[{'step': 0, 'metrics': [{'a': {}}]}]])


def _config(**overrides):
  base = training.Config(model='lenet_multimnist', dataset='multi_mnist',
                         batch_size=16, num_steps=4, eval_every_epochs=0.5,
                         max_eval_batches=1, log_every_steps=1,
                         checkpoint_every_steps=None,
                         checkpoint_every_seconds=None)
  return base.replace(**overrides)


def test_train_seeds_summarises_the_separate_runs(tmp_path):
  from mtl_optax.train import synthetic_data_fn
  config = _config()
  data_fn = synthetic_data_fn('multi_mnist', 32)
  with pytest.raises(ValueError, match='distinct integers'):
    protocol.train_seeds(config, [0, 0], data_fn=data_fn)
  summary = protocol.train_seeds(config, [3, 4], data_fn=data_fn,
                                 workdir=tmp_path, last_k=3)
  # each seed's run, read back from its finished workdir (no training)
  runs = [training.train(config.replace(seed=s), workdir=tmp_path /
                         f'seed_{s}', data_fn=data_fn,
                         progress=False).evaluations for s in (3, 4)]
  assert [len(r) for r in runs] == [4, 4]   # 32/16 = 2 steps/epoch: 1 each
  assert runs[0][-1] != runs[1][-1]          # the seeds differ
  for task in ('left', 'right'):
    finals = [r[-1]['metrics'][task]['accuracy'] for r in runs]
    means = [np.mean([e['metrics'][task]['accuracy'] for e in r[-3:]])
             for r in runs]
    assert summary['final'][task]['accuracy'] == pytest.approx(
        {'mean': np.mean(finals), 'std': np.std(finals, ddof=1)})
    assert summary['last_k_average'][task]['accuracy'] == pytest.approx(
        {'mean': np.mean(means), 'std': np.std(means, ddof=1)})
  assert summary['seeds'] == [3, 4]
  assert json.loads((tmp_path / 'seeds.json').read_text()) == summary
  md = (tmp_path / 'seeds.md').read_text()
  assert md == protocol.seed_table_markdown(summary)
  assert md.count('| left |') == 1


def test_cli_seeds_writes_the_table(tmp_path, capsys):
  from mtl_optax import train as train_cli
  train_cli.main(['--config', 'multi_mnist', '--synthetic', '32',
                  '--set', 'num_steps=2', '--set', 'batch_size=16',
                  '--set', 'max_eval_batches=1', '--set', 'log_every_steps=1',
                  '--workdir', str(tmp_path), '--seeds', '2', '--last-k', '1'])
  out = json.loads(capsys.readouterr().out)
  assert out['seeds'] == [0, 1] and out['last_k_used'] == 1
  assert json.loads((tmp_path / 'seeds.json').read_text()) == out
  assert (tmp_path / 'seed_1').is_dir()
  # --baselines: Δ_MTL against them (here the seeds' mean final metrics)
  base = {t: {m: v['mean'] for m, v in values.items()}
          for t, values in out['final'].items()}
  (tmp_path / 'base.json').write_text(json.dumps({'single_task': base}))
  train_cli.main(['--config', 'multi_mnist', '--synthetic', '32',
                  '--set', 'num_steps=2', '--set', 'batch_size=16',
                  '--set', 'max_eval_batches=1', '--set', 'log_every_steps=1',
                  '--workdir', str(tmp_path), '--seeds', '2', '--last-k', '1',
                  '--baselines', str(tmp_path / 'base.json')])
  again = json.loads(capsys.readouterr().out)
  assert again['final'] == out['final']       # resumed, not retrained
  # Δ_MTL is linear in accuracies: against their mean it averages to 0
  assert again['delta_mtl']['final']['mean'] == pytest.approx(0.0, abs=1e-9)
  assert again['delta_mtl']['final']['std'] > 0
  with pytest.raises(SystemExit):
    train_cli.main(['--config', 'multi_mnist', '--synthetic', '32',
                    '--baselines', str(tmp_path / 'base.json')])
  with pytest.raises(SystemExit):
    train_cli.main(['--config', 'multi_mnist', '--synthetic', '32',
                    '--seeds', '2', '--single-task'])
