import json
import pickle
import re
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require
from neuropod import load_neuropod
from neuropod.backends import BUILTIN_BACKENDS, BackendInfo, get_backend_class, known_platforms
from neuropod.errors import (
    BackendNotFoundError,
    FrameworkNotInstalledError,
    InputValidationError,
    ManifestError,
    PackageError,
    UnsafePackageError,
)
from neuropod.package import open_package
from neuropod.packagers import create_placeholder_neuropod

X = np.ones((2, 3), np.float32)


def _placeholder(path, **kwargs):
    return create_placeholder_neuropod(path, "addition", ADDITION_INPUTS, ADDITION_OUTPUTS, **kwargs)


def test_directory_layout_config_and_manifest(tmp_path):
    root = _placeholder(tmp_path / "pkg", package_as_zip=False, test_input_data={"x": X, "y": X})
    config = json.loads((root / "config.json").read_text())
    assert config["name"] == "addition" and config["platform"] == "placeholder"
    assert config["input_spec"] == ADDITION_INPUTS and config["output_spec"] == ADDITION_OUTPUTS
    assert config["platform_version_semver"] == "*" and config["custom_ops"] == []
    assert config["input_tensor_device"] == {"x": "CPU", "y": "CPU"}
    # The original's bytes (its last version): json.dump(config, indent=4, sort_keys=True), no trailing newline.
    assert (root / "config.json").read_text() == json.dumps(config, indent=4, sort_keys=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["manifest_version"] == 1
    assert set(manifest["files"]) == {"config.json", "0/config.json", "test_data.npz"}
    assert (root / "manifest.json").read_text() == json.dumps(manifest, indent=4, sort_keys=True)


def test_zip_is_deterministic(tmp_path):
    a = _placeholder(tmp_path / "a.zip", seed=1)
    b = _placeholder(tmp_path / "b.zip", seed=1)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_zip_is_extracted_once_into_a_content_keyed_cache(tmp_path):
    path = _placeholder(tmp_path / "m.zip")
    first = open_package(path).root
    second = open_package(path).root
    assert first == second and first.name != path.name
    assert sum(1 for _ in first.parent.iterdir()) == 1


def test_refuses_existing_target(tmp_path):
    _placeholder(tmp_path / "m")
    with pytest.raises(PackageError, match="already exists"):
        _placeholder(tmp_path / "m")


@pytest.mark.parametrize("change", ["modify", "delete", "add"])
def test_manifest_detects_tampering(tmp_path, change):
    root = _placeholder(tmp_path / "pkg", package_as_zip=False)
    target = root / "0" / "config.json"
    if change == "modify":
        target.write_text('{"seed": 99}')
        expected = "'0/config.json' does not match its sha256 in manifest.json"
    elif change == "delete":
        target.unlink()
        expected = "'0/config.json' is listed in manifest.json but missing"
    else:
        (root / "0" / "code").mkdir()
        (root / "0" / "code" / "evil.py").write_text("print('hi')")
        expected = "'0/code/evil.py' is not listed in manifest.json"
    with pytest.raises(ManifestError) as info:
        load_neuropod(root)
    assert expected in str(info.value)
    if change != "delete":
        load_neuropod(root, verify_manifest=False).close()  # the check can be skipped


def test_a_same_size_change_is_found_by_its_hash(tmp_path):
    root = _placeholder(tmp_path / "pkg", package_as_zip=False)
    target = root / "0" / "config.json"
    target.write_bytes(target.read_bytes().replace(b"0", b"1"))
    with pytest.raises(ManifestError, match="'0/config.json' does not match its sha256"):
        load_neuropod(root)


def _zip_with(path: Path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../evil.txt", "climbs out of the package"),
        ("0/../../evil.txt", "climbs out of the package"),
        ("/etc/evil.txt", "absolute path"),
    ],
)
def test_hostile_zip_entries_are_refused(tmp_path, entry, message):
    path = _zip_with(tmp_path / "bad.zip", [("config.json", "{}"), (entry, "x")])
    with pytest.raises(UnsafePackageError, match=message):
        load_neuropod(path)
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_zip_entry_is_refused(tmp_path):
    link = zipfile.ZipInfo("0/data/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = _zip_with(tmp_path / "bad.zip", [("config.json", "{}"), (link, "/etc/passwd")])
    with pytest.raises(UnsafePackageError, match="symbolic link"):
        load_neuropod(path)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.write_bytes(b"not a zip at all"), "neither a package directory nor a zip"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "neither a package directory nor a zip"),
        (lambda p: _zip_with(p, [("readme.txt", "hi")]), "no config.json"),
        (lambda p: _zip_with(p, [("config.json", "{not json")]), "cannot be read as JSON"),
        (lambda p: _zip_with(p, [("config.json", '{"name": "m"}')]), "missing field 'platform'"),
    ],
)
def test_corrupt_packages_get_clear_errors(tmp_path, setup, message):
    path = tmp_path / "bad.zip"
    setup(path)
    with pytest.raises(PackageError, match=message):
        load_neuropod(path)


