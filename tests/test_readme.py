"""The README's quickstart must run as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def _python_blocks():
  return re.findall(r'```python\n(.*?)```', README.read_text(), re.S)


def test_quickstart_runs_and_trains():
  block = next(b for b in _python_blocks() if 'value_and_jacobian' in b)
  namespace = {'print': lambda *a, **k: None}
  exec(compile(block, 'README quickstart', 'exec'), namespace)
  losses = np.asarray(namespace['losses'])
  y = namespace["y"]
  initial = np.mean(np.asarray(y) ** 2, axis=0)   # heads start at zero
  assert np.all(np.isfinite(losses))
  assert np.all(losses < 0.5 * initial), (losses, initial)
  state = namespace['state']
  assert state.weights.shape == (2,)
  assert float(state.diagnostics.dominance_rate) >= 1.0


def test_main_job_is_the_toy_benchmark():
  # The README's command 1 runs benchmarks/toy.py (tests/test_toy.py runs it
  # at a small step count) and its figure is the one the README shows.
  text = README.read_text()
  commands = re.findall(r'```bash\n(.*?)```', text, re.S)[0]
  main_job = next(l for l in commands.splitlines() if 'pip install' in l)
  script = main_job.rsplit('.venv/bin/python', 1)[1].split()[0]
  assert script == 'benchmarks/toy.py'
  assert (README.parent / script).exists()
  assert '](benchmarks/results/toy.png)' in text
  assert (README.parent / 'benchmarks/results/toy.png').exists()


def test_quickstart_script_runs(tmp_path, monkeypatch):
  import importlib.util
  path = README.parent / 'benchmarks' / 'quickstart.py'
  spec = importlib.util.spec_from_file_location('quickstart', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = tmp_path / 'quickstart.md'
  module.main(['--steps', '20', '--out', str(out)])
  table = out.read_text()
  for name in list(module.METHODS) + list(module.REPRESENTATION_METHODS):
    assert f'| {name} |' in table
  assert 'nan |' not in table.split('| initial |')[1].split('\n', 1)[1]
