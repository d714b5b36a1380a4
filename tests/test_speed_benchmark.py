"""benchmarks/speed.py on a tiny problem: it runs, donates and carries the
tracked-state methods' state, times each function interleaved with the
numpy baseline and writes the table and the raw numbers."""

import json
import math

from benchmarks import speed


def test_tiny_run_writes_interleaved_ratios(tmp_path, capsys):
  out = tmp_path / 'speed.md'
  assert speed.main(['--tasks', '3', '--params', '5000', '--repeats', '2',
                     '--layouts', 'flat', '--methods', 'LS,moco,modo',
                     '--out', str(out)]) == 0
  capsys.readouterr()
  raw = json.loads(out.with_suffix('.json').read_text())
  (row,) = raw['results']
  for label in ('gramian', 'combine', 'LS', 'moco', 'modo'):
    f = row['functions'][label]
    assert len(f['runs']) == len(f['baseline_runs']) == 2, label
    paired = sorted(r / b for r, b in zip(f['runs'], f['baseline_runs']))
    assert math.isclose(f['ratio'], sum(paired) / 2), label   # the median
  assert row['check']['gramian_rel_err'] < 1e-4
  text = out.read_text()
  assert '| moco |' in text and 'interleaved' in text
