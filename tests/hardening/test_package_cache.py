"""``neuropod cache list | prune | clear`` (issue 12 item 3) over the extraction cache and built environments."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from package_helpers import INPUTS, OUTPUTS

from neuropod.cli import main
from neuropod.package import open_package
from neuropod.packagers import create_placeholder_neuropod


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Two extracted zips (one unused for 40 days) and one built environment."""
    monkeypatch.setenv("NEUROPOD_ENVS_DIR", str(tmp_path / "envs"))
    roots = {}
    for name in ("old", "new"):
        roots[name] = open_package(create_placeholder_neuropod(tmp_path / f"{name}.zip", name, INPUTS, OUTPUTS)).root
    long_ago = time.time() - 40 * 86400
    os.utime(roots["old"], (long_ago, long_ago))
    env = tmp_path / "envs" / "abc123"
    (env / "bin").mkdir(parents=True)
    (env / "neuropod-env.json").write_text(json.dumps({"python": "3.11.7", "packages": {"numpy": "2.0"}}))
    (env / "lib.bin").write_bytes(b"x" * 5000)
    roots["env"] = env
    return roots


def _run(*args: str):
    return CliRunner().invoke(main, ["cache", *args], catch_exceptions=False)


def test_list_shows_every_entry_with_its_size(cached):
    result = _run("list", "--json")
    assert result.exit_code == 0, result.output
    rows = {(row["kind"], row["key"]): row for row in json.loads(result.output)["entries"]}
    assert ("packages", cached["old"].name) in rows and ("packages", cached["new"].name) in rows
    assert rows[("envs", "abc123")]["bytes"] >= 5000
    size = sum(p.stat().st_size for p in cached["new"].rglob("*") if p.is_file())
    assert rows[("packages", cached["new"].name)]["bytes"] == size
    text = _run("list").output
    assert "packages" in text and "envs" in text and "days ago" in text and "total:" in text


def test_prune_older_than_removes_only_entries_unused_that_long(cached):
    result = _run("prune", "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert not cached["old"].exists() and cached["new"].exists() and cached["env"].exists()
    assert "removed 1 entries" in result.output


def test_prune_max_size_removes_the_least_recently_used(cached):
    result = _run("prune", "--max-size", "1", "--kind", "packages")
    assert result.exit_code == 0, result.output
    assert not cached["old"].exists() and not cached["new"].exists() and cached["env"].exists()


def test_clear_dry_run_then_clear(cached):
    assert "would remove 3 entries" in _run("clear", "--dry-run").output
    assert cached["old"].exists() and cached["env"].exists()
    assert _run("clear").exit_code == 0
    assert not any(path.exists() for path in cached.values())
    assert "empty" in _run("list").output


def test_an_evicted_zip_is_extracted_again_on_its_next_load(cached, tmp_path):
    _run("clear", "--kind", "packages")
    assert open_package(tmp_path / "new.zip").config.name == "new"


@pytest.mark.parametrize(
    "args, message",
    [
        (("prune",), "give --older-than AGE, --max-size SIZE or both"),
        (("prune", "--older-than", "soon"), "--older-than: expected a duration"),
        (("list", "--kind", "nope"), "cache kind 'nope': expected one of"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(cached, args, message):
    result = CliRunner().invoke(main, ["cache", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
