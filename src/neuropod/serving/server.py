"""The model server: one event loop running the gRPC and REST adapters over one data plane.

Use it from Python::

    with ModelServer.from_path("models/", ServerConfig(grpc_port=0, http_port=0)) as server:
        print(server.grpc_port, server.http_port)   # the ports actually bound

``start()`` runs the loop in a background thread and returns once both ports
are bound; ``serve_forever()`` (the ``neuropod serve`` command) runs it in
the calling thread until SIGINT/SIGTERM. Stopping is graceful: new requests
are refused with UNAVAILABLE / 503, requests in flight finish (up to the
grace period), then the listeners close and the models are released.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import grpc
from aiohttp import web

from ..errors import OptionError, ServerError
from ..kserve import DEFAULT_MAX_MESSAGE_BYTES
from .connections import GuardedProtocolFactory
from .dataplane import DataPlane
from .grpc_adapter import GrpcAdapter
from .grpc_server import StockUnaryServer, UnaryServer, unary_server
from .metrics import ServerMetrics
from .repository import ModelRepository, ModelSettings
from .rest_adapter import RestAdapter

__all__ = ["ServerConfig", "ModelServer"]

logger = logging.getLogger("neuropod.serving")


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the server listens.

    Attributes:
        host: the address to bind; loopback unless told otherwise.
        grpc_port: the gRPC port (0 picks a free one; None turns gRPC off).
        http_port: the REST and metrics port (0 picks a free one; None turns REST off).
        max_message_bytes: requests (and gRPC responses) above this are refused.
        threads: threads running the calls of slow models (both protocols); fast calls run
            on the thread that received them.
        token: a bearer token required on every call but health checks.
        tls_cert: PEM certificate chain file; with ``tls_key`` both ports speak TLS.
        tls_key: PEM private key file.
        shutdown_grace_s: how long stopping waits for requests in flight.
        health_check_interval_s: how often models that are not ready get their
            executor's ``restart()`` called (when it has one).
        poll_repo_s: how often the repository directory is read again, loading
            added and changed packages and unloading removed ones (None: never).
        header_timeout_s: a REST connection that has not sent its first request
            head (request line and headers) this long after connecting is closed.
        body_timeout_s: a REST request body that takes longer to arrive is
            answered 408.
        keepalive_timeout_s: idle REST keep-alive connections close after this.
        max_connections_per_client: most REST connections one client address
            may hold open; more are closed at once.
        reuse_port: bind both ports with SO_REUSEPORT, so several server
            processes share them (``neuropod serve --workers N``).
    """

    host: str = "127.0.0.1"
    grpc_port: Optional[int] = 8001
    http_port: Optional[int] = 8000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    threads: int = 4
    token: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    shutdown_grace_s: float = 30.0
    health_check_interval_s: float = 1.0
    poll_repo_s: Optional[float] = None
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    max_connections_per_client: int = 256
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.grpc_port is None and self.http_port is None:
            raise OptionError("server config: at least one of grpc_port and http_port is needed")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise OptionError("server config: tls_cert and tls_key go together")
        if self.max_message_bytes <= 0:
            raise OptionError(f"max_message_bytes: expected a positive int, got {self.max_message_bytes}")
        if self.threads <= 0:
            raise OptionError(f"threads: expected a positive int, got {self.threads}")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "max_connections_per_client"):
            if not getattr(self, name) > 0:
                raise OptionError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.poll_repo_s is not None and not self.poll_repo_s > 0:
            raise OptionError(f"poll_repo_s: expected a positive number of seconds, got {self.poll_repo_s}")


