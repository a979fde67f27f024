"""The gRPC adapter: ``inference.GRPCInferenceService`` over the data plane.

Messages come from :mod:`neuropod.kserve.proto` (the project's own copy of
the KServe v2 proto). Handlers are registered generically by method path, so
no generated service stubs are needed. Outputs always go back as
``raw_output_contents`` (what Triton does, and what every v2 client reads).

The methods run on :class:`~.grpc_server.UnaryServer`'s polling thread when
they are quick (health, metadata, a model whose calls average under
:data:`~.dataplane.INLINE_CALL_MAX_S`) and hand the rest to a thread pool,
answering with a future: slow or batched models, repository loads.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import Any, Callable, Dict, Optional, Tuple

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from ..errors import InputValidationError
from ..kserve import proto
from ..kserve.datatypes import datatype_of, decode_contents, decode_raw, encode_raw
from .auth import BearerToken
from .dataplane import FEED, INLINE, POOL, DataPlane, InferRequest, InferResponse
from .failures import public_failure
from .grpc_server import Answer, Metadata, Method
from .shared_memory import SharedMemoryRegions

__all__ = ["GrpcAdapter", "PROTOCOL"]

PROTOCOL = "grpc"

#: A method of the service: its request message in, its response message out.
Handler = Callable[[Any], Any]

#: Methods that may take long whatever the request: never run on the server's polling thread.
_BLOCKING = frozenset({"RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex"})


def _parameter(parameters: Any, key: str) -> Any:
    """The value of one ``InferParameter`` of a map, or None."""
    if key not in parameters:
        return None
    parameter = parameters[key]
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _region_span(
    parameters: Any, regions: Optional[SharedMemoryRegions], tensor: str
) -> Optional[Tuple[Any, int, int]]:
    """``(region, offset, byte_size)`` when a tensor's parameters place it in shared memory."""
    name = _parameter(parameters, "shared_memory_region")
    if name is None:
        return None
    if regions is None:
        raise InputValidationError(f"tensor {tensor!r}: this server has no shared memory extension")
    byte_size = _parameter(parameters, "shared_memory_byte_size")
    offset = _parameter(parameters, "shared_memory_offset") or 0
    if not isinstance(byte_size, int) or not isinstance(offset, int) or isinstance(byte_size, bool):
        raise InputValidationError(
            f"tensor {tensor!r}: shared memory needs an int64 shared_memory_byte_size (and shared_memory_offset)"
        )
    return regions.get(str(name)), offset, byte_size


def request_from_message(message: Any, regions: Optional[SharedMemoryRegions] = None) -> InferRequest:
    """An :class:`InferRequest` from a ``ModelInferRequest`` message.

    ``raw_input_contents`` holds one entry per input that is neither in
    shared memory nor sent as typed ``contents``, in input order.
    """
    # Protobuf's repeated fields are read through slices (lists): iterating one directly
    # ends by raising and catching an IndexError, a cost paid on every request.
    raw = message.raw_input_contents[:]
    raw_count = len(raw)
    inputs = {}
    next_raw = 0
    for tensor in message.inputs[:]:
        name = tensor.name
        if name in inputs:
            raise InputValidationError(f"input {name!r} appears more than once")
        span = _region_span(tensor.parameters, regions, name) if tensor.parameters else None
        if span is not None:
            region, offset, byte_size = span
            data = region.read(offset, byte_size, name)
            inputs[name] = decode_raw(tensor.datatype, tensor.shape[:], data, name)
        elif raw_count:
            if next_raw >= raw_count:
                raise InputValidationError(
                    f"raw_input_contents holds {raw_count} entries, too few for the inputs sent raw"
                )
            inputs[name] = decode_raw(tensor.datatype, tensor.shape[:], raw[next_raw], name)
            next_raw += 1
        else:
            inputs[name] = decode_contents(tensor.datatype, tensor.shape, tensor.contents, name)
    if next_raw != raw_count:
        raise InputValidationError(
            f"raw_input_contents holds {raw_count} entries for {next_raw} inputs sent raw; expected one per input"
        )
    outputs = [output.name for output in message.outputs[:]] or None
    return InferRequest(message.model_name, message.model_version, message.id, inputs, outputs)


