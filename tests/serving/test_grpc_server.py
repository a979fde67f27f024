"""The gRPC server's own machinery (UnaryServer): answered where, failed how, stopped when, pinned where."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, List

import numpy as np
import pytest
from serving_models import assert_stops_cleanly, make_adder, serve_cli

from conftest import require

grpc = require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from neuropod.serving import ModelServer, ServerConfig  # noqa: E402
from neuropod.serving.grpc_server import StockUnaryServer, UnaryServer, unary_server  # noqa: E402

LOOPBACK = ServerConfig(grpc_port=0, http_port=0)


def _inputs(x: np.ndarray) -> list:
    inputs = [tritonclient_grpc.InferInput(name, list(x.shape), "FP32") for name in ("x", "y")]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)
    return inputs


@pytest.fixture(params=[UnaryServer, StockUnaryServer])
def echo(request: Any) -> Iterator[Any]:
    """A bare server (ours, and the grpc.server fallback): /t.S/Echo answers at once, /t.S/Later from a pool
    thread, /t.S/Fail raises."""
    pool = ThreadPoolExecutor(2)
    release = threading.Event()

    def later(body: bytes, metadata: Any) -> Future:
        return pool.submit(lambda: (release.wait(30), body.upper())[1])

    def fail(body: bytes, metadata: Any) -> bytes:
        raise KeyError("no such thing")

    methods = {"/t.S/Echo": lambda body, metadata: body, "/t.S/Later": later, "/t.S/Fail": fail}
    server = request.param(methods, lambda exc: (grpc.StatusCode.NOT_FOUND, f"failed: {exc}"))
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, server, release
    finally:
        release.set()
        channel.close()
        assert server.stop(0).wait(10)
        pool.shutdown()


def test_answers_now_later_and_with_the_mapped_status(echo: Any) -> None:
    channel, _, release = echo
    later = channel.unary_unary("/t.S/Later").future(b"slow", timeout=30)
    # The pending call holds no thread of the server: the next ones are answered meanwhile.
    assert channel.unary_unary("/t.S/Echo")(b"hi", timeout=10) == b"hi"
    assert not later.done()
    release.set()
    assert later.result() == b"SLOW"
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary("/t.S/Fail")(b"", timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND and failed.value.details() == "failed: 'no such thing'"
    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary("/t.S/Nope")(b"", timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_stopping_waits_for_the_call_in_flight_within_the_grace(echo: Any) -> None:
    channel, server, release = echo
    later = channel.unary_unary("/t.S/Later").future(b"last", timeout=30)
    assert channel.unary_unary("/t.S/Echo")(b"sync", timeout=10) == b"sync"  # the pending call has arrived
    stopped = server.stop(30)
    assert not stopped.wait(0.2)  # a call is still in flight
    with pytest.raises(grpc.RpcError):  # new calls are refused meanwhile
        channel.unary_unary("/t.S/Echo")(b"new", timeout=5)
    release.set()
    assert later.result() == b"LAST"
    assert stopped.wait(10)


def test_stopping_without_grace_cancels_the_call_in_flight(echo: Any) -> None:
    channel, server, _ = echo
    later = channel.unary_unary("/t.S/Later").future(b"cut", timeout=30)
    assert channel.unary_unary("/t.S/Echo")(b"sync", timeout=10) == b"sync"
    assert server.stop(None).wait(10)
    with pytest.raises(grpc.RpcError) as cut:
        later.result()
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_the_stock_fallback_serves_the_same(tmp_path: Path, monkeypatch: Any) -> None:
    """NEUROPOD_GRPC_SERVER=stock (or a grpcio without the core layer UnaryServer uses): grpc.server, same answers."""
    monkeypatch.delenv("NEUROPOD_GRPC_SERVER", raising=False)
    assert isinstance(unary_server({}, lambda exc: (grpc.StatusCode.INTERNAL, "")), UnaryServer)
    monkeypatch.setenv("NEUROPOD_GRPC_SERVER", "stock")
    make_adder(tmp_path / "adder", fail_on_negative=True)
    config = ServerConfig(grpc_port=0, http_port=0, token="s3cret")
    with ModelServer.from_path(tmp_path / "adder", config) as server:
        assert isinstance(server._grpc_server, StockUnaryServer)
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        auth = {"authorization": "Bearer s3cret"}
        ones = np.ones((1, 2), np.float32)
        assert client.infer("adder", _inputs(ones), headers=auth).as_numpy("out").tolist() == [[2, 2]]
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer("adder", _inputs(ones))
        with pytest.raises(InferenceServerException, match="INTERNAL") as failed:
            client.infer("adder", _inputs(-ones), headers=auth)
        assert "Traceback" not in str(failed.value)
        client.close()


def test_a_slow_model_runs_off_the_polling_thread(tmp_path: Path) -> None:
    """While a slow model's request runs, health checks and a fast model are answered."""
    gate = tmp_path / "go"
    make_adder(tmp_path / "repo" / "slow", name="slow", wait_for_file=str(gate))
    make_adder(tmp_path / "repo" / "fast", name="fast")
    with ModelServer.from_path(tmp_path / "repo", LOOPBACK) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        ones = np.ones((1, 2), np.float32)
        order: List[str] = []
        slow = threading.Thread(target=lambda: (client.infer("slow", _inputs(ones)), order.append("slow")))
        slow.start()
        while not server.dataplane.in_flight:  # the slow request is inside the model
            time.sleep(0.01)
        assert client.is_server_live()
        for _ in range(3):  # the first call of a model runs on a pool thread, the next ones inline
            assert client.infer("fast", _inputs(ones)).as_numpy("out").tolist() == [[2, 2]]
        order.append("fast")
        gate.touch()
        slow.join(30)
        assert order == ["fast", "slow"]
        client.close()


