"""deploy/: the KServe and Kubernetes manifests are valid, offline, and their probes match the server.

Validation uses deploy/validate.py: the InferenceService schema (following
KServe's CRD) with the published Kubernetes schemas that kubernetes-validate
ships. The probe check starts ``neuropod serve`` with the manifests' own
container arguments and asks it the probes' paths.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from ray_models import free_port

from conftest import REPO, require

DEPLOY = REPO / "deploy"
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
KUBERNETES_SERVER = DEPLOY / "kubernetes" / "neuropod-server.yaml"


@pytest.fixture(scope="module")
def validate() -> Any:
    for module in ("jsonschema", "yaml", "kubernetes_validate"):
        require(module)
    spec = importlib.util.spec_from_file_location("neuropod_deploy_validate", DEPLOY / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inference_service(validate: Any) -> Dict[str, Any]:
    (document,) = validate.load_manifests(INFERENCE_SERVICE)
    return document  # type: ignore[no-any-return]


def test_every_manifest_is_valid(validate: Any) -> None:
    manifests = sorted((DEPLOY / "kserve").glob("*.yaml")) + sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    assert INFERENCE_SERVICE in manifests and KUBERNETES_SERVER in manifests
    for path in manifests:
        for document in validate.load_manifests(path):
            assert validate.problems(document) == [], path
    assert validate.main([str(p) for p in manifests]) == 0


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"), "apiVersion"),
        (lambda d: d["metadata"].update(name="Neuropod_Adder"), "metadata.name"),
        (lambda d: d["spec"]["predictor"].update(minReplicas="one"), "spec.predictor.minReplicas"),
        (lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"), "spec.predictor.scaleMetric"),
        (lambda d: d["spec"]["predictor"].update(replicas=3), "spec.predictor"),  # not a KServe or PodSpec field
        (lambda d: d["spec"]["predictor"]["containers"][0].update(imagee="x"), "spec.predictor.containers.0"),
        (lambda d: d["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"].update(port=[8080]),
         "spec.predictor.containers.0.readinessProbe.httpGet.port"),
        (lambda d: d["spec"]["predictor"].update(terminationGracePeriodSeconds="soon"),
         "spec.predictor.terminationGracePeriodSeconds"),  # an inlined PodSpec field keeps its type
        (lambda d: d["spec"].pop("predictor"), "spec"),
    ],
)  # fmt: skip
def test_a_broken_inference_service_is_refused_with_its_path(validate: Any, change: Any, expected: str) -> None:
    document = copy.deepcopy(_inference_service(validate))
    change(document)
    found = validate.problems(document)
    assert any(problem.split(":")[0] == expected for problem in found), found


def test_a_broken_kubernetes_object_is_refused(validate: Any, tmp_path: Path) -> None:
    deployment, _service = validate.load_manifests(KUBERNETES_SERVER)
    deployment["spec"]["replicas"] = "two"
    assert validate.problems(deployment)
    path = tmp_path / "broken.yaml"
    path.write_text(json.dumps(deployment))  # JSON is YAML
    assert validate.main([str(path)]) == 1


def _containerfile_command() -> Tuple[List[str], List[str]]:
    text = (DEPLOY / "Containerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    command = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert entrypoint and command
    return json.loads(entrypoint.group(1)), json.loads(command.group(1))


def _containers(validate: Any) -> List[Dict[str, Any]]:
    deployment, _service = validate.load_manifests(KUBERNETES_SERVER)
    return [_inference_service(validate)["spec"]["predictor"]["containers"][0]] + [
        deployment["spec"]["template"]["spec"]["containers"][0]
    ]


def test_manifests_run_the_images_default_command(validate: Any) -> None:
    entrypoint, command = _containerfile_command()
    assert entrypoint == ["neuropod"]
    for container in _containers(validate):
        assert container["args"] == command


def _get(url: str) -> Tuple[int, Dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _port_number(container: Dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def test_probes_match_the_servers_health_routes(validate: Any, tmp_path: Path) -> None:
    require("grpc")
    from neuropod.packagers import create_placeholder_neuropod

    spec = [{"name": "x", "dtype": "float32", "shape": ["batch"]}]
    models = tmp_path / "models"
    models.mkdir()
    create_placeholder_neuropod(models / "adder", "adder", spec, spec, package_as_zip=False)
    for container in _containers(validate):
        args = list(container["args"])
        http_port, grpc_port = free_port(), free_port()
        declared_http = int(args[args.index("--http-port") + 1])
        readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        # The probes ask the port the server's REST side listens on.
        assert _port_number(container, readiness["port"]) == declared_http
        assert _port_number(container, liveness["port"]) == declared_http
        # The container's own arguments; only the model path, address and ports are this test's.
        replacements = {"/mnt/models": str(models), "0.0.0.0": "127.0.0.1"}
        args = [replacements.get(a, a) for a in args]
        args[args.index("--http-port") + 1] = str(http_port)
        args[args.index("--grpc-port") + 1] = str(grpc_port)
        server = subprocess.Popen([sys.executable, "-m", "neuropod.cli", *args])
        try:
            deadline = time.monotonic() + 60
            status: Any = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    status, body = _get(f"http://127.0.0.1:{http_port}{readiness['path']}")
                except OSError:
                    time.sleep(0.2)
                    continue
                if status == 200:
                    break
                time.sleep(0.2)
            assert status == 200 and body == {"ready": True}, (status, server.poll())
            assert _get(f"http://127.0.0.1:{http_port}{liveness['path']}") == (200, {"live": True})
        finally:
            server.terminate()
            server.wait(timeout=60)
