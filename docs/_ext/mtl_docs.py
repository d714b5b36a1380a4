"""Sphinx directives of the mtl_optax docs.

``.. mtl-methods::`` (reStructuredText pages) writes one section per method
of ``mtl_optax.available()``: the file that defines it
(``mtl_optax/methods/<file>.py``) with its module docstring (the paper's
equations; once per file), the factory's docstring (``mtl_optax.<name>``)
and the docstrings of its weighting functions (``mtl_optax.weightings``),
through autodoc. A registered method missing from the tables below, or a
table entry that is no longer registered, is a build warning (an error with
``-W``), so the page cannot silently miss a method.

``.. cli-help:: benchmarks/train.py`` runs ``python SCRIPT --help`` from the
repository root and shows its output, so the page always shows the real
flags; ``.. cli-help:: -m mtl_optax.train`` runs a module the same way.

A line ``<!-- percent-script: examples/worked_example.py -->`` in a Markdown
page is replaced, when the page is read, by that jupytext percent-format
script rendered as Markdown: its ``# %% [markdown]`` cells as text, its code
cells as Python code blocks (not executed here; ``tests/test_docs.py`` runs
the script).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = pathlib.Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)

# Sections of the methods page, in order: (title, intro, methods).
GROUPS = (
    ('The papers\' methods',
     'Linear scalarization and the four methods the project reproduces.',
     ('linear_scalarization', 'aligned_mtl', 'mgda', 'pcgrad', 'mamg')),
    ('Gramian baselines',
     'Coefficients from the T×T Gramian of the shared gradients; each works '
     'at the parameter level and, through ``representation_grads``, at the '
     'representation level.',
     ('imtl_g', 'cagrad', 'nash_mtl', 'upgrad', 'dualproj', 'gradvac',
      'fairgrad', 'conflict_free')),
    ('Random and smoothed weights', '',
     ('random_weighting', 'ema_weighting')),
    ('Per coordinate', 'Not Gramian-based: it needs the stacked gradients '
     'themselves (no Jacobian-free form).',
     ('graddrop',)),
    ('Stochastic corrections',
     'Methods whose state tracks per-task gradients across steps (a copy '
     'of the stacked gradients: ``init`` needs the parameters; parameter '
     'level only).',
     ('moco', 'excess_mtl')),
    ('Two independent batches',
     'The weights are estimated without bias from the product of two '
     'independent batches\' gradients: ``tx.update(grads, state, params, '
     'second_grads=grads2)`` (one more per-task backward pass per step; '
     '``third_grads=`` for the direction\'s batch).',
     ('modo', 'sdmgrad')),
    ('Loss-based weighting',
     'Coefficients from the task losses: pass them at every update, '
     '``tx.update(grads, state, params, losses=losses)``.',
     ('uncertainty_weighting', 'dwa', 'gradnorm', 'famo', 'geometric_mean',
      'stch', 'db_mtl', 'imtl')),
)

# The weighting functions behind each factory (full dotted names), or a
# sentence when there is none.
WEIGHTINGS = {
    'linear_scalarization': ('mtl_optax.weightings.linear',),
    'aligned_mtl': ('mtl_optax.weightings.aligned',
                    'mtl_optax.weightings.aligned_direction_svd'),
    'mgda': ('mtl_optax.weightings.mgda',
             'mtl_optax.weightings.min_norm_two',
             'mtl_optax.weightings.min_norm_frank_wolfe',
             'mtl_optax.weightings.normalization_scales'),
    'pcgrad': ('mtl_optax.weightings.pcgrad',
               'mtl_optax.weightings.random_orders'),
    'mamg': ('mtl_optax.weightings.mamg_one_sided',
             'mtl_optax.weightings.mamg_draws',
             'mtl_optax.weightings.mamg'),
    'imtl_g': ('mtl_optax.weightings.imtl_g',),
    'cagrad': ('mtl_optax.weightings.cagrad',),
    'nash_mtl': ('mtl_optax.weightings.nash_mtl',
                 'mtl_optax.weightings.solve_power_balance'),
    'upgrad': ('mtl_optax.weightings.upgrad',
               'mtl_optax.weightings.project_to_dual_cone'),
    'dualproj': ('mtl_optax.weightings.dualproj',),
    'gradvac': ('mtl_optax.weightings.gradvac',),
    'fairgrad': ('mtl_optax.weightings.fairgrad',),
    'conflict_free': ('mtl_optax.weightings.conflict_free',),
    'random_weighting': ('mtl_optax.weightings.loss_based.random_weights',),
    'ema_weighting': 'It smooths the coefficients of any weighting function '
                     '``K -> c`` of ``mtl_optax.weightings`` (its '
                     '``weighting`` argument).',
    'graddrop': 'None: GradDrop chooses a sign per coordinate of the stacked '
                'gradients, so it has no coefficient form.',
    'uncertainty_weighting': (
        'mtl_optax.weightings.loss_based.uncertainty',
        'mtl_optax.weightings.loss_based.uncertainty_log_var_grad'),
    'dwa': ('mtl_optax.weightings.loss_based.dwa',),
    'gradnorm': 'None separate: the weights are learned inside the factory '
                'from the losses and ``√diag K``.',
    'famo': ('mtl_optax.weightings.loss_based.famo',
             'mtl_optax.weightings.loss_based.famo_logits_grad'),
    'geometric_mean': ('mtl_optax.weightings.loss_based.geometric_mean',),
    'moco': ('mtl_optax.weightings.moco',
             'mtl_optax.weightings.project_to_simplex'),
    'excess_mtl': ('mtl_optax.weightings.excess_mtl',),
    'modo': ('mtl_optax.weightings.modo',
             'mtl_optax.weightings.cross_gramian'),
    'sdmgrad': ('mtl_optax.weightings.sdmgrad',),
    'stch': ('mtl_optax.weightings.stch',),
    'db_mtl': ('mtl_optax.weightings.db_mtl',),
    'imtl': ('mtl_optax.weightings.imtl',
             'mtl_optax.weightings.imtl_log_scales_grad'),
}


def method_title(name: str) -> str:
  """``name``: the paper, from the first line of the factory's docstring."""
  import mtl_optax
  first = (getattr(mtl_optax, name).__doc__ or '').strip().splitlines()[0]
  head = first.split(':', 1)[0].strip().rstrip('.')
  head = re.sub(r'``', '', head)
  return f'``{name}``: {head}' if head else f'``{name}``'


