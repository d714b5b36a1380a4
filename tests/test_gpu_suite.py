"""benchmarks/gpu_suite.py: the smoke run writes every section, finite.

The smoke run (``--smoke``) runs all three parts on the CPU with tiny sizes
on a MultiMNIST prepared here from a few synthetic MNIST digits; the other
tests check the flags' failures and skips, which stop before any work.
"""

import json
import math
import re
import time

import numpy as np
import pytest

from benchmarks import gpu_suite
import fake_mnist


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_mnist.prepare_multi_mnist(
      tmp_path_factory.mktemp('gpu_suite_mnist'))


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


def _table_rows(text, title):
  """The data rows of the first table under ``## title``, as cell lists."""
  section = text.split(f'## {title}\n', 1)[1].split('\n## ', 1)[0]
  rows = [line for line in section.splitlines() if line.startswith('|')]
  return [[c.strip() for c in row.strip('|').split('|')] for row in rows[2:]]


def test_smoke_writes_every_section_with_finite_numbers(tmp_path, data_dir):
  out = tmp_path / 'gpu.md'
  code = gpu_suite.main(['--smoke', '--out', str(out), '--data-dir',
                         str(data_dir)])
  assert code == 0
  text = out.read_text()
  report = json.loads(out.with_suffix('.json').read_text())
  assert report['ok'] is True
  assert 'SMOKE RUN' in text and '**cpu**' in text
  assert not re.search(r'\b(nan|inf)\b', text, re.IGNORECASE)
  for part, title in gpu_suite.PART_TITLES.items():
    assert f'## {title}' in text
    assert report['parts'][part]['status'] == 'ran'
    assert _finite(report['parts'][part]['wall_s'])

  # a. Every Gramian-based method and both primitives, timed.
  a = report['parts']['a']['record']
  methods, not_run = gpu_suite.gramian_methods()
  assert 'graddrop' in not_run and 'upgrad' in methods
  assert set(a['rows']) == set(gpu_suite.PRIMITIVES) | set(methods)
  rows = {r[0]: r for r in _table_rows(text, gpu_suite.PART_TITLES['a'])}
  assert set(rows) == set(a['rows'])
  for name, row in a['rows'].items():
    assert row['ours']['median_s'] > 0 and _finite(row['ours']['x_floor'])
    assert row['ours']['min_s'] <= row['ours']['median_s']
    assert all(_finite(float(c.replace(',', ''))) for c in rows[name][1:5])
  # TorchJD on the same J: the conventions the header states.
  if a.get('torch'):
    t = a['T']
    for name, scale in (('linear_scalarization', t), ('aligned_mtl', t),
                        ('imtl_g', 1.0)):
      row = a['rows'][name]
      assert row['torchjd_time']['median_s'] > 0
      assert row['compare']['scale'] == pytest.approx(scale, rel=1e-4)
      assert row['compare']['cos'] == pytest.approx(1.0, abs=1e-5)
  else:
    assert a['torch_skipped'] and 'TorchJD column skipped' in text

  # b. θ, z and Jacobian-free steps of both methods, and the floor.
  b = report['parts']['b']['record']
  keys = {(r['method'], r['level']) for r in b['rows']}
  for method in ('linear_scalarization', 'upgrad'):
    for level in ('parameter', 'representation', 'jacobian_free'):
      assert (method, level) in keys
  assert ('single loss', '—') in keys
  for row in b['rows']:
    assert row['median_s'] > 0 and row['xla_peak_bytes'] > 0
    assert _finite(row['x_ls_theta']) and _finite(row['x_single_loss'])
  assert len(_table_rows(text, gpu_suite.PART_TITLES['b'])) == len(b['rows'])

  # c. Both methods trained and evaluated.
  c = report['parts']['c']['record']
  assert [r['method'] for r in c['rows']] == ['aligned_mtl', 'mgda']
  for row in c['rows']:
    assert row['steps'] == 3
    assert 0 <= row['left'] <= 100 and 0 <= row['right'] <= 100
    assert _finite(row['wall_s']) and _finite(row['seconds_per_step'])
  assert len(_table_rows(text, gpu_suite.PART_TITLES['c'])) == 2


def test_missing_data_dir_fails_naming_the_flag(tmp_path, capsys):
  out = tmp_path / 'gpu.md'
  with pytest.raises(SystemExit) as error:
    gpu_suite.main(['--smoke', '--out', str(out)])
  assert error.value.code == 2
  message = capsys.readouterr().err
  assert '--data-dir' in message and '--skip-multimnist' in message
  assert not out.exists()


def test_unprepared_data_dir_fails_naming_the_flags(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_suite.main(['--smoke', '--out', str(tmp_path / 'gpu.md'),
                    '--data-dir', str(tmp_path / 'empty')])
  message = capsys.readouterr().err
  assert '--data-dir' in message and '--mnist-dir' in message
  assert 'not prepared' in message


def test_skips_and_budget_are_stated(tmp_path):
  out = tmp_path / 'gpu.md'
  # Part c skipped on request; part a not started: no budget left.
  code = gpu_suite.main(['--smoke', '--out', str(out), '--parts', 'a,c',
                         '--skip-multimnist', '--budget-seconds', '0'])
  assert code == 1
  text = out.read_text()
  report = json.loads(out.with_suffix('.json').read_text())
  parts = report['parts']
  assert parts['c']['status'] == 'skipped (--skip-multimnist)'
  assert parts['a']['status'].startswith('skipped: budget')
  assert parts['b']['status'] == 'skipped (not in --parts)'
  assert 'skipped (--skip-multimnist)' in text
  assert 'Not run: skipped: budget' in text


def test_interleaved_runs_caps_slow_calls_and_keeps_errors():
  calls = {'fast': lambda: None}
  slow_calls = []

  def slow():
    slow_calls.append(1)
    time.sleep(0.02)

  def broken():
    raise RuntimeError('out of memory')

  calls.update(slow=slow, broken=broken)
  runs, errors = gpu_suite.interleaved_runs(calls, 10, warmup=1,
                                            cap_seconds=0.05, min_runs=3)
  assert len(runs['fast']) == 10
  assert 3 <= len(runs['slow']) < 10
  assert len(slow_calls) == 1 + len(runs['slow'])     # + the warm-up
  assert 'broken' not in runs and 'out of memory' in errors['broken']


def test_make_jacobian_has_conflicting_pairs():
  j = gpu_suite.make_jacobian(6, 20_000, seed=0)
  assert j.dtype == np.float32 and j.shape == (6, 20_000)
  j = j.astype(np.float64)
  cos = (j[0] @ j[3]) / np.linalg.norm(j[0]) / np.linalg.norm(j[3])
  assert cos == pytest.approx(-0.5 / 1.25 ** 0.5, abs=0.02)