class ModelServer:
    """Serves a :class:`ModelRepository` over KServe v2 gRPC and REST.

    The server owns the repository: stopping it closes every model.
    """

    def __init__(self, repository: ModelRepository, config: Optional[ServerConfig] = None) -> None:
        self.repository = repository
        self.config = config or ServerConfig()
        self.metrics = ServerMetrics()
        self.dataplane = DataPlane(repository, self.metrics, threads=self.config.threads)
        self.grpc_port: Optional[int] = None
        self.http_port: Optional[int] = None
        self._grpc_server: Optional[Union[UnaryServer, StockUnaryServer]] = None
        self._grpc_pool: Optional[ThreadPoolExecutor] = None
        self._http_runner: Optional[web.AppRunner] = None
        self._http_listener: Optional[asyncio.AbstractServer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped: Optional[asyncio.Event] = None
        self._watcher: Optional[asyncio.Task[None]] = None
        self._poller: Optional[asyncio.Task[None]] = None
        self._loader: Optional[asyncio.Future[None]] = None
        self._closed = False
        #: What stopped the server other than a signal (a model failing to load under ``strict``).
        self.failure: Optional[BaseException] = None

    @classmethod
    def from_path(
        cls,
        path: Union[str, Path],
        config: Optional[ServerConfig] = None,
        default_settings: Optional[ModelSettings] = None,
        model_settings: Optional[Mapping[str, ModelSettings]] = None,
    ) -> ModelServer:
        """Load a package or a repository directory and build a server for it."""
        return cls(ModelRepository.from_path(path, default_settings, model_settings), config)

    # -- lifecycle on the event loop ----------------------------------------

    def _read_tls(self) -> Optional[tuple]:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        return Path(self.config.tls_cert).read_bytes(), Path(self.config.tls_key).read_bytes()

    async def start_async(self) -> None:
        """Bind both ports and start serving on the running loop."""
        config = self.config
        self.dataplane.bind_loop(asyncio.get_running_loop())
        self._stopped = asyncio.Event()
        tls = self._read_tls()
        try:
            if config.grpc_port is not None:
                options = [
                    ("grpc.max_receive_message_length", config.max_message_bytes),
                    ("grpc.max_send_message_length", config.max_message_bytes),
                    # Off unless asked: a second server must not silently share a port by accident.
                    ("grpc.so_reuseport", 1 if config.reuse_port else 0),
                ]
                # A request waiting for its batch holds its thread: leave room for a full batch.
                batch_rows = self.repository.max_batch_size()
                self._grpc_pool = ThreadPoolExecutor(
                    max_workers=config.threads + batch_rows, thread_name_prefix="neuropod-grpc"
                )
                adapter = GrpcAdapter(self.dataplane, self._grpc_pool, config.token)
                self._grpc_server = unary_server(
                    adapter.methods(), adapter.failure, options, threads=config.threads + batch_rows
                )
                adapter.watch_calls(self._grpc_server.open_calls)
                address = f"{_bracketed(config.host)}:{config.grpc_port}"
                if tls is not None:
                    credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
                    self.grpc_port = self._grpc_server.add_secure_port(address, credentials)
                else:
                    self.grpc_port = self._grpc_server.add_insecure_port(address)
                if not self.grpc_port:  # grpc's way of saying the port is taken or the host unknown
                    raise ServerError(f"gRPC: cannot listen on {address} (in use, or not an address here)")
                self._grpc_server.start()
            if config.http_port is not None:
                app = RestAdapter(
                    self.dataplane, config.max_message_bytes, config.token, body_timeout_s=config.body_timeout_s
                ).app()
                self._http_runner = web.AppRunner(
                    app,
                    # The adapter inflates bodies itself, in bounded steps against max_message_bytes.
                    auto_decompress=False,
                    access_log=None,
                    shutdown_timeout=config.shutdown_grace_s,
                    keepalive_timeout=config.keepalive_timeout_s,
                )
                await self._http_runner.setup()
                ssl_context = None
                if config.tls_cert is not None:
                    ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
                # Our own listener (not aiohttp's TCPSite): each connection goes through the guard
                # that bounds connections per client and the time to send a request head.
                protocols = self._http_runner.server
                assert protocols is not None  # set by setup()
                guarded = GuardedProtocolFactory(protocols, config.max_connections_per_client, config.header_timeout_s)
                try:
                    self._http_listener = await asyncio.get_running_loop().create_server(
                        guarded,
                        config.host,
                        config.http_port,
                        ssl=ssl_context,
                        reuse_address=True,
                        reuse_port=config.reuse_port or None,
                    )
                except OSError as exc:
                    where = f"{_bracketed(config.host)}:{config.http_port}"
                    raise ServerError(f"HTTP: cannot listen on {where}: {exc.strerror or exc}") from exc
                self.http_port = int(self._http_listener.sockets[0].getsockname()[1])
        except BaseException:
            await self._close_listeners(0)
            raise
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch_models())
        if config.poll_repo_s is not None:
            self._poller = loop.create_task(self._poll_repository(config.poll_repo_s))
        logger.info(
            "serving",
            extra={
                "host": config.host,
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
                "models": [f"{m.name}:{m.version}" for m in self.repository],
                "tls": tls is not None,
                "auth": config.token is not None,
            },
        )

    async def stop_async(self, grace: Optional[float] = None) -> None:
        """Refuse new requests, let those in flight finish, then close everything."""
        if self._closed:
            return
        self._closed = True
        grace = self.config.shutdown_grace_s if grace is None else grace
        logger.info("shutting down", extra={"grace_s": grace})
        for task in (self._watcher, self._poller):
            if task is not None:
                task.cancel()
        drained = await self.dataplane.drain(grace)
        if not drained:
            logger.warning("requests still in flight after the grace period; closing anyway")
        await self._close_listeners(grace if not drained else 1.0)
        await self.dataplane.close()
        self.repository.close()
        if self._stopped is not None:
            self._stopped.set()
        logger.info("stopped")

    async def _watch_models(self) -> None:
        """Ask the executor of each model that is not ready to restart (a dead worker, say)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.health_check_interval_s)
            for model in self.repository:
                if model.closed or model.ready():
                    continue
                logger.warning(
                    "model not ready; restarting its executor", extra={"model": model.name, "version": model.version}
                )
                try:
                    await loop.run_in_executor(None, model.neuropod.executor.restart)
                except Exception:
                    logger.exception("restarting model %s failed", model.name)
                    continue
                if model.ready():
                    logger.info("model recovered", extra={"model": model.name, "version": model.version})

    async def _poll_repository(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await loop.run_in_executor(None, self.repository.poll)

    def load_in_background(self, strict: bool = False) -> None:
        """Load the repository's models after the ports are bound: liveness answers meanwhile, readiness waits.

        With ``strict``, a model that fails to load stops the server (:attr:`failure` says why).
        """
        loop = asyncio.get_running_loop()
        self.repository.loading = True  # not ready from the first probe on

        def load() -> None:
            self.repository.load_all(strict=strict)

        async def run() -> None:
            try:
                await loop.run_in_executor(None, load)
            except Exception as exc:
                # Reaching here means --strict and a failed model, or a settings error that no model can get past.
                why = "a model failed to load and --strict is set" if strict else "the repository cannot be served"
                logger.error(f"{why}; stopping", extra={"reason": str(exc)})
                self.failure = exc
                await self.stop_async(0)
                return
            gc.freeze()  # see serve_forever
            logger.info("all models loaded", extra={"models": [f"{m.name}:{m.version}" for m in self.repository]})

        self._loader = asyncio.ensure_future(run())

    async def _close_listeners(self, grace: float) -> None:
        if self._grpc_server is not None:
            stopped = self._grpc_server.stop(grace)
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
            self._grpc_server = None
        if self._grpc_pool is not None:
            self._grpc_pool.shutdown(wait=False)
            self._grpc_pool = None
        if self._http_listener is not None:
            self._http_listener.close()  # no new connections; those open are drained by the runner
            self._http_listener = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    # -- blocking front ends -------------------------------------------------

    def start(self) -> ModelServer:
        """Serve from a background thread; returns once the ports are bound."""
        if self._thread is not None:
            raise ServerError("the server is already started")
        started = threading.Event()
        failure: list = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_until_complete(self.wait_stopped())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="neuropod-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self.repository.close()
            raise failure[0]
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop a server started with :meth:`start` (graceful; blocks until done)."""
        if self._thread is None or self._loop is None:
            return
        if not self._closed:
            future = asyncio.run_coroutine_threadsafe(self.stop_async(grace), self._loop)
            future.result()
        self._thread.join()
        self._thread = None

    def serve_forever(self, load: bool = False, strict: bool = False) -> None:
        """Serve in this thread until SIGINT or SIGTERM, then stop gracefully.

        Args:
            load: load the repository's models after binding the ports (see
                :meth:`load_in_background`) instead of serving those already loaded.
            strict: with ``load``, a model that fails to load stops the server
                and its error is raised here.

        The first signal drains the requests in flight (logging how many); a
        second one stops at once.
        """
        signals = {"count": 0}

        async def main() -> None:
            await self.start_async()
            loop = asyncio.get_running_loop()

            def on_signal() -> None:
                signals["count"] += 1
                if signals["count"] == 1:
                    logger.info(
                        f"draining {self.dataplane.in_flight} requests", extra={"in_flight": self.dataplane.in_flight}
                    )
                    asyncio.ensure_future(self.stop_async())
                else:
                    logger.warning("second signal: stopping now")
                    os._exit(130)  # the operator asked twice: no more waiting on models or threads

            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, on_signal)
                except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                    pass
            if load:
                self.load_in_background(strict)
            else:
                # Everything loaded so far lives as long as the server: keep it out of the
                # collector's way so full collections stay short (fewer latency spikes).
                gc.freeze()
            await self.wait_stopped()

        asyncio.run(main())
        if self.failure is not None:
            raise self.failure

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
