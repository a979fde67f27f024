"""Framework version selection: run each package in an environment that satisfies it.

A package states the framework versions it works with
(``platform_version_semver``), a Python package its pinned
``requirements.lock`` (and optionally ``python_version``). When this process
does not satisfy them, ``load_neuropod`` runs the model in a worker whose
environment does: one the user registered (``NEUROPOD_ENVIRONMENTS``), one
built before, or one built now with uv into a cache keyed by content hash.
See docs/environments.md.

This module stays import-light (``import neuropod`` must not pull
``semantic_version`` into a worker): the machinery is imported on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..package import Package

__all__ = [
    "environment_for",
    "need_of",
    "find_environment",
    "ensure_environment",
    "environment_at",
    "Builder",
    "Environment",
    "Need",
    "envs_dir",
]

# Public names imported on first use (they need semantic_version and filelock).
_LAZY = {
    "need_of": ".need",
    "Need": ".need",
    "find_environment": ".select",
    "ensure_environment": ".select",
    "environment_at": ".select",
    "Builder": ".build",
    "Environment": ".store",
    "envs_dir": ".store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def environment_for(package: Package, environment: Optional[Any] = None) -> Optional[str]:
    """The interpreter ``package``'s worker must run under, or None to load it here.

    ``environment``: None (choose), ``"current"`` (this process or an error),
    or a venv folder / interpreter path (forced).
    """
    if environment is None and not _may_need_another(package):
        return None
    from .select import select_environment

    return select_environment(package, None if environment is None else os.fspath(environment))


def _may_need_another(package: Package) -> bool:
    """Cheap test: a package asking for nothing ('*', no requirements, no python_version) runs here."""
    if package.config.platform_version_semver.strip() not in ("*", "x", "X", ""):
        return True
    if package.config.platform == "torchscript":  # an old package may hold a file only old torch reads
        from .legacy import implied_range

        if implied_range(package, log=False) is not None:
            return True
    if package.requirements():
        return True
    try:
        return '"python_version"' in (package.root / "config.json").read_text()
    except OSError:
        return False
