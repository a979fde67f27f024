"""One worker of a model, as its supervisor sees it: a process, a connection, and what their failures mean.

A :class:`WorkerProcess` puts three parts together and holds no mechanism of
its own:

* :class:`~neuropod.ope.process.ProcessHandle`: the process, spawned or
  forked (pid, liveness, exit status, kill);
* :class:`~neuropod.ope.connection.Connection`: its channel, the segments
  both sides share and the call itself;
* :class:`~neuropod.ope.failures.Failures`: the words for what went wrong.

It starts both for each incarnation of the worker, turns a failed call into
the error its caller gets, and lets go of a dead incarnation. One
:class:`WorkerProcess` serves one caller at a time (the supervisor hands
workers out to threads); the input segments come from the executor's
:class:`~neuropod.ope.shm.SegmentPool`, shared by all its workers.
"""

from __future__ import annotations

import subprocess
from typing import Dict, Optional

import numpy as np

from ..errors import CallNotTaken, ChannelClosed, ChannelTimeout, ErrorReply, WireFormatError, WorkerCrashedError
from ..isolation.launch import worker_cpus
from ..isolation.options import IsolationOptions
from . import wire
from .channel import Channel
from .connection import Connection, LeaseLookup
from .failures import Failures, describe_returncode, remote_error
from .options import OpeOptions
from .process import ProcessHandle
from .shm import SegmentPool
from .spin import SpinPolicy
from .waiting import CALLER, Waiting
from .zygote import Zygote

__all__ = ["WorkerProcess", "remote_error", "LeaseLookup", "describe_returncode"]


