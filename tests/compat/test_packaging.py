"""The original Neuropod's packaging calls, run as its users wrote them (issue 8 items 1, 2, 5, 7; issue 9.3).

Facts from the original's public source: ``code_path_spec`` entries copy
``python_root/<dir>`` to ``0/code/<dir>`` (``""`` is the whole root) and every
code directory gets an ``__init__.py``; ``config.json`` is
``json.dump(config, indent=4, sort_keys=True)`` (its last version; 0.2.0
wrote the keys unsorted) with the keys name, platform,
platform_version_semver, input_spec, output_spec, custom_ops,
input_tensor_device (specs as name, dtype, shape), no trailing newline; the
Python packager's ``0/config.json`` is ``json.dump(..., sort_keys=True)``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from neuropod import FrameworkVersionError, NeuropodError, PackageError, TestMismatchError, VersionRangeError
from neuropod.loader import load_neuropod
from neuropod.package import PackageConfig
from neuropod.packagers import create_placeholder_neuropod, create_python_neuropod, create_pytorch_neuropod

ADDITION_MODEL_SOURCE = """
def addition_model(x, y):
    return {"out": x + y}


def get_model(_):
    return addition_model
"""


def get_addition_model_spec(do_fail=False):
    """The original's test helper, as its users copied it."""
    return dict(
        input_spec=[
            {"name": "x", "dtype": "float32", "shape": ("batch_size",)},
            {"name": "y", "dtype": "float32", "shape": ("batch_size",)},
        ],
        output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch_size",)}],
        test_input_data={"x": np.arange(5, dtype=np.float32), "y": np.arange(5, dtype=np.float32)},
        test_expected_out={"out": np.zeros(5) if do_fail else np.arange(5) + np.arange(5)},
    )


def _model_code(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "addition_model.py").write_text(ADDITION_MODEL_SOURCE)
    return root


def _package_everything(tmp_path: Path, packager=create_python_neuropod, **options):  # type: ignore[no-untyped-def]
    code = _model_code(tmp_path / "model_code")
    return packager(
        neuropod_path=tmp_path / "test_neuropod",
        model_name="addition_model",
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],  # package everything in the root
        entrypoint_package="addition_model",
        entrypoint="get_model",
        **{**get_addition_model_spec(), **options},
    )


# --- item 1: dirs_to_package ---------------------------------------------------------------------


@pytest.mark.parametrize("packager", [create_python_neuropod, create_pytorch_neuropod])
@pytest.mark.parametrize("package_as_zip", [True, False])
def test_dirs_to_package_empty_string_packages_the_whole_root(tmp_path, packager, package_as_zip):
    path = _package_everything(tmp_path, packager, package_as_zip=package_as_zip)
    with load_neuropod(path) as model:
        assert model.name == "addition_model" and model.platform == "python"
        out = model.infer({"x": np.arange(3, dtype=np.float32), "y": np.ones(3, np.float32)})["out"]
    np.testing.assert_array_equal(out, [1, 2, 3])


