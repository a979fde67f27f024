"""Shared by the environment tests.

Environments built by these tests live in one folder per checkout
(``.cache/envs``): CI starts from a fresh clone, so each CI run builds them
once and reuses them across its tests; a developer's later runs reuse them too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SHARED_ENVS = Path(os.environ.get("NEUROPOD_TEST_ENVS_DIR") or REPO / ".cache" / "envs")


def use_envs_dir(monkeypatch: pytest.MonkeyPatch, folder: Path = SHARED_ENVS) -> Path:
    """Build and find environments in ``folder`` only (no registered ones, no offline folder)."""
    monkeypatch.setenv("NEUROPOD_ENVS_DIR", str(folder))
    monkeypatch.delenv("NEUROPOD_ENVIRONMENTS", raising=False)
    monkeypatch.delenv("NEUROPOD_ENVS_FIND_LINKS", raising=False)
    return folder