class GrpcAdapter:
    """Serves the data plane's calls as gRPC methods (for :class:`~.grpc_server.UnaryServer`).

    Args:
        dataplane: what answers the calls.
        pool: where calls that may block run (slow or batched models, repository loads).
        token: the bearer token calls must carry (``authorization: Bearer
            <token>`` metadata) where :data:`~neuropod.serving.auth.NEEDS_TOKEN`
            says so; None for none.
    """

    def __init__(self, dataplane: DataPlane, pool: Executor, token: Optional[str] = None) -> None:
        self.dataplane = dataplane
        self._pool = pool
        self._token = BearerToken(token)
        #: The server's count of calls in progress (see :meth:`watch_calls`); None: not known.
        self._open_calls: Callable[[], Optional[int]] = lambda: None

    def watch_calls(self, open_calls: Callable[[], Optional[int]]) -> None:
        """Give the adapter the server's count of calls in progress (``UnaryServer.open_calls``).

        A request that is the only call in progress may run a batched model's call where it
        arrived (:meth:`DataPlane.route`, ``alone``).
        """
        self._open_calls = open_calls

    def methods(self) -> Dict[str, Method]:
        """Full method path -> method, for every method of the service."""
        table = (
            ("ServerLive", proto.ServerLiveRequest, self.server_live),
            ("ServerReady", proto.ServerReadyRequest, self.server_ready),
            ("ModelReady", proto.ModelReadyRequest, self.model_ready),
            ("ServerMetadata", proto.ServerMetadataRequest, self.server_metadata),
            ("ModelMetadata", proto.ModelMetadataRequest, self.model_metadata),
            ("ModelInfer", proto.ModelInferRequest, self.model_infer),
            ("ModelStatistics", proto.ModelStatisticsRequest, self.model_statistics),
            ("RepositoryIndex", proto.RepositoryIndexRequest, self.repository_index),
            ("RepositoryModelLoad", proto.RepositoryModelLoadRequest, self.repository_model_load),
            ("RepositoryModelUnload", proto.RepositoryModelUnloadRequest, self.repository_model_unload),
            ("SystemSharedMemoryStatus", proto.SystemSharedMemoryStatusRequest, self.shared_memory_status),
            ("SystemSharedMemoryRegister", proto.SystemSharedMemoryRegisterRequest, self.shared_memory_register),
            ("SystemSharedMemoryUnregister", proto.SystemSharedMemoryUnregisterRequest, self.shared_memory_unregister),
        )
        return {
            f"/{proto.SERVICE_NAME}/{name}": self._guarded(method, name, request_class)
            for name, request_class, method in table
        }

    @staticmethod
    def failure(exc: BaseException) -> Tuple[grpc.StatusCode, str]:
        """The status and message a client gets for a method's exception."""
        status, message = public_failure(exc)
        return grpc.StatusCode[status.grpc], message

    def _guarded(self, method: Handler, name: str, request_class: Any) -> Method:
        """Wrap a handler with the token check and the message parsing; slow work goes to the pool."""
        blocking = name in _BLOCKING
        infer = name == "ModelInfer"
        check_token = self._token.needed(name)

        def call(body: bytes, metadata: Metadata) -> Answer:
            if check_token:
                given = next((v for k, v in metadata or () if k == "authorization"), None)
                self._token.check(name, given, "metadata 'authorization:")
            try:
                request = request_class.FromString(body)
            except DecodeError:
                kind = request_class.DESCRIPTOR.name
                raise InputValidationError(f"{name}: the request is not a valid {kind} message") from None
            where = INLINE
            if infer:
                where = self.dataplane.route(request.model_name, request.model_version)
                if where == FEED and self._open_calls() == 1:  # asked only where it matters
                    where = self.dataplane.route(request.model_name, request.model_version, alone=True)
            if where == FEED:
                return self._model_infer_fed(request)
            if blocking or where == POOL:
                return self._pool.submit(lambda: method(request).SerializeToString())
            return method(request).SerializeToString()  # type: ignore[no-any-return]

        return call

    def server_live(self, request: Any) -> Any:
        return proto.ServerLiveResponse(live=self.dataplane.live())

    def server_ready(self, request: Any) -> Any:
        return proto.ServerReadyResponse(ready=self.dataplane.ready())

    def model_ready(self, request: Any) -> Any:
        return proto.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    def server_metadata(self, request: Any) -> Any:
        meta = self.dataplane.server_metadata()
        return proto.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=list(meta.extensions))

    def model_metadata(self, request: Any) -> Any:
        meta = self.dataplane.model_metadata(request.name, request.version)
        response = proto.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for target, tensors in ((response.inputs, meta.inputs), (response.outputs, meta.outputs)):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    def model_infer(self, request: Any) -> Any:
        infer_request, placed = self._infer_request(request)
        # Routed already (fed models through _model_infer_fed): the call runs on this thread.
        return self._infer_response(self.dataplane.infer_blocking(infer_request, PROTOCOL, feed=False), placed)

    def _model_infer_fed(self, request: Any) -> Future[bytes]:
        """ModelInfer of a model fed to its workers: queued here, answered on the feeding thread."""
        infer_request, placed = self._infer_request(request)
        return self.dataplane.submit(
            infer_request, PROTOCOL, lambda result: self._infer_response(result, placed).SerializeToString()
        )

    def _infer_request(self, request: Any) -> Tuple[InferRequest, Dict[str, Any]]:
        """The request, and where in the client's shared memory regions outputs are to go."""
        regions = self.dataplane.shared_memory
        placed = {}
        for output in request.outputs[:]:  # a slice, as in request_from_message
            if output.parameters:
                span = _region_span(output.parameters, regions, output.name)
                if span is not None:
                    placed[output.name] = span
        return request_from_message(request, regions), placed

    def _infer_response(self, result: InferResponse, placed: Dict[str, Any]) -> Any:
        response = proto.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.id
        )
        raw = response.raw_output_contents
        for name, array in result.outputs.items():
            entry = response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            data = encode_raw(array)
            span = placed.get(name)
            if span is None:
                raw.append(data)
                continue
            region, offset, byte_size = span
            region.write(offset, byte_size, data, name)
            entry.parameters["shared_memory_region"].string_param = region.name
            entry.parameters["shared_memory_byte_size"].int64_param = len(data)
            if offset:
                entry.parameters["shared_memory_offset"].int64_param = offset
            raw.append(b"")  # keeps raw_output_contents[i] the i-th output's, as clients index it
        return response

    def shared_memory_status(self, request: Any) -> Any:
        response = proto.SystemSharedMemoryStatusResponse()
        for status in self.dataplane.shared_memory.status(request.name):
            entry = response.regions[str(status["name"])]
            entry.name, entry.key = str(status["name"]), str(status["key"])
            entry.offset, entry.byte_size = int(status["offset"]), int(status["byte_size"])  # type: ignore[call-overload]
        return response

    def shared_memory_register(self, request: Any) -> Any:
        self.dataplane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return proto.SystemSharedMemoryRegisterResponse()

    def shared_memory_unregister(self, request: Any) -> Any:
        self.dataplane.shared_memory.unregister(request.name)
        return proto.SystemSharedMemoryUnregisterResponse()

    def model_statistics(self, request: Any) -> Any:
        stats = self.dataplane.model_statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": stats}, proto.ModelStatisticsResponse())

    def repository_index(self, request: Any) -> Any:
        response = proto.RepositoryIndexResponse()
        for entry in self.dataplane.repository_index(request.ready):
            response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        return response

    def repository_model_load(self, request: Any) -> Any:
        self.dataplane.load_model(request.model_name, dict(request.parameters))
        return proto.RepositoryModelLoadResponse()

    def repository_model_unload(self, request: Any) -> Any:
        self.dataplane.unload_model(request.model_name)
        return proto.RepositoryModelUnloadResponse()
