"""Optional features and the extra of ``neuropod-python`` that brings each.

``import neuropod`` needs numpy and the standard library only. A feature that
needs more imports it where it is used, through :func:`require`, so that a
user without the extra gets one line naming the extra to install (a
:class:`~neuropod.errors.MissingExtraError`, exit code 2 from the CLI) instead
of a traceback from deep inside the feature.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["DISTRIBUTION", "install_command", "require"]

#: The name on the package index; the import name and the command stay ``neuropod``.
DISTRIBUTION = "neuropod-python"


def install_command(extra: str) -> str:
    """``pip install 'neuropod-python[extra]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise a one-line error saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the {extra!r} extra ({module} is missing): {install_command(extra)}"
        ) from exc
