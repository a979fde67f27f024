#!/usr/bin/env bash
# One entry point for every developer task; each sets the environment up first.
#   bash scripts/dev.sh tour    set up, then run the demo tour (examples/tour.py)
#   bash scripts/dev.sh test    set up, then lint (ruff), type-check (mypy) and run every test
#   bash scripts/dev.sh setup   only set up .venv (idempotent; fast when nothing changed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEUROPOD_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
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
    "$PY" -m pip install -q -e ".[all,dev]"
    echo "$want" > "$stamp"
  fi
  if [ -f scripts/mlserver-venv.sh ]; then bash scripts/mlserver-venv.sh; fi
}

find_python39() {
  local candidate
  for candidate in python3.9 "$(pyenv root 2>/dev/null)"/versions/3.9*/bin/python3.9; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

# The library supports Python 3.9 (old-framework workers run there): the
# framework-free tests run under 3.9 with numpy 1.x as well.
run_python39_tests() {
  local py39
  py39="$(find_python39)"
  if [ -z "$py39" ]; then
    echo "note: no Python 3.9 found; skipping the Python 3.9 run" >&2
    return
  fi
  if [ ! -x .venv39/bin/python ]; then
    "$py39" -m venv .venv39
    .venv39/bin/python -m pip install -q "numpy<2" click pytest
  fi
  .venv39/bin/python -m pip install -q --no-deps -e .
  # Frameworks are not installed for 3.9: their tests skip here and run in the main venv.
  NEUROPOD_REQUIRE_FRAMEWORKS=0 .venv39/bin/python -m pytest -q -p no:cacheprovider tests/unit
}

run_tests() {
  export NEUROPOD_REQUIRE_FRAMEWORKS=1  # every framework is installed: a skip for a missing one is a failure
  "$VENV/bin/ruff" check src tests bench examples
  "$VENV/bin/mypy"
  if [ $# -eq 0 ]; then run_python39_tests; fi
  # Out-of-process workers are also tested under that Python 3.9 + numpy 1.x interpreter.
  if [ -x .venv39/bin/python ]; then export NEUROPOD_TEST_OTHER_PYTHON="$PWD/.venv39/bin/python"; fi
  "$PY" -m pytest "$@"
}

case "${1:-}" in
  setup) setup ;;
  tour) setup; "$PY" examples/tour.py ;;
  test) setup; shift; run_tests "$@" ;;
  *) echo "usage: bash scripts/dev.sh {tour|test|setup} [pytest args]" >&2; exit 2 ;;
esac
