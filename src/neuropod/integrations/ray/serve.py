"""Ray Serve: a deployment that serves one neuropod over the KServe v2 REST routes of ``neuropod serve``.

The third adapter over the server's data plane (:mod:`neuropod.serving`),
beside the gRPC and REST ones: each replica loads the model (or connects to a
model URL) once, holds it in a one-model repository, and answers with the
server's own REST routes, validation, dynamic batching, statistics and error
answers, so tritonclient, curl and ``load_neuropod("http://host:port/<model>")``
work against Ray Serve unchanged::

    GET  /v2/health/live   GET /v2/health/ready   GET /v2
    GET  /v2/models/{name}[/versions/{version}][/ready | /stats]
    POST /v2/models/{name}[/versions/{version}]/infer

Repository control, shared memory and ``/metrics`` are left out: behind Ray
Serve's router a request reaches any replica, so what one replica holds or
counts is not the deployment's. Ray Serve owns everything around the routes:
replicas, autoscaling, placement. A Python caller can skip HTTP:
``handle.infer.remote({"x": x, ...})``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import Request
from starlette.responses import Response

from ...errors import InputValidationError, SpecError
from ...kserve import DEFAULT_MAX_MESSAGE_BYTES
from ...package import open_package
from ...serving.dataplane import DataPlane, InferRequest
from ...serving.metrics import ServerMetrics
from ...serving.repository import ModelRepository, ModelSettings, ServedModel
from ...serving.rest_adapter import RestAdapter, RestRequest
from ...urls import model_location
from . import _load_here

__all__ = ["NeuropodDeployment", "neuropod_deployment", "MODEL_VERSION", "ROUTES"]

TensorDict = Dict[str, np.ndarray]

#: A deployment serves one version of one model.
MODEL_VERSION = "1"
#: The logical methods of the REST routes a deployment serves.
ROUTES = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelReady",
    "ModelInfer",
    "ModelStatistics",
)
#: How requests are labelled in the data plane's books (the REST routes count as "rest" in neuropod serve).
PROTOCOL = "ray"


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


async def _body_chunks(request: Request) -> Any:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except Exception as exc:  # the client went away, or sent a broken body
        raise InputValidationError(f"request body: cannot read it ({exc})") from exc


@serve.deployment(name="NeuropodDeployment")
class NeuropodDeployment:
    """One Ray Serve replica serving one model (build it with :func:`neuropod_deployment`).

    Args:
        model: a package path (visible on every node a replica may run on) or a model URL.
        model_name: the name clients use; defaults to the package's name.
        max_batch_size: the server's dynamic batching: merge concurrent requests
            into calls of up to this many rows (0 turns batching off). Needs a
            model whose inputs and outputs all start with one batch symbol.
        batch_wait_timeout_s: how long the first request of a batch waits for others.
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
        load_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        settings = ModelSettings(max_batch_size=max_batch_size, max_queue_delay_ms=batch_wait_timeout_s * 1000.0)
        neuropod = _load_here(model, load_options)
        self.name = model_name or neuropod.name
        self._repository = ModelRepository()
        try:
            self._model = ServedModel(self.name, MODEL_VERSION, neuropod, settings)
        except BaseException:
            neuropod.close()
            raise
        self._repository.add(self._model)
        self._plane = DataPlane(self._repository, ServerMetrics())
        self._rest = RestAdapter(self._plane, DEFAULT_MAX_MESSAGE_BYTES, methods=ROUTES)

    def _on_loop(self) -> None:
        # Batching runs on the replica's event loop, as on the server's.
        self._plane.bind_loop(asyncio.get_running_loop())

    # -- the Python API (``handle.infer.remote(inputs)``) ---------------------

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> TensorDict:
        """Validate and run one request through the data plane (batched with concurrent ones when batching is on)."""
        self._on_loop()
        response = await self._plane.infer(InferRequest(self.name, inputs=dict(inputs)), PROTOCOL)
        return response.outputs

    def ready(self) -> bool:
        """Whether the model can take a call now (an out-of-process worker may be restarting)."""
        return self._plane.ready()

    def describe(self) -> Dict[str, Any]:
        """Name, platform, executor and processes of this replica's model (for operators and tests)."""
        executor = self._model.neuropod.executor
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
        repository = getattr(self, "_repository", None)
        if repository is not None:
            repository.close()

    # -- HTTP: the server's KServe v2 REST routes ------------------------------

    async def __call__(self, request: Request) -> Response:
        self._on_loop()
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # the application's route_prefix
            path = path[len(root) :] or "/"
        length = request.headers.get("content-length")
        call = RestRequest(
            request.headers,
            int(length) if length and length.isdigit() else None,
            lambda: _body_chunks(request),
        )
        reply = await self._rest.dispatch(request.method, path.rstrip("/") or "/", call)
        return Response(content=reply.body, status_code=reply.status, headers=reply.headers)


def neuropod_deployment(
    model: Union[str, os.PathLike[str]],
    *,
    model_name: Optional[str] = None,
    max_batch_size: int = 0,
    batch_wait_timeout_s: float = 0.01,
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
        max_batch_size: the server's dynamic batching in each replica: concurrent
            requests merged into calls of up to this many rows (0: off).
        batch_wait_timeout_s: how long a batch waits to fill.
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
        dict(load_options or {}),
    )
