"""Production behaviour: concurrency, metrics, readiness, graceful shutdown, batching, auth, TLS, logs, CLI."""

from __future__ import annotations

import http.client
import io
import json
import logging
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from serving_models import assert_stops_cleanly, make_adder, make_strings, neuropod_cli, serve_cli

from conftest import require, require_command
from neuropod import load_neuropod
from neuropod.errors import AuthenticationError, ModelNotReadyError, OptionError
from neuropod.executors.base import Executor, TensorDict

require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")
tritonclient_http = require("tritonclient.http")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from neuropod.serving import ModelRepository, ModelServer, ModelSettings, ServedModel, ServerConfig  # noqa: E402
from neuropod.serving.logs import configure_json_logging  # noqa: E402

LOOPBACK = ServerConfig(grpc_port=0, http_port=0)

# tritonclient's HTTP client is gevent-based: when the garbage collector frees one on
# another thread (the server's, say), its __del__ complains. Harmless; not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function InferenceServerClient.__del__:pytest.PytestUnraisableExceptionWarning"
)


def _adder_inputs(module: Any, x: np.ndarray, y: np.ndarray) -> list:
    inputs = [module.InferInput("x", list(x.shape), "FP32"), module.InferInput("y", list(y.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(y)
    return inputs


def _metrics(server: ModelServer) -> Dict[str, float]:
    """Every sample of the server's /metrics page, keyed ``name{label=value,...}``."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@pytest.fixture
def adder(tmp_path: Path) -> Path:
    return make_adder(tmp_path / "adder")


def test_concurrent_requests_over_both_protocols_and_metrics(adder: Path) -> None:
    with ModelServer.from_path(adder, LOOPBACK) as server:
        grpc_client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        # tritonclient's HTTP client is gevent-based: it runs its concurrent calls on this thread.
        http_client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}", concurrency=16)
        arrays = [np.full((2, 3), i, dtype=np.float32) for i in range(60)]

        def grpc_call(x: np.ndarray) -> bool:
            result = grpc_client.infer("adder", _adder_inputs(tritonclient_grpc, x, x))
            return bool(np.array_equal(result.as_numpy("out"), 2 * x))

        with ThreadPoolExecutor(16) as pool:
            grpc_ok = pool.map(grpc_call, arrays)
            pending = [
                http_client.async_infer("adder", _adder_inputs(tritonclient_http, x, x), request_id=str(i))
                for i, x in enumerate(arrays)
            ]
            for i, request in enumerate(pending):
                result = request.get_result()
                assert result.get_response()["id"] == str(i)
                np.testing.assert_array_equal(result.as_numpy("out"), 2 * arrays[i])
            assert all(grpc_ok)
        with pytest.raises(InferenceServerException):
            grpc_client.infer(
                "adder", _adder_inputs(tritonclient_grpc, np.zeros((1, 1), np.float32), np.zeros((2, 1), np.float32))
            )
        grpc_client.close()
        http_client.close()

        samples = _metrics(server)
        assert samples["neuropod_inference_requests_total{model=adder,protocol=grpc,version=1}"] == 61
        assert samples["neuropod_inference_requests_total{model=adder,protocol=rest,version=1}"] == 60
        assert samples["neuropod_inference_errors_total{code=400,model=adder,protocol=grpc}"] == 1
        assert samples["neuropod_inference_duration_seconds_count{model=adder,protocol=rest}"] == 60
        assert samples["neuropod_inference_duration_seconds_bucket{le=+Inf,model=adder,protocol=grpc}"] == 60


class _WorkerLikeExecutor(Executor):
    """Stands in for an out-of-process executor whose worker can die and be replaced."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.worker_alive = True
        self.restarts = 0
        self.restarts_succeed = False

    def infer(self, inputs: TensorDict) -> TensorDict:
        return self.inner.infer(inputs)

    def ready(self) -> bool:
        return self.worker_alive

    def restart(self) -> None:
        self.restarts += 1
        self.worker_alive = self.restarts_succeed

    def close(self) -> None:
        self.inner.close()


def test_readiness_follows_the_executor(adder: Path) -> None:
    from neuropod.loader import Neuropod

    loaded = load_neuropod(adder)
    executor = _WorkerLikeExecutor(loaded.executor)
    model = Neuropod(executor, loaded.name, loaded.platform, loaded.problem, loaded.package)
    repository = ModelRepository()
    repository.add(ServedModel("adder", "1", model))
    with ModelServer(repository, ServerConfig(grpc_port=0, http_port=0, health_check_interval_s=0.05)) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        http = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        x = np.ones((1, 2), np.float32)
        assert client.is_model_ready("adder") and http.is_server_ready()

        executor.worker_alive = False  # the worker died
        assert not client.is_model_ready("adder") and not client.is_server_ready()
        assert not http.is_model_ready("adder") and not http.is_server_ready()
        assert http.is_server_live()
        with pytest.raises(InferenceServerException) as info:
            client.infer("adder", _adder_inputs(tritonclient_grpc, x, x))
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        with pytest.raises(InferenceServerException) as info:
            http.infer("adder", _adder_inputs(tritonclient_http, x, x))
        assert info.value.status() == "503"
        with pytest.raises(ModelNotReadyError):
            load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/adder").infer({"x": x, "y": x})

        executor.restarts_succeed = True  # the server's watcher gets a replacement worker up
        deadline = time.monotonic() + 20
        while not client.is_model_ready("adder") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.is_model_ready("adder") and http.is_server_ready()
        assert executor.restarts >= 1
        np.testing.assert_array_equal(
            client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out"), 2 * x
        )
        client.close()
        http.close()
        del http  # here: a gevent client collected on another thread complains


def test_graceful_shutdown_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    slow = make_adder(tmp_path / "slow", sleep_s=1.0)
    server = ModelServer.from_path(slow, LOOPBACK).start()
    results: Dict[str, Any] = {}
    x = np.ones((1, 2), np.float32)

    def grpc_call() -> None:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        results["grpc"] = client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out")
        client.close()

    def http_call() -> None:
        # A stdlib client here: tritonclient's gevent client cannot run on a second thread.
        import urllib.request

        body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 2], "data": [1, 1]} for n in ("x", "y")]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/models/adder/infer", json.dumps(body).encode()
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            results["rest"] = np.array(json.loads(response.read())["outputs"][0]["data"], np.float32).reshape(1, 2)

    threads = [threading.Thread(target=grpc_call), threading.Thread(target=http_call)]
    for thread in threads:
        thread.start()
    # Wait until both requests are inside the server, then stop it.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = server.metrics.requests
        if sum(s.value for m in counts.collect() for s in m.samples if s.name.endswith("_total")) == 2:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the slow requests never reached the server")
    server.stop(grace=20)
    for thread in threads:
        thread.join(30)
    np.testing.assert_array_equal(results["grpc"], 2 * x)
    np.testing.assert_array_equal(results["rest"], 2 * x)
    # The server is gone: the port no longer answers.
    gone = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}", connection_timeout=2)
    with pytest.raises(ConnectionRefusedError):
        gone.is_server_live()
    gone.close()
    del gone  # here: a gevent client collected on another thread complains


