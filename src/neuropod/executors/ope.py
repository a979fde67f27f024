"""Run a model in worker processes, with tensors in shared memory.

``load_neuropod(path, use_ope=True, **options)`` builds an
:class:`OutOfProcessExecutor`; the options it understands are the table
:data:`~neuropod.ope.options.OPE_OPTIONS` (``workers``, ``spin_us``,
``cpu_affinity``, ``python_executable``, ``timeout``, ``restart_policy``,
``start_timeout``, ``shm_dir``, ``shm_cache_bytes``, ``worker_env``,
``share_weights``); the backend's options go to the backend inside each
worker as JSON. Where it applies, the workers are forked from one zygote
that loaded the model (:mod:`neuropod.ope.zygote`): one copy of the weights.

Copies: an input is copied once into shared memory, or not at all when it
came from :meth:`OutOfProcessExecutor.allocate` (or ``seal``); an output is
copied once by the worker into shared memory and handed back as a numpy array
viewing it, or not at all when it is a view of an input. The memory goes back
to its pool when the caller drops the array. Small tensors (up to 4 KiB,
``wire.INLINE_TENSOR_BYTES``) skip shared segments: their bytes travel inside
the control message, which costs less than a segment's bookkeeping.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..backends import BackendOptions
from ..errors import InputValidationError, ModelClosedError
from ..isolation.options import IsolationOptions
from ..ope import wire
from ..ope.client import WorkerProcess
from ..ope.options import OpeOptions
from ..ope.process import make_zygote
from ..ope.shm import Segment, SegmentPool, leased_array
from ..ope.supervisor import Supervisor
from ..ope.zygote import Zygote, sharing_refusal
from ..package import Package
from .base import Executor, TensorDict

__all__ = ["OutOfProcessExecutor"]

_log = logging.getLogger(__name__)


@dataclass
class _Lease:
    """A segment lent to the caller as an array (allocate / seal)."""

    segment: Segment
    base: weakref.ref[np.ndarray]
    ready: Optional[Future[Any]] = None  # a seal's copy still running


class OutOfProcessExecutor(Executor):
    """Serves one model from ``workers`` worker processes. ``infer`` is thread-safe.

    Args:
        package: the opened (verified, extracted) package.
        options: the backend's options, handed to the in-process executor in each worker.
        ope_options: how the workers run.
        isolation: how far the workers are isolated (default: plain processes).

    Raises:
        OptionError: a bad OPE option, or backend options that cannot be sent to a worker.
        WorkerCrashedError / the worker's load error: a worker failed to load the model.
    """

    def __init__(
        self,
        package: Package,
        options: BackendOptions,
        ope_options: Optional[OpeOptions] = None,
        isolation: Optional[IsolationOptions] = None,
    ) -> None:
        self.options = ope_options or OpeOptions()
        self.isolation = isolation or IsolationOptions()
        backend_json = options.to_json()
        self.model_name = package.config.name
        self._closed = False
        self.workers: List[WorkerProcess] = []
        # The callback holds the worker list, not self, so a forgotten executor can be collected.
        self._pool = SegmentPool(
            self.options.shm_dir,
            self.options.shm_cache_bytes,
            on_destroy=functools.partial(_forget_segment, self.workers),
        )
        self._leases: Dict[int, _Lease] = {}
        self._lease_lock = threading.Lock()
        self._copier: Optional[ThreadPoolExecutor] = None
        self._static_refusal = sharing_refusal(
            self.options.share_weights, package.config.platform, self.isolation.level, options.visible_gpu
        )
        if self.options.share_weights and self._static_refusal:  # asked for by name, so say why not
            _log.warning(
                "model %r: share_weights=True does not apply, each worker loads its own copy of the weights: %s",
                self.model_name,
                self._static_refusal,
            )
        root = str(package.root)
        self.zygote: Optional[Zygote] = None
        if not self._static_refusal:
            self.zygote = make_zygote(root, self.model_name, backend_json, self.options)
        self.workers.extend(
            WorkerProcess(i, root, self.model_name, backend_json, self.options, self._pool, self.isolation, self.zygote)
            for i in range(self.options.workers)
        )
        try:
            for worker in self.workers:  # all start loading at once ...
                worker.start()
            for worker in self.workers:  # ... then we wait for each
                worker.wait_ready()
        except BaseException:
            self.close()
            raise
        # Routes the calls, learns of every worker's exit and replaces dead workers.
        self.supervisor = Supervisor(self.workers, self.model_name, self.options.restart_policy)
        # Workers must not outlive a forgotten executor either.
        self._finalizer = weakref.finalize(
            self, _close_workers, list(self.workers), self._pool, self.zygote, self.supervisor
        )

    @property
    def sharing_refusal(self) -> str:
        """Why each worker loads its own copy of the weights ("" when they fork from one zygote).

        Known at load for the platform, isolation level and device; else the
        zygote's own refusal to fork, which comes at run time (a model whose
        load started threads).
        """
        return self._static_refusal or (self.zygote.refusal if self.zygote is not None else "")

    # -- running -----------------------------------------------------------

    def infer(self, inputs: TensorDict) -> TensorDict:
        if self._closed:
            raise ModelClosedError(f"model {self.model_name!r} is closed")
        return self.supervisor.infer(inputs, self._find_lease if self._leases else None, self.options.timeout)

    def _find_lease(self, array: np.ndarray) -> Optional[Tuple[Segment, int, np.ndarray]]:
        base = array.base
        if base is None or not self._leases:
            return None
        lease = self._leases.get(id(base))
        if lease is None or lease.base() is not base:
            return None
        if lease.ready is not None:
            lease.ready.result()  # a seal's copy must be done before the worker reads
            lease.ready = None
        if not array.flags.c_contiguous or array.dtype.byteorder == ">" or array.dtype.name not in wire.DTYPE_NAMES:
            return None  # a strided view of a lease: copied like any other array
        offset = array.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        return lease.segment, offset, base

    # -- allocate and seal --------------------------------------------------

    def allocate(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An uninitialised array in shared memory: fill it and pass it to ``infer`` without a copy.

        Its memory returns to the pool when the array (and every view of it) is dropped.
        Strings cannot live there: for them this returns an ordinary empty array.
        """
        dtype = np.dtype(dtype)
        shape = tuple(int(dim) for dim in shape)
        if any(dim < 0 for dim in shape):
            raise InputValidationError(f"input {name!r}: cannot allocate negative shape {list(shape)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.kind in "USO" or dtype.name not in wire.DTYPE_NAMES or nbytes == 0 or self._closed:
            return np.empty(shape, dtype)
        segment = self._pool.acquire(nbytes)
        key: List[int] = []
        array = leased_array(segment.memory, 0, nbytes, dtype, shape, lambda: self._end_lease(key, segment))
        base = array.base
        assert isinstance(base, np.ndarray)
        key.append(id(base))
        with self._lease_lock:
            self._leases[id(base)] = _Lease(segment, weakref.ref(base))
        return array

    def _end_lease(self, key: List[int], segment: Segment) -> None:
        with self._lease_lock:
            self._leases.pop(key[0], None)
        self._pool.release(segment)

    def seal(self, name: str, array: np.ndarray) -> np.ndarray:
        """Start copying ``array`` into shared memory now, in a background thread.

        Returns the shared-memory array to pass to ``infer`` in place of
        ``array``; ``infer`` waits for the copy. Do not read the returned array
        or change ``array`` until then.
        """
        array = np.asarray(array)
        target = self.allocate(name, array.shape, array.dtype)
        lease = self._leases.get(id(target.base)) if target.base is not None else None
        if lease is None:  # strings or empty: nothing to move ahead of time
            return array
        if self._copier is None:
            with self._lease_lock:
                if self._copier is None:
                    self._copier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="neuropod-seal")
        lease.ready = self._copier.submit(np.copyto, target, array)
        return target

    # -- health ------------------------------------------------------------

    def ready(self) -> bool:
        """Every worker is running and has loaded the model (a non-blocking poll of each process).

        False while a worker is dead or still loading its replacement; the
        model server reports such a model not ready and calls :meth:`restart`.
        """
        return not self._closed and self.supervisor.ready()

    def restart(self) -> None:
        """Replace dead idle workers now and wait until they have loaded the model.

        The supervisor does this by itself as soon as it learns of a death;
        this does it at once, in the calling thread, and reports a failure.
        Workers busy in a call are left to that call. With
        ``restart_policy="never"`` nothing is restarted and :meth:`ready`
        stays False.

        Raises:
            WorkerCrashedError / the worker's load error: a replacement failed to load
            (the supervisor, the next ``restart`` or the next call tries again).
        """
        if not self._closed:
            self.supervisor.check()

    # -- housekeeping ------------------------------------------------------

    @property
    def worker_pids(self) -> List[Optional[int]]:
        """Process ids of the workers (None for one not running)."""
        return [worker.pid if worker.alive else None for worker in self.workers]

    def close(self, grace: float = 5.0) -> None:
        """Stop the workers; calls in flight get up to ``grace`` seconds to finish first."""
        if self._closed:
            return
        self._closed = True
        if self._copier is not None:
            self._copier.shutdown(wait=True)
        if hasattr(self, "supervisor"):  # a worker's channel must not be used by two threads at once
            self.supervisor.close(grace)
        _close_workers(self.workers, self._pool, self.zygote)
        if hasattr(self, "_finalizer"):
            self._finalizer.detach()


def _forget_segment(workers: List[WorkerProcess], segment_id: int) -> None:
    for worker in workers:
        worker.forget_segment(segment_id)


def _close_workers(
    workers: List[WorkerProcess],
    pool: SegmentPool,
    zygote: Optional[Zygote] = None,
    supervisor: Optional[Supervisor] = None,
) -> None:
    if supervisor is not None:
        supervisor.close(grace=0.0)
    for worker in workers:
        try:
            worker.close()
        except Exception:  # closing must go on to the next worker
            pass
    if zygote is not None:  # after its workers: they die with it
        zygote.close()
    pool.close()
