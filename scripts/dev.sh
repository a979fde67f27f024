#!/usr/bin/env bash
# One entry point for every developer task; each sets the environment up first.
#   bash scripts/dev.sh tour       set up .venv (Python packages only), then run the demo tour (examples/tour.py)
#   bash scripts/dev.sh test       set up everything the tests need (OS packages too), then lint (ruff),
#                                  type-check (mypy), run every test, and the installed-package suite
#   bash scripts/dev.sh installed  the installed-package suite alone: the wheel in fresh venvs (scripts/installed.py)
#   bash scripts/dev.sh matrix     the compatibility matrix: five+ versions of each framework through version
#                                  selection (scripts/matrix.py); rewrites docs/compatibility.md
#   bash scripts/dev.sh setup      only set up everything (idempotent; fast when nothing changed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEUROPOD_VENV:-.venv}"
PY="$VENV/bin/python"

# OS packages the tests need, as "command:package" (CI runs as root): installed when the command is missing.
# chromium: the headless browser the HTML-report screenshot test (tests/tools) opens reports in.
# bwrap, prlimit: the isolation="sandbox" workers (tests/isolation); podman: the isolation="container" ones.
# h2load (with nghttp): raw HTTP/2 clients of the gRPC server (tests/serving), bench/serve.py's native load generator.
OS_PACKAGES=("g++:g++" "openssl:openssl" "curl:curl" "chromium:chromium" "bwrap:bubblewrap" "prlimit:util-linux"
  "podman:podman" "h2load:nghttp2-client")

install_os_packages() {
  local missing=() entry
  for entry in "${OS_PACKAGES[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

# crun refuses the hybrid cgroup layout of these VMs while a controller (hugetlb) sits on the v2 tree
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"): mount those as v1.
prepare_podman() {
  local unified=/sys/fs/cgroup/unified controller
  [ "$(id -u)" = 0 ] && [ -f "$unified/cgroup.controllers" ] || return 0
  for controller in $(cat "$unified/cgroup.controllers"); do
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" || true
  done
}

# .venv: the project (editable) with every extra and the developer tools; what the tour needs.
setup_venv() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
  # Re-install only when the dependency list changed since the last setup.
  local stamp="$VENV/.neuropod-setup" want
  want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # Pinned: an unpinned torch would pull a multi-GB CUDA build; 2.13.0 is the CPU build.
    "$PY" -m pip install -q "torch==2.13.0"
    # The distribution was called "neuropod" before it became neuropod-python: one install of the package only.
    "$PY" -m pip uninstall -q -y neuropod 2>/dev/null || true
    "$PY" -m pip install -q -e ".[all,dev]"
    echo "$want" > "$stamp"
  fi
}

# Everything the tests need: OS packages (a browser, bubblewrap, podman, h2load), MLServer's venv, Python 3.9.
setup() {
  install_os_packages
  prepare_podman
  setup_venv
  if [ -f scripts/mlserver-venv.sh ]; then bash scripts/mlserver-venv.sh; fi
  setup_python39
}

find_python39() {
  local candidate
  for candidate in python3.9 "$(pyenv root 2>/dev/null)"/versions/3.9*/bin/python3.9; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  # None on this machine (a fresh CI runner): uv installs a standalone CPython 3.9
  # (set UV_PYTHON_INSTALL_MIRROR where its default download site is out of reach).
  "$VENV/bin/uv" python install 3.9 >&2
  "$VENV/bin/uv" python find --managed-python 3.9
}

# The library supports Python 3.9 (old-framework workers run there): .venv39 holds a
# framework-free 3.9 with numpy 1.x, for the unit tests and as a worker interpreter.
setup_python39() {
  if [ ! -x .venv39/bin/python ]; then
    local py39
    py39="$(find_python39)"
    if [ -z "$py39" ]; then
      echo "error: no Python 3.9, and uv could not install one" >&2
      exit 1
    fi
    "$py39" -m venv .venv39
  fi
  local stamp=.venv39/.neuropod-setup want
  want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # The core dependencies only (no extra, no framework), with numpy 1.x.
    .venv39/bin/python -m pip uninstall -q -y neuropod 2>/dev/null || true
    .venv39/bin/python -m pip install -q "numpy<2" pytest -e .
    echo "$want" > "$stamp"
  fi
}

# The main process on every supported Python: tests/unit on 3.9-3.13 (no framework there: their tests run in
# the main venv), and the ONNX, TensorFlow and JAX suites on the oldest and newest Python each supports.
run_other_python_tests() {
  "$PY" scripts/pythons.py
}

# Environments of framework version selection live in the checkout's .cache/ (ignored): a CI run,
# on a fresh clone, builds each once and every test after it reuses it. uv's download cache sits
# beside them (one disk, so environments hard-link their files from it).
use_checkout_envs() {
  export NEUROPOD_ENVS_DIR="${NEUROPOD_ENVS_DIR:-$PWD/.cache/envs}" UV_CACHE_DIR="${UV_CACHE_DIR:-$PWD/.cache/uv}"
  export NEUROPOD_TEST_ENVS_DIR="$NEUROPOD_ENVS_DIR"
}

# The one big build (Python 3.9 + torch 1.10.2, an ~840 MB wheel) for the legacy TorchScript test,
# up front with one log line per step; quick when it already exists.
build_test_envs() {
  "$VENV/bin/neuropod" envs build --platform torchscript --range 1.10.2
}

run_tests() {
  export NEUROPOD_REQUIRE_FRAMEWORKS=1  # every framework is installed: a skip for a missing one is a failure
  "$VENV/bin/ruff" check src tests bench examples scripts
  "$VENV/bin/ruff" format --check src tests bench examples scripts
  "$VENV/bin/mypy"
  "$VENV/bin/lint-imports"   # the layers of docs/architecture.md (pyproject.toml [tool.importlinter])
  use_checkout_envs
  if [ $# -eq 0 ]; then run_other_python_tests; build_test_envs; fi
  # Out-of-process workers are also tested under that Python 3.9 + numpy 1.x interpreter.
  export NEUROPOD_TEST_OTHER_PYTHON="$PWD/.venv39/bin/python"
  "$PY" -m pytest "$@"
  if [ $# -eq 0 ]; then run_installed; fi
}

# The project as users get it: the built wheel (not -e) in fresh venvs, Python 3.9-3.13, one extra at a time.
run_installed() {
  use_checkout_envs
  "$PY" scripts/installed.py "$@"
}

case "${1:-}" in
  setup) setup ;;
  tour) setup_venv; use_checkout_envs; "$PY" examples/tour.py ;;
  test) setup; shift; run_tests "$@" ;;
  installed) setup; shift; run_installed "$@" ;;
  matrix) setup; use_checkout_envs; shift; "$PY" scripts/matrix.py "$@" ;;
  *) echo "usage: bash scripts/dev.sh {tour|test|installed|matrix|setup} [args]" >&2; exit 2 ;;
esac
