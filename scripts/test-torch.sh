#!/usr/bin/env bash
# Run the test suite against another torch version, in a virtual environment of its own.
#
#   scripts/test-torch.sh 2.11.0              # all tests
#   scripts/test-torch.sh 2.11.0 -x tests/test_backend_gradients.py
#
# The venv lives in ${GRAFS_TORCH_VENVS:-~/.cache/grafs-torch-venvs}/torch-VERSION and is reused.
# Note: from the package index most torch versions are CUDA builds (several GB with their
# nvidia-* packages); they run on a CPU-only machine all the same.
#
# Against a torch that is already installed (e.g. on a GPU machine that ships torch 2.11 and
# where grafs is not installed): from the repository root,
#   PYTHONPATH=. python -m pytest -q
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 TORCH_VERSION [pytest args...]" >&2
  exit 2
fi
version="$1"; shift
cd "$(dirname "$0")/.."
venv="${GRAFS_TORCH_VENVS:-$HOME/.cache/grafs-torch-venvs}/torch-$version"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -m pip install --quiet "torch==$version" -e ".[all]" "torch==$version"
"$venv/bin/python" -c "import torch; print('torch', torch.__version__)"
export GRAFS_CACHE_DIR="${GRAFS_CACHE_DIR:-$(mktemp -d)}"
exec "$venv/bin/python" -m pytest -q "$@"
