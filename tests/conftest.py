"""Shared test fixtures.

Framework tests call :func:`require` instead of ``pytest.importorskip``, and
tests that need a tool (``g++``) or an interpreter call :func:`require_command`
or :func:`missing`: each skips when the piece is absent, except where
``NEUROPOD_REQUIRE_FRAMEWORKS=1`` (set by CI, whose setup installs every piece)
turns the skip into a failure.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent

# tests/installed runs against the built wheel in its own venvs (scripts/installed.py), never in this suite.
collect_ignore = ["installed"]
#: Packages written by the original Neuropod, kept in the repository (a clone has them).
LEGACY_FIXTURES = REPO / "tests" / "fixtures" / "legacy"


def missing(what: str) -> NoReturn:
    """Skip because ``what`` is missing here; fail instead under NEUROPOD_REQUIRE_FRAMEWORKS=1."""
    if os.environ.get("NEUROPOD_REQUIRE_FRAMEWORKS") == "1":
        pytest.fail(f"{what} (NEUROPOD_REQUIRE_FRAMEWORKS=1: scripts/dev.sh setup provides it)")
    pytest.skip(what)


def require(module: str) -> Any:
    """Import ``module`` or skip (fail under NEUROPOD_REQUIRE_FRAMEWORKS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{module} cannot be imported: {exc}")


def require_command(name: str) -> str:
    """The path of command ``name`` or skip (fail under NEUROPOD_REQUIRE_FRAMEWORKS=1)."""
    path = shutil.which(name)
    if path is None:
        missing(f"the command {name!r} is not installed")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test extracts zips into its own cache, never the user's."""
    monkeypatch.setenv("NEUROPOD_CACHE_DIR", str(tmp_path_factory.mktemp("neuropod-cache")))


@pytest.fixture
def legacy_fixtures() -> Path:
    return LEGACY_FIXTURES


ADDITION_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["batch", None]},
    {"name": "y", "dtype": "float32", "shape": ["batch", None]},
]
ADDITION_OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", None]}]