def test_dynamic_batching_merges_concurrent_requests(tmp_path: Path) -> None:
    log = tmp_path / "batches.txt"
    adder = make_adder(tmp_path / "adder", batch_log=str(log), sleep_s=0.02)
    settings = ModelSettings(max_batch_size=16, max_queue_delay_ms=200)
    with ModelServer.from_path(adder, LOOPBACK, model_settings={"adder": settings}) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        start = threading.Barrier(8)

        def call(i: int) -> bool:
            rows = 1 + i % 2
            x = np.full((rows, 3), i, dtype=np.float32)
            start.wait()
            out = client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out")
            return out.shape == (rows, 3) and bool(np.all(out == 2 * i))

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(call, range(8)))
        # Incompatible trailing sizes never share a batch, and still all get answers.
        x3, x5 = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(
                lambda x: client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out"), [x3, x5]
            )
        assert a.shape == (1, 3) and b.shape == (1, 5)
        client.close()
        batch_sizes = _metrics(server)
    seen = [int(line) for line in log.read_text().split()]
    assert sum(seen[:-2]) == 12  # every row of the 8 requests ran exactly once
    assert max(seen) > 2  # some requests were merged
    assert seen[-2:] == [1, 1]
    assert batch_sizes["neuropod_batch_size_sum{model=adder}"] == 14


def test_batching_needs_a_batch_symbol(tmp_path: Path) -> None:
    from neuropod.packagers import create_placeholder_neuropod

    fixed = create_placeholder_neuropod(
        tmp_path / "fixed",
        "fixed",
        [{"name": "x", "dtype": "float32", "shape": [2]}],
        [{"name": "y", "dtype": "float32", "shape": [2]}],
    )
    with pytest.raises(OptionError, match="batch symbol"):
        ModelRepository.from_path(fixed, model_settings={"fixed": ModelSettings(max_batch_size=4)})
    # As a server-wide default it is skipped for models that cannot batch.
    repository = ModelRepository.from_path(fixed, default_settings=ModelSettings(max_batch_size=4))
    assert repository.get("fixed").settings.max_batch_size == 0
    repository.close()


