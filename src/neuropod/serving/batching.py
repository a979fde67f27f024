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
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["DynamicBatcher"]

TensorDict = Dict[str, np.ndarray]
Signature = Tuple[Tuple[str, str, Tuple[int, ...]], ...]


def _signature(inputs: Mapping[str, np.ndarray]) -> Signature:
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
        self.signature = _signature(inputs)
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
