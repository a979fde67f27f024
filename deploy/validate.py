"""Validate the deploy/ manifests offline: InferenceServices and plain Kubernetes objects.

    python deploy/validate.py deploy/kserve/*.yaml deploy/kubernetes/*.yaml

An ``InferenceService`` (serving.kserve.io/v1beta1) is checked against
``deploy/schema/inferenceservice.serving.kserve.io-v1beta1.json``, which
follows KServe's CRD; every Kubernetes type in it (ObjectMeta, PodSpec,
Container, Probe ...) comes from the published Kubernetes JSON schemas that
the ``kubernetes-validate`` package ships (strict variant: unknown fields are
errors), and a component gets every PodSpec field inlined, as the CRD does.
Other kinds are checked by ``kubernetes-validate`` itself. Needs
``jsonschema``, ``pyyaml`` and ``kubernetes-validate`` (all in the dev extra).
Exit status 1 and one line per problem when a manifest is invalid.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
INFERENCE_SERVICE_SCHEMA = HERE / "schema" / "inferenceservice.serving.kserve.io-v1beta1.json"
#: The Kubernetes release whose schemas are used (the newest kubernetes-validate ships, unless pinned).
KUBERNETES_VERSION_ENV = "NEUROPOD_KUBERNETES_VERSION"


def kubernetes_version() -> str:
    import os

    from kubernetes_validate import utils

    return os.environ.get(KUBERNETES_VERSION_ENV) or utils.latest_version()


@functools.lru_cache(maxsize=None)
def kubernetes_definitions(version: str) -> Dict[str, Any]:
    """The ``$defs`` of the strict Kubernetes schemas of one release."""
    from kubernetes_validate import utils

    document = utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return dict(document["$defs"])


@functools.lru_cache(maxsize=None)
def inference_service_schema(version: str) -> Dict[str, Any]:
    """The InferenceService schema with the Kubernetes definitions and PodSpec fields merged in."""
    schema = json.loads(INFERENCE_SERVICE_SCHEMA.read_text())
    definitions = kubernetes_definitions(version)
    pod_spec = definitions["io.k8s.api.core.v1.PodSpec"]
    for component in schema["properties"]["spec"]["properties"].values():
        if component.pop("x-neuropod-inline-pod-spec", False):
            # KServe's own fields win where names collide; containers are optional in a component.
            component["properties"] = {**copy.deepcopy(pod_spec["properties"]), **component["properties"]}
    schema["$defs"] = definitions
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def problems(document: Any) -> List[str]:
    """Every problem of one manifest, as ``path: message`` lines (empty when it is valid)."""
    if not isinstance(document, dict):
        return [f"<root>: expected a Kubernetes object (a mapping), got {type(document).__name__}"]
    version = kubernetes_version()
    if document.get("kind") == "InferenceService" or str(document.get("apiVersion", "")).startswith("serving.kserve.io/"):
        validator = jsonschema.Draft202012Validator(inference_service_schema(version))
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
    from kubernetes_validate import utils

    try:
        utils.validate(document, version, strict=True)
    except utils.ValidationError as exc:
        return [f"{'.'.join(str(p) for p in exc.absolute_path) or '<root>'}: {exc.message}"]
    except utils.SchemaNotFoundError as exc:
        return [f"<root>: {exc.message}"]
    return []


def load_manifests(path: Path) -> List[Any]:
    """Every YAML document of a file (``---`` separated), empty ones dropped."""
    with open(path) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def main(argv: List[str]) -> int:
    if not argv:
        print("usage: python deploy/validate.py MANIFEST.yaml ...", file=sys.stderr)
        return 2
    failed = False
    for name in argv:
        for index, document in enumerate(load_manifests(Path(name))):
            kind = document.get("kind", "?") if isinstance(document, dict) else "?"
            found = problems(document)
            for problem in found:
                print(f"{name} [{index}] {kind}: {problem}")
            failed = failed or bool(found)
            if not found:
                print(f"{name} [{index}] {kind}: valid (Kubernetes {kubernetes_version()} schemas)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
