"""``manifest.json`` and ``config.json`` have the bytes of the original's last version (issue 28 item 3).

The target is the original's own ``test_manifest`` (backends/python/test/
test_python_packaging.py): the addition model of its test utilities,
packaged with ``package_as_zip=False, persist_test_data=False``, gives a
manifest listing these four files with these sha256 digests (so config.json's
bytes are fixed too), keys sorted, 4-space indent.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

from neuropod import ManifestError, load_neuropod
from neuropod.package import open_package
from neuropod.packagers import create_python_neuropod

# The model source of the original's test, byte for byte (its sha256 is in the target).
ADDITION_MODEL_SOURCE = """
import sys

def addition_model(x, y):
    return {
        "out": x + y
    }

def get_model(_):
    # Test for https://github.com/uber/neuropod/issues/374
    assert hasattr(sys, 'argv'), "sys.argv should exist"

    return addition_model
"""

ORIGINAL_TARGET = {
    "0/code/__init__.py": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "0/code/addition_model.py": "14566dd9b13641f6482f492398cd1b567d132a08facde7b2f86cddd198f93415",
    "0/config.json": "a52f77051501f426b04f865580ee81ad1c242e47c45dcc4108c673a95f12b755",
    "config.json": "0309cf2117d887218e7edb4c918097a6a427fffcbf0a948115d32414b2b6e144",
}


def _addition_package(tmp_path, name="test_neuropod", **kwargs):
    code = tmp_path / "model_code"
    code.mkdir(exist_ok=True)
    (code / "addition_model.py").write_text(ADDITION_MODEL_SOURCE)
    return create_python_neuropod(
        neuropod_path=tmp_path / name,
        model_name="addition_model",
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
        entrypoint_package="addition_model",
        entrypoint="get_model",
        input_spec=[
            {"name": "x", "dtype": "float32", "shape": ("batch_size",)},
            {"name": "y", "dtype": "float32", "shape": ("batch_size",)},
        ],
        output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch_size",)}],
        test_input_data={"x": np.arange(5, dtype=np.float32), "y": np.arange(5, dtype=np.float32)},
        test_expected_out={"out": np.arange(5) + np.arange(5)},
        **kwargs,
    )


def test_the_manifest_is_the_originals_target_byte_for_byte(tmp_path):
    path = _addition_package(tmp_path, package_as_zip=False, persist_test_data=False)
    expected = json.dumps({"files": ORIGINAL_TARGET, "manifest_version": 1}, indent=4)
    assert (path / "manifest.json").read_text() == expected


def test_a_zip_holds_the_same_manifest_as_the_directory(tmp_path):
    directory = _addition_package(tmp_path, package_as_zip=False)
    zipped = _addition_package(tmp_path, name="test_neuropod.zip")
    with zipfile.ZipFile(zipped) as zf:
        assert zf.read("manifest.json") == (directory / "manifest.json").read_bytes()
        assert zf.read("config.json") == (directory / "config.json").read_bytes()


def _with_old_manifest(path):
    """Rewrite a package's manifest as this project wrote it before: with a sizes map, unsorted."""
    files = json.loads((path / "manifest.json").read_text())["files"]
    sizes = {rel: (path / rel).stat().st_size for rel in files}
    document = {"manifest_version": 1, "files": files, "sizes": sizes}
    (path / "manifest.json").write_text(json.dumps(document, indent=4))


def test_packages_written_before_still_verify(tmp_path):
    path = _addition_package(tmp_path, package_as_zip=False)
    _with_old_manifest(path)
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)})["out"], 2)
    # Their sizes are still checked before any file is hashed.
    (path / "0" / "config.json").write_text("{}")
    with pytest.raises(ManifestError, match="'0/config.json' has 2 bytes where manifest.json says"):
        open_package(path)


def test_a_changed_file_is_found_by_its_digest(tmp_path):
    path = _addition_package(tmp_path, package_as_zip=False)
    (path / "0" / "code" / "addition_model.py").write_text(ADDITION_MODEL_SOURCE.replace("x + y", "x - y"))
    with pytest.raises(ManifestError, match="'0/code/addition_model.py' does not match its sha256"):
        open_package(path)


def test_files_bigger_than_a_package_may_hold_are_refused_before_hashing(tmp_path, monkeypatch):
    path = _addition_package(tmp_path, package_as_zip=False)
    with open(path / "0" / "code" / "addition_model.py", "r+b") as f:
        f.truncate(1 << 20)  # sparse: cheap to make, slow to hash were it a terabyte
    monkeypatch.setenv("NEUROPOD_MAX_EXTRACTED_BYTES", str(1 << 16))
    with pytest.raises(ManifestError, match="more than the 65536 a package may hold"):
        open_package(path)


def test_config_bytes_have_sorted_keys(tmp_path):
    path = _addition_package(tmp_path, package_as_zip=False)
    text = (path / "config.json").read_text()
    assert text == json.dumps(json.loads(text), indent=4, sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest() == ORIGINAL_TARGET["config.json"]
