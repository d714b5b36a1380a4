"""Sphinx configuration of the mtl_optax documentation.

Build (warnings are errors): ``docs/build.sh``, i.e.
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / '_ext'))

import mtl_optax  # noqa: E402

project = 'mtl_optax'
author = 'the mtl_optax authors'
copyright = 'the mtl_optax authors'
release = mtl_optax.__version__
version = release

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'myst_parser',
    'mtl_docs',            # docs/_ext/mtl_docs.py: methods page, CLI help
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'examples', '.gitignore', 'build.sh']

# Google-style docstrings. Attributes sections as fields (:ivar:), so that a
# NamedTuple's documented fields are not described twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
autodoc_default_options = {'show-inheritance': False}

myst_enable_extensions = ['colon_fence']
myst_heading_anchors = 3

# The benchmark tables in benchmarks/results/ are generated Markdown whose
# headings may skip a level (H1 then H3); that is not an error of the docs.
suppress_warnings = ['myst.header']

html_theme = 'furo'
html_title = f'mtl_optax {release}'
html_static_path = []
pygments_style = 'sphinx'
