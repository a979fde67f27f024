"""The remote executor: a model on a KServe v2 server, behind the usual ``Neuropod`` object.

``load_neuropod("grpc://host:port/model")`` (or ``http://``, ``grpcs://``,
``https://``; optional ``/versions/N``) reads the model's metadata, builds its
problem definition from it, and sends every ``infer`` over the wire with raw
tensor contents. Any v2 server works: neuropod's own, Triton, MLServer, KServe.

What the protocol cannot carry: shape symbols. Metadata marks a dimension of
any size as -1, which becomes ``None`` here, so symbol consistency across
tensors is checked by the server, not by the client. A server whose model
declares no tensors (MLServer without ``inputs`` in its settings) gives an
empty spec; such a model is loaded with ``validate=False``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

from .. import urls
from ..errors import FrameworkNotInstalledError, InputValidationError, NeuropodError, OptionError, RemoteError
from ..kserve import BINARY_EXTENSION, DEFAULT_MAX_MESSAGE_BYTES, HEADER_LENGTH_HEADER, rest
from ..kserve.datatypes import DATATYPE_TO_DTYPE, datatype_of, decode_contents, decode_raw, encode_raw
from ..kserve.status import error_class_for_grpc, error_class_for_http
from ..options import Options, number, optional_flag, setting
from ..spec import ProblemDefinition, TensorSpec
from .base import Executor, TensorDict

__all__ = ["RemoteExecutor", "RemoteModelInfo", "RemoteOptions", "REMOTE_OPTIONS", "parse_model_url"]

_POSITIVE_SECONDS = number("a positive number of seconds", 0, integer=False, inclusive=False, optional=True)
_POSITIVE_BYTES = number("a positive number of bytes", 1, integer=True)


def _optional_text(name: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise OptionError(f"option {name!r}: expected None or a string, got {type(value).__name__}")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RemoteOptions(Options):
    """The client of a model on a server (``load_neuropod("grpc://...", **options)``).

    ``timeout`` means what it means for out-of-process workers (seconds one
    call may take, None: no limit); its default here is 60 s because a server
    can vanish without closing the connection, and nothing else would notice.
    """

    APPLIES = "it is an option of a model on a server (a grpc:// or http:// URL)"

    token: Optional[str] = setting(None, check=_optional_text, doc="bearer token sent with every call")
    timeout: Optional[float] = setting(60.0, check=_POSITIVE_SECONDS, doc="seconds one call may take (None: no limit)")
    root_certificates: Any = setting(None, doc="PEM bytes or a PEM file to trust for grpcs:// and https://")
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES, check=_POSITIVE_BYTES, doc="largest gRPC message sent or received"
    )
    binary: Optional[bool] = setting(
        None, check=optional_flag, doc="REST: send raw tensors (None: when the server lists the extension)"
    )
    shared_memory: Optional[bool] = setting(
        None,
        check=optional_flag,
        doc="gRPC: send large inputs through system shared memory (None: when the server is on this host and "
        "lists the extension; False: never)",
    )


#: The options of a model loaded from a URL, derived from :class:`RemoteOptions`.
REMOTE_OPTIONS = RemoteOptions.table()

#: Inputs smaller than this (all together) go in the message even when shared memory is on.
SHARED_MEMORY_MIN_BYTES = 256 * 1024


@dataclass(frozen=True)
class RemoteModelInfo:
    """What a server says about a model: its name, platform, versions and tensors."""

    name: str
    platform: str
    versions: List[str]
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]


def parse_model_url(url: str) -> Tuple[str, str, int, str, str]:
    """``(scheme, host, port, model, version)`` of a model URL (the forms of :mod:`neuropod.urls`)."""
    parsed = urls.parse_model_url(url)
    return parsed.scheme, parsed.host, parsed.port, parsed.model, parsed.version


def _spec_from_metadata(tensors: List[Dict[str, Any]], where: str) -> List[TensorSpec]:
    specs = []
    for tensor in tensors:
        dtype = DATATYPE_TO_DTYPE.get(tensor["datatype"])
        if dtype is None:
            raise RemoteError(f"{where} {tensor['name']!r}: the server reports unknown datatype {tensor['datatype']!r}")
        shape = tuple(None if int(d) < 0 else int(d) for d in tensor["shape"])
        specs.append(TensorSpec(tensor["name"], dtype, shape))
    return specs


def _remote_error(cls: type, where: str, message: str) -> NeuropodError:
    error: NeuropodError = cls(f"{where}: {message}")
    return error


# -- transports -------------------------------------------------------------------


class _GrpcTransport:
    def __init__(self, scheme: str, host: str, port: int, options: RemoteOptions) -> None:
        try:
            import grpc

            from ..kserve import proto
        except ImportError as exc:
            raise FrameworkNotInstalledError(
                f"{scheme}://{host}:{port}: gRPC model URLs need the serve extra: "
                f"pip install 'neuropod-python[serve]' ({exc})"
            ) from None

        self._grpc = grpc
        self._proto = proto
        self.where = f"{scheme}://{host}:{port}"
        limit = options.max_message_bytes
        channel_options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        target = f"{host}:{port}"
        if scheme == "grpcs":
            root = options.root_certificates
            credentials = grpc.ssl_channel_credentials(_read_bytes(root) if root is not None else None)
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        token = options.token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = options.timeout
        self._host = host
        self._shared_memory_option = options.shared_memory
        self._shared_memory: Optional[bool] = None
        self._region: Any = None
        self._region_lock = threading.Lock()
        self._methods: Dict[str, Any] = {}
        for method, request_class, response_class in (
            ("ModelReady", proto.ModelReadyRequest, proto.ModelReadyResponse),
            ("ModelMetadata", proto.ModelMetadataRequest, proto.ModelMetadataResponse),
            ("ModelInfer", proto.ModelInferRequest, proto.ModelInferResponse),
            ("ServerMetadata", proto.ServerMetadataRequest, proto.ServerMetadataResponse),
            (
                "SystemSharedMemoryRegister",
                proto.SystemSharedMemoryRegisterRequest,
                proto.SystemSharedMemoryRegisterResponse,
            ),
            (
                "SystemSharedMemoryUnregister",
                proto.SystemSharedMemoryUnregisterRequest,
                proto.SystemSharedMemoryUnregisterResponse,
            ),
        ):
            self._methods[method] = self._channel.unary_unary(
                proto.method_path(method),
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )

    def _call(self, method: str, request: Any) -> Any:
        try:
            return self._methods[method](request, timeout=self._timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            cls = error_class_for_grpc(code)
            if code == "UNAVAILABLE" and "connect" in (exc.details() or "").lower():
                cls = RemoteError  # the server itself is unreachable, not a model that is not ready
            if code == "DEADLINE_EXCEEDED":
                raise RemoteError(
                    f"{self.where}: {method} got no answer within the timeout of {self._timeout:g}s"
                ) from None
            raise _remote_error(cls, self.where, f"{code}: {exc.details()}") from None

    def metadata(self, model: str, version: str) -> RemoteModelInfo:
        response = self._call("ModelMetadata", self._proto.ModelMetadataRequest(name=model, version=version))

        def tensors(items: Any) -> List[Dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return RemoteModelInfo(
            response.name,
            response.platform,
            list(response.versions),
            tensors(response.inputs),
            tensors(response.outputs),
        )

    def ready(self, model: str, version: str) -> bool:
        return bool(self._call("ModelReady", self._proto.ModelReadyRequest(name=model, version=version)).ready)

    def _use_shared_memory(self) -> bool:
        """Whether this server can read inputs from this host's shared memory (asked once)."""
        if self._shared_memory is None:
            wanted = self._shared_memory_option
            local = _is_loopback(self._host)
            listed = False
            if wanted is not False and local:
                meta = self._call("ServerMetadata", self._proto.ServerMetadataRequest())
                listed = "system_shared_memory" in meta.extensions
            if wanted is True and not (local and listed):
                raise OptionError(
                    f"option 'shared_memory': {self.where} is not on this host or does not list the "
                    "system_shared_memory extension"
                )
            self._shared_memory = bool(local and listed and wanted is not False)
        return self._shared_memory

    def _region_for(self, size: int) -> Any:
        """This client's registered region, grown to ``size`` bytes when smaller."""
        from multiprocessing import shared_memory

        if self._region is not None and self._region.size >= size:
            return self._region
        self._drop_region()
        name = f"neuropod-remote-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        region = shared_memory.SharedMemory(name, create=True, size=size)
        try:
            self._call(
                "SystemSharedMemoryRegister",
                self._proto.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", offset=0, byte_size=size),
            )
        except BaseException:
            region.close()
            raise
        finally:
            # The server has it mapped now (or failed to): the name goes at once, so a killed
            # client leaves nothing behind in /dev/shm; both mappings stay valid.
            region.unlink()
        self._region = region
        return region

    def _drop_region(self) -> None:
        region, self._region = self._region, None
        if region is None:
            return
        try:
            self._call(
                "SystemSharedMemoryUnregister", self._proto.SystemSharedMemoryUnregisterRequest(name=region.name)
            )
        except NeuropodError:
            pass  # the server may be gone; its registration goes with it
        region.close()

    def infer(self, model: str, version: str, inputs: TensorDict) -> TensorDict:
        encoded = [(name, array, encode_raw(array)) for name, array in inputs.items()]
        total = sum(len(data) for _, _, data in encoded)
        if total >= SHARED_MEMORY_MIN_BYTES and self._use_shared_memory():
            with self._region_lock:  # one region per client: calls through it take turns
                return self._infer(model, version, encoded, self._region_for(total))
        return self._infer(model, version, encoded, None)

    def _infer(self, model: str, version: str, encoded: List[Tuple[str, Any, bytes]], region: Any) -> TensorDict:
        request = self._proto.ModelInferRequest(model_name=model, model_version=version)
        offset = 0
        for name, array, data in encoded:
            tensor = request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            if region is None:
                request.raw_input_contents.append(data)
                continue
            region.buf[offset : offset + len(data)] = data
            tensor.parameters["shared_memory_region"].string_param = region.name
            tensor.parameters["shared_memory_byte_size"].int64_param = len(data)
            tensor.parameters["shared_memory_offset"].int64_param = offset
            offset += len(data)
        response = self._call("ModelInfer", request)
        raw = response.raw_output_contents
        outputs = {}
        try:
            for index, tensor in enumerate(response.outputs):
                if raw:
                    outputs[tensor.name] = decode_raw(tensor.datatype, tensor.shape, raw[index], tensor.name)
                else:
                    outputs[tensor.name] = decode_contents(tensor.datatype, tensor.shape, tensor.contents, tensor.name)
        except (InputValidationError, IndexError) as exc:
            raise RemoteError(f"{self.where}: malformed response from the server: {exc}") from None
        return outputs

    def close(self) -> None:
        with self._region_lock:
            self._drop_region()
        self._channel.close()


