"""Zip packaging reads nothing back (issue 29 item 7): the self-test runs on the tree the zip was written from.

Before, the finished zip was extracted again (a copy, a CRC and a sha256 of
every byte) and that copy hashed once more when the self-test loaded it; now
the zip is checked, from its directory and manifest alone, to hold the tree's
files whole, and the tree is what the self-test loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neuropod.errors import ManifestError, PackageError, TestMismatchError
from neuropod.package.archive import check_zip_holds_tree, extract_zip, write_zip
from neuropod.packagers import create_placeholder_neuropod

INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", 2]}]
X = np.ones((3, 2), np.float32)


@pytest.fixture
def progress_lines(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    monkeypatch.setenv("NEUROPOD_PROGRESS", "log")
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "0")  # every step shows, however quick
    caplog.set_level(logging.INFO, logger="neuropod.progress")
    return caplog


def _tree(root: Path) -> Path:
    """A package-like tree: a multi-chunk weights file (hashed on the helper thread), text, an empty dir."""
    (root / "0" / "data").mkdir(parents=True)
    (root / "0" / "empty").mkdir()
    weights = np.random.default_rng(0).standard_normal((9 << 20) // 4 + 3).astype(np.float32).tobytes()
    (root / "0" / "data" / "weights.bin").write_bytes(weights)  # 9 MiB and 12 bytes: 3 chunks, the last tiny
    (root / "config.json").write_text('{"name": "m"}')
    return root


def test_packaging_a_zip_neither_extracts_nor_hashes_it_again(tmp_path, progress_lines):
    path = create_placeholder_neuropod(tmp_path / "m.zip", "m", INPUTS, OUTPUTS, test_input_data={"x": X})
    steps = [r.getMessage().split(":")[0] for r in progress_lines.records if r.name == "neuropod.progress"]
    assert "zip m.zip" in steps
    assert not [step for step in steps if step.startswith(("extract", "hash", "verify"))], steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]  # no tree or work dir left
    with zipfile.ZipFile(path) as zf:
        assert "manifest.json" in zf.namelist()


def test_the_self_test_on_the_tree_still_fails_a_wrong_answer(tmp_path):
    with pytest.raises(TestMismatchError, match="'out'"):
        create_placeholder_neuropod(
            tmp_path / "m.zip",
            "m",
            INPUTS,
            OUTPUTS,
            test_input_data={"x": X},
            test_expected_out={"out": np.full((3, 2), 7, np.float32)},
        )
    assert list(tmp_path.iterdir()) == []


def test_write_zip_hashes_each_file_whole_and_writes_the_same_bytes_each_time(tmp_path):
    tree = _tree(tmp_path / "tree")
    digests = write_zip(tree, tmp_path / "a.zip", add_manifest=True)
    write_zip(tree, tmp_path / "b.zip", add_manifest=True)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    for name in ("0/data/weights.bin", "config.json"):
        assert digests[name] == hashlib.sha256((tree / name).read_bytes()).hexdigest()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert json.loads(zf.read("manifest.json"))["files"] == digests
    assert extract_zip(tmp_path / "a.zip", tmp_path / "out")  # verified against its manifest on the way
    assert (tmp_path / "out" / "0" / "empty").is_dir()


def test_a_zip_that_holds_its_tree_passes_the_check(tmp_path):
    tree = _tree(tmp_path / "tree")
    write_zip(tree, tmp_path / "p.zip", add_manifest=True)
    check_zip_holds_tree(tmp_path / "p.zip", tree)


@pytest.mark.parametrize("change", ["added", "removed", "resized"])
def test_a_zip_that_does_not_hold_its_tree_is_refused_naming_the_file(tmp_path, change):
    tree = _tree(tmp_path / "tree")
    write_zip(tree, tmp_path / "p.zip", add_manifest=True)
    if change == "added":
        (tree / "0" / "data" / "extra.txt").write_text("x")
        name = "0/data/extra.txt"
    elif change == "removed":
        (tree / "config.json").unlink()
        name = "config.json"
    else:
        with open(tree / "0" / "data" / "weights.bin", "ab") as f:
            f.write(b"\0")
        name = "0/data/weights.bin"
    with pytest.raises(PackageError, match=name.replace(".", r"\.")):
        check_zip_holds_tree(tmp_path / "p.zip", tree)


def test_a_manifest_that_lists_other_files_than_the_zip_is_refused(tmp_path):
    tree = _tree(tmp_path / "tree")
    write_zip(tree, tmp_path / "p.zip", add_manifest=False)
    with zipfile.ZipFile(tmp_path / "p.zip", "a") as zf:
        zf.writestr("manifest.json", json.dumps({"manifest_version": 1, "files": {"config.json": "0" * 64}}))
    with pytest.raises(ManifestError, match="0/data/weights.bin"):
        check_zip_holds_tree(tmp_path / "p.zip", tree)


def test_a_file_that_is_not_a_zip_is_a_package_error(tmp_path):
    tree = _tree(tmp_path / "tree")
    (tmp_path / "p.zip").write_bytes(os.urandom(100))
    with pytest.raises(PackageError, match="p.zip"):
        check_zip_holds_tree(tmp_path / "p.zip", tree)
