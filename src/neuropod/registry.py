"""The original's ``neuropod.registry``: where its native backend libraries were registered.

The original loaded each framework's backend from a native shared library
(``register_backend(platform, version, so_path)``). There are no native
backends here: each backend is a Python class, found by platform name in
:data:`neuropod.backends.BUILTIN_BACKENDS` or in the ``neuropod.backends``
entry-point group, and a framework version other than the installed one runs
in a worker built for it (``neuropod envs``).
"""

from __future__ import annotations

from typing import Any

from .errors import BackendNotFoundError

__all__ = ["register_backend"]


def register_backend(platform: str, version: str, so_path: Any) -> None:
    """Refused: there are no native backend libraries to register.

    Raises:
        BackendNotFoundError: naming what replaces it.
    """
    raise BackendNotFoundError(
        f"register_backend({platform!r}, {version!r}, {str(so_path)!r}): native backend libraries do not exist "
        "here. A backend is a Python class: publish it in the 'neuropod.backends' entry-point group "
        "(name = platform, value = 'module:Class'); a package's platform_version_semver picks the framework "
        "version, built on demand (see 'neuropod envs')"
    )