def test_a_model_failing_on_a_pool_thread_is_an_internal_error_with_a_request_id(tmp_path: Path) -> None:
    make_adder(tmp_path / "adder", fail_on_negative=True, sleep_s=0.01)
    with ModelServer.from_path(tmp_path / "adder", LOOPBACK) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        with pytest.raises(InferenceServerException, match="request id") as failed:
            client.infer("adder", _inputs(-np.ones((1, 2), np.float32)))
        assert failed.value.status() == "StatusCode.INTERNAL"
        assert client.infer("adder", _inputs(np.ones((1, 2), np.float32))).as_numpy("out").tolist() == [[2, 2]]
        client.close()


def _thread_cpus(pid: int) -> List[str]:
    """The CPUs each thread of a process may run on (``Cpus_allowed_list``)."""
    found = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.append(line.split(":", 1)[1].strip())
    return found


def _children(pid: int) -> List[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # after the command name: state, ppid, ...
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_pin_cpus_puts_each_worker_on_its_own_cpu(tmp_path: Path) -> None:
    make_adder(tmp_path / "adder")
    cpus = sorted(os.sched_getaffinity(0))
    args = [str(tmp_path / "adder"), "--grpc-port", "0", "--http-port", "0", "--workers", "2", "--pin-cpus"]
    with serve_cli(*args) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if json.loads(line)["message"] == "all models loaded":
                break
        pinned = set()
        for child in _children(process.pid):
            allowed = _thread_cpus(child)
            # Every thread the server started is on one CPU (numpy's BLAS thread predates the pinning).
            single = [cpu for cpu in allowed if cpu.isdigit()]
            assert len(single) >= len(allowed) - 1 and len(set(single)) == 1, allowed
            pinned.add(single[0])
        assert pinned == {str(cpus[0]), str(cpus[1 % len(cpus)])}
        assert_stops_cleanly(process)


def test_an_answer_that_cannot_be_sent_is_an_internal_error_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = UnaryServer(
        {"/t.S/Bad": lambda body, metadata: "not bytes", "/t.S/Echo": lambda body, metadata: body},
        lambda exc: (grpc.StatusCode.UNKNOWN, str(exc)),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        with pytest.raises(grpc.RpcError) as bad:
            channel.unary_unary("/t.S/Bad")(b"", timeout=10)
        assert bad.value.code() == grpc.StatusCode.INTERNAL
        assert channel.unary_unary("/t.S/Echo")(b"still here", timeout=10) == b"still here"
        assert "sending an answer failed" in caplog.text
    finally:
        channel.close()
        assert server.stop(0).wait(10)
