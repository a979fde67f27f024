"""The docs cannot drift from the code: README.md and docs/*.md blocks run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib  # this suite runs on the main venv's Python 3.11
from markdown_blocks import read_blocks
from run_markdown import runnable

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "run_markdown.py"
DOCS_WITH_RUNNABLE_BLOCKS = sorted(
    p for p in (REPO / "docs").glob("*.md") if any(b.marker == "run" for b in read_blocks(p))
)


def run_markdown(path: Path, tmp_path: Path, *flags: str) -> None:
    env = dict(os.environ)
    # The shell blocks call `neuropod` as a user would: the venv's bin on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO / "src")
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(path), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


@pytest.mark.slow
def test_readme_runs_top_to_bottom_in_a_fresh_directory(tmp_path: Path) -> None:
    run_markdown(REPO / "README.md", tmp_path, "--all-python")


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS_WITH_RUNNABLE_BLOCKS, ids=lambda p: p.name)
def test_doc_runs(path: Path, tmp_path: Path) -> None:
    run_markdown(path, tmp_path)


def test_a_norun_marker_needs_a_reason(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- norun -->\n```python\nprint(1)\n```\n")
    result = subprocess.run([sys.executable, str(RUNNER), str(doc), "--all-python"], capture_output=True, text=True)
    assert result.returncode != 0 and "needs a reason" in result.stderr


def test_a_failing_block_fails_and_names_its_line(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n\n```python\nvalue = 1\n```\n\ntext\n\n```python\nassert value == 2, 'drifted'\n```\n")
    result = subprocess.run([sys.executable, str(RUNNER), str(doc), "--all-python"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "doc.md:10" in result.stderr and "drifted" in result.stderr


@pytest.mark.parametrize("path", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_runnable_block_names_the_extras_it_needs(path: Path) -> None:
    """Each block that runs follows an '<!-- extras: ... -->' line naming extras that exist."""
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for block in read_blocks(path):
        if not runnable(block, all_python=path.name == "README.md"):
            continue
        assert block.extras is not None, f"{path.name}:{block.line}: no '<!-- extras: ... -->' line before it"
        assert set(block.extras) <= extras, f"{path.name}:{block.line}: unknown extras {set(block.extras) - extras}"


@pytest.mark.parametrize("path", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_install_lines_name_this_distribution(path: Path) -> None:
    """The index's `neuropod` is the original project: every install line names neuropod-python."""
    distribution = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    text = path.read_text()
    assert re.findall(r"pip install ['\"]?neuropod(?=[\s\[\"'`])(?!-)", text) == [], (
        f"{path.name}: pip install neuropod"
    )
    assert re.findall(r"(?<![\w-])neuropod\[", text) == [], f"{path.name}: an extra of 'neuropod', not '{distribution}'"
