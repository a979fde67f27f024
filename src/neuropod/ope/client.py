"""The parent's handle on one worker process: start it, call it, replace it.

One :class:`WorkerProcess` serves one caller at a time (the executor hands
workers out to threads). It owns the worker's control channel and the map of
the worker's output segments; the input segments come from the executor's
:class:`~neuropod.ope.shm.SegmentPool`, shared by all its workers.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
from concurrent.futures import Future
from typing import Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .. import errors
from ..errors import (
    CallNotTaken,
    InputValidationError,
    WireFormatError,
    WorkerCrashedError,
    WorkerError,
    WorkerTimeoutError,
)
from ..isolation.launch import WorkerLaunch, plan_worker, worker_cpus
from ..isolation.options import IsolationOptions, format_bytes
from ..worker_path import worker_code_root
from . import stages, wire
from .channel import MAILBOX_BYTES, Channel, ChannelClosed, ChannelTimeout, decode_checked
from .environment import declared_names, worker_environment
from .options import OpeOptions
from .shm import PeerSegments, Segment, SegmentPool, leased_array
from .spin import SpinPolicy
from .tensors import InlineArea, check_crossing_size, read_tensor, write_tensor
from .zygote import UNKNOWN_STATUS, ForkedProcess, Zygote

__all__ = ["WorkerProcess", "remote_error", "LeaseLookup", "make_zygote"]

_log = logging.getLogger(__name__)

#: Finds whether an array lies in one of our segments: (segment, offset, base array) or None.
LeaseLookup = Callable[[np.ndarray], Optional[Tuple[Segment, int, np.ndarray]]]

#: Seconds to wait for a dead worker's exit status before it is killed (again) and waited for without limit.
_REAP_WAIT_S = 5.0


class _Spawner:
    """Starts workers from one long-lived thread.

    Linux sends PR_SET_PDEATHSIG when the *thread* that forked a child exits,
    so a worker started from a short-lived caller thread would be killed with
    it. Forking from a thread that lives as long as the process avoids that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.Queue[Tuple[List[str], Dict[str, str], Tuple[int, ...], Future]] = queue.Queue()
        self._pid = -1

    def spawn(self, argv: List[str], env: Dict[str, str], pass_fds: Tuple[int, ...]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a forked child without the thread
                self._requests = queue.Queue()
                threading.Thread(
                    target=self._run, args=(self._requests,), name="neuropod-ope-spawner", daemon=True
                ).start()
                self._pid = os.getpid()
        future: Future = Future()
        self._requests.put((argv, env, pass_fds, future))
        return future.result()  # type: ignore[no-any-return]

    @staticmethod
    def _run(requests: queue.Queue[Tuple[List[str], Dict[str, str], Tuple[int, ...], Future]]) -> None:
        while True:
            argv, env, pass_fds, future = requests.get()
            try:
                future.set_result(subprocess.Popen(argv, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL))
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


def describe_returncode(returncode: Optional[int]) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def remote_error(texts: Sequence[str], where: str) -> Exception:
    """The exception a worker reported, rebuilt on this side.

    A neuropod error keeps its class and message (so callers catch the same
    thing as in-process); anything else becomes :class:`WorkerError`. The
    worker's traceback is in ``remote_traceback`` and in the ``__cause__``.
    """
    type_name, message, trace, module = (list(texts) + ["", "", "", ""])[:4]
    error_class = getattr(errors, type_name, None) if module == errors.__name__ else None
    exc: Exception
    if isinstance(error_class, type) and issubclass(error_class, errors.NeuropodError):
        exc = error_class(message)
    else:
        exc = WorkerError(f"{type_name}: {message} (raised in {where})")
        exc.remote_type = type_name
    exc.remote_traceback = trace  # type: ignore[attr-defined]
    exc.__cause__ = WorkerError(f"traceback in {where}:\n{trace}")
    return exc


def _worker_env(package_root: str, options: OpeOptions) -> Dict[str, str]:
    # An allow-list of this process's variables, not all of them: the model may read its environment.
    env = worker_environment(os.environ, declared_names(package_root), options.pass_env)
    # Only neuropod's own code from this process: another interpreter must not import our numpy.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (worker_code_root(), env.get("PYTHONPATH", "")) if p)
    return env


def _worker_argv(launch: WorkerLaunch, backend_options_json: str, options: OpeOptions) -> List[str]:
    """``python -m neuropod.ope.worker`` and the options every worker (and a zygote) takes."""
    return launch.prefix + [
        launch.python,
        "-m",
        "neuropod.ope.worker",
        "--fd",
        str(launch.fds[0]),
        "--package",
        launch.package_root,
        "--parent-pid",
        str(launch.parent_pid),
        "--options",
        backend_options_json,
        "--spin-us",
        str(options.spin_us),
        "--shm-dir",
        launch.shm_dir,
        "--cache-bytes",
        str(options.shm_cache_bytes),
        "--max-tensor-bytes",
        str(options.max_tensor_bytes),
    ]


def make_zygote(package_root: str, model_name: str, backend_options_json: str, options: OpeOptions) -> Zygote:
    """The zygote of a model whose workers run as plain processes (see :mod:`neuropod.ope.zygote`)."""

    def spawn(control_fd: int) -> subprocess.Popen[bytes]:
        launch = plan_worker(
            IsolationOptions(),
            python=options.python_executable,
            env=_worker_env(package_root, options),
            worker_env=dict(options.worker_env),
            fds=(control_fd, control_fd),  # a zygote has no mailbox: its workers get theirs with each fork
            package_root=package_root,
            source_root=worker_code_root(),
            shm_dir=options.shm_dir,
            cpus=(),
        )
        argv = _worker_argv(launch, backend_options_json, options) + ["--zygote"]
        try:
            return _SPAWNER.spawn(argv, launch.env, (control_fd,))
        except OSError as exc:
            raise WorkerCrashedError(
                f"cannot start the zygote of model {model_name!r} with {options.python_executable}: {exc}"
            ) from exc

    return Zygote(spawn, model_name)


class WorkerProcess:
    """One worker process of a model (restarted in place when it dies).

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
        self.launch: Optional[WorkerLaunch] = None
        self.package_root = package_root
        self.model_name = model_name
        self.backend_options_json = backend_options_json
        self.options = options
        self.pool = pool
        self.spin_ns = int(options.spin_us * 1000)
        self.spin_policy = SpinPolicy(self.spin_ns, options.spin_mode, stretch=True)
        self._seen = 0  # when the last answer came (stage timing)
        self.process: Optional[Union[subprocess.Popen[bytes], ForkedProcess]] = None
        self.channel: Optional[Channel] = None
        self._pid: Optional[int] = None
        self.python_version = ""
        self.numpy_version = ""
        self.starts = 0
        self.ready = False  # said HELLO since its last start
        self.last_failure: Optional[str] = None
        self._request_id = 0
        self.closing = False  # close() began: no replacement may start from now on
        self.mailbox_inode = 0
        self._state_lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        with self._state_lock:
            self.known: Set[int] = set()  # our segments the worker has mapped
            self.pending_drops: List[int] = []  # ... and that we destroyed since the last message
        self.releases: Deque[int] = collections.deque()  # its segments our arrays no longer view
        self.segments = PeerSegments()
        self.abandoned: Set[int] = set()  # calls interrupted after they were sent: their answers are dropped

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the process; :meth:`wait_ready` waits for the model to load."""
        if self.closing:
            raise WorkerCrashedError(f"the worker of model {self.model_name!r} is closed")
        options = self.options
        mailbox = Segment.create(0, MAILBOX_BYTES, options.shm_dir)
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._reset_state()
        self.ready = False
        cpus = worker_cpus(self.isolation, self.index, options.cpus_of_worker(self.index))
        launch: Optional[WorkerLaunch] = None
        channel = Channel(parent_end, mailbox.memory, side=0)
        # Before the worker can look: it reads them once, as it starts.
        channel.set_peer_settings(options.spin_mode, timing=stages.recorder is not None)
        try:
            if self.zygote is not None and self.zygote.usable:
                self.launch = None
                self.process = self.zygote.fork(child_end.fileno(), mailbox.fd, cpus)
            else:
                launch = self.launch = plan_worker(
                    self.isolation,
                    python=options.python_executable,
                    env=_worker_env(self.package_root, options),
                    worker_env=dict(options.worker_env),
                    fds=(child_end.fileno(), mailbox.fd),
                    package_root=self.package_root,
                    source_root=worker_code_root(),
                    shm_dir=options.shm_dir,
                    cpus=cpus,
                )
                argv = _worker_argv(launch, self.backend_options_json, options) + ["--mailbox-fd", str(launch.fds[1])]
                if cpus:
                    argv += ["--cpus", ",".join(str(cpu) for cpu in cpus)]
                self.process = _SPAWNER.spawn(argv, launch.env, launch.pass_fds)
        except BaseException as exc:
            parent_end.close()
            if launch is not None:
                launch.cleanup()
            if isinstance(exc, OSError):
                raise WorkerCrashedError(
                    f"cannot start a worker for model {self.model_name!r} with {options.python_executable}: {exc}"
                ) from exc
            raise
        finally:
            child_end.close()
            self.mailbox_inode = os.fstat(mailbox.fd).st_ino  # names the mailbox in /proc/self/fd (leak checks)
            os.close(mailbox.fd)  # the worker has its own copy; our mapping stays
            mailbox.fd = -1
        self.channel = channel
        self.pid = self.process.pid
        self.starts += 1

    def wait_ready(self) -> None:
        """Wait for the worker's HELLO; raise the worker's load error if it failed."""
        if isinstance(self.process, ForkedProcess):
            self._wait_forked()
        assert self.channel is not None and self.process is not None
        try:
            message, fds = self.channel.receive(0, self.options.start_timeout, self._check_alive)
        except ChannelClosed:
            raise self._crashed_loading() from None
        except ChannelTimeout:
            self._kill()
            raise WorkerTimeoutError(
                f"the worker for model {self.model_name!r} did not load it "
                f"within start_timeout={self.options.start_timeout}s"
            ) from None
        for fd in fds:
            os.close(fd)
        if message.kind == wire.Kind.LOAD_FAILED:
            self._reap()
            self._discard()
            raise remote_error(message.texts, f"the worker loading model {self.model_name!r}")
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
        process, zygote = self.process, self.zygote
        assert isinstance(process, ForkedProcess) and zygote is not None
        failure = process.wait_forked(self.options.start_timeout)
        if failure is None:
            self.pid = process.pid
            return
        self._discard()
        if failure.load_error is not None:
            raise remote_error(failure.load_error, f"the worker loading model {self.model_name!r}")
        if failure.died and not zygote.refusal:  # (a zygote that refused another fork was stopped)
            raise self._zygote_died(failure.returncode, process.zygote_pid)
        if failure.timed_out:
            zygote.kill()  # its workers go with it: they could not have been forked either
            raise WorkerTimeoutError(
                f"the worker for model {self.model_name!r} did not load it "
                f"within start_timeout={self.options.start_timeout}s"
            )
        refusal = failure.refusal
        if refusal:
            _log.warning("model %r: each worker loads its own copy of the weights: %s", self.model_name, refusal)
            zygote.refused(refusal)
        self.start()

    def _zygote_died(self, returncode: Optional[int], zygote_pid: int) -> WorkerCrashedError:
        error = WorkerCrashedError(
            f"the worker for model {self.model_name!r} {describe_returncode(returncode)} while loading the model "
            f"(in its zygote, pid {zygote_pid}, which forks the workers)"
        )
        error.returncode = returncode
        return error

    def _crashed_loading(self) -> WorkerCrashedError:
        # Built here, not in wait_ready: an error held in a local of a frame on its own traceback is a
        # reference cycle, which would keep the dead worker's channel (socket, mailbox) until a gc pass.
        returncode = self._reap()
        self._discard()
        error = WorkerCrashedError(
            f"the worker for model {self.model_name!r} {describe_returncode(returncode)} while loading the model"
            f"{self._limit_hint(returncode) or self._start_hint()}"
        )
        error.returncode = returncode
        return error

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (a forked worker's once its zygote has reported the fork)."""
        if self._pid is None and self.process is not None:
            self._pid = self.process.pid
        return self._pid

    @pid.setter
    def pid(self, value: Optional[int]) -> None:
        self._pid = value

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def serving(self) -> bool:
        """Running and done loading: it can take a call now (one non-blocking waitpid)."""
        process = self.process  # a caller's thread may swap it meanwhile
        return self.ready and process is not None and process.poll() is None

    def bury(self, force: bool = False) -> None:
        """Reap a worker that died (``force``: whose channel hung up) and record how it ended.

        The caller holds this worker exclusively; nothing happens to a live one.
        """
        process = self.process
        if process is not None and (force or process.poll() is not None):
            returncode = self._reap()
            self._discard()
            self.last_failure = describe_returncode(returncode)

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ChannelClosed()

    def _reap(self) -> Optional[int]:
        process = self.process  # close() may clear it from another thread
        if process is None:
            return None
        try:
            status = process.wait(timeout=_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        if isinstance(process, ForkedProcess) and status == UNKNOWN_STATUS:
            return None  # its zygote could not learn how it ended
        launch = self.launch
        return launch.returncode(status) if launch is not None else status

    def _discard(self) -> None:
        """Forget the dead process (arrays that view its segments stay valid)."""
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        if isinstance(self.process, ForkedProcess):
            self.process.close()
        self.process = None
        self.segments.clear()
        launch, self.launch = self.launch, None
        if launch is not None:
            launch.cleanup()

    def _kill(self) -> None:
        if self.process is not None:
            try:
                self.process.kill()
            except OSError:
                pass
            self.process.wait()
        self._discard()

    def close(self, grace: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``grace`` seconds.

        A call still running in the worker sees it die and fails; it starts no replacement.
        """
        self.closing = True
        process, channel = self.process, self.channel  # a failing call may clear them meanwhile
        if process is None:
            return
        if channel is not None:
            try:
                channel.send(wire.Message(wire.Kind.SHUTDOWN))
            except (OSError, ValueError):
                pass
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._discard()

    def forget_segment(self, segment_id: int) -> None:
        """One of our segments was destroyed: tell the worker to unmap it with the next message."""
        with self._state_lock:
            if segment_id in self.known:
                self.known.discard(segment_id)
                self.pending_drops.append(segment_id)

    # -- calls --------------------------------------------------------------

    def _crashed(self, when: str = "during the call") -> WorkerCrashedError:
        pid = self.pid
        returncode = self._reap()
        self._discard()
        self.last_failure = describe_returncode(returncode)
        if self.closing:
            error = WorkerCrashedError(
                f"model {self.model_name!r} was closed during the call (its worker, pid {pid}, {self.last_failure})"
            )
        else:
            error = WorkerCrashedError(
                f"the worker (pid {pid}) of model {self.model_name!r} {self.last_failure} {when}"
                f"{self._limit_hint(returncode)}"
            )
        error.returncode = returncode
        return error

    def _limit_hint(self, returncode: Optional[int]) -> str:
        """For a worker killed by a signal under a memory limit (native code that aborts when allocation fails)."""
        limit = self.isolation.memory_limit if self.isolation.isolated else None
        killed = returncode is not None and returncode < 0
        return f" (its memory_limit is {format_bytes(limit)}: it may have run past it)" if limit and killed else ""

    def _start_hint(self) -> str:
        """For an isolated worker that died before it could report: its level and limits are the usual suspects."""
        if not self.isolation.isolated:
            return ""
        return (
            f"; it ran under isolation {self.isolation.describe()}: a limit set too low (max_open_files, "
            "memory_limit, max_processes) or a container engine that could not start it (its message is on stderr)"
        )

    def _out_of_memory(self, reply: wire.Message) -> Optional[WorkerCrashedError]:
        """A MemoryError under a memory limit: the worker is killed and replaced, the call fails naming the limit."""
        limit = self.isolation.memory_limit if self.isolation.isolated else None
        # The backend may wrap the MemoryError (InferenceError naming it); its traceback names it either way.
        if not limit or not any("MemoryError" in text for text in reply.texts[:3]):
            return None
        pid = self.pid
        self._kill()
        self.last_failure = f"ran past its memory_limit of {format_bytes(limit)}"
        error = WorkerCrashedError(
            f"the worker (pid {pid}) of model {self.model_name!r} ran past its memory_limit of "
            f"{format_bytes(limit)} ({limit} bytes) during the call and was killed; it will be replaced"
        )
        error.returncode = None
        return error

    def call(
        self, inputs: Dict[str, np.ndarray], find_lease: Optional[LeaseLookup], timeout: Optional[float]
    ) -> Dict[str, np.ndarray]:
        """Run the model in the worker on ``inputs``; the caller holds this worker exclusively.

        ``find_lease`` is None when no input can be one of the caller's shared arrays.
        """
        if self.process is None:
            self.start()
        if not self.ready:
            self.wait_ready()
        channel = self.channel
        assert channel is not None
        record = stages.recorder
        began = stages.clock() if record is not None else 0
        self._request_id += 1
        request_id = self._request_id
        small = None  # the usual call: small inputs only, all in the message, nothing else to tell
        if find_lease is None and not self.pending_drops and not self.releases:
            small = wire.encode_inline(wire.Kind.INFER, request_id, inputs)
        temporary: Dict[int, Segment] = {}  # segments we filled for this call
        in_call: Dict[int, Tuple[Segment, Optional[np.ndarray]]] = {}  # segment id -> (segment, caller's base array)
        try:
            if small is None:
                request, fds, announcing = self._request(inputs, find_lease, temporary, in_call)
            encoded = stages.clock() if record is not None else 0
            handed = False  # the request is all in the channel (the worker may not have taken it yet)
            try:
                if small is None:
                    self._send(request, fds)
                    if announcing:
                        with self._state_lock:
                            self.known.update(announcing)
                else:
                    channel.send_bytes(small)
                handed = True
                sent = stages.clock() if record is not None else 0
                try:
                    reply = self._receive(request_id, timeout)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # KeyboardInterrupt: the answer still comes, to be dropped
                        self.abandoned.add(request_id)
                    raise
            except (ChannelClosed, OSError):
                # No local holds the error: it would be on its own traceback, a cycle keeping the channel.
                if handed and channel.peer_took_everything() or self.closing:
                    raise self._crashed("during the call") from None
                raise CallNotTaken(self._crashed("while idle, before it took the call")) from None
            except ChannelTimeout:
                pid = self.pid
                self._kill()
                self.last_failure = f"timed out after {timeout}s"
                raise WorkerTimeoutError(
                    f"the worker (pid {pid}) of model {self.model_name!r} did not answer within timeout={timeout}s; "
                    "it was killed and will be replaced"
                ) from None
            except WireFormatError:
                self._kill()
                raise
            if isinstance(reply, dict):
                outputs = reply
            else:
                if reply.kind == wire.Kind.ERROR:
                    out_of_memory = self._out_of_memory(reply)
                    if out_of_memory is not None:
                        raise out_of_memory
                    raise remote_error(reply.texts, f"the worker (pid {self.pid}) of model {self.model_name!r}")
                try:
                    outputs = self._outputs(reply, in_call, temporary)
                except WireFormatError:
                    self._kill()
                    raise
            if record is not None:
                record.add((began, encoded, sent, self._seen, stages.clock()), channel.peer_stamps())
            return outputs
        finally:
            for segment in temporary.values():
                self.pool.release(segment)

    def _request(
        self,
        inputs: Dict[str, np.ndarray],
        find_lease: Optional[LeaseLookup],
        temporary: Dict[int, Segment],
        in_call: Dict[int, Tuple[Segment, Optional[np.ndarray]]],
    ) -> Tuple[wire.Message, List[int], Set[int]]:
        """The INFER message in full, its descriptors and the ids of our segments it introduces.

        Segments filled for it are added to ``temporary`` (the caller gives them back to the pool).
        """
        request = wire.Message(wire.Kind.INFER, self._request_id)
        fds: List[int] = []
        inline = InlineArea()
        announcing: Set[int] = set()  # our segments this request introduces to the worker
        if len(inputs) > wire.MAX_TENSORS:
            raise InputValidationError(
                f"inputs: {len(inputs)} tensors in one call; a worker takes at most {wire.MAX_TENSORS}"
            )
        for name, array in inputs.items():
            problem = wire.crossing_problem(name, array.ndim)
            if problem:
                raise InputValidationError(f"input {name!r}: {problem}")
            lease = find_lease(array) if find_lease is not None else None
            if lease is not None:
                segment, offset, base = lease
                request.tensors.append(
                    wire.TensorRef(name, wire.dtype_code(array.dtype), array.shape, segment.id, offset, array.nbytes)
                )
                in_call[segment.id] = (segment, base)
            else:
                check_crossing_size("input", name, array, self.options.max_tensor_bytes, self.options.shm_dir)
                try:
                    ref, filled = write_tensor(name, array, self.pool, inline)
                except UnicodeEncodeError as exc:
                    raise InputValidationError(
                        f"input {name!r}: string {exc.object!r} cannot be encoded as UTF-8 ({exc.reason})"
                    ) from None
                request.tensors.append(ref)
                if filled is None:
                    continue
                segment = temporary[filled.id] = filled
                in_call[segment.id] = (segment, None)
            # The worker learns of a segment only once the request is sent: until then
            # a later input may still fail, and the segment go back to the pool unannounced.
            if segment.id not in self.known and segment.id not in announcing:
                announcing.add(segment.id)
                request.new_segments.append((segment.id, segment.size))
                fds.append(segment.fd)
        request.inline = inline.getvalue()
        if self.pending_drops:  # a drop that lands just after this look goes with the next call
            with self._state_lock:
                request.drop_segments, self.pending_drops = self.pending_drops, []
        releases = self.releases
        if releases:
            request.release_segments = [releases.popleft() for _ in range(len(releases))]
        return request, fds, announcing

    def _send(self, message: wire.Message, fds: List[int]) -> None:
        assert self.channel is not None
        step = wire.MAX_FDS_PER_MESSAGE
        if len(fds) > step:  # the kernel caps descriptors per message: announce them ahead
            for start in range(0, len(fds), step):
                batch = wire.Message(
                    wire.Kind.SEGMENTS, message.request_id, new_segments=message.new_segments[start : start + step]
                )
                self.channel.send(batch, fds[start : start + step])
            message.new_segments, fds = [], []
        self.channel.send(message, fds)

    def _receive(self, request_id: int, timeout: Optional[float]) -> Union[wire.Message, Dict[str, np.ndarray]]:
        """The worker's answer: the outputs themselves when they all came inline, else the message."""
        channel = self.channel
        assert channel is not None
        while True:
            data, fds = channel.receive_bytes(self.spin_policy, timeout, self._check_alive, self.options.colocate)
            if stages.recorder is not None:
                self._seen = stages.clock()
            if not fds:
                small = wire.decode_inline(data)
                if small is not None:
                    kind, answered, outputs = small
                    if answered in self.abandoned:
                        self.abandoned.discard(answered)
                        continue
                    if kind != wire.Kind.RESULT:
                        raise WireFormatError(f"worker answered a call with message kind {kind}")
                    if answered != request_id:
                        raise WireFormatError(f"worker answered request {answered}, expected {request_id}")
                    return outputs
            message = decode_checked(data, fds)
            for (segment_id, size), fd in zip(message.new_segments, fds):
                self.segments.add(segment_id, size, fd)
            for segment_id in message.drop_segments:
                self.segments.drop(segment_id)
            if message.kind == wire.Kind.SEGMENTS:
                continue
            if message.request_id in self.abandoned and message.kind in (wire.Kind.RESULT, wire.Kind.ERROR):
                self.abandoned.discard(message.request_id)
                self._drop_answer(message)
                continue
            if message.request_id != request_id:
                raise WireFormatError(f"worker answered request {message.request_id}, expected {request_id}")
            if message.kind not in (wire.Kind.RESULT, wire.Kind.ERROR):
                raise WireFormatError(f"worker answered a call with message kind {message.kind}")
            return message

    def _drop_answer(self, reply: wire.Message) -> None:
        """Let go of an abandoned call's answer: the worker's segments its outputs were in go back to it."""
        for ref in reply.tensors:
            if ref.owner != wire.OWNER_RECEIVER and ref.segment != wire.NO_SEGMENT:
                self.releases.append(ref.segment)

    def _outputs(
        self,
        reply: wire.Message,
        in_call: Dict[int, Tuple[Segment, Optional[np.ndarray]]],
        temporary: Dict[int, Segment],
    ) -> Dict[str, np.ndarray]:
        outputs: Dict[str, np.ndarray] = {}
        release = self.releases.append
        adopted: Dict[int, np.ndarray] = {}  # our temporary segments that outputs now view
        for ref in reply.tensors:
            if ref.owner == wire.OWNER_RECEIVER:
                outputs[ref.name] = self._view_of_input(ref, in_call, temporary, adopted)
            elif ref.segment == wire.NO_SEGMENT:
                outputs[ref.name] = read_tensor(ref, reply.inline)
            else:
                memory = self.segments.get(ref.segment)
                outputs[ref.name] = read_tensor(ref, memory, functools.partial(release, ref.segment))
        return outputs

    def _view_of_input(
        self,
        ref: wire.TensorRef,
        in_call: Dict[int, Tuple[Segment, Optional[np.ndarray]]],
        temporary: Dict[int, Segment],
        adopted: Dict[int, np.ndarray],
    ) -> np.ndarray:
        """An output the worker says is a view of one of this call's inputs."""
        entry = in_call.get(ref.segment)
        if entry is None or ref.dtype_code == wire.STRING_CODE:
            raise WireFormatError(
                f"output {ref.name!r} claims to view segment {ref.segment}, which no input of this call used"
            )
        segment, lent_base = entry
        base = lent_base if lent_base is not None else adopted.get(segment.id)
        if base is None:
            # This call's copy now lives as long as the outputs that view it.
            del temporary[segment.id]
            view = leased_array(
                segment.memory,
                0,
                segment.size,
                np.dtype(np.uint8),
                (segment.size,),
                functools.partial(self.pool.release, segment),
            )
            base = adopted[segment.id] = view
        # Both kinds of base start at the segment's first byte.
        wire.check_tensor_ref(ref, segment.size)
        start = ref.offset
        if start < 0 or start + ref.nbytes > base.nbytes:
            raise WireFormatError(f"output {ref.name!r} lies outside the input it claims to view")
        dtype = wire.dtype_of_code(ref.dtype_code)
        return base[start : start + ref.nbytes].view(dtype).reshape(ref.shape)
