"""The server's request path: inputs validated once, readiness checked once, one token table.

Every REST route and every gRPC method is called with and without the bearer
token; health probes answer without it, everything else refuses (401 /
UNAUTHENTICATED) without it and answers with it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
from serving_models import make_adder

from conftest import require
from neuropod import load_neuropod
from neuropod.executors.base import Executor, TensorDict
from neuropod.loader import Neuropod
from neuropod.spec import SpecValidator

require("grpc")
require("aiohttp")

import grpc  # noqa: E402

from neuropod.kserve import proto  # noqa: E402
from neuropod.serving import ModelRepository, ModelServer, ModelSettings, ServedModel, ServerConfig  # noqa: E402
from neuropod.serving.auth import NEEDS_TOKEN  # noqa: E402
from neuropod.serving.rest_adapter import RestAdapter  # noqa: E402

TOKEN = "s3cret"
X = np.ones((2, 2), np.float32)


class _CountingReady(Executor):
    """The adder's own executor, counting how often readiness is asked."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.ready_calls = 0

    def infer(self, inputs: TensorDict) -> TensorDict:
        return self.inner.infer(inputs)

    def ready(self) -> bool:
        self.ready_calls += 1
        return True

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The kind ("input", "output") of every spec validation from now on."""
    kinds: List[str] = []
    original = SpecValidator.validate

    def counting(self: SpecValidator, tensors: Any, bindings: Optional[Dict[str, int]] = None) -> Dict[str, int]:
        kinds.append(self.kind)
        return original(self, tensors, bindings)

    monkeypatch.setattr(SpecValidator, "validate", counting)
    return kinds


@pytest.fixture
def counted(tmp_path: Path, validations: List[str]) -> Iterator[Tuple[ModelServer, _CountingReady, List[str]]]:
    loaded = load_neuropod(make_adder(tmp_path / "adder"))
    executor = _CountingReady(loaded.executor)
    repository = ModelRepository()
    model = Neuropod(executor, loaded.name, loaded.platform, loaded.problem, loaded.package)
    repository.add(ServedModel("adder", "1", model))
    with ModelServer(repository, ServerConfig(grpc_port=0, http_port=0, health_check_interval_s=3600)) as server:
        yield server, executor, validations


def _rest_infer(port: int, version: str = "") -> Dict[str, Any]:
    body = {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [2, 2], "data": X.reshape(-1).tolist()} for name in ("x", "y")
        ]
    }
    path = f"/v2/models/adder{'/versions/' + version if version else ''}/infer"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _grpc_call(port: int, method: str, request: Any, token: Optional[str] = None) -> Any:
    response_class = getattr(proto, f"{method}Response")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            proto.method_path(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        return call(request, timeout=30, metadata=metadata)


def _infer_message() -> Any:
    request = proto.ModelInferRequest(model_name="adder")
    for name in ("x", "y"):
        request.inputs.add(name=name, datatype="FP32", shape=[2, 2])
        request.raw_input_contents.append(X.tobytes())
    return request


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_each_request_is_validated_once_and_checked_for_readiness_once(counted: Any, protocol: str) -> None:
    server, executor, validations = counted
    before = executor.ready_calls
    del validations[:]
    if protocol == "rest":
        assert _rest_infer(server.http_port)["outputs"][0]["data"] == [2.0] * 4
    else:
        response = _grpc_call(server.grpc_port, "ModelInfer", _infer_message())
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.0] * 4
    assert validations == ["input", "output"]  # was: input twice (data plane, then Neuropod.infer)
    assert executor.ready_calls - before == 1  # was: twice (data plane, then the repository)


def test_batched_requests_are_validated_once_each(tmp_path: Path, validations: List[str]) -> None:
    repository = ModelRepository.from_path(
        make_adder(tmp_path / "adder"), default_settings=ModelSettings(max_batch_size=8, max_queue_delay_ms=0)
    )
    with ModelServer(repository, ServerConfig(grpc_port=None, http_port=0)) as server:
        del validations[:]
        assert _rest_infer(server.http_port)["outputs"][0]["shape"] == [2, 2]
    assert validations == ["input", "output"]


# -- the token: every route and method, with and without it ------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    adder = make_adder(tmp_path_factory.mktemp("auth") / "adder")
    with ModelServer.from_path(adder, ServerConfig(grpc_port=0, http_port=0, token=TOKEN)) as server:
        yield server


def _rest_routes() -> List[Tuple[str, str, str]]:
    adapter = RestAdapter(None, 1)  # type: ignore[arg-type]  # only its route table is read
    routes = []
    for verb, path, _, method in RestAdapter.routes(adapter):
        path = path.replace("{name}", "adder").replace("{version}", "1").replace("{region}", "token-test")
        routes.append((verb.upper(), path, method))
    return routes


def _rest_status(port: int, verb: str, path: str, token: Optional[str]) -> int:
    body = None
    if path.endswith("/register"):
        body = json.dumps({"key": _SHM_KEY, "offset": 0, "byte_size": 64}).encode()
    elif verb == "POST":
        body = json.dumps(
            {"inputs": [{"name": n, "datatype": "FP32", "shape": [2, 2], "data": [1, 1, 1, 1]} for n in ("x", "y")]}
        ).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=verb)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_every_route_and_method_is_in_the_token_table() -> None:
    assert {method for _, _, method in _rest_routes()} == set(NEEDS_TOKEN)
    service = proto._POOL.FindServiceByName(proto.SERVICE_NAME)
    assert {m.name for m in service.methods} == set(NEEDS_TOKEN) - {"Metrics"}


@pytest.mark.parametrize("verb, path, method", _rest_routes(), ids=lambda v: str(v))
def test_rest_route_with_and_without_the_token(guarded: ModelServer, verb: str, path: str, method: str) -> None:
    from multiprocessing import shared_memory

    region = shared_memory.SharedMemory(_SHM_KEY.lstrip("/"), create=True, size=64)
    if "/region/" in path and not path.endswith("/register"):
        guarded.dataplane.shared_memory.register("token-test", _SHM_KEY, 0, 64)
    try:
        with_token = _rest_status(guarded.http_port, verb, path, TOKEN)
        wrong_token = _rest_status(guarded.http_port, verb, path, "wrong")
        without = _rest_status(guarded.http_port, verb, path, None)
    finally:
        guarded.dataplane.shared_memory.unregister("")
        region.close()
        region.unlink()
    if method == "RepositoryModelUnload":
        guarded.repository.load("adder")  # for the routes after this one
    assert with_token == 200
    if NEEDS_TOKEN[method]:
        assert (without, wrong_token) == (401, 401)
    else:  # the server's health probes: open
        assert (without, wrong_token) == (200, 200)


_GRPC_REQUESTS = {
    "ServerLive": lambda: proto.ServerLiveRequest(),
    "ServerReady": lambda: proto.ServerReadyRequest(),
    "ModelReady": lambda: proto.ModelReadyRequest(name="adder"),
    "ServerMetadata": lambda: proto.ServerMetadataRequest(),
    "ModelMetadata": lambda: proto.ModelMetadataRequest(name="adder"),
    "ModelInfer": lambda: _infer_message(),
    "ModelStatistics": lambda: proto.ModelStatisticsRequest(name="adder"),
    "RepositoryIndex": lambda: proto.RepositoryIndexRequest(),
    "RepositoryModelLoad": lambda: proto.RepositoryModelLoadRequest(model_name="adder"),
    "RepositoryModelUnload": lambda: proto.RepositoryModelUnloadRequest(model_name="adder"),
    "SystemSharedMemoryStatus": lambda: proto.SystemSharedMemoryStatusRequest(),
    "SystemSharedMemoryRegister": lambda: proto.SystemSharedMemoryRegisterRequest(
        name="token-test", key=_SHM_KEY, offset=0, byte_size=64
    ),
    "SystemSharedMemoryUnregister": lambda: proto.SystemSharedMemoryUnregisterRequest(name="token-test"),
}
_SHM_KEY = "/neuropod-token-test"


def _grpc_code(port: int, method: str, token: Optional[str]) -> str:
    try:
        _grpc_call(port, method, _GRPC_REQUESTS[method](), token)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


@pytest.mark.parametrize("method", sorted(_GRPC_REQUESTS))
def test_grpc_method_with_and_without_the_token(guarded: ModelServer, method: str) -> None:
    from multiprocessing import shared_memory

    region = shared_memory.SharedMemory(_SHM_KEY.lstrip("/"), create=True, size=64)
    try:
        assert _grpc_code(guarded.grpc_port, method, TOKEN) == "OK"
        if method == "RepositoryModelUnload":
            guarded.repository.load("adder")  # for the methods after this one
        expected = "UNAUTHENTICATED" if NEEDS_TOKEN[method] else "OK"
        assert _grpc_code(guarded.grpc_port, method, None) == expected
        assert _grpc_code(guarded.grpc_port, method, "wrong") == expected
    finally:
        guarded.dataplane.shared_memory.unregister("")
        region.close()
        region.unlink()


# -- a port in use -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_port_in_use_is_a_server_error_and_one_line_from_the_cli(tmp_path: Path, protocol: str) -> None:
    import socket
    import subprocess
    import sys

    from neuropod.errors import ServerError

    adder = make_adder(tmp_path / "adder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"grpc_port": port, "http_port": 0} if protocol == "grpc" else {"grpc_port": None, "http_port": port}
        with pytest.raises(ServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            ModelServer.from_path(adder, ServerConfig(**ports)).start()  # was grpc's RuntimeError / an OSError
        other = "http" if protocol == "grpc" else "grpc"
        flags = [f"--{protocol}-port", str(port), f"--{other}-port", "0"]
        done = subprocess.run(
            [sys.executable, "-m", "neuropod", "serve", str(adder), *flags], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ServerError:"), done.stderr
    assert "Traceback" not in done.stderr


def test_model_readiness_reveals_no_model_names_without_the_token(guarded: ModelServer) -> None:
    # Issue 13 item 9: an open ModelReady answered NOT_FOUND for names that do not exist.
    for name in ("adder", "no-such-model"):
        request = proto.ModelReadyRequest(name=name)
        with pytest.raises(Exception) as info:
            _grpc_call(guarded.grpc_port, "ModelReady", request)
        assert info.value.code().name == "UNAUTHENTICATED"  # type: ignore[attr-defined]
        assert _rest_status(guarded.http_port, "GET", f"/v2/models/{name}/ready", None) == 401
