"""Shared test fixtures.

Framework tests call :func:`require` instead of ``pytest.importorskip``: it
skips when the framework is absent, except where ``NEUROPOD_REQUIRE_FRAMEWORKS=1``
(set by CI, which installs every framework) turns the skip into a failure.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LEGACY_FIXTURES = REPO.parent / "shared" / "fixtures" / "legacy"
if not LEGACY_FIXTURES.exists():  # a checkout that carries shared/ inside it
    LEGACY_FIXTURES = REPO / "shared" / "fixtures" / "legacy"


def require(module: str) -> Any:
    """Import ``module`` or skip (fail under NEUROPOD_REQUIRE_FRAMEWORKS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("NEUROPOD_REQUIRE_FRAMEWORKS") == "1":
            pytest.fail(f"{module} is required here (NEUROPOD_REQUIRE_FRAMEWORKS=1) but cannot be imported: {exc}")
        pytest.skip(f"{module} is not installed")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test extracts zips into its own cache, never the user's."""
    monkeypatch.setenv("NEUROPOD_CACHE_DIR", str(tmp_path_factory.mktemp("neuropod-cache")))


@pytest.fixture
def legacy_fixtures() -> Path:
    if not LEGACY_FIXTURES.exists():
        pytest.skip("shared/fixtures/legacy is not next to this checkout")
    return LEGACY_FIXTURES


ADDITION_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["batch", None]},
    {"name": "y", "dtype": "float32", "shape": ["batch", None]},
]
ADDITION_OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", None]}]