def test_missing_path(tmp_path):
    with pytest.raises(PackageError, match="no such package"):
        load_neuropod(tmp_path / "nope")


def test_test_data_is_stored_without_pickle_and_round_trips(tmp_path):
    ml_dtypes = require("ml_dtypes")
    spec_in = [{"name": "s", "dtype": "string", "shape": [None]}, {"name": "h", "dtype": "bfloat16", "shape": [2]}]
    spec_out = [{"name": "o", "dtype": "int64", "shape": [2]}]
    h = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    root = create_placeholder_neuropod(
        tmp_path / "p",
        "m",
        spec_in,
        spec_out,
        package_as_zip=False,
        test_input_data={"s": np.array([b"a", b"b"]), "h": h},
    )
    with np.load(root / "test_data.npz", allow_pickle=False) as npz:  # loads with pickle disabled
        assert "input/s" in npz.files
    test_input, test_output = open_package(root).test_data()
    assert test_input["s"].tolist() == ["a", "b"]
    assert test_input["h"].dtype == h.dtype and np.array_equal(test_input["h"], h)
    assert test_output == {}


def test_legacy_pickle_needs_trust(tmp_path):
    root = _placeholder(tmp_path / "p", package_as_zip=False)
    with open(root / "test_data.pkl", "wb") as f:
        pickle.dump({"test_input": {"x": X, "y": X}, "test_output": {"out": X}}, f)
    package = open_package(root, verify=False)
    with pytest.raises(UnsafePackageError, match="pass trusted=True"):
        package.test_data()
    test_input, test_output = package.test_data(trusted=True)
    assert np.array_equal(test_input["x"], X) and np.array_equal(test_output["out"], X)


def test_unknown_platform_lists_known_ones(tmp_path):
    root = _placeholder(tmp_path / "p", package_as_zip=False)
    config = json.loads((root / "config.json").read_text())
    config["platform"] = "caffe"
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackendNotFoundError) as info:
        load_neuropod(root, verify_manifest=False)
    assert "'caffe'" in str(info.value) and "torchscript" in str(info.value) and "placeholder" in str(info.value)


def test_missing_framework_names_the_extra(monkeypatch):
    monkeypatch.setitem(
        BUILTIN_BACKENDS,
        "fancy",
        BackendInfo("neuropod.backends.placeholder.backend:PlaceholderBackend", ("no_such_framework_xyz",), "fancy"),
    )
    with pytest.raises(FrameworkNotInstalledError, match=r"pip install 'neuropod-python\[fancy\]'"):
        get_backend_class("fancy")


def test_third_party_backend_through_entry_points(tmp_path, monkeypatch):
    dist = tmp_path / "site" / "echo_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[neuropod.backends]\necho = echo_backend_mod:EchoBackend\n")
    (tmp_path / "site" / "echo_backend_mod.py").write_text(
        "from neuropod.backends.base import Backend\n"
        "class EchoBackend(Backend):\n"
        "    def infer(self, inputs):\n"
        "        return {'out': inputs['x'] * 10}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "echo" in known_platforms()
    root = _placeholder(tmp_path / "p", package_as_zip=False)
    config = json.loads((root / "config.json").read_text())
    config["platform"] = "echo"
    (root / "config.json").write_text(json.dumps(config))
    with load_neuropod(root, verify_manifest=False) as model:
        assert np.array_equal(model.infer({"x": X, "y": X})["out"], X * 10)
    sys.modules.pop("echo_backend_mod", None)


def test_manifest_file_listing_is_stable(tmp_path):
    root = _placeholder(tmp_path / "p", package_as_zip=False)
    assert open_package(root).files() == ["0/config.json", "config.json", "manifest.json"]


def test_custom_op_paths_outside_the_package_are_refused(tmp_path):
    root = _placeholder(tmp_path / "p", package_as_zip=False)
    config = json.loads((root / "config.json").read_text())
    config["custom_ops"] = ["../../../../tmp/outside.so"]
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafePackageError, match="must be a file name inside 0/ops"):
        load_neuropod(root, verify_manifest=False)


