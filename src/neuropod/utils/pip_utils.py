"""The original's ``neuropod.utils.pip_utils``: a requirements lockfile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..packagers._pipeline import normalize_requirements

__all__ = ["compile_requirements"]

PathLike = Union[str, "os.PathLike[str]"]


def compile_requirements(requirements: PathLike, lockfile: PathLike) -> None:
    """Write the lockfile of a requirements file: its ``name==version`` lines, sorted.

    The original ran ``pip-compile`` (which resolves ranges and adds
    dependencies). Packages here hold pinned requirements only, resolved by
    the environment builder when the package is loaded, so every line must be
    pinned already.

    Raises:
        PackageError: a requirement is not pinned (``name==version``).
    """
    pinned = normalize_requirements(Path(requirements).read_text(encoding="utf-8"))
    Path(lockfile).write_text("".join(line + "\n" for line in pinned), encoding="utf-8")
