"""Progress of long work: packaging and extraction (bytes), evaluations (examples), environment builds (steps).

One set of rules for all of them. ``NEUROPOD_PROGRESS`` chooses the form:
``auto`` (the default: a rich bar when stderr is a terminal and rich is
installed, log lines otherwise), ``bar``, ``log`` or ``off``. Nothing shows
unless the work runs longer than ``NEUROPOD_PROGRESS_AFTER_S`` (1 second by
default): most steps of most models stay quiet. Off a terminal a long piece of
work logs a line every :data:`LOG_EVERY_S` while it runs and one when it ends
(``zip model.zip: done, 87 MiB in 3.5s, 25.0 MiB/s``).

Log lines go to the ``neuropod.progress`` logger (build steps to the logger
their caller names); when the application has configured no logging at all
they are written to stderr, so a script run under a pipe or in CI still shows
them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, Optional, TextIO, Union

from .units import format_bytes

__all__ = ["Progress", "ProgressMode", "StepProgress", "progress_mode", "show_after_s", "copy_file"]

LOGGER = logging.getLogger("neuropod.progress")
#: While work runs, a log line this often (the line at its end is what most work that shows anything shows).
LOG_EVERY_S = 10.0
_DEFAULT_AFTER_S = 1.0

#: What a caller may ask for: ``"auto"``, ``"bar"``, ``"log"``, ``"off"`` (or False).
ProgressMode = Union[bool, str]


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401 - only checks it is there
    except ImportError:
        return False
    return True


def progress_mode(requested: ProgressMode = "auto", stream: Optional[TextIO] = None) -> str:
    """``bar``, ``log`` or ``off``: what the caller asked for, else ``NEUROPOD_PROGRESS``, else the terminal's."""
    if requested is False or requested in ("off", None):
        return "off"
    mode = requested if requested in ("bar", "log") else os.environ.get("NEUROPOD_PROGRESS", "auto").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return "off"
    if mode == "log":
        return "log"
    if mode != "bar" and not getattr(stream or sys.stderr, "isatty", lambda: False)():
        return "log"
    return "bar" if _rich_available() else "log"


def show_after_s() -> float:
    """How long work runs before it shows anything (``NEUROPOD_PROGRESS_AFTER_S``, 1 s by default)."""
    try:
        return max(0.0, float(os.environ.get("NEUROPOD_PROGRESS_AFTER_S", _DEFAULT_AFTER_S)))
    except ValueError:
        return _DEFAULT_AFTER_S


def _emit(line: str, logger: logging.Logger, stream: Optional[TextIO]) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)
    elif logger.hasHandlers():
        logger.info(line)
    else:  # nothing configured: the line still reaches the person waiting
        print(line, file=sys.stderr, flush=True)


class Progress:
    """Counts the work of one task (``"zip model.zip"``, ``"evaluate adder"``) and shows it once it has run a while.

    Use as a context manager; :meth:`advance` after each chunk.

    Args:
        what: the task's name.
        total: how much work there is, when known.
        unit: what is counted: ``"bytes"`` (shown as KiB, MiB ...) or a noun (``"examples"``).
        mode: ``"auto"``, ``"bar"``, ``"log"``, or ``"off"`` / False (see :func:`progress_mode`).
        stream: where log lines and the bar go; by default log lines go to the
            ``neuropod.progress`` logger and the bar to stderr.
    """

    def __init__(
        self,
        what: str,
        total: Optional[int] = None,
        unit: str = "bytes",
        mode: ProgressMode = "auto",
        stream: Optional[TextIO] = None,
    ) -> None:
        self.what = what
        self.total = None if total is None else max(0, int(total))
        self.unit = unit
        self.done = 0
        self.stream = stream
        self.mode = progress_mode(mode, stream)
        self.start = time.perf_counter()
        self._show_at = self.start + show_after_s()
        self._next_log = self.start + LOG_EVERY_S
        self._bar: Any = None
        self._task: Any = None

    @property
    def streams(self) -> bool:
        """Whether the work is counted chunk by chunk (False: nothing can show, so a plain copy will do)."""
        return self.mode != "off"

    def advance(self, count: int) -> None:
        self.done += count
        if self.mode == "bar":
            if self._bar is None and time.perf_counter() >= self._show_at:
                self._start_bar()
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, rate=self._rate_text())
        elif self.mode == "log":
            now = time.perf_counter()
            if now >= self._next_log:
                self._next_log = now + LOG_EVERY_S
                _emit(f"{self.what}: {self._figures()}", LOGGER, self.stream)

    def _amount(self, count: float) -> str:
        return format_bytes(count) if self.unit == "bytes" else f"{count:.0f} {self.unit}"

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def _rate_text(self) -> str:
        rate = self._rate()
        return f"{format_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:,.0f} {self.unit}/s"

    def _figures(self) -> str:
        rate = self._rate()
        if self.total is None:
            return f"{self._amount(self.done)}, {self._rate_text()}"
        if self.unit == "bytes":
            done = f"{format_bytes(self.done)} of {format_bytes(self.total)}"
        else:
            done = f"{self.done}/{self.total} {self.unit}"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {max(0.0, (self.total - self.done) / rate):.0f}s" if rate > 0 else ""
        return f"{done}{percent}, {self._rate_text()}{eta}"

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (  # imported here: only a terminal needs it
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        count = DownloadColumn(binary_units=True) if self.unit == "bytes" else MofNCompleteColumn()
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            count,
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream or sys.stderr),  # never stdout: it may carry --json output
        )
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=self.total, rate="")

    def close(self, finished: bool = True) -> None:
        """Stop showing progress; off a terminal, a last line says how it ended (if the work ran long enough)."""
        now = time.perf_counter()
        if self.mode == "bar" and self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "log" and now >= self._show_at:
            state = "done" if finished else "stopped"
            line = f"{self.what}: {state}, {self._amount(self.done)} in {now - self.start:.1f}s, {self._rate_text()}"
            _emit(line, LOGGER, self.stream)
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close(finished=exc_type is None)


