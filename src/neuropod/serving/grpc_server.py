"""A unary-only gRPC server driven from one completion-queue thread.

grpcio's own synchronous server (``grpc.server``) hands every call from its
polling thread to a pool thread and back, parks that thread on a condition
until the request message has arrived, and runs a ``Future`` per call; on a
small request that machinery (thread switches, GIL hand-offs) is most of the
server's CPU (profiled in docs/benchmarks.md). Every method this project
serves is unary-unary, so this server does only that, with as few steps as
gRPC's core allows: one thread polls the completion queue; a new call gets
one batch that receives its message, a handler runs on that thread, and one
batch sends metadata, message and status and receives the client's close.
A handler that would block (a slow model, a batch, a repository load)
returns a :class:`concurrent.futures.Future` instead of the answer; the call
is answered from whichever thread completes it.

It drives grpcio's core through ``grpc._cython.cygrpc``, the layer grpcio's
own servers are written on; the serving tests cover every path of it against
the grpcio version installed. That layer is not grpcio's public API, so
:func:`unary_server` falls back to :class:`StockUnaryServer` (the same
methods on ``grpc.server``: slower, nothing else differs) when a grpcio
release lacks what this server uses, or when ``NEUROPOD_GRPC_SERVER=stock``.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import grpc

try:  # grpcio's private core layer: present in every grpcio this project supports, but not promised
    from grpc._cython import cygrpc
except ImportError:  # pragma: no cover - exercised through NEUROPOD_GRPC_SERVER=stock instead
    cygrpc = None

__all__ = ["UnaryServer", "StockUnaryServer", "unary_server", "Metadata", "Answer", "Method", "Failure"]

logger = logging.getLogger("neuropod.serving")

#: The call's metadata: (key, value) pairs, values ``bytes`` for ``-bin`` keys.
Metadata = Tuple[Tuple[str, Union[str, bytes]], ...]
#: What a method gives back: the serialised response now, or a future of it.
Answer = Union[bytes, "Future[bytes]"]
#: A method: request bytes and metadata in, an answer out; exceptions become statuses.
Method = Callable[[bytes, Metadata], Answer]
#: Turns a method's exception into the status and details the client gets.
Failure = Callable[[BaseException], Tuple[grpc.StatusCode, str]]

_OK = 0  # grpc_status_code GRPC_STATUS_OK
_NO_FLAGS = 0
_NEW_CALL = object()
_SHUTDOWN = object()
_MESSAGE, _DONE, _CLOSED = "message", "done", "closed"  # the batches of a call, named in their tags
#: What this server uses of grpcio's core layer.
_CORE_NAMES = (
    "CompletionQueue",
    "Server",
    "ReceiveMessageOperation",
    "ReceiveCloseOnServerOperation",
    "SendInitialMetadataOperation",
    "SendMessageOperation",
    "SendStatusFromServerOperation",
)
#: Calls requested from the core ahead of their arrival, so a burst is matched at once.
_REQUESTS_AHEAD = 8


def _status(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class _Call:
    """One RPC in progress; its tags are ``(self, batch)``."""

    __slots__ = ("call", "method", "metadata", "waiting")

    def __init__(self, call: Any, method: bytes, metadata: Metadata) -> None:
        self.call = call
        self.method = method
        self.metadata = metadata
        #: Batches to complete before the call is over; -1 once it is (cancelled while its answer was pending).
        self.waiting = 1


class UnaryServer:
    """Serves unary methods by full path (``/package.Service/Method``).

    A call takes two batches: one receives its request message; the other
    sends the answer (initial metadata, message, status) and receives the
    client's close, which completes once the call is over. The call is
    finished when that second batch completes. A call whose answer is a
    future waits for the client's close in a batch of its own, so that a
    call cancelled meanwhile (by the client, or by :meth:`stop`) is over at
    once; its answer, when it comes, goes nowhere.

    Args:
        methods: full method path -> method.
        failure: maps a method's exception to a status (never raises).
        options: gRPC channel arguments, as for ``grpc.server``.
    """

    def __init__(self, methods: Dict[str, Method], failure: Failure, options: Sequence[Tuple[str, Any]] = ()) -> None:
        if cygrpc is None:
            raise RuntimeError(f"grpcio {grpc.__version__} has no grpc._cython.cygrpc")
        for name in _CORE_NAMES:  # all at once here, not one missing name per call later
            getattr(cygrpc, name)
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._failure = failure
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        self._lock = threading.Lock()  # between stop() and the thread asking the core for calls
        self._calls = 0  # calls the core has handed over that are not finished (the polling thread's)
        self._requests = 0  # request_call tags outstanding (the polling thread's after start)
        self._stopping = False
        self._shutdown_pending = False
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def add_insecure_port(self, address: str) -> int:
        """Listen on ``host:port`` (port 0: any free one); returns the port, 0 when it cannot."""
        return int(self._server.add_http2_port(address.encode()))

    def open_calls(self) -> int:
        """Calls the core has handed over that are not finished: 1 while a method runs alone.

        Read on the polling thread (from a method, which it runs), where it is exact.
        """
        return self._calls

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """As :meth:`add_insecure_port`, speaking TLS with ``credentials``."""
        return int(self._server.add_http2_port(address.encode(), credentials._credentials))

    def start(self) -> None:
        self._server.start()
        for _ in range(_REQUESTS_AHEAD):
            self._request_call()
        self._thread = threading.Thread(target=self._serve, name="neuropod-grpc", daemon=True)
        self._thread.start()

    def stop(self, grace: Optional[float]) -> threading.Event:
        """Refuse new calls, cancel those still running after ``grace`` s (None: at once); set when stopped."""
        with self._lock:
            if self._thread is None or self._stopped.is_set():
                self._stopped.set()
                return self._stopped
            if not self._stopping:
                self._stopping = True
                self._shutdown_pending = True
                self._server.shutdown(self._cq, _SHUTDOWN)
        if grace is None:
            self._server.cancel_all_calls()
        else:

            def cancel_after_grace() -> None:
                if not self._stopped.wait(grace):
                    with self._lock:
                        if not self._stopped.is_set():
                            self._server.cancel_all_calls()

            threading.Thread(target=cancel_after_grace, daemon=True).start()
        return self._stopped

    # -- the polling thread ---------------------------------------------------

    def _request_call(self) -> None:
        self._server.request_call(self._cq, self._cq, _NEW_CALL)
        self._requests += 1

    def _serve(self) -> None:
        poll = self._cq.poll
        while True:
            event = poll()
            tag = event.tag
            try:
                self._on_event(event, tag)
            except Exception:  # this thread serves every call: it must outlive any one of them
                logger.exception("gRPC: handling a completion failed")
            if self._stopping:
                with self._lock:
                    if not self._shutdown_pending and not self._calls and not self._requests:
                        self._server.destroy()
                        self._stopped.set()
                        return
            event = tag = None  # drop the event's references before blocking again

    def _on_event(self, event: Any, tag: Any) -> None:
        if tag is _NEW_CALL:
            self._on_new_call(event)
        elif tag is _SHUTDOWN:
            with self._lock:
                self._shutdown_pending = False
        elif tag is not None:
            rpc, batch = tag
            if batch is _MESSAGE:
                self._on_message(rpc, event)
            elif rpc.waiting > 0:
                cancelled = batch is _CLOSED and event.batch_operations[0].cancelled()
                rpc.waiting = -1 if cancelled else rpc.waiting - 1
                if rpc.waiting <= 0:
                    self._calls -= 1

    def _on_new_call(self, event: Any) -> None:
        self._requests -= 1
        if not event.success:  # shutting down: the requested call will not come
            return
        self._calls += 1
        with self._lock:
            if not self._stopping:
                self._request_call()
        rpc = _Call(event.call, event.call_details.method, event.invocation_metadata)
        rpc.call.start_server_batch((cygrpc.ReceiveMessageOperation(_NO_FLAGS),), (rpc, _MESSAGE))

    def _on_message(self, rpc: _Call, event: Any) -> None:
        if not event.success:  # cancelled before its message came: only the close is left to wait for
            rpc.call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS),), (rpc, _DONE))
            return
        body = event.batch_operations[0].message()
        method = self._methods.get(rpc.method)
        if method is None:
            self._finish(rpc, None, _status(grpc.StatusCode.UNIMPLEMENTED), b"Method not found!")
            return
        if body is None:
            self._finish(rpc, None, _status(grpc.StatusCode.UNIMPLEMENTED), b"a unary method needs one request message")
            return
        try:
            answer = method(body, rpc.metadata)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the call's status
            self._fail(rpc, exc)
            return
        if isinstance(answer, Future):
            rpc.waiting = 2  # the close, and the answer to come
            rpc.call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS),), (rpc, _CLOSED))
            answer.add_done_callback(lambda done: self._answer_later(rpc, done))
        else:
            self._finish(rpc, answer, _OK, b"")

    # -- answering (on the polling thread, or the thread that completed a future) ----

    def _answer_later(self, rpc: _Call, done: Future[bytes]) -> None:
        try:
            answer = done.result()
        except BaseException as exc:  # noqa: BLE001
            self._fail(rpc, exc)
        else:
            self._finish(rpc, answer, _OK, b"")

    def _fail(self, rpc: _Call, exc: BaseException) -> None:
        code, details = self._failure(exc)
        self._finish(rpc, None, _status(code), details.encode("utf-8", "replace"))

    def _finish(self, rpc: _Call, body: Optional[bytes], code: int, details: bytes) -> None:
        try:
            self._send(rpc, body, code, details)
        except Exception:  # the answer itself could not be sent (not bytes, say): the call still ends
            logger.exception("gRPC: sending an answer failed", extra={"method": rpc.method.decode(errors="replace")})
            self._send(rpc, None, _status(grpc.StatusCode.INTERNAL), b"the server failed to send its answer")

    def _send(self, rpc: _Call, body: Optional[bytes], code: int, details: bytes) -> None:
        operations: Tuple[Any, ...] = (cygrpc.SendInitialMetadataOperation(None, _NO_FLAGS),)
        if body is not None:
            operations += (cygrpc.SendMessageOperation(body, _NO_FLAGS),)
        operations += (cygrpc.SendStatusFromServerOperation(None, code, details, _NO_FLAGS),)
        if rpc.waiting == 1:  # answered at once: the close comes with the answer
            operations += (cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS),)
        rpc.call.start_server_batch(operations, (rpc, _DONE))


class StockUnaryServer:
    """The same methods served by grpcio's public ``grpc.server`` (a thread per call in flight).

    The fallback of :func:`unary_server`: each call runs on one of
    ``threads`` pool threads, which waits for a method's future when it
    returns one. Same interface as :class:`UnaryServer`.
    """

    def __init__(
        self, methods: Dict[str, Method], failure: Failure, options: Sequence[Tuple[str, Any]] = (), threads: int = 16
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="neuropod-grpc-stock")
        handlers = {path: self._handler(method, failure) for path, method in methods.items()}
        self._server = grpc.server(self._pool, options=list(options), maximum_concurrent_rpcs=None)
        self._server.add_generic_rpc_handlers((_ByPath(handlers),))

    @staticmethod
    def _handler(method: Method, failure: Failure) -> grpc.RpcMethodHandler:
        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                answer = method(request, tuple(context.invocation_metadata()))
                body = answer.result() if isinstance(answer, Future) else answer
            except BaseException as exc:  # noqa: BLE001 - every failure becomes the call's status
                code, details = failure(exc)
            else:
                return body
            context.abort(code, details)  # raises: outside the except, so nothing chains onto it
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(unary)  # no (de)serialisers: the methods take bytes

    def open_calls(self) -> Optional[int]:
        """Not counted here (None): a method cannot tell whether other calls are waiting."""
        return None

    def add_insecure_port(self, address: str) -> int:
        try:
            return int(self._server.add_insecure_port(address))
        except RuntimeError:  # newer grpcio raises where older ones returned 0
            return 0

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        try:
            return int(self._server.add_secure_port(address, credentials))
        except RuntimeError:
            return 0

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: Optional[float]) -> threading.Event:
        stopped = self._server.stop(grace)
        self._pool.shutdown(wait=False)
        return stopped


class _ByPath(grpc.GenericRpcHandler):
    def __init__(self, handlers: Dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler]:
        return self._handlers.get(handler_call_details.method)  # type: ignore[attr-defined]


def unary_server(
    methods: Dict[str, Method], failure: Failure, options: Sequence[Tuple[str, Any]] = (), threads: int = 16
) -> Union[UnaryServer, StockUnaryServer]:
    """A :class:`UnaryServer`, or the :class:`StockUnaryServer` when ``NEUROPOD_GRPC_SERVER=stock`` or it cannot run."""
    if os.environ.get("NEUROPOD_GRPC_SERVER", "").strip().lower() != "stock":
        try:
            return UnaryServer(methods, failure, options)
        except (AttributeError, TypeError) as exc:  # this grpcio's core layer differs from the one it was written on
            logger.warning("gRPC: serving through grpc.server (slower): grpcio %s: %s", grpc.__version__, exc)
        except RuntimeError as exc:
            logger.warning("gRPC: serving through grpc.server (slower): %s", exc)
    return StockUnaryServer(methods, failure, options, threads)
