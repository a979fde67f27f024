"""Sizes and durations, read and written the same way by every option, variable and command.

Sizes: an int of bytes, or a number with a unit: ``512MiB``, ``1GiB``, ``2G``,
``512MB``, ``64k``. Every unit is a power of 1024 (``MB`` reads as ``MiB``,
as docker and ``ulimit`` read it); a bare number is bytes.

Durations: a number with a unit: ``90s``, ``15m``, ``12h``, ``30d``, ``2w``;
a bare number is seconds, as every other duration neuropod takes (``--grace``,
``--duration``, ``timeout=``) is.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import OptionError

__all__ = ["parse_bytes", "parse_duration", "format_bytes", "format_age"]

_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_bytes(what: str, value: Any, minimum: int = 1) -> int:
    """Bytes in ``value``: an int, or a string such as ``"512MiB"``, ``"1G"`` or ``"4096"``; at least ``minimum``.

    Raises:
        OptionError: naming ``what`` (an option, a variable) and the value.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise OptionError(f"{what}: expected bytes as an int or a size such as 512MiB or 1GiB, got {value!r}")
        size = int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    if size < minimum:
        wanted = "a positive size" if minimum == 1 else f"a size of at least {minimum} bytes"
        raise OptionError(f"{what}: expected {wanted}, got {value!r}")
    return size


def parse_duration(what: str, value: Any) -> float:
    """Seconds in ``value``: a number (seconds), or a string such as ``"90"``, ``"90s"``, ``"12h"``, ``"30d"``.

    Raises:
        OptionError: naming ``what`` and the value.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise OptionError(f"{what}: expected a duration such as 30d, 12h, 15m or 90s (bare: seconds), got {value!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def format_bytes(size: float) -> str:
    """``"512 B"``, ``"2 GiB"`` (a whole number of a unit), ``"1.5 MiB"`` (one decimal otherwise)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(size) >= scale:
            count = size / scale
            return f"{count:.0f} {unit}" if count == int(count) else f"{count:.1f} {unit}"
    return f"{size:.0f} B"


def format_age(seconds: float) -> str:
    """How long ago, in the unit that reads best: ``"45 s ago"``, ``"3 h ago"``, ``"12 days ago"``."""
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
