"""``neuropod serve`` of models that need different framework versions; readiness while one's environment builds."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from envs_helpers import onnx_addition_package, use_envs_dir
from filelock import FileLock

from conftest import require
from neuropod import load_neuropod
from neuropod.envs.build import Builder
from neuropod.envs.need import need_of
from neuropod.package import open_package

X = np.array([[1.0, 2.0]], np.float32)
Y = np.array([[3.0, 4.0]], np.float32)


@pytest.fixture
def empty_envs_dir(tmp_path, monkeypatch):
    return use_envs_dir(monkeypatch, tmp_path / "envs")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_serve_models_of_two_onnxruntime_versions_not_ready_while_building(tmp_path, empty_envs_dir):
    onnxruntime = require("onnxruntime")
    from neuropod.serving import ModelServer, ServerConfig

    repo = tmp_path / "repo"
    repo.mkdir()
    onnx_addition_package(repo, "old", "~1.17")
    onnx_addition_package(repo, "current", f">={onnxruntime.__version__}")
    # Hold the lock the build of old's environment takes: the build stays "in progress" until we let go.
    plan = Builder().plan(need_of(open_package(repo / "old")))
    empty_envs_dir.mkdir(exist_ok=True)
    lock = FileLock(str(empty_envs_dir / f".{plan.key}.lock"))
    lock.acquire()
    try:
        with ModelServer.from_path(repo, ServerConfig(grpc_port=None, http_port=0)) as server:
            base = f"http://127.0.0.1:{server.http_port}/v2"
            assert _status(f"{base}/health/live") == 200
            assert _status(f"{base}/health/ready") == 503
            assert _status(f"{base}/models/current/ready") == 200
            assert _status(f"{base}/models/old/ready") == 503
            with load_neuropod(f"http://127.0.0.1:{server.http_port}/old", validate=False) as early:
                with pytest.raises(Exception, match="HTTP 503: model .old. version 1 is not ready"):
                    early.infer({"x": X, "y": Y})
            lock.release()
            deadline = time.monotonic() + 180
            while _status(f"{base}/health/ready") != 200:
                assert time.monotonic() < deadline, "old's environment was not built in time"
                time.sleep(0.5)
            for name in ("old", "current"):
                with load_neuropod(f"http://127.0.0.1:{server.http_port}/{name}") as remote:
                    np.testing.assert_array_equal(remote.infer({"x": X, "y": Y})["out"], X + Y)
            old_model = server.repository.get("old").neuropod
            assert old_model.executor.ready()
    finally:
        if lock.is_locked:
            lock.release()