def method_file(name: str) -> str:
  """``name``'s file, ``mtl_optax/methods/<file>.py``."""
  import mtl_optax
  module = getattr(mtl_optax, name).__module__
  return module.replace('.', '/') + '.py'


def _heading(title: str, char: str) -> list[str]:
  return [title, char * (len(title) + 4), '']


class MethodsDirective(SphinxDirective):
  """Writes the methods' sections (see the module docstring)."""

  has_content = False

  def run(self):
    import mtl_optax
    registered = tuple(mtl_optax.available())
    grouped = [m for _, _, methods in GROUPS for m in methods]
    location = self.get_location()
    for name in registered:
      if name not in grouped or name not in WEIGHTINGS:
        logger.warning(
            'mtl-methods: %r is registered in mtl_optax.available() but not '
            'listed in docs/_ext/mtl_docs.py (GROUPS and WEIGHTINGS)', name,
            location=location)
    for name in set(grouped) | set(WEIGHTINGS):
      if name not in registered:
        logger.warning(
            'mtl-methods: %r is listed in docs/_ext/mtl_docs.py but not in '
            'mtl_optax.available()', name, location=location)

    lines: list[str] = []
    shown: set[str] = set()   # the modules whose docstring is on the page
    for title, intro, methods in GROUPS:
      lines += _heading(title, '-')
      if intro:
        lines += [intro, '']
      for name in methods:
        if name not in registered:
          continue
        lines += _heading(method_title(name), '~')
        module = getattr(mtl_optax, name).__module__
        if module in shown:
          lines += [f'Defined in ``{method_file(name)}`` (see above).', '']
        else:
          shown.add(module)
          lines += [f'Defined in ``{method_file(name)}``:', '',
                    f'.. automodule:: {module}', '   :no-index:', '']
        lines += [f'.. autofunction:: mtl_optax.{name}', '']
        weighting = WEIGHTINGS.get(name, ())
        if isinstance(weighting, str):
          lines += [f'**Weighting function.** {weighting}', '']
        else:
          plural = 's' if len(weighting) > 1 else ''
          lines += [f'**Weighting function{plural}.**', '']
          for target in weighting:
            lines += [f'.. autofunction:: {target}', '']
    node = nodes.section()
    node.document = self.state.document
    content = StringList()
    source = f'<mtl-methods in {self.env.docname}>'
    for i, line in enumerate(lines):
      content.append(line, source, i)
    nested_parse_with_titles(self.state, content, node)
    return node.children


class CliHelpDirective(SphinxDirective):
  """Shows ``python SCRIPT --help`` or ``python -m MODULE --help`` (run from
  the repository root)."""

  required_arguments = 1
  final_argument_whitespace = True
  has_content = False

  def run(self):
    script = self.arguments[0]
    env = dict(os.environ, JAX_PLATFORMS='cpu', COLUMNS='79')
    try:
      proc = subprocess.run([sys.executable, *script.split(), '--help'],
                            cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
      logger.warning('cli-help: %s --help failed: %s', script, exc,
                     location=self.get_location())
      return []
    if proc.returncode != 0:
      logger.warning('cli-help: %s --help exited %d: %s', script,
                     proc.returncode, proc.stderr[-2000:],
                     location=self.get_location())
      return []
    text = f'$ python {script} --help\n{proc.stdout.rstrip()}'
    block = nodes.literal_block(text, text)
    block['language'] = 'text'
    return [block]


PERCENT_SCRIPT = re.compile(r'^<!-- percent-script: (\S+) -->$', re.M)


def percent_to_markdown(text: str) -> str:
  """A jupytext percent-format script as Markdown (see the module doc)."""
  lines = text.splitlines()
  if lines and lines[0].strip() == '# ---':      # the jupytext header
    end = next(i for i in range(1, len(lines)) if lines[i].strip() == '# ---')
    lines = lines[end + 1:]
  cells: list[tuple[str, list[str]]] = []
  for line in lines:
    if line.startswith('# %%'):
      kind = 'markdown' if '[markdown]' in line else 'code'
      cells.append((kind, []))
    elif cells:
      cells[-1][1].append(line)
  out: list[str] = []
  for kind, body in cells:
    while body and not body[0].strip():
      body.pop(0)
    while body and not body[-1].strip():
      body.pop()
    if not body:
      continue
    if kind == 'markdown':
      out += [line[2:] if line.startswith('# ') else line.lstrip('#')
              for line in body]
    else:
      out += ['```python', *body, '```']
    out.append('')
  return '\n'.join(out)


def _expand_percent_scripts(app, docname, source):
  def replace(match):
    path = pathlib.Path(app.srcdir) / match.group(1)
    app.env.note_dependency(str(path))
    return percent_to_markdown(path.read_text())
  source[0] = PERCENT_SCRIPT.sub(replace, source[0])


def setup(app):
  app.add_directive('mtl-methods', MethodsDirective)
  app.add_directive('cli-help', CliHelpDirective)
  app.connect('source-read', _expand_percent_scripts)
  return {'parallel_read_safe': True, 'parallel_write_safe': True,
          'version': '1'}