def test_bearer_token(adder: Path) -> None:
    config = ServerConfig(grpc_port=0, http_port=0, token="s3cret")
    with ModelServer.from_path(adder, config) as server:
        x = np.ones((1, 1), np.float32)
        grpc_client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        http_client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        good = {"authorization": "Bearer s3cret"}
        assert grpc_client.is_server_ready() and http_client.is_server_live()  # health stays open
        for headers, expected in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer wrong"}, "UNAUTHENTICATED")):
            with pytest.raises(InferenceServerException) as info:
                grpc_client.infer("adder", _adder_inputs(tritonclient_grpc, x, x), headers=headers)
            assert info.value.status() == f"StatusCode.{expected}"
        with pytest.raises(InferenceServerException) as info:
            http_client.infer("adder", _adder_inputs(tritonclient_http, x, x))
        assert info.value.status() == "401"
        assert (
            grpc_client.infer("adder", _adder_inputs(tritonclient_grpc, x, x), headers=good).as_numpy("out")[0, 0] == 2
        )
        assert (
            http_client.infer("adder", _adder_inputs(tritonclient_http, x, x), headers=good).as_numpy("out")[0, 0] == 2
        )
        for url in (f"grpc://127.0.0.1:{server.grpc_port}/adder", f"http://127.0.0.1:{server.http_port}/adder"):
            with pytest.raises(AuthenticationError):
                load_neuropod(url)
            with load_neuropod(url, token="s3cret") as model:
                assert model.infer({"x": x, "y": x})["out"][0, 0] == 2
        grpc_client.close()
        http_client.close()
        del http_client  # here: a gevent client collected on another thread complains


def test_tls(adder: Path, tmp_path: Path) -> None:
    require_command("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key)]
    subprocess.run([*command, "-out", str(cert), *subject], check=True, capture_output=True, timeout=60)
    config = ServerConfig(grpc_port=0, http_port=0, tls_cert=str(cert), tls_key=str(key))
    x = np.ones((1, 2), np.float32)
    with ModelServer.from_path(adder, config) as server:
        client = tritonclient_grpc.InferenceServerClient(
            f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(cert)
        )
        assert client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out")[0, 0] == 2
        client.close()
        for url in (f"grpcs://localhost:{server.grpc_port}/adder", f"https://127.0.0.1:{server.http_port}/adder"):
            with load_neuropod(url, root_certificates=str(cert)) as model:
                np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], 2 * x)
        # Plain text is refused on a TLS port.
        plain = tritonclient_http.InferenceServerClient(
            f"127.0.0.1:{server.http_port}", connection_timeout=5, network_timeout=5
        )
        with pytest.raises((OSError, http.client.HTTPException, InferenceServerException)):
            plain.is_server_live()
        plain.close()
        del plain  # here: a gevent client collected on another thread complains


def test_structured_json_logs(adder: Path) -> None:
    stream = io.StringIO()
    handler = configure_json_logging(logging.INFO, stream)
    try:
        with ModelServer.from_path(adder, LOOPBACK) as server:
            ports = (server.grpc_port, server.http_port)
    finally:
        logger = logging.getLogger("neuropod")
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    messages = [r["message"] for r in records]
    assert messages[:3] == ["loading model", "loaded model", "serving"] and messages[-1] == "stopped"
    assert records[1]["duration_s"] >= 0 and records[1]["path"] == str(adder)
    serving = records[2]
    assert (serving["grpc_port"], serving["http_port"]) == ports
    assert serving["level"] == "info" and serving["logger"] == "neuropod.serving" and serving["time"].endswith("Z")


