"""``load_neuropod("grpc://…")`` / ``("http://…")``: the remote backend against our server and MLServer."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from serving_models import make_adder, make_halves, make_strings, mlserver_available, start_mlserver, stop_process

from conftest import missing, require
from neuropod import InputValidationError, load_neuropod
from neuropod.errors import ModelNotFoundError, OptionError, RemoteError
from neuropod.executors.remote import parse_model_url

require("grpc")
require("aiohttp")

from neuropod.serving import ModelServer, ServerConfig  # noqa: E402

# tritonclient's HTTP client is gevent-based: when the garbage collector frees one on
# another thread (the server's, say), its __del__ complains. Harmless; not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function InferenceServerClient.__del__:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("repo")
    make_adder(root / "adder")
    make_strings(root / "strings")
    make_halves(root / "halves")
    make_adder(root / "slow", name="slow", sleep_s=2)
    with ModelServer.from_path(root, ServerConfig(grpc_port=0, http_port=0)) as srv:
        yield srv


def _urls(server: ModelServer, model: str) -> list:
    return [f"grpc://127.0.0.1:{server.grpc_port}/{model}", f"http://127.0.0.1:{server.http_port}/{model}/versions/1"]


def test_parse_model_url() -> None:
    assert parse_model_url("grpc://h:81/m") == ("grpc", "h", 81, "m", "")
    assert parse_model_url("https://h/m/versions/3") == ("https", "h", 443, "m", "3")
    for bad in ("ftp://h/m", "grpc://h:1/", "grpc://h:1/m/v/2", "grpc://h:x/m"):
        with pytest.raises(OptionError):
            parse_model_url(bad)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_model_is_a_neuropod(server: ModelServer, scheme: str) -> None:
    url = [u for u in _urls(server, "adder") if u.startswith(scheme)][0]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with load_neuropod(url) as model:
        assert model.name == "adder" and model.platform == "python" and model.package is None
        # Symbols do not survive the protocol: "batch" comes back as None.
        assert model.inputs == [
            {"name": "x", "dtype": "float32", "shape": [None, None]},
            {"name": "y", "dtype": "float32", "shape": [None, None]},
        ]
        out = model.infer({"x": x, "y": x})["out"]
        np.testing.assert_array_equal(out, 2 * x)
        out[0, 0] = 42.0  # outputs are the caller's to change
        with pytest.raises(InputValidationError, match="expected dtype float32, got int64"):
            model.infer({"x": np.zeros((1, 1), np.int64)})
        # A mismatch only the server can see (symbols are lost): INVALID_ARGUMENT comes back as the same class.
        with pytest.raises(InputValidationError, match="'batch'"):
            model.infer({"x": x, "y": np.zeros((3, 3), np.float32)})
        assert model.executor.ready()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_strings_and_half_floats(server: ModelServer, scheme: str) -> None:
    require("ml_dtypes")
    import ml_dtypes

    strings_url, halves_url = ([u for u in _urls(server, m) if u.startswith(scheme)][0] for m in ("strings", "halves"))
    with load_neuropod(strings_url) as model:
        out = model.infer({"s": np.array(["ab", "ünï"])})
        assert out["upper"].dtype.kind == "U"
        assert out["upper"].tolist() == ["AB", "ÜNÏ"]
        assert out["length"].tolist() == [2, 3]
    with load_neuropod(halves_url) as model:
        h = np.array([0.5, 3.0], dtype=np.float16)
        b = np.array([1.5, -4.0], dtype=ml_dtypes.bfloat16)
        out = model.infer({"h": h, "b": b})
        assert out["h2"].dtype == np.float16 and out["b2"].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(out["h2"], [1.0, 6.0])
        np.testing.assert_array_equal(out["b2"].astype(np.float32), [3.0, -8.0])


def test_remote_errors(server: ModelServer) -> None:
    for scheme_url in _urls(server, "nope"):
        with pytest.raises(ModelNotFoundError, match="nope"):
            load_neuropod(scheme_url.replace("/versions/1", ""))
    with pytest.raises(ModelNotFoundError, match="no version '7'"):
        load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/adder/versions/7")
    with pytest.raises(OptionError, match="unknown option 'colour'; valid options: binary, max_message_bytes"):
        load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/adder", colour="blue")


@pytest.mark.parametrize(
    "option, reason",
    [
        ({"visible_gpu": 0}, "the server chooses the device"),
        ({"verify_manifest": False}, "the server verifies its own packages"),
        ({"intra_op_threads": 2}, "the server chooses the device and threads"),
        ({"inter_op_threads": 2}, "the server chooses the device and threads"),
        ({"use_ope": True}, "the server verifies its own packages and decides how its models run"),
        # Before: "unknown option" for the options of a pool, isolation and trust (a list kept by hand).
        ({"workers": 2}, "'workers' does not apply to a remote model: it is an option of out-of-process workers"),
        ({"memory_limit": "1GiB"}, "'memory_limit' does not apply to a remote model: it applies to isolated"),
        ({"trust": "code=sandbox"}, "'trust' does not apply to a remote model: the server applies its own trust"),
    ],
)
def test_options_that_mean_nothing_remotely_are_refused_with_the_reason(
    server: ModelServer, option: dict, reason: str
) -> None:
    # Before: visible_gpu, verify_manifest and thread settings were dropped without a word.
    for url in _urls(server, "adder"):
        with pytest.raises(OptionError, match=reason):
            load_neuropod(url, **option)
    with load_neuropod(_urls(server, "adder")[0], visible_gpu=None, timeout=5.0) as model:  # defaults pass
        assert model.executor.ready()


def _requests_counted(server: ModelServer, model: str) -> float:
    """The server's ``neuropod_inference_requests_total`` for ``model``, read from its /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as response:
        page = response.read().decode("utf-8")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("neuropod_inference_requests_total{") and f'model="{model}"' in line
    )


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_timeout_is_not_retried(server: ModelServer, scheme: str) -> None:
    """A model slower than the client's timeout: one request reaches it, and the error names the timeout."""
    url = [u for u in _urls(server, "slow") if u.startswith(scheme)][0]
    before = _requests_counted(server, "slow")
    x = np.ones((1, 1), dtype=np.float32)
    with load_neuropod(url, timeout=0.5) as model:
        with pytest.raises(RemoteError, match=r"timeout of 0\.5s"):
            model.infer({"x": x, "y": x})
    # A patient call after it: by the time it is answered the server has seen every request the slow one caused.
    with load_neuropod(url, timeout=30) as model:
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], 2 * x)
    assert _requests_counted(server, "slow") - before == 2  # the timed-out request once, the patient one once


