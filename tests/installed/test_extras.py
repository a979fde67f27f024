"""Each extra installed alone enables its commands; without it, the command says in one line which extra to install.

The venv's extras are stated by the runner (``extras`` fixture), so each case
asserts one definite outcome: the command works, or it exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import FrozenSet, List

import numpy as np
import pytest
from models import X, Y, where_am_i_package

from neuropod import load_neuropod

NEUROPOD = str(Path(sys.executable).with_name("neuropod"))


def run(argv: List[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([NEUROPOD, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_names_the_missing_extra(result: subprocess.CompletedProcess, extra: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and f"pip install 'neuropod-python[{extra}]'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve(tmp_path: Path, extras: FrozenSet[str]) -> None:
    path = where_am_i_package(tmp_path)
    if "serve" not in extras:
        assert_names_the_missing_extra(run(["serve", str(path)], tmp_path), "serve")
        return
    http_port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [NEUROPOD, "serve", str(path), "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.2)
        body = {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
                for n, a in (("x", X), ("y", Y))
            ]
        }
        curl = subprocess.run(
            ["curl", "-sf", "-H", "Content-Type: application/json", "-d", json.dumps(body),
             f"http://127.0.0.1:{http_port}/v2/models/where/infer"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        outputs = {o["name"]: o for o in json.loads(curl.stdout)["outputs"]}
        assert outputs["out"]["data"] == (X + Y).ravel().tolist()
        for url in (f"http://127.0.0.1:{http_port}/where", f"grpc://127.0.0.1:{grpc_port}/where"):
            with load_neuropod(url) as model:
                np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_evaluate_report(tmp_path: Path, extras: FrozenSet[str]) -> None:
    path = where_am_i_package(tmp_path)
    np.savez(tmp_path / "data.npz", x=np.tile(X, (8, 1)), y=np.tile(Y, (8, 1)))
    argv = ["evaluate", str(path), "--data", str(tmp_path / "data.npz"), "--report", str(tmp_path / "report")]
    result = run(argv, tmp_path)
    if "tools" not in extras:
        assert_names_the_missing_extra(result, "tools")
        assert not (tmp_path / "report").exists(), "the run was refused before it started"
        return
    assert result.returncode == 0, result.stderr
    assert "data:image/png;base64" in (tmp_path / "report" / "report.html").read_text()


def test_keygen(tmp_path: Path, extras: FrozenSet[str]) -> None:
    result = run(["keygen", str(tmp_path / "key")], tmp_path)
    if "trust" not in extras:
        assert_names_the_missing_extra(result, "trust")
        return
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "key").is_file() and (tmp_path / "key.pub").is_file()


def test_envs_build(tmp_path: Path, extras: FrozenSet[str]) -> None:
    (tmp_path / "requirements.txt").write_text("numpy==2.0.2\n")
    result = run(["envs", "build", "--requirements", str(tmp_path / "requirements.txt")], tmp_path, timeout=900)
    if "envs" not in extras:
        assert_names_the_missing_extra(result, "envs")
        return
    assert result.returncode == 0, result.stderr


def test_a_pinned_python_package_sees_exactly_its_pins(tmp_path: Path, extras: FrozenSet[str]) -> None:
    """requirements=["numpy==2.0.2"] runs in an environment built for it: the worker imports that numpy, not ours."""
    if "envs" not in extras:
        pytest.skip("builds an environment: runs in the envs venv")  # the runner gives every test a venv that runs it
    path = where_am_i_package(tmp_path, requirements=["numpy==2.0.2"])
    with load_neuropod(path) as model:
        out = model.infer({"x": X, "y": Y})
    np.testing.assert_array_equal(out["out"], X + Y)
    assert out["numpy_version"][0] == "2.0.2" and out["prefix"][0] != sys.prefix


def test_the_originals_legacy_torchscript_package_runs(legacy_fixtures: Path, extras: FrozenSet[str]) -> None:
    """Saved by torch ~1.0: runs in a Python 3.9 + torch 1.10.2 worker that version selection finds or builds."""
    if "envs" not in extras:
        pytest.skip("builds an environment: runs in the envs venv")
    with load_neuropod(legacy_fixtures / "torchscript_addition_model") as model:
        out = model.infer({"x": X, "y": Y})
    np.testing.assert_array_equal(out["out"], X + Y)
