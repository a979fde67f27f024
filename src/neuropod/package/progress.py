"""Progress of packaging and extraction steps, in bytes.

A step shows nothing unless it takes longer than ``NEUROPOD_PROGRESS_AFTER_S``
(1 second by default): most steps of most models stay quiet. A longer step
shows a rich bar on a terminal (when rich is installed), or else one log line
when it ends (``zip model.zip: done, 87.0 MiB in 3.5s, 25.0 MiB/s``), with a
line every ``LOG_EVERY_S`` while it runs only when it runs that long.
``NEUROPOD_PROGRESS`` chooses: ``auto`` (default), ``bar``, ``log`` or ``off``.

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

__all__ = ["ByteProgress", "progress_mode", "show_after_s", "format_bytes", "copy_file"]

LOGGER = logging.getLogger("neuropod.progress")
#: While a step runs, a log line this often (the line at its end is what most steps that show anything show).
LOG_EVERY_S = 10.0
_DEFAULT_AFTER_S = 1.0


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


def progress_mode() -> str:
    """``bar``, ``log`` or ``off``, from the environment and stderr."""
    mode = os.environ.get("NEUROPOD_PROGRESS", "auto").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return "off"
    if mode in ("bar", "log"):
        return mode if mode == "log" or _rich_available() else "log"
    return "bar" if sys.stderr.isatty() and _rich_available() else "log"


def show_after_s() -> float:
    """How long a step runs before it shows anything (``NEUROPOD_PROGRESS_AFTER_S``, 1 s by default)."""
    try:
        return max(0.0, float(os.environ.get("NEUROPOD_PROGRESS_AFTER_S", _DEFAULT_AFTER_S)))
    except ValueError:
        return _DEFAULT_AFTER_S


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401 - only checks it is there
    except ImportError:
        return False
    return True


class ByteProgress:
    """Counts the bytes of one step (``"zip model.zip"``) and shows them once the step has run a while.

    Use as a context manager; :meth:`advance` after each chunk.
    """

    def __init__(self, what: str, total: int, mode: Optional[str] = None) -> None:
        self.what = what
        self.total = max(0, int(total))
        self.done = 0
        self.mode = mode or progress_mode()
        self.start = time.perf_counter()
        self._show_at = self.start + show_after_s()
        self._next_log = self.start + LOG_EVERY_S
        self._bar: Any = None
        self._task: Any = None

    @property
    def streams(self) -> bool:
        """Whether the step is counted chunk by chunk (False: nothing can show, so a plain copy will do)."""
        return self.mode != "off"

    def advance(self, count: int) -> None:
        self.done += count
        if self.mode == "bar":
            if self._bar is None and time.perf_counter() >= self._show_at:
                self._start_bar()
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
        elif self.mode == "log":
            now = time.perf_counter()
            if now >= self._next_log:
                self._next_log = now + LOG_EVERY_S
                self._log(f"{self.what}: {self._figures()}")

    def _start_bar(self) -> None:
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
        self._task = self._bar.add_task(self.what, total=self.total)

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
        now = time.perf_counter()
        if self.mode == "bar" and self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "log" and now >= self._show_at:
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            state = "done" if finished else "stopped"
            self._log(f"{self.what}: {state}, {format_bytes(self.done)} in {elapsed:.1f}s, {format_bytes(rate)}/s")
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
        if not progress.streams:
            shutil.copy2(source, target)
            return
        with open(source, "rb") as src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(4 << 20), b""):
                dst.write(chunk)
                progress.advance(len(chunk))
    shutil.copystat(source, target)