@pytest.mark.parametrize(
    "x, message",
    [
        ({"datatype": "FP32", "shape": [0, 10**29], "data": []}, "tensor 'x': shape .* is too large"),
        ({"datatype": "FP32", "shape": [1, 1], "data": [1e300]}, "tensor 'x': 1e\\+300 is out of the range of FP32"),
    ],
)
def test_malformed_json_tensors_are_a_400(server: ModelServer, x: dict, message: str) -> None:
    body = {"inputs": [{"name": "x", **x}, {"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v2/models/adder/infer",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert re.search(message, json.loads(caught.value.read())["error"])


def test_a_kept_alive_connection_the_server_dropped_is_retried(tmp_path: Path) -> None:
    """The server restarts between two calls: the second goes out once more, on a fresh connection."""
    from serving_models import free_port

    make_adder(tmp_path / "adder")
    port = free_port()
    x = np.ones((1, 2), dtype=np.float32)
    config = ServerConfig(grpc_port=None, http_port=port)
    with ModelServer.from_path(tmp_path, config):
        model = load_neuropod(f"http://127.0.0.1:{port}/adder")
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], 2 * x)
    try:
        with ModelServer.from_path(tmp_path, config) as restarted:
            np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], 2 * x)
            assert _requests_counted(restarted, "adder") == 1
    finally:
        model.close()


def test_unreachable_server_is_a_remote_error(tmp_path: Path) -> None:
    from serving_models import free_port

    port = free_port()
    with pytest.raises(RemoteError):
        load_neuropod(f"grpc://127.0.0.1:{port}/adder", timeout=5)
    with pytest.raises(RemoteError):
        load_neuropod(f"http://127.0.0.1:{port}/adder", timeout=5)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if not mlserver_available():
        missing("the MLServer venv is missing (scripts/mlserver-venv.sh creates it)")
    process, http_port, grpc_port = start_mlserver(tmp_path_factory.mktemp("mlserver"))
    try:
        yield http_port, grpc_port
    finally:
        stop_process(process)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_backend_against_mlserver(mlserver: tuple, scheme: str) -> None:
    http_port, grpc_port = mlserver
    port = grpc_port if scheme == "grpc" else http_port
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    y = np.full((2, 2), 10, dtype=np.float32)
    with load_neuropod(f"{scheme}://127.0.0.1:{port}/adder") as model:
        assert model.name == "adder"
        assert [i["name"] for i in model.inputs] == ["x", "y"]
        np.testing.assert_array_equal(model.infer({"x": x, "y": y})["out"], x + y)
        with pytest.raises(InputValidationError):
            model.infer({"x": x.astype(np.float64), "y": y})


def test_large_inputs_go_through_shared_memory_on_the_same_host(server: ModelServer) -> None:
    x = np.random.default_rng(3).standard_normal((2, 128 * 1024)).astype(np.float32)  # 1 MiB per input
    before = server.repository.get("adder").statistics.as_dict("adder", "1")["inference_stats"]["success"]["count"]
    with load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/adder") as model:
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)
        regions = server.dataplane.shared_memory.status()
        assert len(regions) == 1 and regions[0]["byte_size"] >= 2 * x.nbytes  # the inputs went this way
        assert not list(Path("/dev/shm").glob("neuropod-remote-*"))  # unlinked once the server had it mapped
        np.testing.assert_array_equal(model.infer({"x": x, "y": -x})["out"], np.zeros_like(x))  # reused
        assert len(server.dataplane.shared_memory.status()) == 1
    assert server.dataplane.shared_memory.status() == []  # unregistered at close
    after = server.repository.get("adder").statistics.as_dict("adder", "1")["inference_stats"]["success"]["count"]
    assert after - before == 2
    with load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/adder", shared_memory=False) as model:
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)
        assert server.dataplane.shared_memory.status() == []  # opted out: all in the message
