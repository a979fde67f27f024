"""Packages written by the original state no torch version: a legacy TorchScript file says it itself."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest
from envs_helpers import use_envs_dir

from conftest import require
from neuropod import load_neuropod
from neuropod.envs import need_of
from neuropod.envs.legacy import LEGACY_TORCHSCRIPT_RANGE, is_legacy_torchscript_archive
from neuropod.package import open_package

X = np.array([[1.0, 2.0]], np.float32)
Y = np.array([[3.0, 4.0]], np.float32)


def test_the_legacy_archive_is_recognised_without_importing_torch(legacy_fixtures):
    import subprocess

    model = legacy_fixtures / "torchscript_addition_model" / "0" / "data" / "model.pt"
    code = (
        "import sys; from neuropod.envs.legacy import is_legacy_torchscript_archive as legacy; "
        f"print(legacy({str(model)!r}), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_a_current_torchscript_file_is_not_legacy(tmp_path):
    torch = require("torch")

    class Add(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(Add()), str(path))
    assert not is_legacy_torchscript_archive(str(path))
    (tmp_path / "text.pt").write_text("not a zip")
    assert not is_legacy_torchscript_archive(str(tmp_path / "text.pt"))


def test_the_legacy_package_needs_old_torch_and_a_log_line_says_why(legacy_fixtures, tmp_path, caplog):
    package = open_package(legacy_fixtures / "torchscript_addition_model")
    with caplog.at_level(logging.INFO, logger="neuropod.envs"):
        need = need_of(package)
    assert need.framework_range.text == LEGACY_TORCHSCRIPT_RANGE
    assert "legacy format of torch ~1.0" in caplog.text and "model.pt" in caplog.text
    # A range the package states wins over what the file implies.
    stated = tmp_path / "stated"
    shutil.copytree(legacy_fixtures / "torchscript_addition_model", stated)
    config = json.loads((stated / "config.json").read_text())
    (stated / "config.json").write_text(json.dumps({**config, "platform_version_semver": "~1.9"}))
    assert need_of(open_package(stated)).framework_range.text == "~1.9"


@pytest.mark.slow
def test_load_neuropod_of_the_unchanged_legacy_package_just_works(legacy_fixtures, monkeypatch):
    """No range, no environment named: the file's format picks the Python 3.9 + torch 1.10.2 worker CI builds."""
    require("torch")
    use_envs_dir(monkeypatch)
    with load_neuropod(legacy_fixtures / "torchscript_addition_model") as model:
        (worker,) = model.executor.workers
        assert not worker.python_version.startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], [[4.0, 6.0]])
