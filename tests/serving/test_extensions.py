"""The statistics, model repository and system shared memory extensions, driven by tritonclient."""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from serving_models import make_adder, make_strings

from conftest import require

require("grpc")
require("aiohttp")
tritonclient_grpc = require("tritonclient.grpc")
tritonclient_http = require("tritonclient.http")
with warnings.catch_warnings():  # it imports pkg_resources, which warns about itself
    warnings.simplefilter("ignore")
    shm = require("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402

from neuropod.serving import ModelRepository, ModelServer, ModelSettings, ServerConfig  # noqa: E402

LOOPBACK = ServerConfig(grpc_port=0, http_port=0)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function InferenceServerClient.__del__:pytest.PytestUnraisableExceptionWarning"
)


def _inputs(module: Any, x: np.ndarray, y: np.ndarray) -> list:
    inputs = [module.InferInput("x", list(x.shape), "FP32"), module.InferInput("y", list(y.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(y)
    return inputs


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_adder(root / "adder", fail_on_negative=True)
    make_strings(root / "strings")
    return root


@pytest.fixture
def server(repo: Path) -> Iterator[ModelServer]:
    with ModelServer.from_path(repo, LOOPBACK) as running:
        yield running


# -- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_statistics_count_successes_failures_and_rows(server: ModelServer, protocol: str) -> None:
    module = tritonclient_grpc if protocol == "grpc" else tritonclient_http
    port = server.grpc_port if protocol == "grpc" else server.http_port
    client = module.InferenceServerClient(f"127.0.0.1:{port}")
    ones = np.ones((3, 2), np.float32)
    for _ in range(2):
        client.infer("adder", _inputs(module, ones, ones))
    with pytest.raises(InferenceServerException):
        client.infer("adder", _inputs(module, -ones, ones))
    if protocol == "grpc":
        stats = client.get_inference_statistics("adder", as_json=True)
    else:
        stats = client.get_inference_statistics("adder")
    client.close()
    (entry,) = stats["model_stats"]
    assert entry["name"] == "adder" and entry["version"] == "1"
    infer_stats = entry["inference_stats"]
    assert int(infer_stats["success"]["count"]) == 2
    assert int(infer_stats["fail"]["count"]) == 1
    assert int(infer_stats["success"]["ns"]) > int(infer_stats["compute_infer"]["ns"]) > 0
    assert int(entry["inference_count"]) == 6  # rows: the batch dimension of each request
    assert int(entry["execution_count"]) == 2  # model calls that returned
    assert int(entry["last_inference"]) > 0


def test_statistics_of_every_model(server: ModelServer) -> None:
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    names = sorted(entry["name"] for entry in client.get_inference_statistics()["model_stats"])
    client.close()
    assert names == ["adder", "strings"]


# -- model repository -------------------------------------------------------------------------


def test_index_unload_and_load_over_both_protocols(server: ModelServer) -> None:
    grpc_client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    http_client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m["state"]) for m in index) == [("adder", "READY"), ("strings", "READY")]
    http_client.unload_model("strings")
    assert not grpc_client.is_model_ready("strings")
    rows = {row["name"]: row for row in http_client.get_model_repository_index()}
    assert rows["strings"]["state"] == "UNAVAILABLE" and rows["strings"]["reason"] == "unloaded"
    grpc_client.load_model("strings")
    assert http_client.is_model_ready("strings")
    grpc_client.unload_model("adder")
    with pytest.raises(InferenceServerException, match="no model named 'adder'"):
        grpc_client.infer("adder", _inputs(tritonclient_grpc, np.ones((1, 1), np.float32), np.ones((1, 1), np.float32)))
    http_client.load_model("adder")
    ones = np.ones((1, 2), np.float32)
    assert grpc_client.infer("adder", _inputs(tritonclient_grpc, ones, ones)).as_numpy("out").tolist() == [[2, 2]]
    with pytest.raises(InferenceServerException, match="no model named 'nothing'"):
        http_client.load_model("nothing")
    grpc_client.close()
    http_client.close()


def test_a_replaced_model_serves_its_old_version_until_the_new_one_is_ready(repo: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    make_adder(slow, name="adder", sleep_s=1.0)
    shutil.rmtree(repo / "adder")
    shutil.copytree(slow, repo / "adder")
    with ModelServer.from_path(repo, LOOPBACK) as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        old = server.repository.get("adder")
        ones = np.ones((1, 2), np.float32)
        answers: list = []
        in_flight = threading.Thread(
            target=lambda: answers.append(client.infer("adder", _inputs(tritonclient_grpc, ones, ones)))
        )
        in_flight.start()
        time.sleep(0.3)  # the request is inside the old model now
        shutil.rmtree(repo / "adder")
        make_adder(repo / "adder", fail_on_negative=True)  # the new version: fast, refuses negatives
        client.load_model("adder")
        in_flight.join(30)
        assert answers and answers[0].as_numpy("out").tolist() == [[2, 2]]  # the in-flight request finished
        assert old.closed  # and the old version closed after it
        with pytest.raises(InferenceServerException, match="request id"):  # the new code answers
            client.infer("adder", _inputs(tritonclient_grpc, -ones, ones))
        client.close()


def test_a_failed_reload_keeps_the_old_version(server: ModelServer, repo: Path) -> None:
    shutil.rmtree(repo / "strings")
    (repo / "strings.zip").write_bytes(b"not a zip at all")
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    with pytest.raises(InferenceServerException, match="strings"):
        client.load_model("strings")
    assert client.is_model_ready("strings")
    client.close()


def test_poll_repo_picks_up_added_changed_and_removed_packages(repo: Path) -> None:
    config = ServerConfig(grpc_port=0, http_port=0, poll_repo_s=0.2)
    with ModelServer.from_path(repo, config) as server:
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")

        def wait_for(condition: Any) -> bool:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if condition():
                    return True
                time.sleep(0.1)
            return False

        make_adder(repo / "second")
        assert wait_for(lambda: "second" in server.repository.names() and client.is_model_ready("second"))
        first = server.repository.get("strings")
        shutil.rmtree(repo / "strings")
        make_strings(repo / "strings")  # changed on disk
        assert wait_for(lambda: server.repository.get("strings") is not first)
        shutil.rmtree(repo / "second")
        assert wait_for(lambda: "second" not in server.repository.names())
        client.close()


def test_a_corrupt_package_is_reported_and_the_others_serve(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    (repo / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    from neuropod.errors import PackageError

    with pytest.raises(PackageError):
        ModelRepository.from_path(repo)  # strict: fatal
    repository = ModelRepository.from_path(repo, strict=False)
    try:
        assert sorted(repository.names()) == ["adder", "strings"]
        logged = [r for r in caplog.records if r.getMessage().startswith("cannot load model")]
        assert logged and logged[0].path == str(repo / "broken.zip") and logged[0].reason  # type: ignore[attr-defined]
        (row,) = [entry for entry in repository.index() if entry.name == "broken"]
        assert row.state == "UNAVAILABLE" and row.reason
    finally:
        repository.close()


# -- system shared memory ----------------------------------------------------------------------


def test_inputs_and_outputs_through_system_shared_memory(server: ModelServer) -> None:
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.full((2, 4), 10, np.float32)
    size = x.nbytes
    inputs_key, outputs_key = f"/np-test-in-{id(client)}", f"/np-test-out-{id(client)}"
    inputs_region = shm.create_shared_memory_region("inputs", inputs_key, 2 * size)
    outputs_region = shm.create_shared_memory_region("outputs", outputs_key, size + 16)
    try:
        shm.set_shared_memory_region(inputs_region, [x, y])
        client.register_system_shared_memory("inputs", inputs_key, 2 * size)
        client.register_system_shared_memory("outputs", outputs_key, size + 16)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert sorted(status) == ["inputs", "outputs"] and int(status["inputs"]["byte_size"]) == 2 * size
        inputs = [tritonclient_grpc.InferInput("x", [2, 4], "FP32"), tritonclient_grpc.InferInput("y", [2, 4], "FP32")]
        inputs[0].set_shared_memory("inputs", size)
        inputs[1].set_shared_memory("inputs", size, offset=size)
        output = tritonclient_grpc.InferRequestedOutput("out")
        output.set_shared_memory("outputs", size, offset=16)
        result = client.infer("adder", inputs, outputs=[output])
        assert result.get_response().raw_output_contents == [b""]  # no tensor bytes came back over the socket
        described = result.get_output("out")
        assert described.parameters["shared_memory_byte_size"].int64_param == size
        out = shm.get_contents_as_numpy(outputs_region, np.float32, [2, 4], offset=16)
        np.testing.assert_array_equal(out, x + y)
        inputs[1].set_shared_memory("inputs", size, offset=size + 8)  # runs past the region's end
        with pytest.raises(InferenceServerException, match="outside shared memory region"):
            client.infer("adder", inputs, outputs=[output])
        client.unregister_system_shared_memory("inputs")
        assert sorted(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["outputs"]
        with pytest.raises(InferenceServerException, match="no such object"):
            client.register_system_shared_memory("ghost", "/np-test-missing", 8)
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(outputs_region)


def test_shared_memory_regions_over_rest(server: ModelServer) -> None:
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    key = f"/np-test-rest-{id(client)}"
    region = shm.create_shared_memory_region("rest", key, 64)
    try:
        client.register_system_shared_memory("rest", key, 64)
        (status,) = client.get_system_shared_memory_status()
        assert status["name"] == "rest" and status["byte_size"] == 64
        client.unregister_system_shared_memory("rest")
        assert client.get_system_shared_memory_status() == []
    finally:
        client.close()
        shm.destroy_shared_memory_region(region)


def test_server_metadata_lists_the_extensions(server: ModelServer) -> None:
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    extensions = set(client.get_server_metadata(as_json=True)["extensions"])
    client.close()
    assert {"binary_tensor_data", "statistics", "model_repository", "system_shared_memory"} <= extensions


def test_settings_for_unknown_models_are_refused(repo: Path) -> None:
    from neuropod.errors import OptionError

    with pytest.raises(OptionError, match="nothing"):
        ModelRepository.from_path(repo, model_settings={"nothing": ModelSettings()})
