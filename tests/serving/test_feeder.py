"""The feeder: requests to a model in worker processes queued to one feeding thread per worker.

Batched, each worker round trip serves every request queued meanwhile (one
merged call); unbatched and not short, at most one call per worker is in flight.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from serving_models import make_adder

from conftest import require
from neuropod.serving.batching import Fed, Feeder, signature

require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")
tritonclient_http = require("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from neuropod.serving import ModelServer, ModelSettings, ServerConfig  # noqa: E402

LOOPBACK = ServerConfig(grpc_port=0, http_port=0)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function InferenceServerClient.__del__:pytest.PytestUnraisableExceptionWarning"
)


class _Answers:
    """What each fed call was answered, by index."""

    def __init__(self) -> None:
        self.outputs: Dict[int, Any] = {}
        self.failures: Dict[int, BaseException] = {}
        self.batched: List[int] = []
        self.all_done = threading.Event()
        self.expected = 0

    def fed(self, index: int, x: np.ndarray, run: Any) -> Fed:
        self.expected += 1
        inputs = {"x": x}

        def done(outputs: Optional[Dict[str, np.ndarray]], failure: Optional[BaseException]) -> None:
            if failure is None:
                self.outputs[index] = outputs
            else:
                self.failures[index] = failure
            if len(self.outputs) + len(self.failures) == self.expected:
                self.all_done.set()

        return Fed(inputs, lambda: run(inputs), done, lambda: self.batched.append(index), len(x), signature(inputs))


def test_calls_queued_during_a_call_are_merged_into_the_next() -> None:
    release = threading.Event()
    started = threading.Event()
    calls: List[int] = []

    def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        started.set()
        release.wait(30)
        return {"out": inputs["x"] * 2}

    feeder = Feeder("m", 1, run, max_batch_size=16)
    answers = _Answers()
    try:
        feeder.submit(answers.fed(0, np.full((1, 2), 0.0), run))
        assert started.wait(30)  # the first call is running; the next three queue behind it
        for index in (1, 2, 3):
            feeder.submit(answers.fed(index, np.full((index, 2), float(index)), run))
        release.set()
        assert answers.all_done.wait(30)
    finally:
        feeder.close()
    assert calls == [1, 6]  # one call alone, then one merged call of 1 + 2 + 3 rows
    assert sorted(answers.batched) == [1, 2, 3]
    for index in range(4):
        np.testing.assert_array_equal(answers.outputs[index]["out"], np.full((max(index, 1), 2), 2.0 * index))


def test_a_merged_call_stops_at_max_batch_size_and_keeps_other_shapes_apart() -> None:
    release = threading.Event()
    started = threading.Event()
    calls: List[tuple] = []

    def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        calls.append(inputs["x"].shape)
        started.set()
        release.wait(30)
        return {"out": inputs["x"] + 1}

    feeder = Feeder("m", 1, run, max_batch_size=4)
    answers = _Answers()
    try:
        feeder.submit(answers.fed(0, np.zeros((1, 2)), run))
        assert started.wait(30)
        feeder.submit(answers.fed(1, np.zeros((3, 2)), run))
        feeder.submit(answers.fed(2, np.zeros((1, 5)), run))  # other trailing size: never merged with the others
        feeder.submit(answers.fed(3, np.zeros((1, 2)), run))
        feeder.submit(answers.fed(4, np.zeros((1, 2)), run))  # would make 5 rows: waits for the next call
        release.set()
        assert answers.all_done.wait(30)
    finally:
        feeder.close()
    assert calls == [(1, 2), (4, 2), (1, 5), (1, 2)]
    assert not answers.failures and len(answers.outputs) == 5


def test_a_failed_merged_call_fails_each_of_its_requests() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        started.set()
        release.wait(30)
        if len(inputs["x"]) > 1:
            raise ValueError("merged calls fail here")
        return {"out": inputs["x"]}

    feeder = Feeder("m", 1, run, max_batch_size=8)
    answers = _Answers()
    try:
        feeder.submit(answers.fed(0, np.zeros((1, 2)), run))
        assert started.wait(30)
        feeder.submit(answers.fed(1, np.zeros((1, 2)), run))
        feeder.submit(answers.fed(2, np.zeros((1, 2)), run))
        release.set()
        assert answers.all_done.wait(30)
    finally:
        feeder.close()
    assert list(answers.outputs) == [0]
    assert sorted(answers.failures) == [1, 2]
    assert all("merged calls fail here" in str(exc) for exc in answers.failures.values())


def test_unbatched_calls_run_one_at_a_time_per_feeding_thread() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.005)
        with lock:
            running -= 1
        return {"out": inputs["x"]}

    feeder = Feeder("m", 2, run)
    answers = _Answers()
    try:
        for index in range(12):
            feeder.submit(answers.fed(index, np.zeros((1, 2)), run))
        assert answers.all_done.wait(30)
    finally:
        feeder.close()
    assert len(answers.outputs) == 12 and not answers.batched
    assert most <= 2  # never more calls in flight than feeding threads (workers)


def test_close_answers_what_is_queued_then_refuses() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        started.set()
        release.wait(30)
        return {"out": inputs["x"]}

    feeder = Feeder("m", 1, run)
    answers = _Answers()
    feeder.submit(answers.fed(0, np.zeros((1, 2)), run))
    assert started.wait(30)
    feeder.submit(answers.fed(1, np.zeros((1, 2)), run))
    closing = threading.Thread(target=feeder.close)
    closing.start()
    release.set()
    closing.join(30)
    assert sorted(answers.outputs) == [0, 1]
    with pytest.raises(RuntimeError, match="closed"):
        feeder.submit(answers.fed(2, np.zeros((1, 2)), run))


def _inputs(module: Any, x: np.ndarray) -> list:
    tensors = [module.InferInput(name, list(x.shape), "FP32") for name in ("x", "y")]
    for tensor in tensors:
        tensor.set_data_from_numpy(x)
    return tensors


def _feeding_threads() -> List[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("neuropod-feed-")]


def test_a_batched_model_in_a_worker_gets_one_call_per_batch_over_both_protocols(tmp_path: Path) -> None:
    log = tmp_path / "batches.txt"
    adder = make_adder(tmp_path / "adder", batch_log=str(log), sleep_s=0.05)
    settings = ModelSettings(use_ope=True, max_batch_size=64, max_queue_delay_ms=0)
    with ModelServer.from_path(adder, LOOPBACK, default_settings=settings) as server:
        grpc_client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        start = threading.Barrier(12)

        def call(i: int) -> bool:
            x = np.full((1 + i % 3, 4), i, dtype=np.float32)
            start.wait()
            if i % 2:
                out = grpc_client.infer("adder", _inputs(tritonclient_grpc, x)).as_numpy("out")
            else:
                with tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}") as http:
                    out = http.infer("adder", _inputs(tritonclient_http, x)).as_numpy("out")
            return out is not None and out.shape == x.shape and bool(np.all(out == 2 * i))

        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(call, range(12)))
        assert _feeding_threads() == ["neuropod-feed-adder"]  # one worker, one feeding thread
        statistics = server.dataplane.model_statistics("adder")[0]
        grpc_client.close()
    rows = [int(line) for line in log.read_text().split()]
    assert sum(rows) == sum(1 + i % 3 for i in range(12))  # every row ran once
    assert len(rows) < 12 and max(rows) > 3  # requests queued behind a 50 ms call shared the next one
    assert statistics["inference_count"] == sum(rows) and statistics["execution_count"] == len(rows)


def test_a_failing_request_to_a_model_in_a_worker_is_answered_with_its_error(tmp_path: Path) -> None:
    adder = make_adder(tmp_path / "adder", fail_on_negative=True)
    with ModelServer.from_path(adder, LOOPBACK, default_settings=ModelSettings(use_ope=True)) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.ones((1, 2), np.float32)
        with pytest.raises(InferenceServerException, match="INTERNAL.*failed on this request"):
            client.infer("adder", _inputs(tritonclient_grpc, -x))  # the first call: through the feeder
        assert _feeding_threads() == ["neuropod-feed-adder"]
        np.testing.assert_array_equal(client.infer("adder", _inputs(tritonclient_grpc, x)).as_numpy("out"), 2 * x)
        statistics = server.dataplane.model_statistics("adder")[0]["inference_stats"]
        assert statistics["fail"]["count"] == 1 and statistics["success"]["count"] == 1
        client.close()
    assert _feeding_threads() == []  # stopped with the model


def test_slow_calls_to_a_model_with_two_workers_run_two_at_a_time(tmp_path: Path) -> None:
    adder = make_adder(tmp_path / "adder", sleep_s=0.1)
    settings = ModelSettings(use_ope=True, load_options={"workers": 2})
    with ModelServer.from_path(adder, LOOPBACK, default_settings=settings) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.ones((1, 2), np.float32)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: client.infer("adder", _inputs(tritonclient_grpc, x)), range(6)))
        assert all(np.all(answer.as_numpy("out") == 2) for answer in answers)
        assert _feeding_threads() == ["neuropod-feed-adder"] * 2
        statistics = server.dataplane.model_statistics("adder")[0]["inference_stats"]
        client.close()
    # Waiting for a free worker is queueing, not the model's time: each call's compute is one
    # sleep, however many requests were waiting (through a thread pool, a call waited inside the model's run).
    assert statistics["compute_infer"]["ns"] / statistics["compute_infer"]["count"] < 0.1e9 * 1.9


def test_which_calls_to_a_model_in_workers_run_where_they_arrive(tmp_path: Path) -> None:
    one = ModelSettings(use_ope=True)
    two = ModelSettings(use_ope=True, load_options={"workers": 2})
    with ModelServer.from_path(make_adder(tmp_path / "repo" / "one", "one"), LOOPBACK, default_settings=one) as server:
        plane, model = server.dataplane, server.repository.get("one")
        model.mean_call_s = None  # before its first call: fed (how long it takes is not known yet)
        assert plane.feeds("one") and not plane.runs_inline("one")
        model.mean_call_s = 0.001  # a millisecond: a round trip to its one worker, run where it arrives
        assert plane.runs_inline("one") and not plane.feeds("one")
        model.mean_call_s = 0.003  # longer: fed, so the receiving thread goes on reading requests
        assert plane.feeds("one") and not plane.runs_inline("one")
    with ModelServer.from_path(make_adder(tmp_path / "repo" / "two", "two"), LOOPBACK, default_settings=two) as server:
        plane, model = server.dataplane, server.repository.get("two")
        model.mean_call_s = 0.0001  # however short: one thread per worker keeps both busy
        assert plane.feeds("two") and not plane.runs_inline("two")


def test_a_batched_request_that_is_the_only_call_runs_where_it_arrives(tmp_path: Path) -> None:
    settings = ModelSettings(use_ope=True, max_batch_size=64, max_queue_delay_ms=0)
    with ModelServer.from_path(make_adder(tmp_path / "adder"), LOOPBACK, default_settings=settings) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.ones((2, 3), np.float32)
        for _ in range(3):  # one after another: each the only call in progress
            np.testing.assert_array_equal(client.infer("adder", _inputs(tritonclient_grpc, x)).as_numpy("out"), 2 * x)
        plane = server.dataplane
        # Alone, with its feeder idle, a short call runs where it arrived: nothing to batch it with.
        assert plane.route("adder", alone=True) == "inline"
        assert plane.route("adder") == "feed"  # with other calls open, it joins a batch
        server.repository.get("adder").mean_call_s = 0.003  # not short: fed even alone
        assert plane.route("adder", alone=True) == "feed"
        statistics = plane.model_statistics("adder")[0]
        batches = _batch_count(server)
        client.close()
    assert statistics["inference_count"] == 6 and statistics["execution_count"] == 3
    assert batches == 3  # each call counted as a batch, fed or not


def _batch_count(server: ModelServer) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    (line,) = [row for row in text.splitlines() if row.startswith('neuropod_batch_size_count{model="adder"}')]
    return float(line.split()[-1])