class _HttpTransport:
    def __init__(self, scheme: str, host: str, port: int, options: RemoteOptions) -> None:
        self.where = f"{scheme}://{host}:{port}"
        self._host, self._port = host, port
        self._timeout = options.timeout
        self._ssl: Optional[ssl.SSLContext] = None
        if scheme == "https":
            root = options.root_certificates
            self._ssl = ssl.create_default_context()
            if root is not None:
                self._ssl.load_verify_locations(cadata=_read_bytes(root).decode("ascii"))
        token = options.token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # One connection per thread: http.client connections are not thread-safe.
        self._local = threading.local()
        self._connections: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        binary = options.binary
        self._binary = bool(binary) if binary is not None else self._server_has_binary_extension()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._ssl is not None:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _request(
        self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        all_headers = {**self._headers, **(headers or {})}
        for attempt in (0, 1):
            connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request(method, path, body=body, headers=all_headers)
                response = connection.getresponse()
                data = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except socket.timeout:
                # Never retried: the server may be running the request still, and a
                # second send would run the model twice and double the wait.
                connection.close()
                raise RemoteError(
                    f"{self.where}: {method} {path} got no answer within the timeout of {self._timeout:g}s"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                connection.close()
                # A kept-alive connection the server had already closed fails before any
                # answer comes: that request never ran, so one retry on a fresh connection.
                if not (reused and attempt == 0):
                    raise RemoteError(f"{self.where}: the server closed the connection: {exc!r}") from None
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                raise RemoteError(f"{self.where}: cannot reach the server: {exc}") from None
        raise AssertionError("unreachable")

    def _checked(self, status: int, data: bytes) -> None:
        if status < 400:
            return
        try:
            message = json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            message = data[:200].decode("utf-8", "replace")
        cls = error_class_for_http(status)
        raise _remote_error(cls, self.where, f"HTTP {status}: {message}")

    def _server_has_binary_extension(self) -> bool:
        status, _, data = self._request("GET", "/v2")
        if status >= 400:
            return False
        try:
            return BINARY_EXTENSION in json.loads(data).get("extensions", [])
        except (ValueError, AttributeError):
            return False

    @staticmethod
    def _model_path(model: str, version: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path

    def metadata(self, model: str, version: str) -> RemoteModelInfo:
        status, _, data = self._request("GET", self._model_path(model, version))
        self._checked(status, data)
        meta = json.loads(data)
        return RemoteModelInfo(
            meta.get("name", model),
            meta.get("platform", ""),
            list(meta.get("versions") or []),
            list(meta.get("inputs") or []),
            list(meta.get("outputs") or []),
        )

    def ready(self, model: str, version: str) -> bool:
        status, _, _ = self._request("GET", self._model_path(model, version) + "/ready")
        return status == 200

    def infer(self, model: str, version: str, inputs: TensorDict) -> TensorDict:
        entries, chunks = rest.encode_tensors(inputs, lambda name: self._binary)
        document: Dict[str, Any] = {"inputs": entries}
        if self._binary:
            document["parameters"] = {"binary_data_output": True}
        body, headers = rest.join_body(document, chunks)
        status, response_headers, data = self._request(
            "POST", self._model_path(model, version) + "/infer", body, headers
        )
        self._checked(status, data)
        try:
            answer, tail = rest.split_body(data, response_headers.get(HEADER_LENGTH_HEADER.lower()))
            return rest.decode_tensors(answer.get("outputs"), tail, "output")
        except InputValidationError as exc:
            raise RemoteError(f"{self.where}: malformed response from the server: {exc}") from None

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_bytes(value: Union[str, bytes, Path]) -> bytes:
    """Certificate bytes given directly, or read from a file path."""
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


Transport = Union[_GrpcTransport, _HttpTransport]


class RemoteExecutor(Executor):
    """Runs a model on a KServe v2 server; inputs and outputs travel as raw tensors.

    Build one with :meth:`connect`, which reads the model's metadata.

    Attributes:
        name: the model's name as the server reports it.
        platform: its platform as the server reports it (``"remote"`` when it says none).
        problem: its problem definition, from the metadata.
    """

    def __init__(self, transport: Transport, model: str, version: str, info: Optional[RemoteModelInfo] = None) -> None:
        self._transport = transport
        self.model = model
        self.version = version
        info = info or RemoteModelInfo(model, "", [], [], [])
        self.info = info  # the metadata as the server sent it (neuropod inspect URL shows it)
        self.name = info.name or model
        self.platform = info.platform or "remote"
        self.problem = ProblemDefinition(
            tuple(_spec_from_metadata(info.inputs, "input")), tuple(_spec_from_metadata(info.outputs, "output"))
        )

    @classmethod
    def connect(cls, url: str, options: Optional[RemoteOptions] = None) -> RemoteExecutor:
        """Connect to the model served at ``url`` and read its metadata.

        Args:
            url: ``grpc://host:port/model``, ``http://host:port/model`` (or
                ``grpcs://``/``https://``), optionally ending ``/versions/N``.
            options: the client's options.

        Raises:
            OptionError: a malformed URL.
            ModelNotFoundError: the server has no such model.
            RemoteError: the server cannot be reached or answers nonsense.
        """
        scheme, host, port, model, version = parse_model_url(url)
        options = options or RemoteOptions()
        transport: Transport
        if scheme in ("grpc", "grpcs"):
            transport = _GrpcTransport(scheme, host, port, options)
        else:
            transport = _HttpTransport(scheme, host, port, options)
        try:
            return cls(transport, model, version, transport.metadata(model, version))
        except BaseException:
            transport.close()
            raise

    def infer(self, inputs: TensorDict) -> TensorDict:
        outputs = self._transport.infer(self.model, self.version, inputs)
        # Raw numbers arrive as read-only views of the response; callers expect arrays they own.
        return {name: array.copy() if not array.flags.writeable else array for name, array in outputs.items()}

    def ready(self) -> bool:
        try:
            return self._transport.ready(self.model, self.version)
        except NeuropodError:
            return False

    def close(self) -> None:
        self._transport.close()
