"""Build progress: a rich display on a terminal, one log line per step otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

__all__ = ["Progress", "make_progress"]

logger = logging.getLogger("neuropod.envs")


class Progress:
    """One log line per step (the default when stderr is not a terminal)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._last_step = ""

    def step(self, name: str, detail: str = "") -> None:
        if name == self._last_step and not detail:
            return  # one line per step, however many tool lines announce it
        self._last_step = name
        logger.info("%s: %s%s", self.title, name, f" ({detail})" if detail else "")

    def download(self, name: str, total_bytes: int) -> None:
        logger.info("%s: downloading %s (%.1f MiB)", self.title, name, total_bytes / 2**20)

    def downloaded(self, name: str) -> None:
        pass

    def close(self, outcome: str) -> None:
        logger.info("%s: %s", self.title, outcome)


class _RichProgress(Progress):
    """Steps as a spinner and downloads as a bar of bytes."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        import rich.progress as rp

        self._display = rp.Progress(
            rp.SpinnerColumn(),
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.DownloadColumn(),
            rp.TimeElapsedColumn(),
            transient=False,
        )
        self._display.start()
        self._step = self._display.add_task(f"{title}: starting", total=None)
        self._downloads: dict = {}
        self._download_task: Optional[Any] = None

    def step(self, name: str, detail: str = "") -> None:
        self._display.update(self._step, description=f"{self.title}: {name}" + (f" ({detail})" if detail else ""))

    def download(self, name: str, total_bytes: int) -> None:
        self._downloads[name] = total_bytes
        total = sum(self._downloads.values())
        if self._download_task is None:
            self._download_task = self._display.add_task("downloading", total=total)
        else:
            self._display.update(self._download_task, total=total)

    def downloaded(self, name: str) -> None:
        if self._download_task is not None and name in self._downloads:
            self._display.advance(self._download_task, self._downloads.pop(name))

    def close(self, outcome: str) -> None:
        self._display.update(self._step, description=f"{self.title}: {outcome}", total=1, completed=1)
        self._display.stop()


def make_progress(title: str, terminal: Optional[bool] = None) -> Progress:
    """Rich on a terminal (when rich is installed), log lines otherwise."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    if terminal:
        try:
            return _RichProgress(title)
        except ImportError:
            pass
    return Progress(title)
