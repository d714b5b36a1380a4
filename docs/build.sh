#!/usr/bin/env bash
# Builds the documentation with warnings as errors:
#   docs/build.sh            -> docs/_build/html/index.html
# Needs the package with the extras its pages import (`.[all,docs]`).
# PYTHON overrides the interpreter (default: the repository's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m sphinx -W --keep-going -b html docs docs/_build/html "$@"
