"""``import neuropod.tools`` stays light; progress shows as log lines off a terminal."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from neuropod.progress import Progress

HEAVY = ("torch", "tensorflow", "jax", "onnxruntime", "grpc", "keras", "pyarrow", "matplotlib", "rich")


def test_import_tools_imports_no_framework_and_no_optional_library() -> None:
    code = (
        "import sys, neuropod.tools, neuropod.cli; from neuropod.tools import evaluate, compare, bench, InputBuilder; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_progress_off_a_terminal_is_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "0")  # shows however quick
    monkeypatch.delenv("NEUROPOD_PROGRESS", raising=False)
    stream = io.StringIO()
    with Progress("evaluate m", total=100, unit="examples", mode="auto", stream=stream) as progress:
        progress._next_log = 0.0  # due now: the next advance logs
        progress.advance(40)
        progress.advance(10)  # not due again for a while: silent
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("evaluate m: 40/100 examples (40%), ") and "ETA" in lines[0]
    assert lines[1].startswith("evaluate m: done, 50 examples in ")
    silent = io.StringIO()
    with Progress("x", mode=False, stream=silent) as progress:
        progress.advance(5)
    assert silent.getvalue() == ""
