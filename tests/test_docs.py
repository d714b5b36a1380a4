"""Every Python code block of the README and the docs runs as written.

Each ```python block of README.md and docs/**/*.md (and each
``.. code-block:: python`` of docs/**/*.rst) runs in a fresh Python process,
from the repository root, and must exit 0; a failure names the file and the
line of the block (the traceback's line numbers are the file's).

A comment on the line just before a block changes how it runs:

- ``<!-- skip-test: REASON -->`` (rst: ``.. skip-test: REASON``): not run,
  e.g. for a GPU-only or dataset-needing snippet; the reason is required.
  Use it sparingly.
- ``<!-- test: requires flax, tqdm -->``: skipped unless those modules are
  installed (the block needs an extra).
- ``<!-- test: devices=8 -->``: run with 8 simulated CPU devices.
  Several options are separated by ``;``.

The worked example (docs/examples/worked_example.py) runs as a script and
must write its figures; the docs' own checks (the methods page covers
``mtl_optax.available()``, the README sections the docs include exist, the
extras the install page names are pyproject's) run without building them.
The build itself is ``docs/build.sh`` (a CI step).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
README = ROOT / 'README.md'
WORKED_EXAMPLE = DOCS / 'examples' / 'worked_example.py'
TIMEOUT_S = 600          # one block; generous for a loaded 2-core machine

# Runs stdin as the block at `path:line`: the code is padded with blank
# lines so that tracebacks give the file's own line numbers.
RUNNER = textwrap.dedent('''
    import sys
    path, line = sys.argv[1], int(sys.argv[2])
    source = '\\n' * (line - 1) + sys.stdin.read()
    exec(compile(source, path, 'exec'), {'__name__': '__main__'})
''')


@dataclasses.dataclass(frozen=True)
class Block:
  path: pathlib.Path
  line: int                     # 1-based line of the block's first code line
  code: str
  marker: str | None            # the comment just before the block, if any

  @property
  def where(self) -> str:
    return f'{self.path.relative_to(ROOT)}:{self.line}'


MD_MARKER = re.compile(r'^<!--\s*((?:skip-)?test:.*?)\s*-->$')
RST_MARKER = re.compile(r'^\.\.\s+((?:skip-)?test:.*)$')
RST_CODE = re.compile(r'^(\s*)\.\. (?:code-block|code|sourcecode):: python\s*$')


def _marker(lines: list[str], index: int, pattern: re.Pattern) -> str | None:
  """The marker comment on the last non-blank line before ``index``."""
  i = index - 1
  while i >= 0 and not lines[i].strip():
    i -= 1
  if i < 0:
    return None
  match = pattern.match(lines[i].strip())
  return match.group(1) if match else None


def markdown_blocks(path: pathlib.Path) -> list[Block]:
  lines = path.read_text().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    if re.match(r'^```python\s*$', lines[i]):
      start = i + 1
      end = start
      while end < len(lines) and not lines[end].startswith('```'):
        end += 1
      blocks.append(Block(path, start + 1, '\n'.join(lines[start:end]) + '\n',
                          _marker(lines, i, MD_MARKER)))
      i = end + 1
    elif lines[i].startswith('```'):          # another language: skip it
      i += 1
      while i < len(lines) and not lines[i].startswith('```'):
        i += 1
      i += 1
    else:
      i += 1
  return blocks


def rst_blocks(path: pathlib.Path) -> list[Block]:
  lines = path.read_text().splitlines()
  blocks = []
  for i, line in enumerate(lines):
    match = RST_CODE.match(line)
    if not match:
      continue
    indent = len(match.group(1))
    j = i + 1
    while j < len(lines) and lines[j].strip().startswith(':'):   # options
      j += 1
    while j < len(lines) and not lines[j].strip():
      j += 1
    start = j
    while j < len(lines) and (not lines[j].strip() or
                              len(lines[j]) - len(lines[j].lstrip()) > indent):
      j += 1
    body = textwrap.dedent('\n'.join(lines[start:j])).strip('\n') + '\n'
    blocks.append(Block(path, start + 1, body, _marker(lines, i, RST_MARKER)))
  return blocks


def doc_sources() -> list[pathlib.Path]:
  pages = [p for p in sorted(DOCS.rglob('*'))
           if p.suffix in ('.md', '.rst') and '_build' not in p.parts]
  return [README, *pages]


def all_blocks() -> list[Block]:
  blocks = []
  for path in doc_sources():
    blocks += rst_blocks(path) if path.suffix == '.rst' else markdown_blocks(
        path)
  return blocks


def parse_marker(marker: str | None) -> dict:
  """``{'skip': reason}`` or ``{'requires': [...], 'devices': n}``."""
  if marker is None:
    return {}
  kind, _, rest = marker.partition(':')
  rest = rest.strip()
  if kind == 'skip-test':
    return {'skip': rest}
  options = {}
  for part in filter(None, (p.strip() for p in rest.split(';'))):
    if part.startswith('requires '):
      options['requires'] = [m.strip() for m in part[len('requires '):]
                             .split(',') if m.strip()]
    elif part.startswith('devices='):
      options['devices'] = int(part[len('devices='):])
    else:
      raise ValueError(f'unknown test option {part!r} in {marker!r}')
  return options


def _missing(modules: list[str]) -> list[str]:
  missing = []
  for name in modules:
    try:
      found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      missing.append(name)
  return missing


def _env(devices: int | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', MPLBACKEND='Agg')
  if devices:
    flags = env.get('XLA_FLAGS', '')
    env['XLA_FLAGS'] = (
        f'{flags} --xla_force_host_platform_device_count={devices}').strip()
  return env


BLOCKS = all_blocks()


@pytest.mark.parametrize('block', BLOCKS, ids=[b.where for b in BLOCKS])
def test_code_block_runs(block: Block):
  options = parse_marker(block.marker)
  if 'skip' in options:
    pytest.skip(f'{block.where}: marked skip-test: {options["skip"]}')
  missing = _missing(options.get('requires', []))
  if missing:
    pytest.skip(f'{block.where} needs {", ".join(missing)}')
  proc = subprocess.run(
      [sys.executable, '-c', RUNNER, str(block.path.relative_to(ROOT)),
       str(block.line)],
      input=block.code, cwd=ROOT, env=_env(options.get('devices')),
      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  if proc.returncode != 0:
    pytest.fail(
        f'The code block at {block.where} failed (exit {proc.returncode}):\n'
        f'{proc.stderr[-6000:]}', pytrace=False)


def test_blocks_are_found():
  where = {b.path.name for b in BLOCKS}
  assert 'README.md' in where
  for page in ('getting_started.md', 'gradient_sources.md', 'methods.rst',
               'solvers.md', 'models.md', 'data.md', 'training.md',
               'multi_device.md'):
    assert page in where, page
  readme = [b for b in BLOCKS if b.path == README]
  assert any('value_and_jacobian' in b.code for b in readme)


def test_markers_are_valid_and_skips_have_reasons():
  for block in BLOCKS:
    options = parse_marker(block.marker)     # raises on an unknown option
    if 'skip' in options:
      assert options['skip'], f'{block.where}: skip-test needs a reason'


def test_marker_parsing():
  assert parse_marker(None) == {}
  assert parse_marker('skip-test: needs a GPU') == {'skip': 'needs a GPU'}
  assert parse_marker('test: requires flax, tqdm; devices=8') == {
      'requires': ['flax', 'tqdm'], 'devices': 8}
  with pytest.raises(ValueError):
    parse_marker('test: devcies=8')


def test_collector_reports_file_lines(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('# T\n\n<!-- skip-test: needs a GPU -->\n```python\n'
                  'x = 1\n```\n\n```bash\nls\n```\n\n```python\ny = 2\n```\n')
  blocks = markdown_blocks(page)
  assert [(b.line, b.code, b.marker) for b in blocks] == [
      (5, 'x = 1\n', 'skip-test: needs a GPU'), (13, 'y = 2\n', None)]
  rst = tmp_path / 'page.rst'
  rst.write_text('T\n=\n\n.. test: devices=2\n\n.. code-block:: python\n'
                 '   :caption: c\n\n   a = 1\n   if a:\n       b = 2\n\nText\n')
  (block,) = rst_blocks(rst)
  assert (block.line, block.code, block.marker) == (
      9, 'a = 1\nif a:\n    b = 2\n', 'test: devices=2')


def test_failing_block_names_file_and_line(tmp_path):
  block = Block(ROOT / 'README.md', 40, 'x = 1\nundefined_name\n', None)
  proc = subprocess.run(
      [sys.executable, '-c', RUNNER, 'README.md', str(block.line)],
      input=block.code, cwd=ROOT, env=_env(), capture_output=True, text=True,
      timeout=60, check=False)
  assert proc.returncode != 0
  assert 'File "README.md", line 41' in proc.stderr
  assert "NameError: name 'undefined_name'" in proc.stderr


# -- The worked example -------------------------------------------------------


def test_worked_example_runs_and_plots(tmp_path):
  missing = _missing(['flax', 'matplotlib'])
  if missing:
    pytest.skip(f'the worked example needs {", ".join(missing)}')
  proc = subprocess.run(
      [sys.executable, str(WORKED_EXAMPLE)], cwd=ROOT,
      env=dict(_env(), WORKED_EXAMPLE_OUT=str(tmp_path)), capture_output=True,
      text=True, timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-6000:]
  for name in ('losses', 'weights', 'dominance_rate'):
    png = tmp_path / f'{name}.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert set(summary) == {'linear_scalarization', 'mgda', 'aligned_mtl'}
  for method, s in summary.items():
    for key in ('final_losses', 'initial_losses', 'final_weights'):
      assert all(map(lambda v: v == v and abs(v) < 1e30, s[key])), (method, s)
    assert s['mean_dominance_rate'] >= 1
  # The claims of the example's summary cell.
  linear, mgda, aligned = (summary[m] for m in
                           ('linear_scalarization', 'mgda', 'aligned_mtl'))
  assert linear['final_weights'] == [1.0, 1.0]
  assert mgda['final_weights'][1] < 0.01                 # c_2 nearly 0
  assert mgda['final_losses'][0] < linear['final_losses'][0]
  assert aligned['final_weights'][1] < aligned['final_weights'][0]
  for t in range(2):                                     # both go down
    assert aligned['final_losses'][t] < 0.5 * aligned['initial_losses'][t]
  assert aligned['final_losses'][0] < linear['final_losses'][0]


def test_worked_example_is_a_percent_script():
  text = WORKED_EXAMPLE.read_text()
  assert 'format_name: percent' in text
  assert text.count('# %% [markdown]') >= 3
  assert re.search(r'^# %%$', text, re.M)
  assert 'from flax import nnx' in text and "matplotlib.use('Agg')" in text


# -- The docs' sources, without a build ---------------------------------------


def _load_extension():
  pytest.importorskip('sphinx')
  spec = importlib.util.spec_from_file_location(
      'mtl_docs', DOCS / '_ext' / 'mtl_docs.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_methods_page_covers_every_registered_method():
  import mtl_optax
  ext = _load_extension()
  grouped = [m for _, _, methods in ext.GROUPS for m in methods]
  assert sorted(grouped) == sorted(mtl_optax.available())
  assert sorted(ext.WEIGHTINGS) == sorted(mtl_optax.available())
  for name, targets in ext.WEIGHTINGS.items():
    assert getattr(mtl_optax, name).__doc__, name
    if isinstance(targets, str):
      continue
    for target in targets:
      module, _, attr = target.rpartition('.')
      assert getattr(importlib.import_module(module), attr).__doc__, target


def test_percent_script_renders_as_markdown():
  ext = _load_extension()
  text = ('# ---\n# jupyter:\n#   jupytext: {}\n# ---\n\n# %% [markdown]\n'
          '# # Title\n#\n# Text.\n\n# %%\nx = 1\n\n\n# %%\n\n')
  assert ext.percent_to_markdown(text) == (
      '# Title\n\nText.\n\n```python\nx = 1\n```\n')
  page = ext.percent_to_markdown(WORKED_EXAMPLE.read_text())
  assert page.startswith('# Worked example')
  assert page.count('```python') >= 5


def test_readme_sections_included_by_the_docs_exist():
  # The pages include README sections between text markers; a README edit
  # that removes a marker would break the docs build.
  pattern = re.compile(
      r'```\{include\} (\S*README\.md)\n((?::[\w-]+: .*\n)*)```|'
      r'\.\. include:: (\S*README\.md)\n((?:\s+:[\w-]+: .*\n)*)')
  readme = README.read_text()
  found = 0
  for page in doc_sources()[1:]:
    for match in pattern.finditer(page.read_text()):
      options = match.group(2) or match.group(4)
      spans = dict(re.findall(r':(start-after|end-before): (.*)', options))
      start = spans['start-after'].strip().strip('"')
      end = spans['end-before'].strip().strip('"')
      assert start in readme, (page.name, start)
      tail = readme[readme.index(start) + len(start):]
      assert end in tail, (page.name, end)
      found += 1
  assert found >= 8


def test_install_page_names_pyproject_extras():
  extras = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  if 'zoo' not in extras:
    pytest.skip('pyproject.toml has no lean-install extras yet')
  page = (DOCS / 'getting_started.md').read_text()
  named = set(re.findall(r'^\| `(\w+)` \|', page, re.M))
  assert named, 'no extras table'
  assert named <= set(extras) | {'docs'}, named - set(extras)
  assert set(extras) <= named, set(extras) - named
