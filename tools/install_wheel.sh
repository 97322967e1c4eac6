#!/usr/bin/env bash
# Installs a prebuilt jax_fa3 wheel (with no argument: none) and copies this
# checkout's Python package over the installed one. The wheel brings the
# compiled extension, the Python files are the checkout's: a wheel built before
# a Python-only change stays usable (the kernels it carries must still match
# cpp/).
#
#   bash tools/install_wheel.sh [wheel]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then python3 -m pip install --no-deps --force-reinstall "$1"; fi
# From /tmp: in the checkout, the source folder would shadow the install.
site=$(cd /tmp && python3 -c "import jax_fa3, os; print(os.path.dirname(jax_fa3.__file__))")
cp -r jax_fa3/. "$site/"
