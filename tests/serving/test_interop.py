"""Our server driven by clients nobody here wrote: tritonclient (gRPC, HTTP binary and JSON), curl, and
nghttp2's nghttp and h2load (raw HTTP/2: what bench/serve.py loads both servers with)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from serving_models import grpc_infer_frame, make_adder, make_halves, make_strings

from conftest import require, require_command
from neuropod.packagers import create_placeholder_neuropod

require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")
tritonclient_http = require("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from neuropod.serving import ModelServer, ServerConfig  # noqa: E402

# tritonclient's HTTP client is gevent-based: when the garbage collector frees one on
# another thread (the server's, say), its __del__ complains. Harmless; not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function InferenceServerClient.__del__:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_adder(root / "adder", fail_on_negative=True)
    make_strings(root / "strings")
    make_halves(root / "halves")
    # Two numbered versions of a placeholder (the newest is the default).
    for version, seed in (("1", 1), ("2", 2)):
        create_placeholder_neuropod(
            root / "ph" / version,
            "ph",
            [{"name": "x", "dtype": "int32", "shape": [None]}],
            [{"name": "y", "dtype": "float64", "shape": [3]}],
            seed=seed,
            package_as_zip=True,
        )
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ModelServer]:
    with ModelServer.from_path(repo, ServerConfig(grpc_port=0, http_port=0, max_message_bytes=1024 * 1024)) as srv:
        yield srv


@pytest.fixture(scope="module")
def grpc_client(server: ModelServer) -> Iterator[object]:
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: ModelServer) -> Iterator[object]:
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


def _inputs(module: object, arrays: dict, datatypes: dict, **kwargs: object) -> list:
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), datatypes[name])  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array, **kwargs)
        inputs.append(tensor)
    return inputs


X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 0.5, dtype=np.float32)


def test_health_and_metadata_over_grpc(grpc_client: object) -> None:
    c = grpc_client
    assert c.is_server_live() and c.is_server_ready()  # type: ignore[attr-defined]
    assert c.is_model_ready("adder") and c.is_model_ready("ph", "1")  # type: ignore[attr-defined]
    server_meta = c.get_server_metadata(as_json=True)  # type: ignore[attr-defined]
    assert server_meta["name"] == "neuropod" and "binary_tensor_data" in server_meta["extensions"]
    meta = c.get_model_metadata("adder", as_json=True)  # type: ignore[attr-defined]
    assert meta["platform"] == "python"
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": ["-1", "-1"]},
        {"name": "y", "datatype": "FP32", "shape": ["-1", "-1"]},
    ]
    assert c.get_model_metadata("ph", as_json=True)["versions"] == ["1", "2"]  # type: ignore[attr-defined]


def test_health_and_metadata_over_http(http_client: object) -> None:
    c = http_client
    assert c.is_server_live() and c.is_server_ready()  # type: ignore[attr-defined]
    assert c.is_model_ready("strings")  # type: ignore[attr-defined]
    assert not c.is_model_ready("nope")  # type: ignore[attr-defined]
    meta = c.get_model_metadata("strings")  # type: ignore[attr-defined]
    assert meta["outputs"] == [
        {"name": "upper", "datatype": "BYTES", "shape": [-1]},
        {"name": "length", "datatype": "INT64", "shape": [-1]},
    ]
    assert c.get_model_metadata("ph", "1")["versions"] == ["1", "2"]  # type: ignore[attr-defined]


def test_numeric_infer_over_grpc(grpc_client: object) -> None:
    inputs = _inputs(tritonclient_grpc, {"x": X, "y": Y}, {"x": "FP32", "y": "FP32"})
    result = grpc_client.infer("adder", inputs, request_id="req-7")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(result.as_numpy("out"), X + Y)
    assert result.get_response().id == "req-7"
    assert result.get_response().model_version == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_infer_over_http(http_client: object, binary: bool) -> None:
    inputs = _inputs(tritonclient_http, {"x": X, "y": Y}, {"x": "FP32", "y": "FP32"}, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("out", binary_data=binary)]
    result = http_client.infer("adder", inputs, outputs=outputs, request_id="r1")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(result.as_numpy("out"), X + Y)
    response = result.get_response()
    assert response["id"] == "r1"
    assert ("parameters" in response["outputs"][0]) is binary


def test_strings_over_grpc(grpc_client: object) -> None:
    words = np.array(["héllo", "", "kserve"], dtype=object)
    inputs = _inputs(tritonclient_grpc, {"s": words}, {"s": "BYTES"})
    result = grpc_client.infer("strings", inputs)  # type: ignore[attr-defined]
    assert [w.decode() for w in result.as_numpy("upper")] == ["HÉLLO", "", "KSERVE"]
    np.testing.assert_array_equal(result.as_numpy("length"), [5, 0, 6])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_strings_over_http(http_client: object, binary: bool) -> None:
    words = np.array([b"ab", b"xyz"], dtype=object)
    inputs = _inputs(tritonclient_http, {"s": words}, {"s": "BYTES"}, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("upper", binary_data=binary)]
    result = http_client.infer("strings", inputs, outputs=outputs)  # type: ignore[attr-defined]
    assert [w.decode() if isinstance(w, bytes) else w for w in result.as_numpy("upper")] == ["AB", "XYZ"]
    assert result.as_numpy("length") is None  # only the requested output comes back


def test_fp16_travels_raw(grpc_client: object, http_client: object) -> None:
    h = np.array([1.5, -2.25, 1000], dtype=np.float16)
    for module, client in ((tritonclient_grpc, grpc_client), (tritonclient_http, http_client)):
        inputs = _inputs(module, {"h": h}, {"h": "FP16"})
        outputs = [module.InferRequestedOutput("h2")]
        result = client.infer("halves", inputs, outputs=outputs)  # type: ignore[attr-defined]
        out = result.as_numpy("h2")
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, (h * 2).astype(np.float16))


def test_versions_are_addressable(grpc_client: object) -> None:
    x = np.array([1, 2], dtype=np.int32)
    answers = {}
    for version in ("1", "2"):
        result = grpc_client.infer("ph", _inputs(tritonclient_grpc, {"x": x}, {"x": "INT32"}), model_version=version)  # type: ignore[attr-defined]
        assert result.get_response().model_version == version
        answers[version] = result.as_numpy("y")
    default = grpc_client.infer("ph", _inputs(tritonclient_grpc, {"x": x}, {"x": "INT32"}))  # type: ignore[attr-defined]
    assert default.get_response().model_version == "2"
    assert not np.array_equal(answers["1"], answers["2"])  # different seeds
    np.testing.assert_array_equal(default.as_numpy("y"), answers["2"])


def _grpc_error(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return info.value


def test_grpc_errors_carry_the_right_status(grpc_client: object) -> None:
    bad_shape = np.zeros((2, 3), dtype=np.int32)
    wrong_dtype = _grpc_error(
        lambda: grpc_client.infer(
            "adder", _inputs(tritonclient_grpc, {"x": bad_shape, "y": bad_shape}, {"x": "INT32", "y": "INT32"})
        )
    )  # type: ignore[attr-defined]
    assert wrong_dtype.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected dtype float32, got int32" in wrong_dtype.message()
    unknown = _grpc_error(lambda: grpc_client.infer("nope", _inputs(tritonclient_grpc, {"x": X}, {"x": "FP32"})))  # type: ignore[attr-defined]
    assert unknown.status() == "StatusCode.NOT_FOUND"
    bad_version = _grpc_error(lambda: grpc_client.get_model_metadata("ph", "9"))  # type: ignore[attr-defined]
    assert bad_version.status() == "StatusCode.NOT_FOUND"
    mismatch = _grpc_error(
        lambda: grpc_client.infer(
            "adder", _inputs(tritonclient_grpc, {"x": X, "y": np.zeros((3, 3), np.float32)}, {"x": "FP32", "y": "FP32"})
        )
    )  # type: ignore[attr-defined]
    assert mismatch.status() == "StatusCode.INVALID_ARGUMENT" and "'batch'" in mismatch.message()
    no_output = _grpc_error(
        lambda: grpc_client.infer(  # type: ignore[attr-defined]
            "adder",
            _inputs(tritonclient_grpc, {"x": X, "y": Y}, {"x": "FP32", "y": "FP32"}),
            outputs=[tritonclient_grpc.InferRequestedOutput("zz")],
        )
    )
    assert no_output.status() == "StatusCode.INVALID_ARGUMENT" and "'zz'" in no_output.message()


def test_http_errors_carry_the_right_status(http_client: object) -> None:
    with pytest.raises(InferenceServerException) as info:
        http_client.infer("adder", _inputs(tritonclient_http, {"x": X.astype(np.float64)}, {"x": "FP64"}))  # type: ignore[attr-defined]
    assert info.value.status() == "400" and "expected dtype float32, got float64" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http_client.infer("nope", _inputs(tritonclient_http, {"x": X}, {"x": "FP32"}))  # type: ignore[attr-defined]
    assert info.value.status() == "404"


def test_model_failures_are_internal_errors(grpc_client: object, http_client: object) -> None:
    negative = -np.ones((1, 2), np.float32)
    for module, client, expected in (
        (tritonclient_grpc, grpc_client, "StatusCode.INTERNAL"),
        (tritonclient_http, http_client, "500"),
    ):
        with pytest.raises(InferenceServerException) as info:
            client.infer("adder", _inputs(module, {"x": negative, "y": negative}, {"x": "FP32", "y": "FP32"}))  # type: ignore[attr-defined]
        assert info.value.status() == expected
        # The model's own message goes to the server log only (issue 13 item 8), under the request id shown.
        assert "'adder' failed" in info.value.message() and "request id" in info.value.message()
        assert "refuses negative numbers" not in info.value.message()
    assert grpc_client.is_model_ready("adder")  # type: ignore[attr-defined]


def test_typed_contents_over_grpc(server: ModelServer) -> None:
    """A request with typed ``contents`` (not raw), sent with our own messages over a plain channel."""
    import grpc

    from neuropod.kserve import proto

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        infer = channel.unary_unary(
            proto.method_path("ModelInfer"),
            request_serializer=proto.ModelInferRequest.SerializeToString,
            response_deserializer=proto.ModelInferResponse.FromString,
        )
        request = proto.ModelInferRequest(model_name="strings", id="typed")
        tensor = request.inputs.add(name="s", datatype="BYTES", shape=[2])
        tensor.contents.bytes_contents.extend([b"a", b"bc"])
        response = infer(request)
        assert response.id == "typed"
        names = [o.name for o in response.outputs]
        lengths = np.frombuffer(response.raw_output_contents[names.index("length")], dtype="<i8")
        np.testing.assert_array_equal(lengths, [1, 2])

        short = proto.ModelInferRequest(model_name="adder")
        short.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1.0, 2.0, 3.0])
        with pytest.raises(grpc.RpcError) as info:
            infer(short)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 4 values" in info.value.details()


def test_requests_over_the_size_limit_are_refused(grpc_client: object, http_client: object) -> None:
    big = np.zeros((1, 300_000), dtype=np.float32)  # 1.2 MB > the 1 MB limit of this server
    error = _grpc_error(
        lambda: grpc_client.infer("adder", _inputs(tritonclient_grpc, {"x": big, "y": big}, {"x": "FP32", "y": "FP32"}))
    )  # type: ignore[attr-defined]
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    with pytest.raises(InferenceServerException) as info:
        http_client.infer("adder", _inputs(tritonclient_http, {"x": big, "y": big}, {"x": "FP32", "y": "FP32"}))  # type: ignore[attr-defined]
    assert info.value.status() == "413"
    # The server is still fine afterwards.
    assert grpc_client.is_server_ready()  # type: ignore[attr-defined]


def test_curl(server: ModelServer) -> None:
    require_command("curl")
    base = f"http://127.0.0.1:{server.http_port}"

    def curl(*args: str, stdin: str = "") -> tuple:
        done = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code), body

    assert curl(f"{base}/v2/health/ready")[0] == 200
    code, body = curl(
        "-X", "POST", f"{base}/v2/models/adder/infer",
        "-H", "Content-Type: application/json",
        "-d", '{"id": "c1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},'
        ' {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [10, 20]}]}',
    )  # fmt: skip
    assert code == 200
    answer = json.loads(body)
    assert answer["id"] == "c1"
    assert answer["outputs"] == [{"name": "out", "datatype": "FP32", "shape": [1, 2], "data": [11.0, 22.0]}]
    code, body = curl("-X", "POST", f"{base}/v2/models/adder/infer", "-d", "{not json")
    assert code == 400 and "not valid JSON" in json.loads(body)["error"]
    code, body = curl(
        "-X", "POST", f"{base}/v2/models/adder/infer", "--data-binary", "@-", stdin="[" * 99_999 + "]" * 99_999
    )
    assert code == 400 and "nested too deeply" in json.loads(body)["error"]
    code, body = curl(f"{base}/v2/models/nope")
    assert code == 404 and "nope" in json.loads(body)["error"]


def test_raw_http2_clients_over_grpc(server: ModelServer, tmp_path: Path) -> None:
    """nghttp gets the sum and grpc-status 0; h2load's closed loop (bench/serve.py's client) gets only answers."""
    require_command("nghttp")
    require_command("h2load")
    from neuropod.kserve import proto

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "request").write_bytes(grpc_infer_frame("adder", {"x": x, "y": x * 10}))
    url = f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    command = ["nghttp", "-d", str(tmp_path / "request"), *headers, url]
    verbose = subprocess.run([*command, "-v"], capture_output=True, text=True, errors="replace", timeout=30)
    assert verbose.returncode == 0, verbose.stdout[-2000:]
    assert "grpc-status: 0" in verbose.stdout
    answer = subprocess.run(command, capture_output=True, timeout=30, check=True).stdout  # the body alone
    flag, length = answer[0], int.from_bytes(answer[1:5], "big")
    assert flag == 0 and length == len(answer) - 5
    response = proto.ModelInferResponse.FromString(answer[5:])
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("out", "FP32", [2, 3])]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3), x * 11)

    done = subprocess.run(
        ["h2load", "-n", "400", "-c", "4", "-m", "1", "-d", str(tmp_path / "request"), *headers, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "400 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout[-2000:]
    # A gRPC failure is an HTTP 200 too (h2load counts it as a success): every answer the size of
    # nghttp's shows none failed.
    received = int(re.search(r"\(([0-9]+)\) data", done.stdout).group(1))  # type: ignore[union-attr]
    assert received == 400 * len(answer)
