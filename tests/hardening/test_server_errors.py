"""Issue 13 item 8: a client's mistake is a 4xx / INVALID_ARGUMENT with one line; a model's failure a bare 500.

Each test drives the real server over real sockets with the request that used
to get a 5xx (or leaked a traceback).
"""

from __future__ import annotations

import http.client
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import pytest

from conftest import require

require("grpc")
require("aiohttp")
import grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_models import make_adder  # noqa: E402

from neuropod.kserve import proto  # noqa: E402
from neuropod.serving import ModelServer, ServerConfig  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    package = make_adder(tmp_path_factory.mktemp("errors") / "adder")
    with ModelServer.from_path(package, ServerConfig(grpc_port=0, http_port=0, token=TOKEN)) as running:
        yield running


def _post(server: ModelServer, body: bytes, headers: Dict[str, str]) -> Tuple[int, Dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/adder/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _document(x: np.ndarray, y: Any = None) -> bytes:
    inputs = [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    if y is not None:
        inputs.append({"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_garbage_compressed_body_is_a_400(server: ModelServer, encoding: str) -> None:
    status, body = _post(server, b"this is not " + encoding.encode(), {**AUTH, "Content-Encoding": encoding})
    assert status == 400
    assert encoding in body["error"]


def test_a_model_failure_is_a_500_with_a_request_id_and_no_traceback(
    server: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="neuropod.serving")
    status, body = _post(server, _document(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)), AUTH)
    assert status == 500
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message and "broadcast" not in message
    assert ".py" not in message and "/" not in message
    request_id = message.split("request id ")[1].split()[0]
    # The operator finds the details under the same id.
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert logged and logged[0].exc_info is not None
    assert "broadcast" in str(logged[0].exc_info[1])


def test_a_missing_input_is_a_400_in_one_line(server: ModelServer) -> None:
    status, body = _post(server, _document(np.ones((2, 3), np.float32)), AUTH)
    assert status == 400
    assert "'y'" in body["error"] and "\n" not in body["error"]


def test_a_non_utf8_authorization_is_a_401(server: ModelServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.putrequest("GET", "/v2/models/adder")
        connection.putheader("Authorization", b"Bearer \xff\xfe\x80")
        connection.endheaders()
        assert connection.getresponse().status == 401
    finally:
        connection.close()


def _grpc_infer(server: ModelServer, body: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(proto.method_path("ModelInfer"))
        with pytest.raises(grpc.RpcError) as caught:
            call(body, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)
    return caught.value


def test_an_undecodable_protobuf_is_invalid_argument(server: ModelServer) -> None:
    error = _grpc_infer(server, b"\xff\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_model_failure_over_grpc_is_internal_without_details(server: ModelServer) -> None:
    request = proto.ModelInferRequest(model_name="adder", id="req-7")
    for name, shape in (("x", [2, 3]), ("y", [2, 4])):
        request.inputs.add(name=name, datatype="FP32", shape=shape)
        request.raw_input_contents.append(np.ones(shape, np.float32).tobytes())
    error = _grpc_infer(server, request.SerializeToString())
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "request id req-7" in error.details()
    assert "broadcast" not in error.details() and "Traceback" not in error.details()
