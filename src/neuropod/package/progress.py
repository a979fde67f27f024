"""Progress of packaging and extraction steps, in bytes.

A rich bar on a terminal (when rich is installed), plain log lines otherwise:
one when a step starts, one every few seconds, one when it ends. Steps
smaller than ``NEUROPOD_PROGRESS_MIN_BYTES`` (64 MiB by default) show
nothing, so small models stay quiet. ``NEUROPOD_PROGRESS`` chooses:
``auto`` (default), ``bar``, ``log`` or ``off``.

Log lines go to the ``neuropod.progress`` logger; when the application has
configured no logging at all they are written to stderr, so a script run
under a pipe or in CI still shows them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional, Union

__all__ = ["ByteProgress", "progress_mode", "format_bytes", "copy_file"]

LOGGER = logging.getLogger("neuropod.progress")
LOG_EVERY_S = 2.0
_DEFAULT_MIN_BYTES = 64 << 20


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


def progress_mode(total: int) -> str:
    """``bar``, ``log`` or ``off`` for a step of ``total`` bytes, from the environment and stderr."""
    mode = os.environ.get("NEUROPOD_PROGRESS", "auto").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return "off"
    try:
        min_bytes = int(os.environ.get("NEUROPOD_PROGRESS_MIN_BYTES", _DEFAULT_MIN_BYTES))
    except ValueError:
        min_bytes = _DEFAULT_MIN_BYTES
    if total < min_bytes:
        return "off"
    if mode in ("bar", "log"):
        return mode if mode == "log" or _rich_available() else "log"
    return "bar" if sys.stderr.isatty() and _rich_available() else "log"


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401 - only checks it is there
    except ImportError:
        return False
    return True


class ByteProgress:
    """Counts the bytes of one step (``"zip model.zip"``) and shows them.

    Use as a context manager; :meth:`advance` after each chunk.
    """

    def __init__(self, what: str, total: int, mode: Optional[str] = None) -> None:
        self.what = what
        self.total = max(0, int(total))
        self.done = 0
        self.mode = mode or progress_mode(self.total)
        self.start = time.perf_counter()
        self._next_log = self.start + LOG_EVERY_S
        self._bar: Any = None
        self._task: Any = None
        if self.mode == "bar":
            from rich.progress import (  # imported here: only a terminal needs it
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(what, total=self.total)
        elif self.mode == "log":
            self._log(f"{what}: {format_bytes(self.total)}")

    def advance(self, count: int) -> None:
        self.done += count
        if self.mode == "bar":
            self._bar.update(self._task, advance=count)
        elif self.mode == "log":
            now = time.perf_counter()
            if now >= self._next_log:
                self._next_log = now + LOG_EVERY_S
                self._log(f"{self.what}: {self._figures()}")

    def _figures(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{format_bytes(self.done)} of {format_bytes(self.total)}{percent}, {format_bytes(rate)}/s"

    @staticmethod
    def _log(line: str) -> None:
        if LOGGER.hasHandlers():
            LOGGER.info(line)
        else:  # nothing configured: the line still reaches the person waiting
            print(line, file=sys.stderr, flush=True)

    def close(self, finished: bool = True) -> None:
        if self.mode == "bar" and self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "log":
            elapsed = time.perf_counter() - self.start
            state = "done" if finished else "stopped"
            self._log(f"{self.what}: {state}, {format_bytes(self.done)} in {elapsed:.1f}s")
        self.mode = "off"

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close(finished=exc_type is None)


def copy_file(source: Union[str, os.PathLike[str]], target: Union[str, os.PathLike[str]]) -> None:
    """``shutil.copy2``, with progress in bytes for a large file."""
    import shutil

    size = os.path.getsize(source)
    with ByteProgress(f"copy {os.path.basename(os.fspath(source))}", size) as progress:
        if progress.mode == "off":
            shutil.copy2(source, target)
            return
        with open(source, "rb") as src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(4 << 20), b""):
                dst.write(chunk)
                progress.advance(len(chunk))
    shutil.copystat(source, target)
