"""Ray Serve: a deployment that serves one neuropod over the KServe v2 REST routes.

Each replica loads the package (or connects to the model URL) once and answers
the same routes as ``neuropod serve``'s REST port, so tritonclient, curl and
``load_neuropod("http://host:port/<model>")`` work against Ray Serve unchanged::

    GET  /v2/health/live   GET /v2/health/ready   GET /v2
    GET  /v2/models/{name}[/versions/{version}][/ready]
    POST /v2/models/{name}[/versions/{version}]/infer

Bodies use the server's own REST codec (JSON, or JSON plus raw tensors: the
binary tensor data extension). Ray Serve owns everything around it: replicas,
autoscaling, placement, and request batching (:func:`ray.serve.batch`).
A Python caller can skip HTTP: ``handle.infer.remote({"x": x, ...})``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import ray
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import Request
from starlette.responses import Response

from ..._version import __version__
from ...errors import InputValidationError, ModelNotFoundError, ModelNotReadyError, SpecError
from ...kserve import BINARY_EXTENSION, HEADER_LENGTH_HEADER, rest
from ...kserve.datatypes import DTYPE_TO_DATATYPE
from ...kserve.status import status_for
from ...loader import REMOTE_SCHEMES, load_neuropod
from ...package import open_package
from ...spec import SpecValidator, TensorSpec
from ...urls import model_location

__all__ = ["NeuropodDeployment", "neuropod_deployment", "SERVER_NAME", "EXTENSIONS", "MODEL_VERSION"]

TensorDict = Dict[str, np.ndarray]

SERVER_NAME = "neuropod-ray-serve"
#: The protocol extensions these routes implement (fewer than neuropod serve's; the remote client looks for this one).
EXTENSIONS = (BINARY_EXTENSION,)
#: A deployment serves one version of one model.
MODEL_VERSION = "1"

_MODEL_ROUTE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$")
_JSON = "application/json"


def _json(data: Any, status: int = 200) -> Response:
    return Response(content=json.dumps(data), status_code=status, media_type=_JSON)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _tensor_metadata(spec: TensorSpec) -> Dict[str, Any]:
    # Symbols cannot travel in the protocol: they become -1, like None.
    return {
        "name": spec.name,
        "datatype": DTYPE_TO_DATATYPE[spec.dtype],
        "shape": [dim if isinstance(dim, int) else -1 for dim in spec.shape],
    }


def _signature(inputs: Mapping[str, np.ndarray]) -> Tuple[Any, ...]:
    """Requests with equal signatures concatenate along dimension 0 (strings of any length do)."""
    return tuple(
        sorted((name, "U" if a.dtype.kind in "US" else a.dtype.str, tuple(a.shape[1:])) for name, a in inputs.items())
    )


def _batch_symbol(problem: Any) -> Optional[str]:
    """The symbol every input and output starts with, or None."""
    firsts = {spec.shape[0] if spec.shape else None for spec in list(problem.inputs) + list(problem.outputs)}
    first = next(iter(firsts)) if len(firsts) == 1 else None
    return first if isinstance(first, str) else None


def _check_batchable(name: str, problem: Any) -> None:
    if _batch_symbol(problem) is None:
        shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in list(problem.inputs) + list(problem.outputs))
        raise SpecError(
            f"model {name!r}: max_batch_size needs every input and output to start with the same "
            f"batch symbol (a model URL has none: v2 metadata carries no symbols); its specs are: {shapes}"
        )


@serve.deployment(name="NeuropodDeployment")
class NeuropodDeployment:
    """One Ray Serve replica serving one model (build it with :func:`neuropod_deployment`).

    Args:
        model: a package path (visible on every node a replica may run on) or a model URL.
        model_name: the name clients use; defaults to the package's name.
        max_batch_size: Serve batching: merge up to this many concurrent requests
            into one model call (0 turns batching off). Needs a model whose inputs
            and outputs all start with one batch symbol.
        batch_wait_timeout_s: how long the first request of a batch waits for others.
        max_concurrent_batches: merged calls that may run at once.
        load_options: keyword arguments for :func:`~neuropod.load_neuropod`, e.g.
            ``{"use_ope": True, "workers": 2}`` to run the model in the replica's
            out-of-process worker (the way to give it another environment).
    """

    def __init__(
        self,
        model: str,
        model_name: Optional[str] = None,
        max_batch_size: int = 0,
        batch_wait_timeout_s: float = 0.01,
        max_concurrent_batches: int = 1,
        load_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        options = dict(load_options or {})
        if "visible_gpu" not in options and not str(model).startswith(REMOTE_SCHEMES):
            # Ray sets CUDA_VISIBLE_DEVICES to the replica's own GPUs: the first one is index 0.
            options["visible_gpu"] = 0 if ray.get_gpu_ids() else None
        self._model = load_neuropod(model, **options)
        self.name = model_name or self._model.name
        problem = self._model.problem
        self._input_validator = SpecValidator(problem.inputs, "input")
        self._output_names = tuple(spec.name for spec in problem.outputs)
        self._batching = max_batch_size > 0
        if self._batching:
            _check_batchable(self.name, problem)
            # Decorated here, not on the class, so each deployment gets its own settings.
            self._infer_batch = serve.batch(
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=batch_wait_timeout_s,
                max_concurrent_batches=max_concurrent_batches,
            )(self._run_batch)

    # -- the Python API (``handle.infer.remote(inputs)``) ---------------------

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> TensorDict:
        """Validate and run one request; merged with concurrent ones when batching is on."""
        inputs = dict(inputs)
        self._input_validator.validate(inputs)
        if self._batching and inputs:
            return await self._infer_batch(inputs)  # type: ignore[no-any-return]
        return await asyncio.to_thread(self._model.infer, inputs)

    async def _run_batch(self, requests: List[TensorDict]) -> List[TensorDict]:
        # Requests that cannot be concatenated (other trailing sizes or dtypes) run as separate calls.
        groups: Dict[Tuple[Any, ...], List[int]] = {}
        for index, inputs in enumerate(requests):
            groups.setdefault(_signature(inputs), []).append(index)
        results: List[TensorDict] = [{} for _ in requests]
        for indexes in groups.values():
            members = [requests[i] for i in indexes]
            if len(members) == 1:
                merged = members[0]
            else:
                merged = {name: np.concatenate([m[name] for m in members]) for name in members[0]}
            outputs = await asyncio.to_thread(self._model.infer, merged)
            offset = 0
            for index, member in zip(indexes, members):
                rows = next(iter(member.values())).shape[0]
                results[index] = {name: array[offset : offset + rows] for name, array in outputs.items()}
                offset += rows
        return results

    def ready(self) -> bool:
        """Whether the model can take a call now (an out-of-process worker may be restarting)."""
        ready = getattr(self._model.executor, "ready", None)
        return bool(ready()) if ready is not None else True

    def describe(self) -> Dict[str, Any]:
        """Name, platform, executor and processes of this replica's model (for operators and tests)."""
        executor = self._model.executor
        return {
            "name": self.name,
            "platform": self._model.platform,
            "executor": type(executor).__name__,
            "pid": os.getpid(),
            # Out-of-process workers, if any (None: one being restarted).
            "worker_pids": [pid for pid in getattr(executor, "worker_pids", []) if pid is not None],
        }

    def __del__(self) -> None:
        # Serve calls this when it stops a replica: the model's worker and shared memory go with it.
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()

    # -- HTTP: the KServe v2 REST routes --------------------------------------

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except Exception as exc:  # the status comes from the exception's class, as in neuropod serve
            return _error(status_for(exc).http, str(exc))

    async def _route(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # the application's route_prefix
            path = path[len(root) :] or "/"
        path = path.rstrip("/") or "/"
        method = request.method
        if path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            if method != "GET":
                return _error(405, f"{path} takes GET, not {method}")
            if path == "/v2/health/live":
                return _json({"live": True})
            if path == "/v2/health/ready":
                ready = self.ready()
                return _json({"ready": ready}, 200 if ready else 503)
            return _json({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})
        match = _MODEL_ROUTE.match(path)
        if match is None:
            return _error(404, f"no route {path}; this server answers the KServe v2 routes under /v2")
        action = match["action"] or ""
        if method != ("POST" if action == "/infer" else "GET"):
            return _error(405, f"{path} takes {'POST' if action == '/infer' else 'GET'}, not {method}")
        name, version = match["name"], match["version"] or ""
        self._check_model(name, version)
        if action == "/ready":
            ready = self.ready()
            return _json({"name": name, "ready": ready}, 200 if ready else 503)
        if action == "":
            problem = self._model.problem
            return _json(
                {
                    "name": self.name,
                    "versions": [MODEL_VERSION],
                    "platform": self._model.platform,
                    "inputs": [_tensor_metadata(s) for s in problem.inputs],
                    "outputs": [_tensor_metadata(s) for s in problem.outputs],
                }
            )
        return await self._http_infer(request, name, version)

    def _check_model(self, name: str, version: str) -> None:
        if name != self.name:
            raise ModelNotFoundError(f"no model named {name!r}; this deployment serves {self.name!r}")
        if version and version != MODEL_VERSION:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; it has {MODEL_VERSION}")

    async def _http_infer(self, request: Request, name: str, version: str) -> Response:
        document, tail = rest.split_body(await request.body(), request.headers.get(HEADER_LENGTH_HEADER))
        inputs = rest.decode_tensors(document.get("inputs"), tail, "input")
        wanted, raw = self._requested_outputs(document)
        request_id = document.get("id", "")
        if not isinstance(request_id, str):
            raise InputValidationError("request body: 'id' must be a string")
        if not self.ready():
            raise ModelNotReadyError(f"model {self.name!r} is not ready")
        outputs = await self.infer(inputs)
        if wanted is not None:
            outputs = {n: outputs[n] for n in wanted}
        entries, chunks = rest.encode_tensors(outputs, raw)
        answer: Dict[str, Any] = {"model_name": self.name, "model_version": MODEL_VERSION}
        if request_id:
            answer["id"] = request_id
        answer["outputs"] = entries
        body, headers = rest.join_body(answer, chunks)
        return Response(content=body, headers=headers)

    def _requested_outputs(self, document: Mapping[str, Any]) -> Tuple[Optional[List[str]], Any]:
        """The output names asked for (None: all) and, per name, whether it goes back raw."""
        raw_default = bool(rest.parameters(document, "request").get("binary_data_output", False))
        requested = document.get("outputs")
        if requested is None:
            return None, lambda name: raw_default
        if not isinstance(requested, list):
            raise InputValidationError("request body: 'outputs' must be a list")
        raw: Dict[str, bool] = {}
        for index, output in enumerate(requested):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise InputValidationError(f"outputs[{index}]: expected an object with a name")
            where = f"output {output['name']!r}"
            raw[output["name"]] = bool(rest.parameters(output, where).get("binary_data", raw_default))
        unknown = [n for n in raw if n not in self._output_names]
        if unknown:
            raise InputValidationError(
                f"requested output(s) {', '.join(repr(n) for n in unknown)} not in the spec of model "
                f"{self.name!r}; expected any of {', '.join(repr(n) for n in self._output_names)}"
            )
        return list(raw) or None, lambda name: raw.get(name, raw_default)


def neuropod_deployment(
    model: Union[str, os.PathLike[str]],
    *,
    model_name: Optional[str] = None,
    max_batch_size: int = 0,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    load_options: Optional[Mapping[str, Any]] = None,
    **deployment_options: Any,
) -> Application:
    """A Ray Serve application serving ``model`` over the KServe v2 REST routes.

    Run it with ``serve.run(app, route_prefix="/")``; clients then use
    ``http://<serve host>:<port>/v2/models/<model_name>/infer``.

    Args:
        model: a package path (visible on every node a replica may run on) or a
            model URL (``grpc://host:8001/adder``: Ray Serve in front of a server).
        model_name: the name clients use; defaults to the package's name.
        max_batch_size: Serve batching (``ray.serve.batch``): up to this many
            concurrent requests of one replica run as one model call (0: off).
        batch_wait_timeout_s: how long a batch waits to fill.
        max_concurrent_batches: merged calls that may run at once in a replica.
        load_options: keyword arguments for :func:`~neuropod.load_neuropod`
            (``use_ope=True``, ``workers=``, ``visible_gpu=`` ...). When a
            replica has GPUs (``ray_actor_options={"num_gpus": 1}``) the model
            runs on its first one unless ``visible_gpu`` says otherwise.
        **deployment_options: Ray Serve deployment options, passed through:
            ``num_replicas``, ``autoscaling_config``, ``ray_actor_options``,
            ``max_ongoing_requests``, ``name`` ...

    Raises:
        SpecError: a batching setting is out of range, or batching is asked
            for a package whose inputs and outputs share no batch symbol.
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise SpecError(f"max_batch_size: expected a non-negative int, got {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, (int, float)) or batch_wait_timeout_s < 0:
        raise SpecError(f"batch_wait_timeout_s: expected a non-negative number, got {batch_wait_timeout_s!r}")
    concurrent = max_concurrent_batches
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1:
        raise SpecError(f"max_concurrent_batches: expected a positive int, got {concurrent!r}")
    location = model_location(model)
    if max_batch_size and os.path.exists(location):
        # Checked here as well as in each replica: a replica that fails to start is retried by Serve for long.
        config = open_package(location, verify=False).config
        _check_batchable(model_name or config.name, config.problem)
    # @serve.deployment made the class a ray.serve Deployment; mypy still sees the class.
    deployment: Any = NeuropodDeployment
    if deployment_options:
        deployment = deployment.options(**deployment_options)
    return deployment.bind(
        location,
        model_name,
        max_batch_size,
        float(batch_wait_timeout_s),
        max_concurrent_batches,
        dict(load_options or {}),
    )
