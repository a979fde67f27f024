"""Ray Serve: a real local Ray serving real packages over the KServe v2 REST routes of the server's data plane.

One Ray instance and one Serve instance for the whole module; the clients are
the ones that talk to ``neuropod serve``: tritonclient's HTTP client, plain
JSON over HTTP (what curl sends) and ``load_neuropod("http://...")``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import pytest
from ray_models import free_port, make_counting_adder, make_torchscript_adder, ray_init_options

from conftest import missing, require
from neuropod import load_neuropod
from neuropod.errors import InputValidationError, ModelNotFoundError, SpecError

pytestmark = pytest.mark.slow

X = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
Y = np.array([[10.0, 20.0], [30.0, 40.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def serve_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    ray = require("ray")
    serve = require("ray.serve")
    ray.init(**ray_init_options())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def adder_app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Tuple[int, Any]:
    """The counting adder at route prefix "/" (what clients address), two replicas."""
    from ray import serve

    from neuropod.integrations.ray import neuropod_deployment

    package = make_counting_adder(tmp_path_factory.mktemp("serve") / "adder")
    app = neuropod_deployment(package, num_replicas=2, ray_actor_options={"num_cpus": 0.1})
    handle = serve.run(app, name="adder", route_prefix="/")
    return serve_port, handle


def _post(url: str, document: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> Tuple[int, Dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _json_inputs(x: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()},
            {"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.reshape(-1).tolist()},
        ]
    }


def test_tritonclient_http_talks_to_ray_serve(adder_app: Tuple[int, Any]) -> None:
    port, _ = adder_app
    httpclient = require("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("adder")
    metadata = client.get_model_metadata("adder")
    assert [t["name"] for t in metadata["inputs"]] == ["x", "y"]
    assert metadata["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, -1]}
    for binary in (True, False):
        inputs = [httpclient.InferInput("x", list(X.shape), "FP32"), httpclient.InferInput("y", list(Y.shape), "FP32")]
        inputs[0].set_data_from_numpy(X, binary_data=binary)
        inputs[1].set_data_from_numpy(Y, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("out", binary_data=binary)]
        result = client.infer("adder", inputs, outputs=outputs, request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("out"), X + Y)
        assert result.get_response()["id"] == "r1"
        assert result.as_numpy("rows") is None  # only the output asked for comes back


def test_plain_json_request(adder_app: Tuple[int, Any]) -> None:
    port, _ = adder_app
    status, answer = _post(f"http://127.0.0.1:{port}/v2/models/adder/versions/1/infer", _json_inputs(X, Y))
    assert status == 200, answer
    assert answer["model_name"] == "adder" and answer["model_version"] == "1"
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["out"]["shape"] == [2, 2] and out["out"]["data"] == (X + Y).reshape(-1).tolist()
    assert out["rows"]["datatype"] == "INT64"
    assert _get(f"http://127.0.0.1:{port}/v2/health/live") == (200, {"live": True})
    assert _get(f"http://127.0.0.1:{port}/v2/models/adder/ready") == (200, {"name": "adder", "ready": True})
    status, server = _get(f"http://127.0.0.1:{port}/v2")
    # Only what the deployment's routes implement: no repository control or shared memory behind Serve's router.
    assert status == 200 and server["extensions"] == ["binary_tensor_data", "statistics"]


def test_load_neuropod_over_ray_serve(adder_app: Tuple[int, Any]) -> None:
    port, _ = adder_app
    with load_neuropod(f"http://127.0.0.1:{port}/adder") as model:
        assert [spec["name"] for spec in model.inputs] == ["x", "y"]
        outputs = model.infer({"x": X, "y": Y})
        np.testing.assert_array_equal(outputs["out"], X + Y)
        np.testing.assert_array_equal(outputs["rows"], [2, 2])


def test_errors_carry_the_servers_status_and_message(adder_app: Tuple[int, Any]) -> None:
    port, _ = adder_app
    base = f"http://127.0.0.1:{port}/v2/models"
    wrong = _json_inputs(X, Y)
    wrong["inputs"][1]["datatype"] = "INT32"
    wrong["inputs"][1]["data"] = [1, 2, 3, 4]
    status, answer = _post(f"{base}/adder/infer", wrong)
    assert status == 400 and "'y'" in answer["error"] and "int32" in answer["error"]
    status, answer = _post(f"{base}/adder/infer", {**_json_inputs(X, Y), "outputs": [{"name": "nope"}]})
    assert status == 400 and "'nope'" in answer["error"]
    status, answer = _post(f"{base}/other/infer", _json_inputs(X, Y))
    assert status == 404 and "'other'" in answer["error"] and "'adder'" in answer["error"]
    status, answer = _post(f"{base}/adder/infer", _json_inputs(-X, Y))
    # The server's answer to a model's failure: a request id; the model's own message goes to the replica's log.
    assert status == 500 and "model 'adder' failed on this request; request id" in answer["error"], answer
    assert "refuses negative numbers" not in answer["error"]
    assert _get(f"{base}/adder/versions/7")[0] == 404
    assert _get(f"{base}/adder/infer")[0] == 405
    assert _get(f"http://127.0.0.1:{port}/v1/models/adder")[0] == 404
    with load_neuropod(f"http://127.0.0.1:{port}/adder", validate=False) as model:
        with pytest.raises(InputValidationError, match="'y'"):
            model.infer({"x": X, "y": Y.astype(np.int32)})
    with pytest.raises(ModelNotFoundError):
        load_neuropod(f"http://127.0.0.1:{port}/other")


def test_replicas_are_passed_to_serve(adder_app: Tuple[int, Any]) -> None:
    from ray import serve

    _, handle = adder_app
    deployment = serve.status().applications["adder"].deployments["NeuropodDeployment"]
    assert deployment.replica_states == {"RUNNING": 2}
    pids = {handle.describe.remote().result()["pid"] for _ in range(20)}
    assert len(pids) == 2  # Serve spreads calls over both replicas


def test_serve_batching_merges_concurrent_requests(serve_port: int, tmp_path: Path) -> None:
    from ray import serve

    from neuropod.integrations.ray import neuropod_deployment

    package = make_counting_adder(tmp_path / "adder")
    app = neuropod_deployment(
        package,
        max_batch_size=8,
        batch_wait_timeout_s=0.5,
        max_ongoing_requests=32,
        autoscaling_config={"min_replicas": 1, "max_replicas": 2},
        ray_actor_options={"num_cpus": 0.1},
    )
    handle = serve.run(app, name="batched", route_prefix="/batched")
    try:
        rows = [np.full((1, 2), i, dtype=np.float32) for i in range(8)]
        # Two trailing sizes: requests that cannot be concatenated still share the wait, in separate calls.
        odd = np.ones((1, 3), dtype=np.float32)
        responses = [handle.infer.remote({"x": r, "y": r}) for r in rows] + [handle.infer.remote({"x": odd, "y": odd})]
        results = [response.result() for response in responses]
        for r, result in zip(rows, results):
            np.testing.assert_array_equal(result["out"], r + r)
        np.testing.assert_array_equal(results[-1]["out"], odd + odd)
        assert max(int(result["rows"][0]) for result in results[:-1]) > 1  # some requests shared a call
        # The same routes under the application's route prefix.
        status, answer = _post(f"http://127.0.0.1:{serve_port}/batched/v2/models/adder/infer", _json_inputs(X, Y))
        assert status == 200 and answer["outputs"][0]["data"] == (X + Y).reshape(-1).tolist()
    finally:
        serve.delete("batched")


def test_out_of_process_model_in_a_replica(serve_port: int, tmp_path: Path) -> None:
    require("torch")
    from ray import serve

    from neuropod.integrations.ray import neuropod_deployment

    package = make_torchscript_adder(tmp_path / "ts_adder")
    app = neuropod_deployment(package, load_options={"use_ope": True}, ray_actor_options={"num_cpus": 0.1})
    handle = serve.run(app, name="ope", route_prefix="/ope")
    try:
        described = handle.describe.remote().result()
        assert described["executor"] == "OutOfProcessExecutor" and described["platform"] == "torchscript"
        np.testing.assert_array_equal(handle.infer.remote({"x": X, "y": Y}).result()["out"], X + Y)
        status, answer = _post(f"http://127.0.0.1:{serve_port}/ope/v2/models/ts_adder/infer", _json_inputs(X, Y))
        assert status == 200 and answer["outputs"][0]["data"] == (X + Y).reshape(-1).tolist()
        # The server's statistics: both calls, the Python one and the HTTP one, went through the data plane.
        status, stats = _get(f"http://127.0.0.1:{serve_port}/ope/v2/models/ts_adder/stats")
        assert status == 200, stats
        (entry,) = stats["model_stats"]
        assert entry["name"] == "ts_adder" and entry["version"] == "1"
        assert entry["inference_stats"]["success"]["count"] == 2 and entry["inference_count"] == 4  # 2 rows each
    finally:
        serve.delete("ope")
    # The replica is gone, and so is its model's worker.
    workers = described["worker_pids"]
    assert workers
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def test_a_model_needing_another_environment_runs_in_the_replicas_worker(serve_port: int, tmp_path: Path) -> None:
    """Environment selection happens inside the replica: no load option asks for a worker."""
    from ray import serve

    from neuropod.integrations.ray import neuropod_deployment

    other = os.environ.get("NEUROPOD_TEST_OTHER_PYTHON")
    if not other:
        missing("NEUROPOD_TEST_OTHER_PYTHON names no interpreter (scripts/dev.sh test sets it to .venv39's)")
    other_numpy = subprocess.run(
        [other, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other_numpy != np.__version__  # else this process would satisfy the package itself
    package = make_counting_adder(tmp_path / "adder", requirements=f"numpy=={other_numpy}\n")
    # The replica finds the registered interpreter that satisfies the package's requirements.
    actor_options = {"num_cpus": 0.1, "runtime_env": {"env_vars": {"NEUROPOD_ENVIRONMENTS": other}}}
    handle = serve.run(
        neuropod_deployment(package, ray_actor_options=actor_options), name="other-env", route_prefix="/other-env"
    )
    try:
        assert handle.describe.remote().result()["executor"] == "OutOfProcessExecutor"
        np.testing.assert_array_equal(handle.infer.remote({"x": X, "y": Y}).result()["out"], X + Y)
        status, answer = _post(f"http://127.0.0.1:{serve_port}/other-env/v2/models/adder/infer", _json_inputs(X, Y))
        assert status == 200 and answer["outputs"][0]["data"] == (X + Y).reshape(-1).tolist()
    finally:
        serve.delete("other-env")


def test_ray_serve_in_front_of_a_neuropod_server(serve_port: int, tmp_path: Path) -> None:
    """A model URL: each replica is a client of a ``neuropod serve`` (here over gRPC)."""
    require("grpc")
    from ray import serve

    from neuropod.integrations.ray import neuropod_deployment
    from neuropod.serving import ModelServer, ServerConfig

    package = make_counting_adder(tmp_path / "adder")
    with ModelServer.from_path(package, ServerConfig(grpc_port=0, http_port=None)) as server:
        url = f"grpc://127.0.0.1:{server.grpc_port}/adder"
        app = neuropod_deployment(url, model_name="front", ray_actor_options={"num_cpus": 0.1})
        handle = serve.run(app, name="front", route_prefix="/front")
        try:
            assert handle.describe.remote().result()["executor"] == "RemoteExecutor"
            status, answer = _post(f"http://127.0.0.1:{serve_port}/front/v2/models/front/infer", _json_inputs(X, Y))
            assert status == 200, answer
            assert answer["model_name"] == "front"
            assert {o["name"]: o["data"] for o in answer["outputs"]}["out"] == (X + Y).reshape(-1).tolist()
        finally:
            serve.delete("front")


def test_batching_settings_are_checked_before_serve_sees_them(tmp_path: Path) -> None:
    require("ray.serve")
    from neuropod.integrations.ray import neuropod_deployment

    with pytest.raises(SpecError, match="max_batch_size"):
        neuropod_deployment(tmp_path, max_batch_size=-1)
    with pytest.raises(SpecError, match="batch_wait_timeout_s"):
        neuropod_deployment(tmp_path, batch_wait_timeout_s="soon")
    from neuropod.packagers import create_placeholder_neuropod

    fixed = [{"name": "x", "dtype": "float32", "shape": [3]}]
    unbatchable = create_placeholder_neuropod(tmp_path / "fixed", "fixed", fixed, fixed, package_as_zip=False)
    with pytest.raises(SpecError, match="model 'fixed': max_batch_size needs .* batch symbol.*x \\[3\\]"):
        neuropod_deployment(unbatchable, max_batch_size=4)
    # Deployment options reach Ray Serve as given: its own checks answer.
    with pytest.raises(ValueError, match="max_replicas"):
        neuropod_deployment(tmp_path, autoscaling_config={"min_replicas": 3, "max_replicas": 1})
