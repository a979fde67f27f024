"""Issue 13, items 1-5: hostile packages get a PackageError naming the file and field, and nothing else.

Each test is a defect class found by mutating packages; each failed (a foreign
exception, a hang, a leftover, outside code run) before the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from package_helpers import INPUTS, OUTPUTS, X, edit_json, package_entries, placeholder_dir, raw_zip

from conftest import require
from neuropod import load_neuropod
from neuropod.errors import ManifestError, PackageError, UnsafePackageError
from neuropod.package import open_package


@pytest.fixture(autouse=True)
def _timeout():
    """A hang is a failure, not a stuck CI job."""

    def fail(*_):
        raise TimeoutError("hung for 20 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _cache_entries() -> list:
    root = Path(os.environ["NEUROPOD_CACHE_DIR"]) / "packages"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _open_and_run(path: Path) -> None:
    with load_neuropod(path) as model:
        model.infer({"x": X})


# --- item 1: foreign exceptions out of zip extraction ------------------------------------------


def _zip_of(tmp_path: Path, **config_fields) -> dict:
    """The entries of a valid legacy package (no manifest), ready to be corrupted one field at a time."""
    root = placeholder_dir(tmp_path / "tree", manifest=False)
    return package_entries(root)


@pytest.mark.parametrize(
    "corruption",
    [
        "bad_deflate_stream",  # zlib.error
        "truncated_deflate_stream",  # EOFError
        "encrypted_entry",  # RuntimeError
        "unknown_compression",  # NotImplementedError
        "non_utf8_name",  # UnicodeDecodeError
        "wrong_crc",  # BadZipFile (already a PackageError; kept as the control)
    ],
)
def test_a_corrupt_zip_gives_a_package_error_naming_the_zip(tmp_path, corruption):
    entries = _zip_of(tmp_path)
    fields = {
        "bad_deflate_stream": {"raw": b"\xff\xfe\xfd garbage that is no deflate stream"},
        "truncated_deflate_stream": {"raw": zlib.compress(b"x" * 5000)[2:20]},
        "encrypted_entry": {"flags": 0x1},
        "unknown_compression": {"method": 99},
        "wrong_crc": {"crc": 1234},
    }
    zipped = []
    for name, data in entries.items():
        if name == b"config.json" and corruption == "non_utf8_name":
            zipped.append((name, data, {}))
            zipped.append((b"0/\xff\xfe.bin", b"data", {"flags": 0x800}))  # says UTF-8, is not
        else:
            zipped.append((name, data, fields.get(corruption, {}) if name == b"config.json" else {}))
    path = raw_zip(tmp_path / f"{corruption}.zip", zipped)
    with pytest.raises(PackageError, match=str(path.name)):
        open_package(path)
    assert _cache_entries() == [], "a refused zip left an extraction behind"


@pytest.mark.parametrize("target", ["config.json", "manifest.json", "0/config.json"])
def test_json_nested_100000_deep_is_a_package_error(tmp_path, target):
    root = placeholder_dir(tmp_path / "pkg", manifest=(target == "manifest.json"))
    (root / target).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PackageError, match=target.replace(".", r"\.")):
        _open_and_run(root)


@pytest.mark.parametrize("devices", ["GPU", 5, True, ["x"], {"x": "TPU"}, {"nope": "CPU"}])
def test_a_bad_input_tensor_device_names_the_field(tmp_path, devices):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    edit_json(root / "config.json", input_tensor_device=devices)
    with pytest.raises(PackageError, match="config.json.*input_tensor_device"):
        open_package(root)


@pytest.mark.parametrize("dtype", [None, "\ud800", 5, ["float32"]], ids=["null", "lone_surrogate", "int", "list"])
def test_a_bad_dtype_is_a_package_error_never_float64(tmp_path, dtype):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    config = json.loads((root / "config.json").read_text())
    config["input_spec"][0]["dtype"] = dtype
    (root / "config.json").write_text(json.dumps(config))  # json escapes the surrogate as \ud800
    with pytest.raises(PackageError, match="config.json"):
        open_package(root)


@pytest.mark.parametrize(
    "settings",
    [{"seed": "abc"}, {"seed": 1e999}, {"seed": -1}, {"seed": True}, {"free_dim_size": 10**12}, {"inputs_optional": 3}],
    ids=["seed_text", "seed_inf", "seed_negative", "seed_bool", "free_dim_huge", "optional_int"],
)
def test_bad_placeholder_settings_fail_at_load_naming_the_field(tmp_path, settings):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    text = json.dumps({"seed": 0, "free_dim_size": 2, **settings})
    (root / "0" / "config.json").write_text(text)
    field = next(iter(settings))
    with pytest.raises(PackageError, match=rf"0/config\.json: field '{field}'"):
        load_neuropod(root)


def test_a_corrupt_test_data_npz_is_a_package_error(tmp_path):
    root = placeholder_dir(tmp_path / "pkg", manifest=False, test_input_data={"x": X})
    data = bytearray((root / "test_data.npz").read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)  # the central directory is gone
    (root / "test_data.npz").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="test_data.npz"):
        open_package(root).test_data()


def test_test_data_declaring_huge_arrays_is_refused_before_reading(tmp_path, monkeypatch):
    from neuropod.package import testdata

    root = placeholder_dir(tmp_path / "pkg", manifest=False, test_input_data={"x": np.zeros((8192, 2), np.float32)})
    monkeypatch.setattr(testdata, "TEST_DATA_MAX_BYTES", 1000)
    with pytest.raises(PackageError, match="test_data.npz: its arrays take"):
        open_package(root).test_data()


# --- item 2: reads that never end ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["config.json", "manifest.json", "0/config.json", "test_data.npz"])
def test_a_fifo_in_a_package_is_refused_without_blocking(tmp_path, target):
    root = placeholder_dir(tmp_path / "pkg", manifest=(target == "manifest.json"))
    (root / target).unlink(missing_ok=True)
    os.mkfifo(root / target)
    with pytest.raises(UnsafePackageError, match="FIFO"):
        package = open_package(root)
        package.test_data()


def test_neuropod_inspect_of_a_fifo_config_exits_2_at_once(tmp_path):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    (root / "config.json").unlink()
    os.mkfifo(root / "config.json")
    result = subprocess.run(
        [sys.executable, "-m", "neuropod.cli", "inspect", str(root)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "config.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["config.json", "0/config.json", "0/requirements.lock"])
def test_a_metadata_file_linked_to_dev_zero_is_never_read(tmp_path, target):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    (root / target).unlink(missing_ok=True)
    (root / target).symlink_to("/dev/zero")
    with pytest.raises(UnsafePackageError, match="outside the package"):
        _open_and_run(root)


def test_an_oversized_metadata_file_is_refused_unread(tmp_path, monkeypatch):
    from neuropod.package import files

    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    monkeypatch.setattr(files, "METADATA_MAX_BYTES", 64)
    monkeypatch.setattr(files.read_regular, "__defaults__", (64,))
    monkeypatch.setattr(files.read_json, "__defaults__", (64,))
    with pytest.raises(PackageError, match="config.json: .* bytes, more than the 64"):
        open_package(root)


# --- item 3: unbounded extraction, a cache that only grows -------------------------------------


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    entries = _zip_of(tmp_path)
    bomb = [(name, data, {}) for name, data in entries.items()]
    bomb.append((b"0/data/zeros.bin", b"\0" * (64 << 20), {}))  # 64 MiB from about 64 KiB
    path = raw_zip(tmp_path / "bomb.zip", bomb)
    assert path.stat().st_size < 200_000
    with pytest.raises(PackageError, match="expand .*-fold"):
        open_package(path)
    assert _cache_entries() == []


def test_the_total_extracted_size_is_bounded_and_configurable(tmp_path, monkeypatch):
    zipped = placeholder_dir(tmp_path / "tree")
    from neuropod.package.archive import write_zip

    write_zip(zipped, tmp_path / "m.zip")
    monkeypatch.setenv("NEUROPOD_MAX_EXTRACTED_BYTES", "100")
    with pytest.raises(PackageError, match=r"more than the 100 allowed .*NEUROPOD_MAX_EXTRACTED_BYTES"):
        open_package(tmp_path / "m.zip")
    monkeypatch.delenv("NEUROPOD_MAX_EXTRACTED_BYTES")
    assert open_package(tmp_path / "m.zip").config.name == "target"


@pytest.mark.parametrize("defect", ["tampered_file", "invalid_config"])
def test_a_refused_zip_leaves_no_cache_entry(tmp_path, defect):
    from neuropod.package.archive import write_zip

    root = placeholder_dir(tmp_path / "tree", manifest=(defect == "tampered_file"))
    if defect == "tampered_file":
        edit_json(root / "0" / "config.json", seed=99)  # after the manifest was written
    else:
        edit_json(root / "config.json", input_spec="nonsense")
    write_zip(root, tmp_path / "bad.zip")
    with pytest.raises((ManifestError, PackageError)):
        open_package(tmp_path / "bad.zip")
    assert _cache_entries() == []


def test_the_cache_is_trimmed_to_its_size_bound_least_recently_used_first(tmp_path, monkeypatch):
    from neuropod.packagers import create_placeholder_neuropod

    zips = [create_placeholder_neuropod(tmp_path / f"m{i}.zip", f"m{i}", INPUTS, OUTPUTS) for i in range(3)]
    first = open_package(zips[0]).root
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    monkeypatch.setenv("NEUROPOD_CACHE_MAX_BYTES", str(2 * size + size // 2))
    open_package(zips[1])
    os.utime(first, (1, 1))  # m0 used long ago
    open_package(zips[2])
    assert len(_cache_entries()) == 2 and not first.exists()
    assert open_package(zips[0]).config.name == "m0"  # evicted entries are extracted again


def test_refused_zips_in_a_loop_leave_the_cache_empty(tmp_path):
    """What the fuzz run saw: 987 entries after mutating packages. Now: none."""
    import shutil

    from neuropod.package.archive import write_zip

    root = placeholder_dir(tmp_path / "tree")
    for i in range(20):
        tampered = shutil.copytree(root, tmp_path / f"t{i}")
        edit_json(tampered / "0" / "config.json", seed=i + 1)  # each zip differs: its own cache key
        write_zip(tampered, tmp_path / f"bad{i}.zip")
        with pytest.raises(ManifestError):
            open_package(tmp_path / f"bad{i}.zip")
    assert _cache_entries() == []


# --- item 4: the cache's integrity comes from the zip ------------------------------------------


@pytest.mark.parametrize("cover_tracks", ["manifest_deleted", "manifest_regenerated"])
def test_a_swapped_model_in_the_cache_never_runs(tmp_path, cover_tracks):
    from neuropod.package.archive import write_zip
    from neuropod.package.manifest import write_manifest

    write_zip(placeholder_dir(tmp_path / "tree"), tmp_path / "m.zip")
    with load_neuropod(tmp_path / "m.zip") as model:
        expected = model.infer({"x": X})["out"]
    root = open_package(tmp_path / "m.zip").root
    edit_json(root / "0" / "config.json", seed=4242)  # the "model" swapped
    (root / "manifest.json").unlink()
    if cover_tracks == "manifest_regenerated":
        write_manifest(root)
    with load_neuropod(tmp_path / "m.zip") as model:
        np.testing.assert_array_equal(model.infer({"x": X})["out"], expected)


# --- item 5: legacy packages without a manifest -------------------------------------------------


@pytest.mark.parametrize("where", ["0/ops/evil.so", "0/code/evil", "0/data/weights.bin"])
def test_a_link_leaving_a_legacy_package_is_refused(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "lib.so").write_bytes(b"\x7fELF not really")
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).symlink_to(outside if where.startswith("0/code") else outside / "lib.so")
    with pytest.raises(UnsafePackageError, match=f"{where}: a link to .*outside the package"):
        open_package(root)


def test_a_link_inside_a_legacy_package_is_still_allowed(tmp_path):
    root = placeholder_dir(tmp_path / "pkg", manifest=False)
    (root / "0" / "data").mkdir(exist_ok=True)
    (root / "0" / "data" / "a.bin").write_bytes(b"1")
    (root / "0" / "data" / "b.bin").symlink_to("a.bin")
    assert open_package(root).config.name == "target"


def _python_package(tmp_path: Path, manifest: bool = False) -> Path:
    from neuropod.packagers import create_python_neuropod

    code = tmp_path / "src" / "own_model"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text("def get_model(data):\n    return lambda x: {'out': x}\n")

    root = create_python_neuropod(
        tmp_path / "pkg",
        "py",
        data_paths=[],
        code_path_spec=[{"python_root": str(tmp_path / "src"), "dirs_to_package": ["own_model"]}],
        entrypoint_package="own_model.main",
        entrypoint="get_model",
        input_spec=INPUTS,
        output_spec=OUTPUTS,
        package_as_zip=False,
    )
    if not manifest:
        (root / "manifest.json").unlink()
    return root


def test_the_entrypoint_is_imported_from_the_package_only(tmp_path, monkeypatch):
    outside = tmp_path / "on_sys_path"
    outside.mkdir()
    marker = tmp_path / "outside_code_ran"
    (outside / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef get_model(d):\n    return len\n")
    monkeypatch.syspath_prepend(str(outside))
    root = _python_package(tmp_path)
    edit_json(root / "0" / "config.json", entrypoint_package="planted")
    with pytest.raises(PackageError, match=r"entrypoint_package': 'planted' is not in the package's code"):
        load_neuropod(root)
    assert not marker.exists()
    edit_json(root / "0" / "config.json", entrypoint_package="sys")  # a built-in module of that name
    with pytest.raises(PackageError, match="entrypoint_package"):
        load_neuropod(root)


@pytest.mark.parametrize(
    "field, value",
    [
        ("entrypoint_package", "..x"),
        ("entrypoint_package", ".x"),
        ("entrypoint_package", ""),
        ("entrypoint_package", 5),
        ("entrypoint", 5),
        ("entrypoint", "a.b"),
        ("entrypoint", ""),
        ("entrypoint", None),
    ],
)
def test_bad_entrypoint_values_are_package_errors(tmp_path, field, value):
    root = _python_package(tmp_path)
    edit_json(root / "0" / "config.json", **{field: value})
    with pytest.raises(PackageError, match=rf"0/config\.json: field '{field}'"):
        load_neuropod(root)


def test_the_python_package_still_loads_with_and_without_a_manifest(tmp_path):
    for manifest in (True, False):
        root = _python_package(tmp_path / str(manifest), manifest=manifest)
        with load_neuropod(root) as model:
            np.testing.assert_array_equal(model.infer({"x": X})["out"], X)


# --- the self-test leaves no copy behind ----------------------------------------------------------


def test_packaging_a_zip_with_a_self_test_leaves_the_cache_empty(tmp_path):
    from neuropod.packagers import create_placeholder_neuropod

    path = create_placeholder_neuropod(tmp_path / "m.zip", "m", INPUTS, OUTPUTS, test_input_data={"x": X})
    assert zipfile.is_zipfile(path)
    assert _cache_entries() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]  # no work dir left either


def test_inspect_checks_a_cached_zip_against_the_zip(tmp_path):
    from neuropod.package.archive import write_zip
    from neuropod.package.manifest import write_manifest

    write_zip(placeholder_dir(tmp_path / "tree"), tmp_path / "m.zip")
    root = open_package(tmp_path / "m.zip").root
    edit_json(root / "config.json", name="evil")
    write_manifest(root)  # the cache now agrees with itself
    result = subprocess.run(
        [sys.executable, "-m", "neuropod.cli", "inspect", "--json", str(tmp_path / "m.zip")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "target" and info["manifest"] == "verified"


@pytest.mark.parametrize(
    "names",
    [[b"0", b"0/config.json"], [b"0/config.json", b"0/config.json/x"], [b"a", b"a/"], [b"0/x", b"0\\x"]],
    ids=["file_then_dir", "dir_under_file", "same_name_as_dir", "backslash_twin"],
)
def test_clashing_entries_are_a_package_error(tmp_path, names):
    entries = [(name, data, {}) for name, data in _zip_of(tmp_path).items() if name != b"0/config.json"]
    entries += [(name, b"{}", {}) for name in names]
    path = raw_zip(tmp_path / "clash.zip", entries)
    with pytest.raises(PackageError, match="clash.zip"):
        open_package(path)
    assert _cache_entries() == []


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "zeros", "flipped"])
def test_a_corrupt_torchscript_model_is_a_package_error_naming_the_data_dir(tmp_path, corruption):
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    root = create_torchscript_neuropod(
        neuropod_path=tmp_path / "pkg",
        model_name="addition",
        module=Addition(),
        input_spec=[{"name": n, "dtype": "float32", "shape": ["batch"]} for n in ("x", "y")],
        output_spec=[{"name": "out", "dtype": "float32", "shape": ["batch"]}],
        package_as_zip=False,
    )
    (root / "manifest.json").unlink()  # a package as the original wrote it: nothing catches the edit before torch
    model = root / "0" / "data" / "model.pt"
    data = bytearray(model.read_bytes())
    if corruption == "truncated":
        data = data[: len(data) // 2]
    elif corruption == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif corruption == "zeros":
        data[64:-64] = b"\0" * (len(data) - 128)
    else:
        for index in range(100, len(data), 97):
            data[index] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"0/data"):
        load_neuropod(root)
