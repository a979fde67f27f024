"""One progress module (``neuropod.progress``) for bytes, examples and build steps, under one set of variables."""

from __future__ import annotations

import importlib
import io
import logging

import pytest

from neuropod.progress import Progress, StepProgress, progress_mode


@pytest.mark.parametrize("module", ["neuropod.package.progress", "neuropod.tools.progress", "neuropod.envs.progress"])
def test_the_old_progress_modules_are_gone(module: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(module)


def test_the_variable_chooses_the_form_unless_the_caller_did(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROPOD_PROGRESS", "off")
    assert progress_mode("auto", io.StringIO()) == "off"
    assert progress_mode("log", io.StringIO()) == "log"  # asked for by name
    monkeypatch.setenv("NEUROPOD_PROGRESS", "auto")
    assert progress_mode("auto", io.StringIO()) == "log"  # not a terminal
    assert progress_mode(False) == "off"


def test_bytes_show_in_the_one_format_once_the_work_ran_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROPOD_PROGRESS", "log")
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "3600")
    quiet = io.StringIO()
    with Progress("zip m.zip", 3 << 20, stream=quiet) as progress:
        progress.advance(3 << 20)
    assert quiet.getvalue() == ""  # under the threshold: nothing
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "0")
    shown = io.StringIO()
    with Progress("zip m.zip", 3 << 20, stream=shown) as progress:
        progress._next_log = 0.0
        progress.advance(1 << 20)
        progress.advance(2 << 20)
    first, last = shown.getvalue().splitlines()
    assert first.startswith("zip m.zip: 1 MiB of 3 MiB (33%), ")
    assert last.startswith("zip m.zip: done, 3 MiB in ") and last.endswith("/s")


def test_build_steps_log_one_line_each_and_nothing_when_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("neuropod.test-steps")
    caplog.set_level(logging.INFO, logger=logger.name)
    monkeypatch.setenv("NEUROPOD_PROGRESS", "log")
    steps = StepProgress("environment abc", logger)
    steps.step("installing")
    steps.step("installing")  # announced again by another tool line: still one line
    steps.download("torch", 3 << 30)
    steps.close("built in 3 s")
    assert [r.getMessage() for r in caplog.records] == [
        "environment abc: installing",
        "environment abc: downloading torch (3 GiB)",
        "environment abc: built in 3 s",
    ]
    caplog.clear()
    monkeypatch.setenv("NEUROPOD_PROGRESS", "off")
    silent = StepProgress("environment abc", logger)
    silent.step("installing")
    silent.close("built")
    assert caplog.records == []
