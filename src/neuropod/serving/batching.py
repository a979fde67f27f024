"""Dynamic batching: concurrent requests to one model merged into one call.

For a model whose inputs and outputs all start with one batch symbol, the
first waiting request holds the queue open for up to ``max_queue_delay``;
requests that arrive meanwhile and have the same tensor names, dtypes and
trailing dimensions join it until ``max_batch_size`` rows are gathered. The
merged inputs are concatenated along the first dimension, the model runs
once, and each request gets its own rows of every output back.

Only one merged call per model runs at a time: requests that arrive while it
runs gather into the next batch, which is what makes batches form under load.
Requests arrive already validated, so one bad request never fails a batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["DynamicBatcher", "Feeder", "Fed", "signature"]

TensorDict = Dict[str, np.ndarray]
Signature = Tuple[Tuple[str, str, Tuple[int, ...]], ...]


def signature(inputs: Mapping[str, np.ndarray]) -> Signature:
    # Strings of any length concatenate, so only their kind counts.
    return tuple(
        sorted(
            (name, "U" if array.dtype.kind in "US" else array.dtype.str, tuple(array.shape[1:]))
            for name, array in inputs.items()
        )
    )


class _Pending:
    __slots__ = ("inputs", "rows", "signature", "future")

    def __init__(self, inputs: TensorDict, rows: int, future: asyncio.Future[TensorDict]) -> None:
        self.inputs = inputs
        self.rows = rows
        self.signature = signature(inputs)
        self.future = future


class DynamicBatcher:
    """Merges concurrent calls to one model; lives on the server's event loop.

    Args:
        run: the blocking model call (merged inputs -> merged outputs).
        pool: the thread pool that runs it.
        max_batch_size: most rows in one merged call (a larger single request runs alone).
        max_queue_delay_s: how long the first request waits for company.
        on_batch: called with the row count of every merged call (metrics, tests).
    """

    def __init__(
        self,
        run: Callable[[TensorDict], TensorDict],
        pool: Executor,
        max_batch_size: int,
        max_queue_delay_s: float,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> None:
        self._run = run
        self._pool = pool
        self._max_batch_size = max_batch_size
        self._max_delay = max_queue_delay_s
        self._on_batch = on_batch
        self._queue: Deque[_Pending] = deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None

    async def submit(self, inputs: TensorDict) -> TensorDict:
        """Queue one validated request; return its own outputs."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        pending = _Pending(inputs, rows, loop.create_future())
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        return await pending.future

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                deadline = loop.time() + self._max_delay
                while self._queued_rows() < self._max_batch_size and loop.time() < deadline:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                    self._wakeup.clear()
                await self._run_batch(self._take_batch())

    def _queued_rows(self) -> int:
        first = self._queue[0].signature
        return sum(p.rows for p in self._queue if p.signature == first)

    def _take_batch(self) -> List[_Pending]:
        first = self._queue.popleft()
        batch = [first]
        rows = first.rows
        kept: Deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.signature == first.signature and rows + pending.rows <= self._max_batch_size:
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        return batch

    async def _run_batch(self, batch: List[_Pending]) -> None:
        batch = [p for p in batch if not p.future.cancelled()]
        if not batch:
            return
        loop = asyncio.get_running_loop()
        if len(batch) == 1:
            merged = batch[0].inputs
        else:
            merged = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        total = sum(p.rows for p in batch)
        if self._on_batch is not None:
            self._on_batch(total)
        try:
            outputs = await loop.run_in_executor(self._pool, self._run, merged)
        except BaseException as exc:  # every request of the batch gets the model's error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        offset = 0
        for pending in batch:
            end = offset + pending.rows
            if not pending.future.done():
                pending.future.set_result({name: array[offset:end] for name, array in outputs.items()})
            offset = end

    async def close(self) -> None:
        """Stop the batching task (after the server has drained its requests)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


class Fed:
    """One call waiting in a :class:`Feeder`'s queue.

    Args:
        inputs: its checked inputs.
        run: runs it alone (blocking); returns its outputs.
        done: called on the feeding thread with its outputs, or with the exception that failed it.
        batched: called before ``done`` when its outputs came from a merged call.
    """

    __slots__ = ("inputs", "rows", "signature", "run", "done", "batched")

    def __init__(
        self,
        inputs: TensorDict,
        run: Callable[[], TensorDict],
        done: Callable[[Optional[TensorDict], Optional[BaseException]], None],
        batched: Callable[[], None],
        rows: int,
        signature: Optional[Signature],
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.signature = signature
        self.run = run
        self.done = done
        self.batched = batched


class Feeder:
    """Feeds a model that runs in worker processes from a queue: one feeding thread per worker.

    Why not the event loop's batcher and the thread pool: for a model whose call is a
    round trip to another process, each request then crossed four threads (the
    receiving one, a pool thread, the loop, another pool thread), and each crossing
    is a wake-up that costs more CPU than the model. Here the receiving thread checks
    the request and queues it; a feeding thread takes it, calls the worker and
    completes the answer (the adapter builds and sends the response there), while
    the receiving thread goes on reading the next requests. A feeding thread that
    finds the queue empty sleeps on a condition: nothing spins while nothing is queued.

    With ``max_batch_size``, a feeding thread takes every queued call that has the
    first one's signature, up to that many rows, and runs them as one merged call;
    when fewer are queued it waits up to ``max_queue_delay_s`` for company, as
    :class:`DynamicBatcher` does. The calls that arrive while a merged call runs
    queue up into the next one, so under load each worker round trip serves many requests.

    Args:
        name: the model's name (in the threads' names).
        threads: feeding threads, one per worker process (a thread waits for its worker's answer).
        run_batch: the blocking merged call (merged inputs -> merged outputs).
        max_batch_size: most rows of one merged call; 0 runs every call alone.
        max_queue_delay_s: how long the first call of a batch waits for company.
        on_batch: called with the row count of every merged call.
    """

    def __init__(
        self,
        name: str,
        threads: int,
        run_batch: Callable[[TensorDict], TensorDict],
        max_batch_size: int = 0,
        max_queue_delay_s: float = 0.0,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_delay = max_queue_delay_s
        self._on_batch = on_batch
        self._queue: Deque[Fed] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self._running = 0  # calls the feeding threads have taken and not finished
        self._threads = [
            threading.Thread(target=self._feed, name=f"neuropod-feed-{name}", daemon=True) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def batching(self) -> bool:
        return self._max_batch_size > 0

    def idle(self) -> bool:
        """Nothing queued and no call running (a glance: it may change right after)."""
        return not self._queue and not self._running

    def submit(self, fed: Fed) -> None:
        """Queue a checked call; its ``done`` is called on a feeding thread."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the model's feeder is closed")
            self._queue.append(fed)
            self._changed.notify()

    def _feed(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    if self._closed:
                        return
                    self._changed.wait()
                if self._max_batch_size:
                    batch = self._take_batch()
                else:
                    batch = [self._queue.popleft()]
                if not batch:
                    continue
                self._running += 1
            try:
                if len(batch) == 1:
                    if self._on_batch is not None and self._max_batch_size:
                        self._on_batch(batch[0].rows)
                    self._run_alone(batch[0])  # with its own symbol bindings
                else:
                    self._run_merged(batch)
            finally:
                with self._changed:
                    self._running -= 1

    def _take_batch(self) -> List[Fed]:
        """The first queued call and those that can join it (the lock is held; waits for company up to the delay).

        Empty when another feeding thread took the queued calls meanwhile.
        """
        deadline = time.monotonic() + self._max_delay
        while self._queue and not self._closed:
            first = self._queue[0].signature
            if first is None:  # a call that cannot be merged (no inputs) runs alone
                break
            left = deadline - time.monotonic()
            if left <= 0 or sum(fed.rows for fed in self._queue if fed.signature == first) >= self._max_batch_size:
                break
            self._changed.wait(left)
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, rows = [head], head.rows
        kept: Deque[Fed] = deque()
        while self._queue and head.signature is not None:
            fed = self._queue.popleft()
            if fed.signature == head.signature and rows + fed.rows <= self._max_batch_size:
                batch.append(fed)
                rows += fed.rows
            else:
                kept.append(fed)
        kept.extend(self._queue)
        self._queue = kept
        if self._queue:  # another thread may start the next batch meanwhile
            self._changed.notify()
        return batch

    @staticmethod
    def _run_alone(fed: Fed) -> None:
        try:
            outputs = fed.run()
        except BaseException as exc:  # noqa: BLE001 - the request's own failure, given to it
            fed.done(None, exc)
            return
        fed.done(outputs, None)

    def _run_merged(self, batch: List[Fed]) -> None:
        merged = {name: np.concatenate([fed.inputs[name] for fed in batch]) for name in batch[0].inputs}
        if self._on_batch is not None:
            self._on_batch(sum(fed.rows for fed in batch))
        try:
            outputs = self._run_batch(merged)
        except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the model's error
            for fed in batch:
                fed.done(None, exc)
            return
        offset = 0
        for fed in batch:
            end = offset + fed.rows
            fed.batched()
            fed.done({name: array[offset:end] for name, array in outputs.items()}, None)
            offset = end

    def close(self) -> None:
        """Run what is queued, then stop the feeding threads (after the server has drained its requests)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(5.0)
