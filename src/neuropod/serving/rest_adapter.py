"""The REST adapter: the KServe v2 HTTP/REST protocol over the data plane (aiohttp).

Routes::

    GET  /v2/health/live            GET  /v2/health/ready        GET /v2
    GET  /v2/models/{name}[/versions/{version}]
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer
    GET  /metrics                   (Prometheus)

Inference bodies are JSON, or JSON followed by raw tensor bytes (the
*binary tensor data* extension that tritonclient uses by default): the
``Inference-Header-Content-Length`` header gives the length of the JSON part,
an input's ``parameters.binary_data_size`` its bytes in the tail, in input
order. Outputs go back raw when the request asks (an output's
``parameters.binary_data`` or the request's ``parameters.binary_data_output``).
Every failure is answered ``{"error": "..."}`` with the status of its class.

The routes read a :class:`RestRequest` and answer a :class:`RestReply`, so any
web framework can carry them: :meth:`RestAdapter.app` is the aiohttp
application ``neuropod serve`` runs, and :meth:`RestAdapter.dispatch` routes a
request another framework received (the Ray Serve deployment, which serves a
chosen subset of the routes).
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Pattern,
    Tuple,
)

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InputValidationError, RequestTooLargeError
from ..kserve import HEADER_LENGTH_HEADER, rest
from .auth import BearerToken
from .dataplane import DataPlane, InferRequest, InferResponse
from .failures import public_failure
from .metrics import CONTENT_TYPE_LATEST

__all__ = ["RestAdapter", "RestRequest", "RestReply", "PROTOCOL"]

PROTOCOL = "rest"


@dataclass
class RestRequest:
    """One HTTP request as the routes read it, whichever web framework received it.

    Attributes:
        headers: the request's headers (a case-insensitive mapping).
        content_length: the declared body length, if any.
        chunks: gives the body as it arrives, in chunks.
        params: the route's parameters (``name``, ``version``, ``region``).
    """

    headers: Mapping[str, str]
    content_length: Optional[int]
    chunks: Callable[[], AsyncIterator[bytes]]
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RestReply:
    """The status, body and headers of an answer."""

    status: int
    body: bytes
    headers: Dict[str, str]


Handler = Callable[[RestRequest], Awaitable[RestReply]]

_JSON_HEADERS = {"Content-Type": rest.JSON_CONTENT_TYPE}

#: The routes an extension adds (a server that leaves them out does not claim it).
_EXTENSION_METHODS = {
    "statistics": "ModelStatistics",
    "model_repository": "RepositoryIndex",
    "system_shared_memory": "SystemSharedMemoryStatus",
}


def _error(status: int, message: str) -> RestReply:
    return RestReply(status, json.dumps({"error": message}).encode(), dict(_JSON_HEADERS))


def _json(data: Any, status: int = 200) -> RestReply:
    return RestReply(status, json.dumps(data).encode(), dict(_JSON_HEADERS))


def _route_pattern(path: str) -> Pattern[str]:
    """``/v2/models/{name}/ready`` as a regular expression with a group per parameter."""
    return re.compile(re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path)))


def parse_infer_request(
    name: str, version: str, document: Mapping[str, Any], tail: memoryview
) -> Tuple[InferRequest, Dict[str, bool]]:
    """An :class:`InferRequest` and, per output to return, whether it goes back raw."""
    inputs = rest.decode_tensors(document.get("inputs"), tail, "input")
    binary_default = bool(rest.parameters(document, "request").get("binary_data_output", False))
    requested = document.get("outputs")
    binary: Dict[str, bool] = {}
    names: Optional[List[str]] = None
    if requested is not None:
        if not isinstance(requested, list):
            raise InputValidationError("request body: 'outputs' must be a list")
        names = []
        for index, output in enumerate(requested):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise InputValidationError(f"outputs[{index}]: expected an object with a name")
            names.append(output["name"])
            binary[output["name"]] = bool(
                rest.parameters(output, f"output {output['name']!r}").get("binary_data", binary_default)
            )
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InputValidationError("request body: 'id' must be a string")
    binary.setdefault("*", binary_default)  # outputs not named in the request
    return InferRequest(name, version, request_id, inputs, names or None), binary


def render_infer_response(response: InferResponse, binary: Mapping[str, bool]) -> RestReply:
    """The JSON (and binary tail, for outputs asked raw) of an inference answer."""
    default = binary.get("*", False)
    entries, chunks = rest.encode_tensors(response.outputs, lambda name: binary.get(name, default))
    document: Dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = entries
    body, headers = rest.join_body(document, chunks)
    return RestReply(200, body, headers)


class RestAdapter:
    """Builds the aiohttp application that serves the data plane over REST.

    Args:
        dataplane: what answers the calls.
        max_request_bytes: larger bodies are refused with 413.
        token: the bearer token calls must carry (``Authorization: Bearer
            <token>``) where :data:`~neuropod.serving.auth.NEEDS_TOKEN` says
            so; None for none.
        body_timeout_s: how long a request body may take to arrive (None: no limit).
        methods: the logical methods (``"ModelInfer"``, ``"ModelStatistics"`` ...)
            to serve; None for all. The server metadata claims only the
            extensions whose routes are served.
    """

    def __init__(
        self,
        dataplane: DataPlane,
        max_request_bytes: int,
        token: Optional[str] = None,
        body_timeout_s: Optional[float] = None,
        methods: Optional[Collection[str]] = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        self.methods = None if methods is None else frozenset(methods)
        self._token = BearerToken(token)
        self._compiled = [
            (_route_pattern(path), verb.upper(), handler, method) for verb, path, handler, method in self.routes()
        ]

    def app(self) -> web.Application:
        """The aiohttp application serving the routes (``neuropod serve``'s REST port)."""
        app = web.Application(client_max_size=self.max_request_bytes, middlewares=[self._errors])
        app.add_routes(
            [getattr(web, verb)(path, self._aiohttp(handler, method)) for verb, path, handler, method in self.routes()]
        )
        return app

    def routes(self) -> List[Tuple[str, str, Handler, str]]:
        """``(verb, path, handler, logical method)`` of every route served."""
        return [route for route in self._all_routes() if self.methods is None or route[3] in self.methods]

    def _all_routes(self) -> List[Tuple[str, str, Handler, str]]:
        return [
            ("get", "/v2/health/live", self.health_live, "ServerLive"),
            ("get", "/v2/health/ready", self.health_ready, "ServerReady"),
            ("get", "/v2", self.server_metadata, "ServerMetadata"),
            # Before /v2/models/{name}, which would take "stats" for a model name.
            ("get", "/v2/models/stats", self.model_statistics, "ModelStatistics"),
            ("get", "/v2/models/{name}/stats", self.model_statistics, "ModelStatistics"),
            ("get", "/v2/models/{name}/versions/{version}/stats", self.model_statistics, "ModelStatistics"),
            ("post", "/v2/repository/index", self.repository_index, "RepositoryIndex"),
            ("post", "/v2/repository/models/{name}/load", self.repository_load, "RepositoryModelLoad"),
            ("post", "/v2/repository/models/{name}/unload", self.repository_unload, "RepositoryModelUnload"),
            ("get", "/v2/systemsharedmemory/status", self.shm_status, "SystemSharedMemoryStatus"),
            ("get", "/v2/systemsharedmemory/region/{region}/status", self.shm_status, "SystemSharedMemoryStatus"),
            (
                "post",
                "/v2/systemsharedmemory/region/{region}/register",
                self.shm_register,
                "SystemSharedMemoryRegister",
            ),
            ("post", "/v2/systemsharedmemory/unregister", self.shm_unregister, "SystemSharedMemoryUnregister"),
            (
                "post",
                "/v2/systemsharedmemory/region/{region}/unregister",
                self.shm_unregister,
                "SystemSharedMemoryUnregister",
            ),
            ("get", "/v2/models/{name}", self.model_metadata, "ModelMetadata"),
            ("get", "/v2/models/{name}/versions/{version}", self.model_metadata, "ModelMetadata"),
            ("get", "/v2/models/{name}/ready", self.model_ready, "ModelReady"),
            ("get", "/v2/models/{name}/versions/{version}/ready", self.model_ready, "ModelReady"),
            ("post", "/v2/models/{name}/infer", self.infer, "ModelInfer"),
            ("post", "/v2/models/{name}/versions/{version}/infer", self.infer, "ModelInfer"),
            ("get", "/metrics", self.metrics, "Metrics"),
        ]

    async def answer(self, handler: Handler, method: str, request: RestRequest) -> RestReply:
        """Check the token for ``method``, then run ``handler``; any failure is answered with its class's status."""
        try:
            self._token.check(method, request.headers.get("Authorization"), "header 'Authorization:")
            return await handler(request)
        except Exception as exc:
            status, message = public_failure(exc)
            return _error(status.http, message)

    async def dispatch(self, verb: str, path: str, request: RestRequest) -> RestReply:
        """Route and answer a request another web framework received (404 and 405 as aiohttp gives them)."""
        allowed = []
        for pattern, route_verb, handler, method in self._compiled:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_verb != verb.upper():
                allowed.append(route_verb)
                continue
            request.params = match.groupdict()
            return await self.answer(handler, method, request)
        if allowed:
            return _error(405, f"{path} takes {' or '.join(allowed)}, not {verb.upper()}")
        return _error(404, f"no route {path}; this server answers the KServe v2 routes under /v2")

    def _aiohttp(self, handler: Handler, method: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` as an aiohttp handler."""

        async def handle(request: web.Request) -> web.StreamResponse:
            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in request.content.iter_chunked(_READ_BYTES):
                        yield chunk
                except (HttpProcessingError, RequestPayloadError) as exc:
                    raise InputValidationError(f"request body: cannot read it ({exc})") from exc

            call = RestRequest(request.headers, request.content_length, chunks, request.match_info)
            reply = await self.answer(handler, method, call)
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

        return handle

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """aiohttp's own refusals (a path no route has, a verb a route does not take) as the routes' errors."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPRequestEntityTooLarge:
            too_large = RequestTooLargeError(
                f"request body is larger than the server's limit of {self.max_request_bytes} bytes"
            )
            reply = _error(public_failure(too_large)[0].http, str(too_large))
        except web.HTTPException as exc:  # routing errors (404 path, 405 method) keep their status
            reply = _error(exc.status, exc.reason)
        except Exception as exc:
            status, message = public_failure(exc)
            reply = _error(status.http, message)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def health_live(self, request: RestRequest) -> RestReply:
        live = self.dataplane.live()
        return _json({"live": live}, 200 if live else 503)

    async def health_ready(self, request: RestRequest) -> RestReply:
        ready = self.dataplane.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: RestRequest) -> RestReply:
        meta = self.dataplane.server_metadata()
        served = [
            name
            for name in meta.extensions
            if name not in _EXTENSION_METHODS or self.methods is None or _EXTENSION_METHODS[name] in self.methods
        ]
        return _json({"name": meta.name, "version": meta.version, "extensions": served})

    async def model_metadata(self, request: RestRequest) -> RestReply:
        meta = self.dataplane.model_metadata(request.params["name"], request.params.get("version", ""))

        def tensors(items: Any) -> List[Dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in items]

        return _json(
            {
                "name": meta.name,
                "versions": meta.versions,
                "platform": meta.platform,
                "inputs": tensors(meta.inputs),
                "outputs": tensors(meta.outputs),
            }
        )

    async def model_ready(self, request: RestRequest) -> RestReply:
        ready = self.dataplane.model_ready(request.params["name"], request.params.get("version", ""))
        return _json({"name": request.params["name"], "ready": ready}, 200 if ready else 503)

    async def _body(self, request: RestRequest) -> bytes:
        """The request's body, decoded, read only as far as the limit allows.

        A declared ``Content-Length`` over the limit is refused before a byte
        of the body is read. A compressed body (gzip, deflate) is inflated in
        bounded steps while it arrives, counting and dropping what comes out,
        so a bomb is refused holding only its compressed bytes; a body within
        the limit is then inflated once more, into the result.
        """
        limit = self.max_request_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise RequestTooLargeError(
                f"request body: Content-Length {declared} is larger than the server's limit of {limit} bytes"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in _DECODERS:
            raise InputValidationError(
                f"request body: cannot decode it as Content-Encoding {encoding!r} (identity, gzip and deflate are)"
            )
        counter = _Inflater(encoding, limit) if _DECODERS[encoding] else None
        received = bytearray()
        async for chunk in request.chunks():
            received += chunk
            if len(received) > limit:
                raise RequestTooLargeError(f"request body is larger than the server's limit of {limit} bytes")
            if counter is not None:
                counter.feed(chunk)
        if counter is None:
            return bytes(received)
        counter.finish()
        return _Inflater(encoding, limit).inflate(bytes(received))

    async def infer(self, request: RestRequest) -> RestReply:
        try:
            body = await asyncio.wait_for(self._body(request), self.body_timeout_s)
        except asyncio.TimeoutError:
            return _error(408, f"the request body took longer than {self.body_timeout_s} s")
        document, tail = rest.split_body(body, request.headers.get(HEADER_LENGTH_HEADER))
        infer_request, binary = parse_infer_request(
            request.params["name"], request.params.get("version", ""), document, tail
        )
        response = await self.dataplane.infer(infer_request, PROTOCOL)
        return render_infer_response(response, binary)

    async def model_statistics(self, request: RestRequest) -> RestReply:
        stats = self.dataplane.model_statistics(request.params.get("name", ""), request.params.get("version", ""))
        return _json({"model_stats": stats})

    async def _optional_document(self, request: RestRequest) -> Dict[str, Any]:
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            document = json.loads(body)
        except ValueError:
            raise InputValidationError("request body: not valid JSON") from None
        if not isinstance(document, dict):
            raise InputValidationError("request body: expected a JSON object")
        return document

    async def repository_index(self, request: RestRequest) -> RestReply:
        document = await self._optional_document(request)
        entries = self.dataplane.repository_index(bool(document.get("ready", False)))
        rows = []
        for entry in entries:
            row = {"name": entry.name, "state": entry.state}
            if entry.version:
                row["version"] = entry.version
            if entry.reason:
                row["reason"] = entry.reason
            rows.append(row)
        return _json(rows)

    async def repository_load(self, request: RestRequest) -> RestReply:
        document = await self._optional_document(request)
        parameters = document.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InputValidationError("request body: 'parameters' must be an object")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.dataplane.load_model, request.params["name"], parameters)
        return _json({})

    async def repository_unload(self, request: RestRequest) -> RestReply:
        await self._optional_document(request)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.dataplane.unload_model, request.params["name"])
        return _json({})

    async def shm_status(self, request: RestRequest) -> RestReply:
        return _json(self.dataplane.shared_memory.status(request.params.get("region", "")))

    async def shm_register(self, request: RestRequest) -> RestReply:
        document = await self._optional_document(request)
        key, offset, byte_size = document.get("key"), document.get("offset", 0), document.get("byte_size")
        if not isinstance(key, str) or not isinstance(offset, int) or not isinstance(byte_size, int):
            raise InputValidationError(
                'request body: expected {"key": STRING, "offset": INT, "byte_size": INT} for a shared memory region'
            )
        self.dataplane.shared_memory.register(request.params["region"], key, offset, byte_size)
        return _json({})

    async def shm_unregister(self, request: RestRequest) -> RestReply:
        self.dataplane.shared_memory.unregister(request.params.get("region", ""))
        return _json({})

    async def metrics(self, request: RestRequest) -> RestReply:
        return RestReply(200, self.dataplane.metrics.exposition(), {"Content-Type": CONTENT_TYPE_LATEST})


# Content-Encoding -> zlib's wbits for it (None: the body is used as it comes).
_DECODERS: Dict[str, Optional[int]] = {
    "identity": None,
    "": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,  # zlib-wrapped, as HTTP says; a raw deflate stream is tried too
}
# Bytes read from the socket, and inflated, per step.
_READ_BYTES = 64 * 1024


class _Inflater:
    """Inflates a gzip or deflate body in steps of at most :data:`_READ_BYTES` out, refusing more than ``limit``."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self._decoder = zlib.decompressobj(_DECODERS[encoding] or zlib.MAX_WBITS)
        self._first = True

    def _decode(self, data: bytes) -> bytes:
        try:
            out = self._decoder.decompress(data, _READ_BYTES)
        except zlib.error:
            if not (self._first and self.encoding == "deflate"):
                raise self._undecodable() from None
            # Some clients send a raw deflate stream (no zlib header) as "deflate".
            self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                out = self._decoder.decompress(data, _READ_BYTES)
            except zlib.error:
                raise self._undecodable() from None
        self._first = False
        self.size += len(out)
        if self.size > self.limit:
            raise RequestTooLargeError(
                f"request body: it inflates ({self.encoding}) to more than the server's limit of {self.limit} bytes"
            )
        return out

    def _undecodable(self) -> InputValidationError:
        return InputValidationError(f"request body: cannot decode it as Content-Encoding {self.encoding!r}")

    def _steps(self, data: bytes) -> Iterator[bytes]:
        out = self._decode(data)
        yield out
        while self._decoder.unconsumed_tail:
            yield self._decode(self._decoder.unconsumed_tail)

    def feed(self, data: bytes) -> None:
        """Count what ``data`` inflates to, keeping none of it."""
        for _ in self._steps(data):
            pass

    def finish(self) -> None:
        """The body has ended: it must have been a whole stream."""
        if not self._decoder.eof:
            raise self._undecodable()

    def inflate(self, data: bytes) -> bytes:
        """The whole of ``data`` inflated (already counted within the limit)."""
        out = bytearray()
        for step in range(0, max(len(data), 1), _READ_BYTES):
            for part in self._steps(data[step : step + _READ_BYTES]):
                out += part
        self.finish()
        return bytes(out)
