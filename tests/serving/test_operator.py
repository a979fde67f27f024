"""Issue 12 item 6: ``neuropod serve`` tells the operator what it is doing (through the real command)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from serving_models import make_adder, neuropod_cli

from conftest import require

require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")


class Server:
    """``neuropod serve`` in a child process, its JSON log lines collected as they come."""

    def __init__(self, args: List[str]) -> None:
        command = neuropod_cli() + ["serve", *args, "--grpc-port", "0", "--http-port", "0"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.records: List[Dict[str, Any]] = []
        self.raw: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw.append(line)
            try:
                self.records.append(json.loads(line))
            except ValueError:
                pass

    def wait_for(self, message: str, timeout: float = 60) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.records):
                if record.get("message") == message:
                    return record
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {message!r} log line; got: {''.join(self.raw)[-3000:]}")

    def messages(self) -> List[str]:
        return [str(r.get("message")) for r in self.records]

    def http_status(self, path: str) -> int:
        port = self.wait_for("serving")["http_port"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def started() -> Any:
    servers: List[Server] = []

    def start(*args: str) -> Server:
        server = Server(list(args))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_liveness_answers_while_models_load_and_each_load_is_logged(tmp_path: Path, started: Any) -> None:
    repo = tmp_path / "repo"
    make_adder(repo / "slow", name="slow", load_sleep_s=3)
    make_adder(repo / "adder")
    server = started(str(repo))
    server.wait_for("serving")
    assert server.http_status("/v2/health/live") == 200
    assert server.http_status("/v2/health/ready") == 503  # not until every model has loaded
    server.wait_for("all models loaded")
    assert server.http_status("/v2/health/ready") == 200
    loading = [r for r in server.records if r.get("message") == "loading model"]
    loaded = {r["model"]: r for r in server.records if r.get("message") == "loaded model"}
    assert sorted(r["model"] for r in loading) == ["adder", "slow"]
    assert loaded["slow"]["duration_s"] >= 3 and loaded["slow"]["path"] == str(repo / "slow")


def test_a_corrupt_package_is_reported_others_serve_and_strict_makes_it_fatal(tmp_path: Path, started: Any) -> None:
    repo = tmp_path / "repo"
    make_adder(repo / "adder")
    (repo / "broken.zip").write_bytes(b"PK\x03\x04 this is no zip")
    server = started(str(repo))
    failure = server.wait_for("cannot load model; serving the others")
    assert failure["path"] == str(repo / "broken.zip") and failure["reason"]
    server.wait_for("all models loaded")
    assert server.http_status("/v2/models/adder/ready") == 200
    done = subprocess.run(
        neuropod_cli() + ["serve", str(repo), "--strict", "--grpc-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "broken.zip" in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr


def _slow_request(port: int, answers: List[Optional[np.ndarray]]) -> threading.Thread:
    def call() -> None:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        tensors = [tritonclient_grpc.InferInput(n, [1, 1], "FP32") for n in ("x", "y")]
        for tensor in tensors:
            tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        try:
            answers.append(client.infer("adder", tensors).as_numpy("out"))
        except Exception:
            answers.append(None)
        client.close()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_first_ctrl_c_drains_in_flight_requests_a_second_stops_at_once(tmp_path: Path, started: Any) -> None:
    make_adder(tmp_path / "adder", sleep_s=2)
    server = started(str(tmp_path / "adder"))
    port = server.wait_for("serving")["grpc_port"]
    server.wait_for("all models loaded")
    answers: List[Optional[np.ndarray]] = []
    request = _slow_request(port, answers)
    time.sleep(0.5)
    server.process.send_signal(signal.SIGINT)
    assert server.wait_for("draining 1 requests")["in_flight"] == 1
    request.join(30)
    assert answers and answers[0] is not None and answers[0].tolist() == [[2.0]]  # it finished
    assert server.process.wait(30) == 0

    second = started(str(tmp_path / "adder"))
    port = second.wait_for("serving")["grpc_port"]
    second.wait_for("all models loaded")
    _slow_request(port, [])
    time.sleep(0.5)
    second.process.send_signal(signal.SIGINT)
    second.wait_for("draining 1 requests")
    began = time.monotonic()
    second.process.send_signal(signal.SIGINT)
    assert second.process.wait(30) == 130
    assert time.monotonic() - began < 1.5  # it did not wait for the 2 s request
    second.wait_for("second signal: stopping now")


def test_a_settings_error_without_strict_does_not_blame_strict(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_adder(repo / "adder")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"models": {"nosuch": {}}}))
    done = subprocess.run(
        neuropod_cli() + ["serve", str(repo), "--config", str(settings), "--grpc-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--strict" not in done.stderr and "nosuch" in done.stderr
