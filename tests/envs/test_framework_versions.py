"""Packages that need other framework versions than this process has, run side by side.

The torch 1.10.2 environment is the one big build (an ~840 MB wheel): it is
built once per checkout (CI: once per run) into ``.cache/envs``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from envs_helpers import onnx_addition_package, use_envs_dir

from conftest import require
from neuropod import load_neuropod


@pytest.fixture(autouse=True)
def _shared_envs(monkeypatch):
    use_envs_dir(monkeypatch)


X = np.array([[1.0, 2.0]], np.float32)
Y = np.array([[3.0, 4.0]], np.float32)


def _loaded_version(pid: int, library: str, distribution: str) -> str:
    """The version of ``distribution`` whose ``library`` process ``pid`` has mapped (what it really runs)."""
    with open(f"/proc/{pid}/maps") as maps:
        paths = {line.split()[-1] for line in maps if library in line}
    assert len(paths) == 1, paths
    site_packages = Path(paths.pop()).parents[2]
    (dist_info,) = glob.glob(str(site_packages / f"{distribution}-*.dist-info"))
    return Path(dist_info).name[len(distribution) + 1 : -len(".dist-info")]


def test_two_onnxruntime_versions_concurrently_in_one_process(tmp_path):
    onnxruntime = require("onnxruntime")
    old = onnx_addition_package(tmp_path, "old", "~1.17")
    current = onnx_addition_package(tmp_path, "current", f">={onnxruntime.__version__}")
    with load_neuropod(old) as old_model, load_neuropod(current) as current_model:
        assert type(current_model.executor).__name__ == "InProcessExecutor"
        (worker,) = old_model.executor.workers
        errors = []

        def call(model, rounds=20):
            try:
                for i in range(rounds):
                    out = model.infer({"x": X + i, "y": Y})["out"]
                    np.testing.assert_array_equal(out, X + i + Y)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(m,)) for m in (old_model, current_model)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert _loaded_version(worker.pid, "onnxruntime_pybind11_state", "onnxruntime").startswith("1.17.")
        assert _loaded_version(os.getpid(), "onnxruntime_pybind11_state", "onnxruntime") == onnxruntime.__version__


@pytest.mark.slow
def test_legacy_torchscript_runs_under_torch_1_10_from_this_python(tmp_path, legacy_fixtures):
    """Saved by torch ~1.0: torch 2.x refuses it; a Python 3.9 + torch 1.10.2 worker runs it."""
    torch = require("torch")
    legacy = legacy_fixtures / "torchscript_addition_model"
    with pytest.raises(Exception, match="Legacy model format is not supported"):
        load_neuropod(legacy, environment="current")  # this process's torch refuses the old format

    # The package states the versions it works with, as the original's packager would have written it.
    stated = tmp_path / "legacy"
    shutil.copytree(legacy, stated)
    config = json.loads((stated / "config.json").read_text())
    (stated / "config.json").write_text(json.dumps({**config, "platform_version_semver": "1.10.2"}))
    with load_neuropod(stated) as model:
        (worker,) = model.executor.workers
        assert worker.python_version.startswith("3.9.") or worker.python_version.startswith("3.8.")
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], [[4.0, 6.0]])
        assert _loaded_version(worker.pid, "libtorch_cpu", "torch") == "1.10.2"
        environment = Path(model.executor.options.python_executable).parent.parent
    assert torch.__version__.startswith("2.")

    # The unchanged package, with the environment named: environment=PATH forces it.
    with load_neuropod(legacy, environment=str(environment)) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], [[4.0, 6.0]])
