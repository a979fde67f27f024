"""The protocol-neutral data plane: health, metadata and inference over the repository.

The gRPC and REST adapters turn their messages into the plain objects here
(:class:`InferRequest`, :class:`InferResponse`, :class:`ModelMetadata`) and
call :class:`DataPlane`; everything a request means (which model, validation
against its spec, batching, metrics, readiness, draining at shutdown) is
decided here once for both protocols.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import numpy as np

from ..errors import InputValidationError, ModelNotFoundError, ModelNotReadyError
from ..executors.ope import OutOfProcessExecutor
from ..kserve import EXTENSIONS
from ..kserve.datatypes import DTYPE_TO_DATATYPE
from ..kserve.status import status_for
from ..spec import TensorSpec
from .batching import DynamicBatcher, Fed, Feeder, signature
from .failures import sanitised
from .metrics import ServerMetrics
from .repository import ModelIndexEntry, ModelRepository, ServedModel
from .shared_memory import SharedMemoryRegions

__all__ = [
    "InferRequest",
    "InferResponse",
    "TensorMetadata",
    "ModelMetadata",
    "ServerMetadata",
    "DataPlane",
    "SERVER_NAME",
]

logger = logging.getLogger("neuropod.serving")

SERVER_NAME = "neuropod"

TensorDict = Dict[str, np.ndarray]
T = TypeVar("T")

#: Where a request's call runs (:meth:`DataPlane.route`).
INLINE, POOL, FEED = "inline", "pool", "feed"
#: Models whose calls average less than this run on the event loop instead of the thread pool.
INLINE_CALL_MAX_S = 0.0005
#: The same for a model in one worker process. Handing its call to a feeding thread costs a few hundred
#: microseconds of CPU (two threads taking turns at the GIL: docs/ope.md), and the call is a wait for
#: the worker, which serves one call at a time whoever waits for it; a higher bar also keeps a call
#: that lost its CPU to another process from flipping a model to the feeder.
INLINE_WORKER_CALL_MAX_S = 0.002


@dataclass
class InferRequest:
    """One inference request, whatever protocol brought it.

    Attributes:
        model_name: the model asked for.
        model_version: its version; empty for the highest.
        id: the client's request id, echoed in the response.
        inputs: input name -> numpy array (strings as unicode arrays).
        outputs: the output names asked for, in order; None for all.
    """

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: TensorDict = field(default_factory=dict)
    outputs: Optional[List[str]] = None


@dataclass
class InferResponse:
    """The answer to an :class:`InferRequest`; ``outputs`` keeps the order asked for."""

    model_name: str
    model_version: str
    id: str
    outputs: TensorDict


@dataclass
class _Call:
    """One admitted request: its model, its checked inputs and their symbol sizes, its batcher if any.

    The ``*_ns`` fields are its timeline, for the statistics extension.
    """

    model: ServedModel
    request: InferRequest
    inputs: TensorDict
    bindings: Optional[Dict[str, int]]
    batcher: Optional[DynamicBatcher]
    admitted_ns: int = 0
    queue_ns: int = 0
    infer_ns: int = 0
    outputs_ns: int = 0

    def run(self) -> TensorDict:
        """Call the model (on whatever thread this runs on); the wait before it counts as queueing."""
        started = time.perf_counter_ns()
        self.queue_ns = started - self.admitted_ns
        outputs = self.model.run(self.inputs, self.bindings)
        self.outputs_ns = time.perf_counter_ns()
        self.infer_ns = self.outputs_ns - started
        return outputs

    def batched(self) -> None:
        """Account for an answer that came from a batch: the batch's call time, the rest queueing."""
        self.outputs_ns = time.perf_counter_ns()
        self.infer_ns = min(self.model.last_call_ns, self.outputs_ns - self.admitted_ns)
        self.queue_ns = self.outputs_ns - self.admitted_ns - self.infer_ns