class StepProgress:
    """Work made of named steps and downloads (an environment build): a spinner and a bar of bytes on a
    terminal, one log line per step otherwise, nothing when progress is off.

    Args:
        title: what is being done (``"environment 3f2a..."``).
        logger: where the step lines go.
        mode: as for :class:`Progress`.
    """

    def __init__(self, title: str, logger: logging.Logger = LOGGER, mode: ProgressMode = "auto") -> None:
        self.title = title
        self.logger = logger
        self.mode = progress_mode(mode)
        self._last_step = ""
        self._display: Any = None
        self._step_task: Any = None
        self._downloads: Dict[str, int] = {}
        self._download_task: Any = None
        if self.mode == "bar":
            import rich.progress as rp

            self._display = rp.Progress(
                rp.SpinnerColumn(),
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.DownloadColumn(binary_units=True),
                rp.TimeElapsedColumn(),
            )
            self._display.start()
            self._step_task = self._display.add_task(f"{title}: starting", total=None)

    def step(self, name: str, detail: str = "") -> None:
        text = name + (f" ({detail})" if detail else "")
        if self._display is not None:
            self._display.update(self._step_task, description=f"{self.title}: {text}")
        elif self.mode == "log" and (name != self._last_step or detail):  # one line per step, however announced
            self.logger.info("%s: %s", self.title, text)
        self._last_step = name

    def download(self, name: str, total_bytes: int) -> None:
        if self._display is None:
            if self.mode == "log":
                self.logger.info("%s: downloading %s (%s)", self.title, name, format_bytes(total_bytes))
            return
        self._downloads[name] = total_bytes
        total = sum(self._downloads.values())
        if self._download_task is None:
            self._download_task = self._display.add_task("downloading", total=total)
        else:
            self._display.update(self._download_task, total=total)

    def downloaded(self, name: str) -> None:
        if self._display is not None and self._download_task is not None and name in self._downloads:
            self._display.advance(self._download_task, self._downloads.pop(name))

    def close(self, outcome: str) -> None:
        if self._display is not None:
            self._display.update(self._step_task, description=f"{self.title}: {outcome}", total=1, completed=1)
            self._display.stop()
            self._display = None
        elif self.mode == "log":
            self.logger.info("%s: %s", self.title, outcome)


def copy_file(source: Union[str, os.PathLike[str]], target: Union[str, os.PathLike[str]]) -> None:
    """``shutil.copy2``, with progress in bytes for a large file."""
    import shutil

    size = os.path.getsize(source)
    with Progress(f"copy {os.path.basename(os.fspath(source))}", size) as progress:
        if not progress.streams:
            shutil.copy2(source, target)
            return
        with open(source, "rb") as src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(4 << 20), b""):
                dst.write(chunk)
                progress.advance(len(chunk))
    shutil.copystat(source, target)
