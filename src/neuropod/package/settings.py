"""Where neuropod keeps its caches and how much an extraction may hold: settings read from the environment.

Kept apart from :mod:`.archive` (which extracts), :mod:`.cache` (which lists and trims) and
:mod:`.manifest` (which checks sizes before hashing), which all read them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

from ..errors import PackageError

__all__ = ["cache_root", "packages_cache_dir", "extraction_limits", "RATIO_FLOOR_BYTES"]

_DEFAULT_MAX_EXTRACTED_BYTES = 256 << 30
_DEFAULT_MAX_RATIO = 200
# Below this total, a high ratio is harmless (small text files deflate very well).
RATIO_FLOOR_BYTES = 16 << 20


def cache_root() -> Path:
    """Neuropod's cache: ``$NEUROPOD_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuropod``, else ``~/.cache/neuropod``."""
    base = os.environ.get("NEUROPOD_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "neuropod"


def packages_cache_dir() -> Path:
    """Where extracted zips live, one directory per zip content hash."""
    return cache_root() / "packages"


def extraction_limits() -> Tuple[int, float]:
    """``(max total bytes, max expansion ratio)`` of an extraction.

    From ``NEUROPOD_MAX_EXTRACTED_BYTES`` (default 256 GiB) and
    ``NEUROPOD_MAX_EXTRACTION_RATIO`` (default 200; archives under 16 MiB
    extracted are not held to it).
    """
    return (
        int(_env_number("NEUROPOD_MAX_EXTRACTED_BYTES", _DEFAULT_MAX_EXTRACTED_BYTES, int)),
        _env_number("NEUROPOD_MAX_EXTRACTION_RATIO", _DEFAULT_MAX_RATIO, float),
    )


def _env_number(name: str, default: float, kind: type) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise PackageError(f"${name}: expected a number, got {text!r}") from None
    if value <= 0:
        raise PackageError(f"${name}: expected a positive number, got {text!r}")
    return value  # type: ignore[no-any-return]