class _Handling:
    """The context of one request (``with plane._handling(request, protocol) as call``).

    Entering admits it (finds the model, holds it, checks the inputs) and gives
    its :class:`_Call`; leaving accounts for it: statistics and metrics, and on
    failure the error the client may see. A class rather than a generator
    context manager: this runs for every request, and the generator's
    machinery cost a tenth of a small request's time.
    """

    __slots__ = ("plane", "request", "protocol", "started", "model", "call")

    def __init__(self, plane: DataPlane, request: InferRequest, protocol: str) -> None:
        self.plane = plane
        self.request = request
        self.protocol = protocol
        self.model: Optional[ServedModel] = None
        self.call: Optional[_Call] = None

    def __enter__(self) -> _Call:
        plane, request = self.plane, self.request
        self.started = time.perf_counter_ns()
        plane._track(1)
        try:
            if not plane._accepting:
                raise ModelNotReadyError("the server is shutting down")
            model = self.model = plane.repository.get(request.model_name, request.model_version)
            # Held until the answer is built: a model being unloaded or replaced closes only after.
            model.acquire()
            call = self.call = plane._admit(model, request, self.protocol)
        except Exception as exc:
            public = self._fail(exc)
            if public is exc:
                raise
            raise public from None
        except BaseException:  # KeyboardInterrupt and the like: __exit__ will not run, so release here
            self._release()
            raise
        call.admitted_ns = time.perf_counter_ns()
        return call

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> None:
        if exc is None:
            self._succeed()
        elif isinstance(exc, Exception):
            public = self._fail(exc)
            if public is not exc:
                raise public from None
        else:  # KeyboardInterrupt, a cancelled task: nothing to account for, it goes on up
            self._release()

    def _release(self) -> None:
        self.plane._track(-1)
        if self.model is not None:
            self.model.release()

    def _fail(self, exc: Exception) -> BaseException:
        """Account for a failed request, then release it; what the client may see of ``exc``."""
        request = self.request
        try:  # counted before the release, so that a drain or a retired model's close comes after it
            self.plane._failed(exc, request, self.protocol)
            if self.model is not None:
                self.model.statistics.failed(time.perf_counter_ns() - self.started)
            return sanitised(exc, request.id, request.model_name)
        finally:
            self._release()

    def _succeed(self) -> None:
        self._release()
        model, call, started = self.model, self.call, self.started
        assert model is not None and call is not None
        finished = time.perf_counter_ns()
        rows = call.bindings.get(model.batch_symbol, 1) if (call.bindings and model.batch_symbol) else 1
        model.statistics.succeeded(
            rows,
            finished - started,
            call.admitted_ns - started,
            call.queue_ns,
            call.infer_ns,
            finished - call.outputs_ns,
        )
        self.plane._succeeded(model, self.request, self.protocol, (finished - started) / 1e9)


