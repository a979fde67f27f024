"""The installed-package suite: runs against neuropod-python installed from its wheel, never against src/.

``scripts/installed.py`` makes each venv (one Python, exactly one set of extras),
installs the built wheel there and runs these tests with that venv's
interpreter, from a directory outside the checkout, with
``--confcutdir`` so the main suite's conftest is not read. What the venv holds
is stated by the runner, not guessed from what imports:

- ``NEUROPOD_INSTALLED_EXTRAS``: the extras installed (comma-separated, empty for the core alone);
- ``NEUROPOD_INSTALLED_OTHER_PYTHON``: an interpreter of another venv holding numpy and nothing of neuropod;
- ``NEUROPOD_INSTALLED_FIXTURES``: the original Neuropod's packages (tests/fixtures/legacy).
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import FrozenSet

import pytest

import neuropod

_SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
if _SITE not in Path(neuropod.__file__).resolve().parents:
    raise pytest.UsageError(f"neuropod comes from {neuropod.__file__}, not from this venv's {_SITE}: not an install")


def _required(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise pytest.UsageError(f"${name} is not set: run this suite through scripts/installed.py")
    return value


@pytest.fixture(scope="session")
def extras() -> FrozenSet[str]:
    return frozenset(name for name in _required("NEUROPOD_INSTALLED_EXTRAS").split(",") if name)


@pytest.fixture(scope="session")
def other_python() -> str:
    return _required("NEUROPOD_INSTALLED_OTHER_PYTHON")


@pytest.fixture(scope="session")
def legacy_fixtures() -> Path:
    return Path(_required("NEUROPOD_INSTALLED_FIXTURES"))


@pytest.fixture(scope="session")
def site_packages() -> Path:
    return _SITE