def test_a_changed_cache_is_extracted_again_from_the_intact_zip(tmp_path):
    path = _placeholder(tmp_path / "m.zip")
    root = open_package(path).root
    (root / "0" / "data" / "written-by-a-model.bin").write_bytes(b"x")
    reopened = open_package(path)
    assert not (reopened.root / "0" / "data" / "written-by-a-model.bin").exists()
    assert (reopened.root / "0" / "data").is_dir()  # empty dirs survive the zip


def test_non_utf8_bytes_input_names_the_tensor(tmp_path):
    spec_in = [{"name": "s", "dtype": "string", "shape": [None]}]
    path = create_placeholder_neuropod(tmp_path / "m", "m", spec_in, [{"name": "o", "dtype": "int8", "shape": [1]}])
    with (
        load_neuropod(path) as model,
        pytest.raises(InputValidationError, match="input 's': bytes are not valid UTF-8"),
    ):
        model.infer({"s": np.array([b"\xff"])})


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _manifest_rewritten(root: Path) -> None:
    """What a careful attacker does after editing: make the cached manifest match the edit."""
    from neuropod.package.manifest import write_manifest

    write_manifest(root)


@pytest.mark.parametrize("cover_tracks", [False, True], ids=["edited", "edited_and_manifest_rewritten"])
@pytest.mark.parametrize("target", ["config.json", "0/config.json"])
def test_a_tampered_zip_cache_never_reaches_the_caller(tmp_path, target, cover_tracks):
    path = _placeholder(tmp_path / "m.zip")
    with load_neuropod(path) as model:
        expected = model.infer({"x": X, "y": X})["out"]
    root = open_package(path).root
    _edit_json(root / target, **({"name": "evil"} if target == "config.json" else {"seed": 12345}))
    if cover_tracks:
        _manifest_rewritten(root)
    package = open_package(path)
    assert package.config.name == "addition"
    with load_neuropod(path) as model:
        assert model.name == "addition"
        np.testing.assert_array_equal(model.infer({"x": X, "y": X})["out"], expected)


def test_a_tampered_cache_of_a_zip_without_manifest_is_extracted_again(tmp_path):
    from neuropod.package.archive import write_zip

    tree = _placeholder(tmp_path / "tree", package_as_zip=False)
    (tree / "manifest.json").unlink()  # as the original wrote its zips
    write_zip(tree, tmp_path / "legacy.zip")
    root = open_package(tmp_path / "legacy.zip").root
    _edit_json(root / "config.json", name="evil")
    package = open_package(tmp_path / "legacy.zip")
    assert package.config.name == "addition" and not package.has_manifest
    (package.root / "manifest.json").write_text("{}")  # a file the zip does not have
    assert not (open_package(tmp_path / "legacy.zip").root / "manifest.json").exists()


@pytest.mark.parametrize("target", ["config.json", "0/config.json"])
def test_a_directory_package_edited_between_two_loads_is_refused(tmp_path, target):
    root = _placeholder(tmp_path / "pkg", package_as_zip=False)
    load_neuropod(root).close()
    _edit_json(root / target, **({"name": "evil"} if target == "config.json" else {"seed": 1}))
    with pytest.raises(ManifestError, match=repr(target)):
        load_neuropod(root)


SRC = Path(__file__).resolve().parents[2] / "src" / "neuropod"


def test_artifact_names_are_written_once_in_layout():
    names = ['"model.pt"', '"model.pt2"', '"model.onnx"', '"model.keras"', '"model.pb"', '"savedmodel"']
    names += ['"model.jax_exported"', '"params.npz"', '"serving_default"']
    offenders = []
    for path in [*(SRC / "backends").rglob("*.py"), *(SRC / "packagers").rglob("*.py")]:
        text = path.read_text()
        offenders += [f"{path.relative_to(SRC)}: {name}" for name in names if name in text]
    assert offenders == []
    layout_source = (SRC / "package" / "layout.py").read_text()
    assert all(name in layout_source for name in names)
    assert not re.search(r"^\s*(import|from)\s", layout_source, re.MULTILINE)  # no framework, nothing at all


def test_gpu_choice_is_written_once():
    callers = sorted(
        str(path.relative_to(SRC))
        for path in (SRC / "backends").rglob("*.py")
        if "gpu_unavailable_warning(" in path.read_text() and path.name not in ("base.py",)
    )
    assert callers == ["backends/devices.py"]