@dataclass(frozen=True)
class TensorMetadata:
    """A tensor as the protocol describes it; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: List[int]

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorMetadata:
        # Symbols cannot be expressed in the protocol: they become -1 like None.
        return cls(spec.name, DTYPE_TO_DATATYPE[spec.dtype], [d if isinstance(d, int) else -1 for d in spec.shape])


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: List[str]
    platform: str
    inputs: List[TensorMetadata]
    outputs: List[TensorMetadata]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: Sequence[str]


class DataPlane:
    """Health, metadata and inference for the models of one repository.

    Args:
        repository: the loaded models (the data plane does not close them).
        metrics: where request counts and latencies go.
        threads: size of the thread pool that runs model calls.
    """

    def __init__(self, repository: ModelRepository, metrics: ServerMetrics, threads: int = 4) -> None:
        self.repository = repository
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="neuropod-infer")
        self._batchers: Dict[int, DynamicBatcher] = {}
        self._feeders: Dict[int, Feeder] = {}
        #: Shared memory regions clients registered (the system shared memory extension).
        self.shared_memory = SharedMemoryRegions()
        self._accepting = True
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # -- health and metadata -------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when accepting requests, done loading the repository, and every model is ready."""
        return self._accepting and not self.repository.loading and all(model.ready() for model in self.repository)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether a model can take requests (raises ModelNotFoundError if unknown)."""
        try:
            model = self.repository.get(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            if self.repository.known(name):  # unloaded, loading or failed to load: there, but not ready
                return False
            raise
        return self._accepting and model.ready()

    def server_metadata(self) -> ServerMetadata:
        from .._version import __version__

        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.repository.get(name, version)
        problem = model.neuropod.problem
        return ModelMetadata(
            name=model.name,
            versions=self.repository.versions(name),
            platform=model.platform,
            inputs=[TensorMetadata.from_spec(s) for s in problem.inputs],
            outputs=[TensorMetadata.from_spec(s) for s in problem.outputs],
        )

    # -- inference ------------------------------------------------------------
    #
    # One path for both protocols: ``_handling`` finds the model, checks readiness and
    # validates the inputs once, and keeps the books; only the model call differs between
    # ``infer`` (adapters on the event loop: REST) and ``infer_blocking`` (adapters that
    # call from a thread: gRPC, on its polling thread when ``runs_inline`` says the model
    # is fast, on a pool thread otherwise). The loop is given by ``bind_loop`` and is where
    # dynamic batching happens.

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's event loop: batching runs there, blocking callers submit to it."""
        self._loop = loop

    def _handling(self, request: InferRequest, protocol: str) -> _Handling:
        """Admit, check and account for one request; the body runs the model and fills the call's timings."""
        return _Handling(self, request, protocol)

    def _admit(self, model: ServedModel, request: InferRequest, protocol: str) -> _Call:
        self.metrics.count_request(model.name, model.version, protocol)
        model.check_ready()
        inputs, bindings = model.check(request.inputs)
        wanted = request.outputs
        if wanted is not None:
            unknown = [name for name in wanted if name not in model.output_names]
            if unknown:
                raise InputValidationError(
                    f"requested output(s) {', '.join(repr(n) for n in unknown)} not in the spec of model "
                    f"{model.name!r}; expected any of {', '.join(repr(n) for n in model.output_names)}"
                )
        batched = inputs and model.settings.max_batch_size and not _runs_in_workers(model)
        batcher = self._batcher_for(model) if batched else None
        return _Call(model, request, inputs, bindings, batcher)

    def _batcher_for(self, model: ServedModel) -> Optional[DynamicBatcher]:
        """The model's batcher, made on its first request (models come and go with repository control)."""
        if not model.settings.max_batch_size:
            return None
        batcher = self._batchers.get(id(model))
        if batcher is None:
            with self._in_flight_lock:
                batcher = self._batchers.get(id(model))
                if batcher is None:
                    batcher = DynamicBatcher(
                        model.run_batch,
                        self._pool,
                        model.settings.max_batch_size,
                        model.settings.max_queue_delay_ms / 1000.0,
                        on_batch=self.metrics.batch_size.labels(model.name).observe,
                    )
                    self._batchers[id(model)] = batcher
                    model.on_close(lambda: self._forget_batcher(id(model)))
        return batcher

    def _forget_batcher(self, key: int) -> None:
        batcher = self._batchers.pop(key, None)
        if batcher is not None and self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(batcher.close(), self._loop)

    # -- models in worker processes: fed from a queue (see batching.Feeder) ----------

    def route(self, name: str, version: str = "", alone: bool = False) -> str:
        """Where a request's call runs: :data:`INLINE`, :data:`POOL` or :data:`FEED` (one lookup per request).

        * INLINE, on the thread that received it: an unbatched model whose calls are short
          (:func:`_short`), and a model that is not there (the call fails at once, wherever it runs);
        * FEED, queued to the model's :class:`~.batching.Feeder`: a model in worker processes that
          is batched (one worker round trip per batch), has several workers (a feeding thread per
          worker keeps them all busy) or whose calls are not short (at most one call per worker is
          in flight; waiting for a busy worker counts as queueing, not as the model's time);
        * POOL, on the thread pool: the other models in this process (batched ones through the loop).

        ``alone``: the receiver holds no other request (the gRPC server has no other call open).
        A model that would be fed then runs its call where it arrived, when its calls are short
        and its feeder is idle: there is nothing to batch it with, and the hand-off to a feeding
        thread and back would cost more than the round trip to the worker.
        """
        try:
            model = self.repository.get(name, version)
        except Exception:
            return INLINE
        where = _route(model)
        if where == FEED and alone and _short(model, alone=True):
            feeder = self._feeders.get(id(model))
            if feeder is None or feeder.idle():
                return INLINE
        return where

    def feeds(self, name: str, version: str = "") -> bool:
        """Whether this model's requests are queued to its workers' feeder (see :meth:`route`)."""
        return self.route(name, version) == FEED

    def submit(self, request: InferRequest, protocol: str, finish: Callable[[InferResponse], T]) -> Future[T]:
        """Check one request here and queue it to its model's feeder; the future holds ``finish(response)``.

        A request that fails its checks raises at once; a failure of the call, or of
        ``finish``, is the future's exception (the error the client may see). ``finish``
        runs on the feeding thread: the gRPC adapter builds and sends the response there.
        """
        handling = self._handling(request, protocol)
        call = handling.__enter__()
        future: Future[T] = Future()

        def done(outputs: Optional[TensorDict], failure: Optional[BaseException]) -> None:
            try:
                if failure is None:
                    assert outputs is not None
                    try:
                        response = self._response(call, outputs)
                    except Exception as exc:
                        failure = exc
                if failure is not None:
                    handling.__exit__(type(failure), failure, failure.__traceback__)  # raises the public error
                    raise failure
                handling.__exit__(None, None, None)
                future.set_result(finish(response))
            except BaseException as exc:  # noqa: BLE001 - whatever failed is the request's answer
                future.set_exception(exc)

        try:
            self._feed(call, done)
        except BaseException as exc:
            handling.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return future

    def _feed(self, call: _Call, done: Callable[[Optional[TensorDict], Optional[BaseException]], None]) -> None:
        """Queue an admitted call to its model's feeder; ``done`` gets its outputs or its failure."""
        feeder = self._feeder_for(call.model)
        batchable = feeder.batching and bool(call.inputs)
        rows = next(iter(call.inputs.values())).shape[0] if batchable else 1
        feeder.submit(
            Fed(call.inputs, call.run, done, call.batched, rows, signature(call.inputs) if batchable else None)
        )

    def _fed_outputs(self, call: _Call) -> Future[TensorDict]:
        """Queue an admitted call to its model's feeder; the future holds its outputs."""
        future: Future[TensorDict] = Future()

        def done(outputs: Optional[TensorDict], failure: Optional[BaseException]) -> None:
            if failure is None:
                future.set_result(outputs)  # type: ignore[arg-type]
            else:
                future.set_exception(failure)

        self._feed(call, done)
        return future

    def _feeder_for(self, model: ServedModel) -> Feeder:
        """The model's feeder, made on its first request: a feeding thread per worker process."""
        feeder = self._feeders.get(id(model))
        if feeder is None:
            with self._in_flight_lock:
                feeder = self._feeders.get(id(model))
                if feeder is None:
                    settings = model.settings
                    feeder = Feeder(
                        model.name,
                        len(model.neuropod.executor.workers),  # type: ignore[attr-defined]
                        model.run_batch,
                        settings.max_batch_size,
                        settings.max_queue_delay_ms / 1000.0,
                        on_batch=self.metrics.batch_size.labels(model.name).observe,
                    )
                    self._feeders[id(model)] = feeder
                    model.on_close(lambda: self._forget_feeder(id(model)))
        return feeder

    def _forget_feeder(self, key: int) -> None:
        feeder = self._feeders.pop(key, None)
        if feeder is not None:
            feeder.close()

    # -- repository control (blocking: adapters run these off the event loop) --------

    def repository_index(self, ready_only: bool = False) -> List[ModelIndexEntry]:
        return self.repository.index(ready_only)

    def load_model(self, name: str, parameters: Mapping[str, Any]) -> None:
        """Load or reload a model from the repository directory; the old versions serve until then."""
        if parameters:
            raise InputValidationError(
                f"load parameters {', '.join(sorted(parameters))}: not supported; this server loads "
                "the packages of its repository directory as they are"
            )
        try:
            self.repository.load(name)
        except ModelNotFoundError:
            raise
        except Exception as exc:  # the package's fault, told to whoever asked (the index keeps the reason too)
            logger.error("loading model failed", exc_info=True, extra={"model": name})
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelNotReadyError(f"model {name!r} failed to load: {reason}") from None

    def unload_model(self, name: str) -> None:
        self.repository.unload(name)

    def model_statistics(self, name: str = "", version: str = "") -> List[Dict[str, Any]]:
        """The statistics extension's ``model_stats``: one model (or version), or every model served."""
        if name:
            if version:
                models = [self.repository.get(name, version)]
            else:
                models = [self.repository.get(name, v) for v in self.repository.versions(name)]
        else:
            models = list(self.repository)
        return [model.statistics.as_dict(model.name, model.version) for model in models]

    def _response(self, call: _Call, outputs: TensorDict) -> InferResponse:
        wanted = call.request.outputs
        if wanted is not None:
            missing = [name for name in wanted if name not in outputs]
            if missing:
                raise InputValidationError(
                    f"model {call.model.name!r} returned no output {missing[0]!r} for this request"
                )
            outputs = {name: outputs[name] for name in wanted}
        return InferResponse(call.model.name, call.model.version, call.request.id, outputs)

    async def infer(self, request: InferRequest, protocol: str) -> InferResponse:
        """Run one request from the event loop; errors carry their status in their class."""
        with self._handling(request, protocol) as call:
            where = _route(call.model)
            if call.batcher is not None:
                outputs = await call.batcher.submit(call.inputs)
                call.batched()
            elif where == FEED:
                outputs = await asyncio.wrap_future(self._fed_outputs(call))
            elif where == INLINE:
                # Handing a call this short to a thread costs more than the call (about 0.1-0.2 ms
                # of thread switching): run it on the event loop, which it blocks only briefly.
                outputs = call.run()
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._pool, call.run)
            response = self._response(call, outputs)
        return response

    def runs_inline(self, name: str, version: str = "") -> bool:
        """Whether a call of this model runs on the thread that received it (see :meth:`route`)."""
        return self.route(name, version) == INLINE

    def infer_blocking(self, request: InferRequest, protocol: str, feed: bool = True) -> InferResponse:
        """Run one request on the calling thread (batched models go through the loop, models in workers
        through their feeder unless ``feed`` is False: the caller asked :meth:`route` already)."""
        with self._handling(request, protocol) as call:
            if call.batcher is not None and self._loop is not None:
                outputs = asyncio.run_coroutine_threadsafe(call.batcher.submit(call.inputs), self._loop).result()
                call.batched()
            elif feed and _route(call.model) == FEED:
                outputs = self._fed_outputs(call).result()
            else:
                outputs = call.run()
                model = call.model
                if model.settings.max_batch_size and call.bindings and model.batch_symbol:  # a batch of one
                    self.metrics.batch_size.labels(model.name).observe(call.bindings.get(model.batch_symbol, 1))
            response = self._response(call, outputs)
        return response

    def _failed(self, exc: Exception, request: InferRequest, protocol: str) -> None:
        code = status_for(exc).http
        self.metrics.errors.labels(request.model_name, protocol, str(code)).inc()

    def _succeeded(self, model: ServedModel, request: InferRequest, protocol: str, elapsed: float) -> None:
        self.metrics.observe_latency(model.name, protocol, elapsed)
        if logger.isEnabledFor(logging.DEBUG):  # an access log, at --log-level debug
            logger.debug(
                "inference",
                extra={"model": model.name, "version": model.version, "protocol": protocol,
                       "request_id": request.id, "duration_ms": round(elapsed * 1000, 3)},
            )  # fmt: skip

    def _track(self, delta: int) -> None:
        with self._in_flight_lock:
            self._in_flight += delta

    # -- shutdown -------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Refuse new requests (UNAVAILABLE / 503) and report not ready."""
        self._accepting = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests, then wait until none is in flight (or ``timeout``); True if drained."""
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        # Polled: requests finish on the loop and on gRPC's threads alike.
        while self._in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        self.shared_memory.close()
        for batcher in list(self._batchers.values()):
            await batcher.close()
        for feeder in list(self._feeders.values()):
            feeder.close()
        self._pool.shutdown(wait=True)


def _runs_in_workers(model: ServedModel) -> bool:
    """Whether the model's calls are round trips to worker processes of its own."""
    # Not isinstance: Executor is an abstract class, whose isinstance costs a microsecond per request.
    return type(model.neuropod.executor) is OutOfProcessExecutor


def _route(model: ServedModel) -> str:
    """Where a call of this model runs (see :meth:`DataPlane.route`)."""
    batched = bool(model.settings.max_batch_size)
    if _runs_in_workers(model):
        return FEED if batched or not _short(model) else INLINE
    return INLINE if not batched and _short(model) else POOL


def _short(model: ServedModel, alone: bool = False) -> bool:
    """Whether the model's calls are short enough to run where they arrive (unknown before the first call).

    Under :data:`INLINE_CALL_MAX_S` on average; under :data:`INLINE_WORKER_CALL_MAX_S` for a
    model in one worker process (with more, only a feeding thread per worker uses them all,
    unless the request is ``alone``).
    """
    mean = model.mean_call_s
    if mean is None:
        return False
    if _runs_in_workers(model):
        one_worker = len(model.neuropod.executor.workers) == 1  # type: ignore[attr-defined]
        return mean < INLINE_WORKER_CALL_MAX_S and (one_worker or alone)
    return mean < INLINE_CALL_MAX_S