class WorkerProcess:
    """One worker of a model (started again in place when it died).

    Args:
        index: its number among the model's workers (picks its CPUs).
        package_root: the extracted, verified package directory.
        model_name: for messages.
        backend_options_json: the backend's options, serialised.
        options: the OPE options.
        pool: the parent's segment pool for inputs.
        isolation: how the worker is isolated (default: a plain process).
        zygote: the model's zygote, to fork this worker from (None: it loads the model itself).
    """

    def __init__(
        self,
        index: int,
        package_root: str,
        model_name: str,
        backend_options_json: str,
        options: OpeOptions,
        pool: SegmentPool,
        isolation: Optional[IsolationOptions] = None,
        zygote: Optional[Zygote] = None,
    ) -> None:
        self.index = index
        self.zygote = zygote
        self.isolation = isolation or IsolationOptions()
        self.package_root = package_root
        self.model_name = model_name
        self.backend_options_json = backend_options_json
        self.options = options
        self.pool = pool
        self.failures = Failures(model_name, self.isolation)
        # One policy for the worker's whole life: what it learnt of the calls' waits outlives a restart.
        self.spin_policy = SpinPolicy(int(options.spin_us * 1000), options.spin_mode, stretch=True)
        self.waiting = Waiting(self.spin_policy, CALLER if options.colocate else None)
        self.handle: Optional[ProcessHandle] = None
        self.connection: Optional[Connection] = None
        self.channel: Optional[Channel] = None  # the connection's, while there is one (the supervisor looks per call)
        self._pid: Optional[int] = None
        self.python_version = ""
        self.numpy_version = ""
        self.starts = 0
        self.ready = False  # said HELLO since its last start
        self.last_failure: Optional[str] = None
        self.closing = False  # close() began: no replacement may start from now on
        self.mailbox_inode = 0

    # -- what the supervisor and the tests look at ---------------------------

    @property
    def process(self) -> Optional[object]:
        """The running incarnation's process (a ``subprocess.Popen`` or a ``ForkedProcess``), None if none."""
        handle = self.handle
        return handle.process if handle is not None else None

    @property
    def segments(self) -> object:
        """The worker's segments mapped here (empty when it does not run)."""
        connection = self.connection
        return connection.segments if connection is not None else ()

    @property
    def releases(self) -> object:
        connection = self.connection
        return connection.releases if connection is not None else ()

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (a forked worker's once its zygote has reported the fork; the last one's after)."""
        if self._pid is None and self.handle is not None:
            self._pid = self.handle.pid
        return self._pid

    @property
    def alive(self) -> bool:
        handle = self.handle
        return handle is not None and handle.poll() is None

    @property
    def serving(self) -> bool:
        """Running and done loading: it can take a call now (one non-blocking waitpid)."""
        handle = self.handle  # a caller's thread may swap it meanwhile
        return self.ready and handle is not None and handle.poll() is None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the process; :meth:`wait_ready` waits for the model to load."""
        if self.closing:
            raise WorkerCrashedError(f"the worker of model {self.model_name!r} is closed")
        options = self.options
        connection = Connection(self.pool, options, self.waiting)
        self.ready = False
        cpus = worker_cpus(self.isolation, self.index, options.cpus_of_worker(self.index))
        try:
            child_fd = connection.child_socket.fileno()
            if self.zygote is not None and self.zygote.usable:
                handle = ProcessHandle.fork(self.zygote, child_fd, connection.mailbox_fd, cpus)
            else:
                handle = ProcessHandle.spawn(
                    self.isolation,
                    self.package_root,
                    self.backend_options_json,
                    options,
                    child_fd,
                    connection.mailbox_fd,
                    cpus,
                )
        except BaseException as exc:
            connection.close()
            if isinstance(exc, OSError):
                raise WorkerCrashedError(
                    f"cannot start a worker for model {self.model_name!r} with {options.python_executable}: {exc}"
                ) from exc
            raise
        connection.handed_over()  # the worker has its own copies
        self.mailbox_inode = connection.mailbox_inode
        self.handle, self.connection, self.channel = handle, connection, connection.channel
        self._pid = handle.pid
        self.starts += 1

    def wait_ready(self) -> None:
        """Wait for the worker's HELLO; raise the worker's load error if it failed."""
        assert self.handle is not None and self.connection is not None
        if self.handle.forked:
            self._wait_forked()
        assert self.connection is not None
        try:
            message = self.connection.receive_start(self.options.start_timeout, self._check_alive)
        except ChannelClosed:
            raise self._crashed_loading() from None
        except ChannelTimeout:
            self._kill()
            raise self.failures.load_timed_out(self.options.start_timeout) from None
        if message.kind == wire.Kind.LOAD_FAILED:
            self._reap()
            self._discard()
            raise self.failures.load_error(message.texts)
        if message.kind != wire.Kind.HELLO or len(message.texts) < 3:
            self._kill()
            raise WireFormatError(
                f"worker for model {self.model_name!r} answered its start with message kind {message.kind}"
            )
        self.python_version, self.numpy_version = message.texts[1], message.texts[2]
        self.ready = True

    def _wait_forked(self) -> None:
        """Wait for the zygote to fork this worker (the first time: to load the model).

        Where the zygote will not fork, this worker is started the ordinary way
        (and so is every later one); its load errors are raised as a worker's.
        """
        handle, zygote = self.handle, self.zygote
        assert handle is not None and zygote is not None
        failure = handle.wait_forked(self.options.start_timeout)
        if failure is None:
            self._pid = handle.pid
            return
        zygote_pid = handle.process.zygote_pid  # type: ignore[union-attr]
        self._discard()
        if failure.load_error is not None:
            raise self.failures.load_error(failure.load_error)
        if failure.died and not zygote.refusal:  # (a zygote that refused another fork was stopped)
            raise self.failures.zygote_died(failure.returncode, zygote_pid)
        if failure.timed_out:
            zygote.kill()  # its workers go with it: they could not have been forked either
            raise self.failures.load_timed_out(self.options.start_timeout)
        refusal = failure.refusal
        if refusal:
            zygote.refused(refusal)
        self.start()

    def _crashed_loading(self) -> WorkerCrashedError:
        # Built here, not in wait_ready: an error held in a local of a frame on its own traceback is a
        # reference cycle, which would keep the dead worker's channel (socket, mailbox) until a gc pass.
        returncode = self._reap()
        self._discard()
        return self.failures.crashed_loading(returncode)

    def bury(self, force: bool = False) -> None:
        """Reap a worker that died (``force``: whose channel hung up) and record how it ended.

        The caller holds this worker exclusively; nothing happens to a live one.
        """
        handle = self.handle
        if handle is not None and (force or handle.poll() is not None):
            returncode = self._reap()
            self._discard()
            self.last_failure = describe_returncode(returncode)

    def _check_alive(self) -> None:
        handle = self.handle
        if handle is None or handle.poll() is not None:
            raise ChannelClosed()

    def _reap(self) -> Optional[int]:
        handle = self.handle  # close() may clear it from another thread
        return handle.reap() if handle is not None else None

    def _discard(self) -> None:
        """Forget the dead process (arrays that view its segments stay valid)."""
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            connection.close()
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.release()

    def _kill(self) -> None:
        if self.handle is not None:
            self.handle.kill()
        self._discard()

    def close(self, grace: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``grace`` seconds.

        A call still running in the worker sees it die and fails; it starts no replacement.
        """
        self.closing = True
        handle, connection = self.handle, self.connection  # a failing call may clear them meanwhile
        if handle is None:
            return
        if connection is not None:
            connection.shut_down()
        try:
            handle.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            handle.kill()
        self._discard()

    def forget_segment(self, segment_id: int) -> None:
        """One of our segments was destroyed: tell the worker to unmap it with the next message."""
        connection = self.connection
        if connection is not None:
            connection.forget_segment(segment_id)

    # -- calls --------------------------------------------------------------

    def call(
        self, inputs: Dict[str, np.ndarray], find_lease: Optional[LeaseLookup], timeout: Optional[float]
    ) -> Dict[str, np.ndarray]:
        """Run the model in the worker on ``inputs``; the caller holds this worker exclusively.

        ``find_lease`` is None when no input can be one of the caller's shared arrays. A failure is
        worded here: the connection only says what happened.
        """
        if self.handle is None:
            self.start()
        if not self.ready:
            self.wait_ready()
        connection = self.connection
        assert connection is not None
        try:
            return connection.call(inputs, find_lease, timeout, self._check_alive)
        except (ChannelClosed, OSError):
            if not connection.sending:  # the request could not be built: nothing reached the worker
                raise
            # No local holds the error: it would be on its own traceback, a cycle keeping the channel.
            if connection.handed and connection.channel.peer_took_everything() or self.closing:
                raise self._crashed("during the call") from None
            raise CallNotTaken(self._crashed("while idle, before it took the call")) from None
        except ChannelTimeout:
            pid = self.pid
            self._kill()
            self.last_failure = f"timed out after {timeout}s"
            raise self.failures.timed_out(pid, timeout) from None
        except WireFormatError:
            self._kill()
            raise
        except ErrorReply as reply:
            texts = reply.texts
        # Raised outside the handler: the worker's traceback is its cause, and nothing else its context.
        raise self._model_error(texts)

    def _crashed(self, when: str) -> WorkerCrashedError:
        pid = self.pid
        returncode = self._reap()
        self._discard()
        self.last_failure = describe_returncode(returncode)
        return self.failures.crashed(pid, returncode, when, self.closing)

    def _model_error(self, texts: list) -> Exception:
        """The model's error as raised in the worker; a MemoryError under a memory limit also costs the worker."""
        pid = self.pid
        out_of_memory = self.failures.out_of_memory(pid, texts)
        if out_of_memory is None:
            return self.failures.model_error(pid, texts)
        self._kill()
        self.last_failure = self.failures.out_of_memory_note()
        return out_of_memory
