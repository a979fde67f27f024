#!/usr/bin/env bash
# Create (once) the separate virtual environment MLServer runs from.
#
# MLServer 1.7.1 needs protobuf<7 and uvloop<0.22 and conflicts with Ray, so it
# cannot live in the project's own environment. The serving tests and
# bench/serve.py look for it at .cache/mlserver-venv (override with
# NEUROPOD_MLSERVER_VENV). Idempotent: does nothing when the venv already works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEUROPOD_MLSERVER_VENV:-$repo/.cache/mlserver-venv}"
python="${PYTHON:-python3}"

if [ -x "$venv/bin/mlserver" ] && "$venv/bin/python" -c "import mlserver" 2>/dev/null; then
    echo "mlserver venv ready: $venv"
    exit 0
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "mlserver==1.7.1" "protobuf<7" "uvloop<0.22"
"$venv/bin/python" -c "import mlserver; print('mlserver', mlserver.__version__)"
echo "mlserver venv ready: $venv"
