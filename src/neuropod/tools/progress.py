"""Progress of long tool runs: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO, Union

__all__ = ["Progress"]

ProgressMode = Union[bool, str]
LOG_EVERY_S = 5.0


class Progress:
    """Counts work done; shows it with rate and ETA.

    Args:
        what: the task's name (``"evaluate addition"``).
        total: how much work there is, when known.
        mode: ``"auto"`` (a bar when stderr is a terminal, log lines otherwise),
            ``"bar"``, ``"log"``, or False for nothing.
        unit: what is counted.
        stream: where log lines go (default stderr).
    """

    def __init__(
        self,
        what: str,
        total: Optional[int] = None,
        mode: ProgressMode = "auto",
        unit: str = "examples",
        stream: Optional[TextIO] = None,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode = mode or "off"
        self.start = time.perf_counter()
        self._next_log = self.start + LOG_EVERY_S
        self._bar: Any = None
        self._task: Any = None
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (  # imported here: only a terminal needs it
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
                console=Console(file=self.stream),  # stderr by default: stdout may carry --json output
            )
            self._bar.start()
            self._task = self._bar.add_task(what, total=total, rate="")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if self.mode == "bar":
            self._bar.update(self._task, advance=count, rate=f"{self.rate():,.0f} {self.unit}/s")
        elif self.mode == "log":
            now = time.perf_counter()
            if now >= self._next_log:
                self._next_log = now + LOG_EVERY_S
                self._log()

    def _log(self, final: bool = False) -> None:
        rate = self.rate()
        of_total = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if not final and self.total is not None and rate > 0:
            eta = f", ETA {max(0.0, (self.total - self.done) / rate):.0f}s"
        state = "done: " if final else ""
        print(
            f"{self.what}: {state}{self.done}{of_total} {self.unit} ({rate:,.0f} {self.unit}/s{eta})", file=self.stream
        )

    def close(self, finished: bool = True) -> None:
        """Stop showing progress; a log line says the work is done when it ``finished``."""
        if self.mode == "bar" and self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.mode == "log" and finished:
            self._log(final=True)
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close(finished=exc_type is None)
