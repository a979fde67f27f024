#!/usr/bin/env bash
# Create (once) the separate virtual environment NVIDIA Triton Inference Server runs from.
#
# Triton 2.51 ships as a `tritonserver` binary, with its Python backend and a
# stub per Python version, inside the nvidia-pytriton 0.7.0 wheel. bench/serve.py
# starts that binary directly on a model repository (a Python-backend model.py
# and config.pbtxt) with this venv's interpreter for the stub. numpy must be
# below 2 in that interpreter: with numpy 2.x, Triton 2.51's Python backend
# answered with empty output tensors. Looked for at .cache/triton-venv
# (override with NEUROPOD_TRITON_VENV). Idempotent: does nothing when the venv
# already works. Not needed by the test suite, only by the benchmark.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEUROPOD_TRITON_VENV:-$repo/.cache/triton-venv}"
python="${PYTHON:-python3}"

check() {
    "$venv/bin/python" - <<'EOF'
import pathlib, sys
import numpy, pytriton
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__}: Triton 2.51's Python backend needs numpy<2"
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
assert (root / "bin" / "tritonserver").is_file(), f"no tritonserver binary under {root}"
stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
assert stub.is_file(), f"no Python backend stub for this interpreter: {stub}"
print("tritonserver", root / "bin" / "tritonserver")
EOF
}

if [ -x "$venv/bin/python" ] && check >/dev/null 2>&1; then
    echo "triton venv ready: $venv"
    exit 0
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2"
check
echo "triton venv ready: $venv"
