"""The core install (no extra) on every supported Python: what the wheel holds, and the paths a user runs first."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from models import X, Y, where_am_i_package

import neuropod
from neuropod import infer_spec, load_neuropod
from neuropod.packagers import create_placeholder_neuropod

DISTRIBUTION = "neuropod-python"


def test_the_version_is_the_distributions() -> None:
    assert importlib.metadata.version(DISTRIBUTION) == neuropod.__version__


def test_the_wheel_holds_the_proto_the_typed_marker_and_the_license() -> None:
    files = importlib.resources.files("neuropod")
    assert "service GRPCInferenceService" in (files / "kserve" / "proto" / "kserve_v2.proto").read_text()
    assert (files / "py.typed").is_file()
    license_files = [f for f in importlib.metadata.files(DISTRIBUTION) or () if f.name == "LICENSE"]
    assert license_files and "Apache License" in license_files[0].read_text()
    metadata = importlib.metadata.metadata(DISTRIBUTION)
    assert metadata["License-Expression"] == "Apache-2.0"
    description = metadata.get_payload() if hasattr(metadata, "get_payload") else str(metadata)
    # Written for the index: no development commands, no links into the repository's tree.
    assert "scripts/dev.sh" not in description and "](docs/" not in description


def test_import_neuropod_imports_no_framework() -> None:
    frameworks = "('torch', 'tensorflow', 'jax', 'onnxruntime', 'grpc')"
    code = f"import sys, neuropod; print(sorted(m for m in {frameworks} if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_a_placeholder_runs_in_process_and_in_a_worker(tmp_path: Path) -> None:
    path = create_placeholder_neuropod(tmp_path / "p.zip", "p", infer_spec({"x": X}), infer_spec({"out": X}))
    for use_ope in (False, True):
        with load_neuropod(path, use_ope=use_ope) as model:
            assert model.infer({"x": X})["out"].shape == X.shape


def test_a_python_package_runs_in_a_worker_of_this_install(tmp_path: Path) -> None:
    path = where_am_i_package(tmp_path)
    with load_neuropod(path, use_ope=True) as model:
        out = model.infer({"x": X, "y": Y})
    np.testing.assert_array_equal(out["out"], X + Y)
    assert out["prefix"][0] == sys.prefix and out["numpy_version"][0] == np.__version__


def test_a_worker_under_another_python_sees_only_its_own_packages(tmp_path: Path, other_python: str) -> None:
    """The worker's path holds neuropod's code alone: the other interpreter imports its own numpy, not ours."""
    probe = "import sys, numpy; print(sys.prefix); print(numpy.__version__)"
    prefix, numpy_version = subprocess.run(
        [other_python, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    path = where_am_i_package(tmp_path)
    with load_neuropod(path, use_ope=True, python_executable=other_python) as model:
        out = model.infer({"x": X, "y": Y})
    np.testing.assert_array_equal(out["out"], X + Y)
    assert (out["prefix"][0], out["numpy_version"][0]) == (prefix, numpy_version)


def test_the_command_line_inspects_and_runs_a_package(tmp_path: Path) -> None:
    path = where_am_i_package(tmp_path)
    neuropod_command = str(Path(sys.executable).with_name("neuropod"))
    shown = subprocess.run([neuropod_command, "inspect", str(path), "--json"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "where"
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    ran = subprocess.run(
        [
            neuropod_command,
            "infer",
            str(path),
            "--input",
            f"x={tmp_path / 'x.npy'}",
            "--input",
            f"y={tmp_path / 'y.npy'}",
        ],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    assert "out" in ran.stdout


def test_a_package_pinning_what_is_installed_runs_in_this_process(tmp_path: Path) -> None:
    """Pins are checked by the version rules (packaging, a core dependency): met here, no worker is needed."""
    path = where_am_i_package(tmp_path, requirements=[f"numpy=={np.__version__}"])
    with load_neuropod(path) as model:
        out = model.infer({"x": X, "y": Y})
    assert out["prefix"][0] == sys.prefix