def test_importing_serving_configures_no_logging() -> None:
    code = (
        "import logging, neuropod.serving.server; "
        "print(len(logging.getLogger('neuropod').handlers), len(logging.root.handlers))"
    )
    done = subprocess.run(neuropod_cli()[:1] + ["-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["0", "0"]


def _read_serving_line(process: subprocess.Popen[str]) -> Dict[str, Any]:
    """The "serving" log record (ports bound), with the models of the later "all models loaded" one."""
    assert process.stderr is not None
    lines: List[str] = []
    serving: Dict[str, Any] = {}
    for line in process.stderr:
        lines.append(line)
        if '"serving"' in line:
            serving = json.loads(line)
        elif '"all models loaded"' in line:
            assert serving, "the models loaded before the ports were bound"
            return {**serving, "models": json.loads(line)["models"]}
    raise AssertionError("the server exited before serving: " + "".join(lines))


def test_cli_serve_subprocess_and_sigterm(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_adder(repo / "adder")
    make_strings(repo / "strings")
    with serve_cli(str(repo), "--grpc-port", "0", "--http-port", "0", "--max-batch-size", "8") as process:
        serving = _read_serving_line(process)
        assert serving["host"] == "127.0.0.1"
        assert sorted(serving["models"]) == ["adder:1", "strings:1"]
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{serving['http_port']}")
        words = tritonclient_http.InferInput("s", [1], "BYTES")
        words.set_data_from_numpy(np.array([b"cli"], dtype=object))
        assert client.infer("strings", [words]).as_numpy("upper")[0] == b"CLI"
        client.close()
        assert_stops_cleanly(process)
        assert process.stderr is not None
        assert '"stopped"' in process.stderr.read()


def test_cli_serve_user_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        neuropod_cli() + ["serve", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "no such package or model repository" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"models": {"adder": {"max_batch": 3}}}))
    make_adder(tmp_path / "adder")
    done = subprocess.run(
        neuropod_cli() + ["serve", str(tmp_path / "adder"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown setting(s) max_batch" in done.stderr


def test_models_in_out_of_process_workers(adder: Path) -> None:
    with ModelServer.from_path(adder, LOOPBACK, default_settings=ModelSettings(use_ope=True)) as server:
        assert type(server.repository.get("adder").neuropod.executor).__name__ == "OutOfProcessExecutor"
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.arange(4, dtype=np.float32).reshape(2, 2)
        assert client.is_model_ready("adder")
        np.testing.assert_array_equal(
            client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out"), 2 * x
        )
        client.close()


def test_a_dead_worker_is_replaced_and_the_server_keeps_serving(adder: Path) -> None:
    import os
    import signal as signals

    with ModelServer.from_path(adder, LOOPBACK, default_settings=ModelSettings(use_ope=True)) as server:
        executor = server.repository.get("adder").neuropod.executor
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.ones((1, 2), np.float32)
        assert client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out")[0, 0] == 2
        (old_pid,) = executor.worker_pids
        os.kill(old_pid, signals.SIGKILL)
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:  # the call that meets the dead worker may fail; a later one gets a fresh worker
                answer = client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out")
            except InferenceServerException as exc:
                assert exc.status() in ("StatusCode.INTERNAL", "StatusCode.UNAVAILABLE"), exc
                time.sleep(0.1)
        assert answer is not None and answer[0, 0] == 2
        assert executor.worker_pids[0] not in (None, old_pid)
        assert client.is_server_live() and client.is_model_ready("adder")
        client.close()


def test_readiness_of_a_model_whose_worker_is_killed(adder: Path, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import signal as signals
    import urllib.error
    import urllib.request

    # Not ready lasts from the kill until the watcher's replacement has loaded the model:
    # at least the worker's start-up, up to one check interval more.
    config = ServerConfig(grpc_port=0, http_port=0, health_check_interval_s=1.0)
    caplog.set_level(logging.INFO, logger="neuropod.serving")
    with ModelServer.from_path(adder, config, default_settings=ModelSettings(use_ope=True)) as server:
        executor = server.repository.get("adder").neuropod.executor
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        ready_url = f"http://127.0.0.1:{server.http_port}/v2/models/adder/ready"

        def http_ready() -> bool:
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as response:
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False

        def wait_for(ready: bool, within: float) -> bool:
            deadline = time.monotonic() + within
            while client.is_model_ready("adder") != ready:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True

        x = np.ones((1, 2), np.float32)
        assert client.is_model_ready("adder") and http_ready()
        (old_pid,) = executor.worker_pids
        # The OPE supervisor replaces the worker by itself, with a fork of the zygote in tens of
        # milliseconds; the zygote is held stopped meanwhile so that "not ready" lasts to be seen.
        zygote = executor.zygote.pid
        os.kill(zygote, signals.SIGSTOP)
        try:
            os.kill(old_pid, signals.SIGKILL)
            assert wait_for(False, within=5.0), "the model still reads ready 5 s after its worker was killed"
            assert not http_ready()
            deadline = time.monotonic() + 5.0  # the server's watcher looks once per health_check_interval_s
            while not any(r.getMessage() == "model not ready; restarting its executor" for r in caplog.records):
                assert time.monotonic() < deadline, "the server's watcher did not see the model not ready"
                time.sleep(0.01)
        finally:
            os.kill(zygote, signals.SIGCONT)
        assert wait_for(True, within=10.0), "the server did not bring the model back within 10 s"
        assert http_ready() and client.is_server_ready()
        (new_pid,) = executor.worker_pids
        assert new_pid not in (None, old_pid)
        np.testing.assert_array_equal(
            client.infer("adder", _adder_inputs(tritonclient_grpc, x, x)).as_numpy("out"), 2 * x
        )
        client.close()
    # The server's watcher saw it not ready (no call was made while it was down) and said when it recovered.
    assert any(record.getMessage() == "model recovered" for record in caplog.records)


def test_server_closes_its_models(adder: Path) -> None:
    server = ModelServer.from_path(adder, LOOPBACK).start()
    model = server.repository.get("adder")
    server.stop()
    assert not model.ready()
    server.stop()  # twice is fine


def test_models_and_versions_iterate(adder: Path) -> None:
    repository = ModelRepository.from_path(adder)
    assert [m.name for m in repository] == ["adder"] and repository.versions("adder") == ["1"]
    repository.close()
