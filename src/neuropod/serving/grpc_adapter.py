"""The gRPC adapter: ``inference.GRPCInferenceService`` over the data plane.

Messages come from :mod:`neuropod.kserve.proto` (the project's own copy of
the KServe v2 proto). Handlers are registered generically by method path, so
no generated service stubs are needed. Outputs always go back as
``raw_output_contents`` (what Triton does, and what every v2 client reads).

The handlers are blocking and run on the thread pool of grpc's classic server:
measured here, it costs about half the CPU per call of ``grpc.aio`` (roughly
250 us against 450 us on one core) and has a shorter latency tail, and each
request runs its model on its own thread with no hand-off.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import grpc
from google.protobuf.message import DecodeError

from ..errors import InputValidationError
from ..kserve import proto
from ..kserve.datatypes import datatype_of, decode_contents, decode_raw, encode_raw
from .auth import BearerToken
from .dataplane import DataPlane, InferRequest
from .failures import public_failure

__all__ = ["GrpcAdapter", "PROTOCOL"]

PROTOCOL = "grpc"

Handler = Callable[[Any, grpc.ServicerContext], Any]


def request_from_message(message: Any) -> InferRequest:
    """An :class:`InferRequest` from a ``ModelInferRequest`` message."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InputValidationError(
            f"raw_input_contents holds {len(raw)} entries for {len(message.inputs)} inputs; expected one per input"
        )
    inputs = {}
    for index, tensor in enumerate(message.inputs):
        if tensor.name in inputs:
            raise InputValidationError(f"input {tensor.name!r} appears more than once")
        if raw:
            inputs[tensor.name] = decode_raw(tensor.datatype, tensor.shape, raw[index], tensor.name)
        else:
            inputs[tensor.name] = decode_contents(tensor.datatype, tensor.shape, tensor.contents, tensor.name)
    outputs = [output.name for output in message.outputs] or None
    return InferRequest(message.model_name, message.model_version, message.id, inputs, outputs)


class GrpcAdapter:
    """Serves the data plane's calls as gRPC methods.

    Args:
        dataplane: what answers the calls.
        token: the bearer token calls must carry (``authorization: Bearer
            <token>`` metadata) where :data:`~neuropod.serving.auth.NEEDS_TOKEN`
            says so; None for none.
    """

    def __init__(self, dataplane: DataPlane, token: Optional[str] = None) -> None:
        self.dataplane = dataplane
        self._token = BearerToken(token)

    def handler(self) -> grpc.GenericRpcHandler:
        methods: Dict[str, Any] = {}
        table = (
            ("ServerLive", proto.ServerLiveRequest, self.server_live),
            ("ServerReady", proto.ServerReadyRequest, self.server_ready),
            ("ModelReady", proto.ModelReadyRequest, self.model_ready),
            ("ServerMetadata", proto.ServerMetadataRequest, self.server_metadata),
            ("ModelMetadata", proto.ModelMetadataRequest, self.model_metadata),
            ("ModelInfer", proto.ModelInferRequest, self.model_infer),
        )
        for name, request_class, method in table:
            # Requests arrive as bytes and are parsed in the guard: grpc's own deserializer
            # answers an undecodable message with INTERNAL, which is the client's mistake.
            methods[name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(method, name, request_class),
                response_serializer=lambda message: message.SerializeToString(),
            )
        return grpc.method_handlers_generic_handler(proto.SERVICE_NAME, methods)

    def _guarded(self, method: Handler, name: str, request_class: Any) -> Handler:
        """Wrap a handler with the token check, the message parsing and the one error-to-status mapping."""

        def call(body: bytes, context: grpc.ServicerContext) -> Any:
            try:
                given = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
                self._token.check(name, given, "metadata 'authorization:")
                try:
                    request = request_class.FromString(body)
                except DecodeError:
                    kind = request_class.DESCRIPTOR.name
                    raise InputValidationError(f"{name}: the request is not a valid {kind} message") from None
                return method(request, context)
            except Exception as exc:
                status, message = public_failure(exc)
                context.abort(grpc.StatusCode[status.grpc], message)

        return call

    def server_live(self, request: Any, context: grpc.ServicerContext) -> Any:
        return proto.ServerLiveResponse(live=self.dataplane.live())

    def server_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        return proto.ServerReadyResponse(ready=self.dataplane.ready())

    def model_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        return proto.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    def server_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return proto.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=list(meta.extensions))

    def model_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = self.dataplane.model_metadata(request.name, request.version)
        response = proto.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for target, tensors in ((response.inputs, meta.inputs), (response.outputs, meta.outputs)):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    def model_infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        result = self.dataplane.infer_blocking(request_from_message(request), PROTOCOL)
        response = proto.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.id
        )
        raw = response.raw_output_contents
        for name, array in result.outputs.items():
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            raw.append(encode_raw(array))
        return response
