"""The KServe v2 gRPC messages, built from the committed descriptor of ``kserve_v2.proto``.

The descriptor goes into a private pool (not protobuf's default one), so this
works next to tritonclient's or MLServer's own copies of the same
``inference.*`` messages in one process, and with any protobuf runtime from
4.22 on (no generated-code version check).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ._descriptor import SERIALIZED_FILE

__all__ = [
    "SERVICE_NAME",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelStatisticsRequest",
    "ModelStatisticsResponse",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
    "RepositoryModelLoadRequest",
    "RepositoryModelLoadResponse",
    "RepositoryModelUnloadRequest",
    "RepositoryModelUnloadResponse",
    "SystemSharedMemoryStatusRequest",
    "SystemSharedMemoryStatusResponse",
    "SystemSharedMemoryRegisterRequest",
    "SystemSharedMemoryRegisterResponse",
    "SystemSharedMemoryUnregisterRequest",
    "SystemSharedMemoryUnregisterResponse",
    "method_path",
]

SERVICE_NAME = "inference.GRPCInferenceService"

_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED_FILE))


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


def method_path(method: str) -> str:
    """The full gRPC path of one method of the service."""
    return f"/{SERVICE_NAME}/{method}"


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")
SystemSharedMemoryStatusRequest = _message("SystemSharedMemoryStatusRequest")
SystemSharedMemoryStatusResponse = _message("SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterRequest = _message("SystemSharedMemoryRegisterRequest")
SystemSharedMemoryRegisterResponse = _message("SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterRequest = _message("SystemSharedMemoryUnregisterRequest")
SystemSharedMemoryUnregisterResponse = _message("SystemSharedMemoryUnregisterResponse")
