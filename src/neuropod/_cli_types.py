"""Command-line option types for sizes and durations, read by :mod:`neuropod.units` like every other place.

Internal: ``--older-than 30d``, ``--max-size 1GiB``, ``--grace 90s`` mean in a
command what ``"30d"``, ``"1GiB"``, ``"90s"`` mean in an option or variable;
a bare number is seconds or bytes everywhere.
"""

from __future__ import annotations

from typing import Any, Optional

import click

from . import units
from ._cli_errors import UserError
from .errors import OptionError

__all__ = ["Duration", "ByteSize"]


def _flag(param: Optional[click.Parameter]) -> str:
    return max(param.opts, key=len) if param is not None and param.opts else "value"


class Duration(click.ParamType):
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w``; ``positive`` refuses 0."""

    name = "duration"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        what = _flag(param)
        try:
            seconds = units.parse_duration(what, value)
        except OptionError as exc:
            raise UserError(str(exc)) from None
        if self.positive and seconds <= 0:
            raise UserError(f"{what}: expected a duration above 0, got {value!r}")
        return seconds


class ByteSize(click.ParamType):
    """Bytes from ``4096``, ``512MiB``, ``512MB``, ``1G``, ``1GiB`` (powers of 1024); at least ``minimum``."""

    name = "size"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        try:
            return units.parse_bytes(_flag(param), value, self.minimum)
        except OptionError as exc:
            raise UserError(str(exc)) from None
