"""One supervisor per out-of-process model: it routes calls to idle workers and owns their health.

Callers only route: they take an idle worker, call it and give it back.
Everything about a worker's health happens here, in one place:

* **Learning of exits.** A thread watches the control socket of every idle
  worker; a worker's exit (however it ends: killed by the OOM killer, a
  signal, its zygote's death) closes the worker's end, and the watcher wakes
  on the hang-up. It does not depend on the zygote: a stopped zygote delays
  nothing here.
* **Replacing.** A dead idle worker is taken out of the idle list and
  replaced (a fork from the zygote, or a fresh load) before any caller can
  get it; callers that want a worker meanwhile wait for one.
  ``restart_policy="never"`` leaves it dead, and calls fail naming why.
* **The race left.** A worker that dies just as a caller takes it (the
  watcher had no time to see it) fails the call before the worker took the
  request, which the channel tells apart from a death during the call
  (:meth:`~neuropod.ope.channel.Channel.peer_took_everything`): the call
  goes to the replacement instead of failing. A worker dying *during* a
  call fails that call alone, and the supervisor replaces it as soon as the
  caller gives it back.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import CallNotTaken, ModelClosedError, WorkerCrashedError
from .client import LeaseLookup, WorkerProcess

__all__ = ["Supervisor"]

_log = logging.getLogger(__name__)

#: How often the watcher looks at the idle list again without a wake-up (a worker given back by a caller).
WATCH_SLICE_S = 0.2
# A call goes to the replacement of a worker that died before it took the call at most this often:
# more would mean the replacements die at once, which is a failure to report, not to hide.
_NOT_TAKEN_RETRIES = 3


class Supervisor:
    """Routes calls over ``workers`` and keeps them alive (see the module's notes).

    Args:
        workers: the model's workers, started and loaded.
        model_name: for messages and the watcher's thread name.
        restart_policy: ``"always"`` or ``"never"``.
    """

    def __init__(self, workers: List[WorkerProcess], model_name: str, restart_policy: str) -> None:
        self.workers = workers
        self.model_name = model_name
        self.restart_policy = restart_policy
        self.closed = False
        # Idle workers, most recently used last (its caches are warm); a condition is cheaper than a queue.Queue.
        self._idle: List[WorkerProcess] = list(reversed(workers))
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting on _changed: notify only when there are some (it is not cheap)
        self._replacing = 0  # workers out of the idle list for a replacement
        self._to_replace: List[WorkerProcess] = []  # given back dead by a call, for the watcher
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._wake_lock = threading.Lock()  # close() must not close the pipe under a caller's wake-up
        self._watcher = threading.Thread(target=self._watch, name=f"neuropod-supervisor-{model_name}", daemon=True)
        self._watcher.start()

    # -- routing (the callers' side) ----------------------------------------------

    def infer(
        self, inputs: Dict[str, np.ndarray], find_lease: Optional[LeaseLookup], timeout: Optional[float]
    ) -> Dict[str, np.ndarray]:
        for attempt in range(_NOT_TAKEN_RETRIES + 1):
            worker = self._take()
            try:
                if worker.channel is None:  # a replacement failed: try again here, so its error reaches a caller
                    self._replace([worker])
                return worker.call(inputs, find_lease, timeout)
            except CallNotTaken as not_taken:
                if self.restart_policy != "always" or attempt == _NOT_TAKEN_RETRIES:
                    raise not_taken.error from None
                _log.info("model %r: %s; the call goes to another worker", self.model_name, not_taken.error)
            finally:
                self._give_back(worker)
        raise AssertionError("unreachable")

    def _take(self) -> WorkerProcess:
        with self._lock:
            while not self._idle:
                if self.closed:
                    raise ModelClosedError(f"model {self.model_name!r} is closed")
                self._waiting += 1
                try:
                    self._changed.wait()
                finally:
                    self._waiting -= 1
            return self._idle.pop()

    def _give_back(self, worker: WorkerProcess) -> None:
        if worker.channel is None and self.restart_policy == "always" and not self.closed:
            # It died in the call (or before): the watcher replaces it; no caller gets it meanwhile.
            with self._lock:
                self._to_replace.append(worker)
                self._replacing += 1
            self._wake()
            return
        with self._lock:
            self._idle.append(worker)
            if self._waiting:
                self._changed.notify()

    # -- health (the supervisor's side) -------------------------------------------

    def _replace(self, workers: List[WorkerProcess]) -> None:
        """Replace dead workers held exclusively by the caller, or bury them under ``restart_policy="never"``.

        All start at once, then each is waited for. Raises the first failure
        (a load error, ``WorkerCrashedError``) after trying every worker.
        """
        failure: Optional[BaseException] = None
        started: List[WorkerProcess] = []
        for worker in workers:
            try:
                worker.bury()
                if self.restart_policy == "never" and worker.starts:
                    raise WorkerCrashedError(
                        f"the worker of model {self.model_name!r} {worker.last_failure} earlier "
                        "and restart_policy='never'"
                    )
                if worker.process is None:
                    worker.start()
                started.append(worker)
            except Exception as exc:
                failure = failure or exc
        for worker in started:
            try:
                if not worker.ready:
                    worker.wait_ready()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _dead_idle(self, hung_up: Sequence[WorkerProcess] = ()) -> List[WorkerProcess]:
        """Take the idle workers that are not serving, or hung up, out of the idle list (caller holds the lock)."""
        dead = [worker for worker in self._idle if worker in hung_up or not worker.serving]
        if dead:
            self._idle = [worker for worker in self._idle if worker not in dead]
        return dead

    def check(self, hung_up: Sequence[WorkerProcess] = (), wait: bool = True) -> None:
        """Replace the dead idle workers now, in this thread, and wait for them to load.

        ``hung_up``: workers whose channel hung up (dead, whatever their process handle says yet).
        ``wait``: also wait for replacements that another thread has begun.
        Raises the first replacement's failure (the next check, or call, tries again).
        """
        with self._lock:
            dead = self._dead_idle(hung_up)
            self._replacing += len(dead)
            dead += self._to_replace
            self._to_replace = []
        try:
            self._revive(dead, hung_up)
        finally:
            self._return(dead)
        if wait:
            with self._lock:
                self._waiting += 1
                try:
                    self._changed.wait_for(lambda: not self._replacing or self.closed)
                finally:
                    self._waiting -= 1

    def _revive(self, dead: List[WorkerProcess], hung_up: Sequence[WorkerProcess]) -> None:
        try:
            for worker in dead:
                worker.bury(force=worker in hung_up)
            if not self.closed and self.restart_policy == "always":  # under "never", ready() stays False
                self._replace(dead)
        finally:
            if self.closed:  # close() gave up waiting for us: leave no process behind
                for worker in dead:
                    worker.close()

    def _return(self, workers: List[WorkerProcess]) -> None:
        if not workers:
            return
        with self._lock:
            self._idle.extend(workers)
            self._replacing -= len(workers)
            self._changed.notify_all()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write < 0:
                return
            try:
                os.write(self._wake_write, b"!")
            except OSError:  # full: a wake-up is pending anyway
                pass

    def _watch(self) -> None:
        while not self.closed:
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            watched: Dict[int, WorkerProcess] = {}
            with self._lock:
                for worker in self._idle:
                    channel = worker.channel
                    if channel is not None:
                        # No events asked: poll reports the hang-up (the worker's exit) and errors only.
                        watched[channel.sock.fileno()] = worker
                        poller.register(channel.sock.fileno(), 0)
            try:
                events = poller.poll(WATCH_SLICE_S * 1000)
                if self.closed:
                    return
                if any(fd == self._wake_read for fd, _ in events):
                    os.read(self._wake_read, 4096)
            except InterruptedError:
                continue
            except (OSError, ValueError):  # close() took the pipe away meanwhile
                return
            hung_up = [watched[fd] for fd, _ in events if fd in watched]
            try:
                self.check(hung_up, wait=False)
            except Exception as exc:  # the next look, or the next call, tries again and reports it
                _log.warning("model %r: replacing a dead worker failed: %s", self.model_name, exc)

    # -- state -------------------------------------------------------------------

    def ready(self) -> bool:
        """Every worker runs and has loaded the model (one non-blocking poll per worker)."""
        return not self.closed and all(worker.serving for worker in self.workers)

    def close(self, grace: float) -> None:
        """Stop watching; wait up to ``grace`` seconds for calls in flight to give their workers back."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._wake()  # the watcher stops looking
        with self._lock:
            # Dead workers waiting for the watcher: close() stops them with the others.
            self._idle += self._to_replace
            self._replacing -= len(self._to_replace)
            self._to_replace = []
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: len(self._idle) == len(self.workers), timeout=grace)
            finally:
                self._waiting -= 1
            self._changed.notify_all()
        if self._watcher is not threading.current_thread():
            self._watcher.join(grace + WATCH_SLICE_S)
        with self._wake_lock:
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1