def test_the_originals_failing_test_data_raises_value_error(tmp_path):
    with pytest.raises(ValueError):
        _package_everything(tmp_path, **get_addition_model_spec(do_fail=True))
    assert not (tmp_path / "test_neuropod").exists()


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mixed_nested_and_merged_code_specs(tmp_path):
    first = tmp_path / "first"
    (first / "pkg" / "sub").mkdir(parents=True)
    (first / "top.py").write_text("TOP = 1\n")
    (first / "pkg" / "__init__.py").write_text("")
    (first / "pkg" / "sub" / "deep.py").write_text("DEEP = 2\n")
    (first / "pkg" / "__pycache__").mkdir()
    (first / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    second = tmp_path / "second"
    (second / "other" / "nested").mkdir(parents=True)
    (second / "other" / "nested" / "main.py").write_text(
        "from top import TOP\nfrom pkg.sub.deep import DEEP\n\n"
        "def get_model(_):\n    return lambda x, y: {'out': x + y + TOP + DEEP}\n"
    )
    path = create_python_neuropod(
        neuropod_path=tmp_path / "pkg_out",
        model_name="merged",
        data_paths=[],
        code_path_spec=[
            {"python_root": str(first), "dirs_to_package": ["", "pkg"]},  # overlapping entries of one root
            {"python_root": str(second), "dirs_to_package": ["other/nested"]},  # a nested dir keeps its path
        ],
        entrypoint_package="other.nested.main",
        entrypoint="get_model",
        package_as_zip=False,
        **{k: v for k, v in get_addition_model_spec().items() if k.endswith("spec")},
    )
    assert _tree(path / "0" / "code") == {
        "__init__.py": "",
        "other/__init__.py": "",
        "other/nested/__init__.py": "",
        "other/nested/main.py": (second / "other" / "nested" / "main.py").read_text(),
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "DEEP = 2\n",
        "top.py": "TOP = 1\n",
    }
    with load_neuropod(path) as model:
        out = model.infer({"x": np.zeros(2, np.float32), "y": np.ones(2, np.float32)})["out"]
    np.testing.assert_array_equal(out, [4, 4])


def test_two_specs_writing_one_file_is_a_clear_error(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "pkg").mkdir(parents=True)
        (tmp_path / root / "pkg" / "model.py").write_text(f"WHO = {root!r}\n")
    with pytest.raises(PackageError, match=r"0/code/pkg/model\.py would come from both") as info:
        create_python_neuropod(
            neuropod_path=tmp_path / "out",
            model_name="clash",
            data_paths=[],
            code_path_spec=[
                {"python_root": str(tmp_path / "a"), "dirs_to_package": ["pkg"]},
                {"python_root": str(tmp_path / "b"), "dirs_to_package": ["pkg"]},
            ],
            entrypoint_package="pkg.model",
            entrypoint="get_model",
            **{k: v for k, v in get_addition_model_spec().items() if k.endswith("spec")},
        )
    assert str(tmp_path / "a") in str(info.value) and str(tmp_path / "b") in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_package_inside_python_root_is_refused(tmp_path):
    code = _model_code(tmp_path / "code")
    with pytest.raises(PackageError, match="inside python_root"):
        create_python_neuropod(
            neuropod_path=code / "out",
            model_name="m",
            data_paths=[],
            code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
            entrypoint_package="addition_model",
            entrypoint="get_model",
            **{k: v for k, v in get_addition_model_spec().items() if k.endswith("spec")},
        )


@pytest.mark.parametrize("entry", ["..", "../elsewhere", "ABSOLUTE"])
def test_a_dirs_to_package_entry_outside_python_root_is_refused(tmp_path, entry):
    code = _model_code(tmp_path / "root" / "code")
    (tmp_path / "root" / "elsewhere").mkdir()
    (tmp_path / "root" / "elsewhere" / "secret.py").write_text("S = 1\n")
    if entry == "ABSOLUTE":
        entry = str(code)
    with pytest.raises(PackageError, match="outside python_root"):
        create_python_neuropod(
            neuropod_path=tmp_path / "out",
            model_name="m",
            data_paths=[],
            code_path_spec=[{"python_root": str(code), "dirs_to_package": [entry]}],
            entrypoint_package="addition_model",
            entrypoint="get_model",
            **{k: v for k, v in get_addition_model_spec().items() if k.endswith("spec")},
        )
    assert not (tmp_path / "out").exists()


# --- item 2: zip_compression ---------------------------------------------------------------------


def _placeholder(path: Path, **options):  # type: ignore[no-untyped-def]
    spec = get_addition_model_spec()
    return create_placeholder_neuropod(path, "addition", spec["input_spec"], spec["output_spec"], **options)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_compression_is_honoured_and_deterministic(tmp_path, compression):
    first = _package_everything(tmp_path / "one", zip_compression=compression)
    second = _package_everything(tmp_path / "two", zip_compression=compression)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert {info.compress_type for info in zf.infolist() if not info.is_dir()} == {compression}
    with load_neuropod(first) as model:
        assert model.infer({"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)})["out"].tolist() == [2]


def test_an_unknown_zip_compression_is_refused(tmp_path):
    with pytest.raises(PackageError, match="zip_compression"):
        _placeholder(tmp_path / "p.zip", zip_compression=zipfile.ZIP_LZMA)
    assert not (tmp_path / "p.zip").exists()


# --- item 5: platform_version_semver at packaging ----------------------------------------------------


def test_an_invalid_range_raises_a_runtime_error_naming_it(tmp_path):
    with pytest.raises(RuntimeError, match="a.b.c") as info:
        _package_everything(tmp_path, platform_version_semver="a.b.c")
    assert isinstance(info.value, VersionRangeError)
    assert not (tmp_path / "test_neuropod").exists()


def test_a_satisfied_range_packages_and_self_tests(tmp_path):
    require("torch")
    import torch

    class Addition(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    from neuropod.packagers import create_torchscript_neuropod

    major = int(torch.__version__.split(".")[0])
    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "ok.zip",
        model_name="addition_model",
        module=torch.jit.script(Addition()),
        platform_version_semver=f"{major}.0.0 - {major + 1}.0.0",
        **get_addition_model_spec(),
    )
    with load_neuropod(path) as model:
        assert model.package.config.platform_version_semver == f"{major}.0.0 - {major + 1}.0.0"


def test_an_unsatisfiable_range_fails_the_self_test_naming_range_and_version(tmp_path):
    require("torch")
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    with pytest.raises(RuntimeError) as info:
        create_torchscript_neuropod(
            neuropod_path=tmp_path / "old.zip",
            model_name="addition_model",
            module=torch.jit.script(Addition()),
            platform_version_semver="0.0.1",
            **get_addition_model_spec(),
        )
    assert isinstance(info.value, FrameworkVersionError)
    assert "'0.0.1'" in str(info.value) and f"torch {torch.__version__}" in str(info.value)
    assert not (tmp_path / "old.zip").exists()


# --- item 7: the original's bytes ------------------------------------------------------------------

# What the original (its last version) writes for the addition example: json.dump(config, indent=4,
# sort_keys=True), no trailing newline. Its sha256 is the one in the original's own test_manifest target.
ORIGINAL_CONFIG = """{
    "custom_ops": [],
    "input_spec": [
        {
            "dtype": "float32",
            "name": "x",
            "shape": [
                "batch_size"
            ]
        },
        {
            "dtype": "float32",
            "name": "y",
            "shape": [
                "batch_size"
            ]
        }
    ],
    "input_tensor_device": {
        "x": "GPU",
        "y": "GPU"
    },
    "name": "addition_model",
    "output_spec": [
        {
            "dtype": "float32",
            "name": "out",
            "shape": [
                "batch_size"
            ]
        }
    ],
    "platform": "python",
    "platform_version_semver": "*"
}"""
ORIGINAL_BACKEND_CONFIG = '{"entrypoint": "get_model", "entrypoint_package": "addition_model"}'


def test_metadata_has_the_originals_bytes(tmp_path):
    path = _package_everything(tmp_path, package_as_zip=False, persist_test_data=False)
    assert (path / "config.json").read_bytes() == ORIGINAL_CONFIG.encode()
    assert (path / "0" / "config.json").read_bytes() == ORIGINAL_BACKEND_CONFIG.encode()
    manifest = json.loads((path / "manifest.json").read_text())
    files = {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest()
        for name in ("0/code/__init__.py", "0/code/addition_model.py", "0/config.json", "config.json")
    }
    assert manifest == {"manifest_version": 1, "files": files}
    assert (path / "manifest.json").read_text() == json.dumps(manifest, indent=4, sort_keys=True)


def test_a_config_written_by_the_original_is_written_back_as_its_last_version_writes_it(tmp_path, legacy_fixtures):
    original = legacy_fixtures / "torchscript_dict_with_union_value_type_model"
    PackageConfig.read(original).write(tmp_path)
    fields = json.loads((original / "config.json").read_text())
    assert (tmp_path / "config.json").read_text() == json.dumps(fields, indent=4, sort_keys=True)


def test_non_ascii_names_are_escaped_as_the_original_did(tmp_path):
    path = _placeholder(tmp_path / "p", package_as_zip=False)
    config = PackageConfig.read(path)
    renamed = PackageConfig(config.name + "é", config.platform, config.problem)
    renamed.write(tmp_path)
    assert '"addition\\u00e9"' in (tmp_path / "config.json").read_text()


# --- issue 9.3: atomic packaging ------------------------------------------------------------------


@pytest.mark.parametrize("package_as_zip", [True, False])
def test_a_failed_self_test_leaves_nothing_and_a_retry_works(tmp_path, package_as_zip):
    target = tmp_path / "test_neuropod"
    with pytest.raises(TestMismatchError):
        _package_everything(tmp_path, package_as_zip=package_as_zip, **get_addition_model_spec(do_fail=True))
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_code"]  # no temporary left either
    (tmp_path / "model_code" / "addition_model.py").unlink()
    (tmp_path / "model_code").rmdir()
    assert _package_everything(tmp_path, package_as_zip=package_as_zip) == target


def test_keep_failed_keeps_the_package_and_says_where(tmp_path):
    target = tmp_path / "test_neuropod"
    with pytest.raises(TestMismatchError) as info:
        _package_everything(tmp_path, keep_failed=True, **get_addition_model_spec(do_fail=True))
    assert target.is_file() and f"kept at {target}" in str(info.value)
    with load_neuropod(target) as model:  # the kept package is the one that failed, complete
        assert model.infer({"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)})["out"].tolist() == [2]


def test_a_model_that_fails_to_load_leaves_nothing(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "broken.py").write_text("def get_model(_):\n    raise RuntimeError('cannot start')\n")
    with pytest.raises(NeuropodError, match="cannot start"):
        create_python_neuropod(
            neuropod_path=tmp_path / "broken.zip",
            model_name="broken",
            data_paths=[],
            code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
            entrypoint_package="broken",
            entrypoint="get_model",
            **get_addition_model_spec(),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code"]
