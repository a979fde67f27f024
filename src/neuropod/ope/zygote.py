"""One copy of a model's weights for N workers: load it once in a *zygote*, fork the workers from it.

The zygote is a worker process (``python -m neuropod.worker --zygote``)
that loads the model and then never runs it: it waits on its control socket
for FORK orders. Each order brings a new worker's control socket and mailbox
(``SCM_RIGHTS``); the zygote forks, and the child goes on as an ordinary
worker with the model already in memory. Fork shares every page copy-on-write,
and inference reads weights without writing them (Python's reference counts
live in object headers, not in numpy or torch data buffers), so N workers hold
the weights once. Replacing a dead worker is a fork, not a load (16-84 ms
from the kill to the first answer in ``bench/ope_shared_weights.py``, against
0.23-1.4 s for a load).

Who does what:

* The parent holds one :class:`Zygote` per model. Its workers are the
  zygote's children, not the parent's, so the zygote reaps them and reports
  each exit status over its socket (a reader thread here records them);
  :class:`ForkedProcess` gives the parent the ``poll``/``wait``/``kill`` of a
  ``subprocess.Popen``. The parent opens a pidfd for each worker as soon as
  the zygote reports the fork, and kills and watches the worker through it: a
  pidfd names one process, never a later one that reused its pid, and works
  while the zygote is stopped or frozen (a worker the zygote has not reaped
  is a zombie whose exit status ``/proc`` still shows). So a slow zygote
  never costs a healthy worker, nor a reload. Where pidfds are missing (Linux
  before 5.3), kills go through the zygote (a pid it has not reaped cannot
  have been reused).
* Death signals chain: the zygote dies with the parent (``PR_SET_PDEATHSIG``,
  as any worker), each worker with its zygote. A dead zygote thus takes its
  workers along; the next start of a worker starts a fresh zygote (one load).
* The zygote must not run the model before it forks: thread pools (OpenMP,
  torch's intra-op pool) and GPU contexts do not survive a fork. Forking is
  only used where the framework has no native threads after a load
  (:data:`FORK_PLATFORMS`, on the CPU), and the zygote refuses a fork (the
  parent then loads each worker itself) when loading started any thread,
  Python's or native (a warm-up call at load starts torch's OpenMP pool),
  except helpers that a fork handles anyway: tqdm's monitor (stopped before
  the fork; tqdm starts another with its next bar), OpenBLAS's pthreads
  pool (OpenBLAS stops it before a fork) and the workers of a thread pool
  shut down without waiting (waited for: transformers loads weights on one).
  A zygote that refused is stopped at once if it has no workers, else once
  the last of them has exited; the parent says why once per model and reason.

The socket's messages: one record per SOCK_SEQPACKET message, a header
(magic, kind, two signed 64-bit numbers) then UTF-8 text; the layout is
:data:`neuropod.ope.layouts.ZYGOTE`.
"""

from __future__ import annotations

import array
import gc
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import ModelClosedError, WireFormatError
from .layouts import ZYGOTE, ZygoteKind, decode_zygote, encode_zygote

__all__ = [
    "FORK_PLATFORMS",
    "ForkFailure",
    "ForkOrder",
    "ForkedProcess",
    "Zygote",
    "native_threads",
    "serve_forks",
    "sharing_refusal",
    "UNKNOWN_STATUS",
]

#: Platforms whose backend leaves no native thread pool or device context behind a load on the CPU.
FORK_PLATFORMS = frozenset({"python", "pytorch", "torchscript", "placeholder"})

_log = logging.getLogger(__name__)

# The record's layout (neuropod.ope.layouts), under the names this module has always used.
MAGIC, HEADER, MAX_MESSAGE_BYTES = ZYGOTE.magic, ZYGOTE.header, ZYGOTE.max_bytes
Kind = ZygoteKind
encode, decode = encode_zygote, decode_zygote
# How long a wait for an exited worker's report sleeps before it looks at the worker's zombie again.
_REPORT_SLICE_S = 0.05
# How long to wait for the report of a worker that the zygote has reaped (it sends it right after).
_REPORT_WAIT_S = 1.0
#: An EXITED report's return code for a worker whose exit status the zygote could not learn.
UNKNOWN_STATUS = -(2**63)
#: The signals a KILL order may send.
_KILL_SIGNALS = frozenset({int(signal.SIGKILL), int(signal.SIGTERM)})
# Before a fork: how long the workers of a thread pool shut down without waiting may take to finish their
# task, and how long an ended thread may take to leave the kernel's list of the process's threads.
_POOL_EXIT_WAIT_S = 10.0
_NATIVE_THREAD_EXIT_WAIT_S = 0.5
_NATIVE_THREAD_POLL_S = 0.01
# (model name, reason) of each refusal already logged by this process: said once, not on every load.
_REFUSALS_SAID: Set[Tuple[str, str]] = set()
_REFUSALS_SAID_LOCK = threading.Lock()


def sharing_refusal(
    share_weights: Optional[bool], platform: str, isolation_level: str, visible_gpu: Optional[int]
) -> str:
    """Why this model's workers each load their own copy of the weights ("" when they fork from a zygote).

    ``share_weights`` None (the default) and True both share where it applies.
    """
    if share_weights is False:
        return "share_weights=False"
    if isolation_level != "process":
        # A sandbox or container per worker is the point of those levels: one zygote would make them one.
        return f"isolation={isolation_level!r} gives each worker its own sandbox or container"
    if platform not in FORK_PLATFORMS:
        return f"the {platform} backend starts native threads while loading, which a fork would not copy"
    if visible_gpu is not None:
        return "a GPU context does not survive a fork"
    if not hasattr(os, "fork") or not hasattr(signal, "SIGCHLD"):
        return "this system cannot fork"
    return ""


# -- the zygote's side --------------------------------------------------------


@dataclass(frozen=True)
class ForkOrder:
    """What a freshly forked worker needs to become a worker (returned in the child only)."""

    fd: int
    mailbox_fd: int
    cpus: Tuple[int, ...]
    zygote_pid: int


def native_threads() -> int:
    """This process's threads that a fork would leave behind: the kernel's count, less the ones a fork handles.

    OpenBLAS built with its own pthreads pool (numpy's and scipy's wheels)
    stops that pool before a fork and starts it again when next used
    (``pthread_atfork``), so its server threads do not count. Loading a
    transformers model imports scipy, whose OpenBLAS starts such threads.
    """
    try:
        count = len(os.listdir("/proc/self/task"))
    except OSError:
        return 1
    return count - sum(threads - 1 for threads in _openblas_pools().values())


# OpenBLAS's exported names, with the prefixes and suffixes of numpy's and scipy's own builds (as threadpoolctl).
_OPENBLAS_SYMBOLS = [
    (prefix + "openblas_get_num_threads" + suffix, prefix + "openblas_get_parallel" + suffix)
    for prefix in ("", "scipy_")
    for suffix in ("", "64_")
]


def _openblas_pools() -> Dict[str, int]:
    """Loaded OpenBLAS libraries that run a pthreads pool (path -> its thread count, the caller's included)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if "openblas" in line and ".so" in line}
    except (OSError, IndexError):
        return {}
    import ctypes

    pools = {}
    for path in paths:
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)  # loaded already: no constructor runs
        except OSError:
            continue
        for threads_name, parallel_name in _OPENBLAS_SYMBOLS:
            get_threads = getattr(library, threads_name, None)
            get_parallel = getattr(library, parallel_name, None)
            if get_threads is not None and get_parallel is not None:
                if get_parallel() == 1:  # 1: its own pthreads (2 would be OpenMP, which has no fork handler)
                    pools[path] = max(int(get_threads()), 1)
                break
    return pools


def _stop_restartable_helpers() -> List[str]:
    """Stop the helper threads a library starts again by itself when it needs one; their names.

    tqdm's monitor thread (``tqdm_monitor``) is started by the first progress
    bar (transformers shows one while loading weights) and kept for the
    process's life; tqdm starts a new one with the next bar, in a forked
    worker as anywhere.
    """
    tqdm_monitor = sys.modules.get("tqdm._monitor")
    monitor_class = getattr(tqdm_monitor, "TMonitor", None)
    stopped = []
    for thread in threading.enumerate():
        if monitor_class is not None and isinstance(thread, monitor_class):
            thread.exit()  # sets its stop event and joins it (it sleeps on that event)
            owner = getattr(thread, "tqdm_cls", None)
            if owner is not None and getattr(owner, "monitor", None) is thread:
                owner.monitor = None
            stopped.append(thread.name)
    return stopped


def _join_pools_shut_down(timeout: float) -> List[str]:
    """Wait for the workers of thread pools shut down without waiting for them; their names.

    ``ThreadPoolExecutor.shutdown(wait=False)`` leaves workers that finish
    their task and exit by themselves (transformers loads a model's weights on
    such a pool): once they have, the fork copies nothing missing. A pool that
    was not shut down keeps its workers, and still stops a fork.
    """
    pools = sys.modules.get("concurrent.futures.thread")
    pool_worker = getattr(pools, "_worker", None)
    deadline = time.monotonic() + timeout
    joined = []
    for thread in threading.enumerate():
        # A running Thread holds its target and arguments; a pool's worker gets a weak reference to its pool.
        arguments = getattr(thread, "_args", None)
        if pool_worker is None or getattr(thread, "_target", None) is not pool_worker or not arguments:
            continue
        pool = arguments[0]() if callable(arguments[0]) else None
        if pool is not None and not getattr(pool, "_shutdown", False):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            joined.append(thread.name)
    return joined


def _native_threads_started(threads_before_load: int, timeout: float) -> int:
    """How many native threads loading left running, waiting up to ``timeout`` for ending ones to go.

    A thread Python has joined may still be leaving the kernel's list for a
    moment (longer on a loaded machine), so a count above the one before the
    load is looked at again until it drops or the time is up.
    """
    deadline = time.monotonic() + timeout
    while True:
        started = native_threads() - threads_before_load
        if started <= 0 or time.monotonic() >= deadline:
            return started
        time.sleep(_NATIVE_THREAD_POLL_S)


def _fork_refusal(threads_before_load: int) -> str:
    _stop_restartable_helpers()
    _join_pools_shut_down(_POOL_EXIT_WAIT_S)
    threads = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
    if threads:
        return f"loading the model started Python threads ({', '.join(threads)}), which a fork would not copy"
    started = _native_threads_started(threads_before_load, _NATIVE_THREAD_EXIT_WAIT_S)
    if started > 0:
        # Typically an OpenMP or BLAS pool that a call at load time (a warm-up) started: a forked
        # child would wait forever on the threads it did not get.
        return (
            f"loading the model started {started} native thread(s) (a framework's thread pool), "
            f"which a fork would not copy (threads now: {', '.join(_native_thread_names())})"
        )
    return ""


def _native_thread_names() -> List[str]:
    """The kernel's name of each of this process's threads but the calling one, for messages."""
    names: List[str] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return names
    for task in sorted(tasks, key=int):
        if int(task) == threading.get_native_id():
            continue
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8", errors="replace") as comm:
                names.append(comm.read().strip())
        except OSError:
            pass  # it ended meanwhile
    return names


def serve_forks(control: socket.socket, threads_before_load: int) -> Optional[ForkOrder]:
    """Fork workers on the parent's orders until it closes ``control``.

    Returns the order in each forked child (which goes on as a worker), and
    None in the zygote once the parent has gone. ``threads_before_load`` is
    :func:`native_threads` before the model was loaded: a fork is refused if
    loading started any.
    """
    gc.collect()
    gc.freeze()  # the workers' collector never walks (so never writes to) what the load built
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    previous_handler = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_write)
    try:
        return _serve(control, wake_read, threads_before_load)
    finally:  # in the zygote, and in each child before it becomes a worker
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, previous_handler if previous_handler is not None else signal.SIG_DFL)
        os.close(wake_read)
        os.close(wake_write)


def _serve(control: socket.socket, wake_read: int, threads_before_load: int) -> Optional[ForkOrder]:
    children: Dict[int, int] = {}  # fork id -> pid, until reaped
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    while True:
        try:
            ready = [fd for fd, _ in poller.poll()]
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
        _reap(children, control)  # also on a wake-up for another signal: cheap
        if control.fileno() not in ready:
            continue
        try:
            data, ancillary, _, _ = control.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(8 * 4))
        except ConnectionError:
            return None
        fds = _received_fds(ancillary)
        if not data:
            _close(fds)
            return None
        try:
            kind, fork_id, number, text = decode(data)
        except WireFormatError:
            _close(fds)
            return None  # not our parent speaking: stop, the workers go with us
        if kind == Kind.FORK:
            order = _fork(control, fork_id, text, fds, children, threads_before_load)
            if order is not None:  # we are the child now
                return order
            continue
        _close(fds)
        pid = children.get(fork_id)
        if kind == Kind.KILL and pid is not None and number in _KILL_SIGNALS:
            try:
                os.kill(pid, number)  # not reaped yet, so the pid is still our child's
            except OSError:
                pass


def _fork(
    control: socket.socket,
    fork_id: int,
    cpu_text: str,
    fds: List[int],
    children: Dict[int, int],
    threads_before_load: int,
) -> Optional[ForkOrder]:
    refusal = _fork_refusal(threads_before_load)
    try:
        cpus = tuple(int(cpu) for cpu in cpu_text.split(",") if cpu)
    except ValueError:
        refusal = f"CPU list {cpu_text!r} is not comma-separated integers"
    if len(fds) != 2:
        refusal = f"a fork order brought {len(fds)} descriptors, expected 2 (control socket, mailbox)"
    if refusal:
        _close(fds)
        _tell(control, encode(Kind.REFUSED, fork_id, text=refusal))
        return None
    zygote_pid = os.getpid()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking with threads: the ones left are the framework's own
        # idle native threads (FORK_PLATFORMS), which the child does not need.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        control.close()
        for fd in fds:
            os.set_inheritable(fd, False)  # programs the model starts must not hold them open
        return ForkOrder(fds[0], fds[1], cpus, zygote_pid)
    _close(fds)
    children[fork_id] = pid
    _tell(control, encode(Kind.FORKED, fork_id, pid))
    return None


def _exit_code(status: int) -> int:
    """``os.waitstatus_to_exitcode`` (Python 3.9+), written out: a worker may run on Python 3.7 or 3.8."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _reap(children: Dict[int, int], control: socket.socket) -> None:
    # One waitpid per child we made: a child process the model itself started is not ours to reap.
    for fork_id, pid in list(children.items()):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            returncode = _exit_code(status) if done else 0
        except ChildProcessError:  # someone else reaped it (the model's own code): its status is lost
            done, returncode = pid, UNKNOWN_STATUS
        if done:
            del children[fork_id]
            _tell(control, encode(Kind.EXITED, fork_id, returncode))


def _tell(control: socket.socket, message: bytes) -> None:
    try:
        control.send(message)
    except OSError:
        pass  # the parent is gone (or closing): the next read sees it, and we exit


def _received_fds(ancillary: Sequence[Tuple[int, int, bytes]]) -> List[int]:
    fds: List[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    return fds


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def report_load_failure(control: socket.socket, texts: Sequence[str]) -> None:
    """Tell the parent the model did not load (``texts`` as :func:`neuropod.worker.describe_exception`)."""
    _tell(control, encode(Kind.LOAD_FAILED, text="\0".join(texts)))


# -- the parent's side -----------------------------------------------------------


@dataclass(frozen=True)
class ForkFailure:
    """Why the zygote did not fork a worker (one field is set)."""

    refusal: str = ""  # it will not fork: load this worker the ordinary way
    load_error: Optional[Tuple[str, ...]] = None  # it could not load the model (a LOAD_FAILED's texts)
    died: bool = False  # it exited first, with ``returncode``
    returncode: Optional[int] = None
    timed_out: bool = False  # it was still loading when the start timeout ran out


class ForkedProcess:
    """A worker forked by a zygote, with the parts of ``subprocess.Popen`` a worker's handle uses."""

    def __init__(self, incarnation: _Incarnation, fork_id: int) -> None:
        self._incarnation = incarnation
        self.fork_id = fork_id
        self.pid: Optional[int] = None  # known once the zygote has forked
        self.returncode: Optional[int] = None
        self.refusal: Optional[str] = None
        self._pidfd = -1  # names this very process (see _forked); -1 where it cannot be had

    @property
    def zygote_pid(self) -> int:
        return self._incarnation.process.pid

    def _forked(self, pid: int) -> None:
        """The zygote reports the fork (called with the incarnation's lock held)."""
        self.pid = pid
        try:
            pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):  # no pidfds here, or it is gone already (its report follows)
            return
        # Until the zygote reaps it, the pid is the worker's; once reaped, ours is the only name left.
        if _parent_of(pid) == self.zygote_pid:
            self._pidfd = pidfd
        else:
            os.close(pidfd)

    def _ended(self, returncode: int) -> None:
        """The worker's exit is known (called with the incarnation's lock held)."""
        if self.returncode is None:
            self.returncode = returncode

    def close(self) -> None:
        """Let go of the pidfd (by the worker's owner, the one thread that waits on it)."""
        with self._incarnation.changed:
            pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            os.close(pidfd)

    def wait_forked(self, timeout: float) -> Optional[ForkFailure]:
        """Wait until the zygote has forked this worker: None when it has, else why not."""
        incarnation = self._incarnation
        with incarnation.changed:
            incarnation.changed.wait_for(
                lambda: self.pid is not None or self.refusal is not None or incarnation.ended, timeout
            )
            if self.refusal is not None:
                return ForkFailure(refusal=self.refusal)
            if self.pid is not None:
                return None
            if incarnation.load_error is not None:
                return ForkFailure(load_error=tuple(incarnation.load_error))
            if incarnation.ended:
                return ForkFailure(died=True, returncode=incarnation.returncode)
        return ForkFailure(timed_out=True)

    def poll(self) -> Optional[int]:
        if self.returncode is None and self._pidfd >= 0 and _readable(self._pidfd, 0):
            self._learn_exit()
        return self.returncode

    def _learn_exit(self) -> None:
        """The pidfd says the worker exited: its status, from the zombie, or from the zygote's report."""
        with self._incarnation.changed:
            if self.returncode is None and self._pidfd >= 0 and self.pid is not None:
                status = _zombie_status(self.pid, self.zygote_pid)
                if status is not None:
                    self._ended(status)
                    self._incarnation.changed.notify_all()
                else:  # the zygote has reaped it: its report follows at once
                    self._incarnation.changed.wait_for(lambda: self.returncode is not None, _REPORT_WAIT_S)

    def wait(self, timeout: Optional[float] = None) -> int:
        """The return code: from the zygote's report or, when the zygote is slow to reap, from the zombie."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            returncode = self.poll()
            if returncode is not None:
                return returncode
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker forked by zygote {self.zygote_pid}", timeout or 0)
            pidfd = self._pidfd
            if pidfd >= 0 and not _readable(pidfd, 0):
                _readable(pidfd, left)  # until it exits
                continue
            # Reaped by the zygote (its report is on its way), or no pidfd here: wait for the report.
            if pidfd >= 0:
                left = _REPORT_SLICE_S if left is None else min(left, _REPORT_SLICE_S)
            with self._incarnation.changed:
                self._incarnation.changed.wait_for(lambda: self.returncode is not None, left)

    def kill(self) -> None:
        incarnation = self._incarnation
        with incarnation.changed:
            if self.returncode is not None:
                return
            if self._pidfd >= 0:
                try:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)  # type: ignore[attr-defined]
                    return
                except OSError:
                    return  # it exited already: poll/wait learn how
            forked = self.pid is not None
        if not forked:  # the zygote has not forked it yet: it is still loading, or stuck
            incarnation.kill()
        else:
            incarnation.send(encode(Kind.KILL, self.fork_id, int(signal.SIGKILL)))


def _readable(fd: int, timeout: Optional[float]) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))
    except InterruptedError:
        return False


def _stat_fields(pid: int) -> List[str]:
    """The fields of ``/proc/PID/stat`` after the command name (the 3rd field first); [] if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent_of(pid: int) -> Optional[int]:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _zombie_status(pid: int, parent: int) -> Optional[int]:
    """The return code of ``pid``, a zombie child of ``parent`` nobody reaped yet (None if it is not one)."""
    fields = _stat_fields(pid)
    # proc(5): field 3 is the state, 4 the parent, 52 the exit status as waitpid reports it.
    if len(fields) < 50 or fields[0] != "Z" or int(fields[1]) != parent:
        return None
    return os.waitstatus_to_exitcode(int(fields[49]))


class _Incarnation:
    """One zygote process: its socket, its reader thread and the workers it forked."""

    def __init__(self, spawn: Callable[[int], subprocess.Popen], model_name: str) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = spawn(child_end.fileno())
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.sock = parent_end
        self.changed = threading.Condition()
        self.forks: Dict[int, ForkedProcess] = {}
        self.ended = False
        self.returncode: Optional[int] = None
        self.load_error: Optional[List[str]] = None
        self.retiring = False  # forks no more: exits with its last worker
        self._next_id = 0
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read, name=f"neuropod-zygote-{model_name}-{self.process.pid}", daemon=True
        )
        self._reader.start()

    def fork(self, fd: int, mailbox_fd: int, cpus: Tuple[int, ...]) -> ForkedProcess:
        with self.changed:
            self._next_id += 1
            forked = self.forks[self._next_id] = ForkedProcess(self, self._next_id)
        text = ",".join(str(cpu) for cpu in cpus)
        message = encode(Kind.FORK, forked.fork_id, text=text)
        with self._send_lock:
            self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd, mailbox_fd]))])
        return forked

    def send(self, message: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.send(message)
        except OSError:
            pass  # the zygote is gone, and its children with it

    def _read(self) -> None:
        resets = 0
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE_BYTES)
                if not data:
                    break
                kind, fork_id, number, text = decode(data)
            except ConnectionResetError:
                # The zygote exited with a FORK order unread (it failed to load): Linux reports
                # that once, ahead of what the zygote sent before it went. Read on.
                resets += 1
                if resets > 1:
                    break
                continue
            except (OSError, WireFormatError):
                self.process.kill()
                break
            with self.changed:
                forked = self.forks.get(fork_id)
                if kind == Kind.LOAD_FAILED:
                    self.load_error = (text.split("\0") + ["", "", "", ""])[:4]
                elif forked is None:
                    pass
                elif kind == Kind.FORKED:
                    forked._forked(number)
                elif kind == Kind.REFUSED:
                    forked.refusal = text
                    del self.forks[fork_id]
                elif kind == Kind.EXITED:
                    forked._ended(number)
                    del self.forks[fork_id]
                if self.retiring and not self.forks:
                    self._hang_up()  # its last worker is gone: the zygote reads end-of-file and exits
                self.changed.notify_all()
        with self._send_lock:  # no fork order can be on its way out through it now
            self.sock.close()  # the descriptor goes with the zygote, not with the next start
        try:
            returncode: Optional[int] = self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            returncode = self.process.wait()
        with self.changed:
            self.ended = True
            self.returncode = returncode
            for forked in self.forks.values():
                # A forked worker died of its death signal (SIGKILL) with us, its status went to init;
                # one not forked yet never ran.
                forked._ended(-int(signal.SIGKILL))
            self.changed.notify_all()

    def _hang_up(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the zygote reads end-of-file and exits
        except OSError:
            pass

    def has_workers(self) -> bool:
        with self.changed:
            return bool(self.forks)

    def retire(self) -> None:
        """Fork no more; exit once the workers forked so far have (they die with the zygote)."""
        with self.changed:
            self.retiring = True
            if not self.forks:
                self._hang_up()

    def close(self, grace: float) -> None:
        self._hang_up()
        self._reader.join(grace + 5.0)
        if self._reader.is_alive():
            self.process.kill()
            self._reader.join()
        self.sock.close()

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass


class Zygote:
    """The parent's handle on a model's zygote; started on the first fork, started again if it died.

    Args:
        spawn: starts ``python -m neuropod.worker --zygote`` with the given
            control socket descriptor and returns its ``Popen``.
        model_name: for thread names and messages.
    """

    def __init__(self, spawn: Callable[[int], subprocess.Popen], model_name: str) -> None:
        self._spawn = spawn
        self.model_name = model_name
        self._lock = threading.Lock()
        self._current: Optional[_Incarnation] = None
        self.refusal = ""  # set when the zygote refused a fork: every later worker loads its own copy
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.refusal and not self.closed

    @property
    def pid(self) -> Optional[int]:
        """The live zygote's pid (None when none runs)."""
        current = self._current
        return current.process.pid if current is not None and not current.ended else None

    def fork(self, fd: int, mailbox_fd: int, cpus: Tuple[int, ...]) -> ForkedProcess:
        """Order a worker forked with these descriptors (duplicated into the zygote: close yours).

        Raises:
            ModelClosedError: :meth:`close` came first (a zygote started now would outlive it).
        """
        with self._lock:
            if self.closed:
                raise ModelClosedError(f"model {self.model_name!r} is closed: its zygote forks no more workers")
            current = self._current
            if current is not None and not current.ended and current.load_error is None:
                try:
                    return current.fork(fd, mailbox_fd, cpus)
                except OSError:  # it died just now
                    pass
            if current is not None:
                current.close(grace=2.0)  # dead or dying: its workers died with it
            current = self._current = _Incarnation(self._spawn, self.model_name)
            return current.fork(fd, mailbox_fd, cpus)

    def refused(self, reason: str) -> None:
        """The zygote would not fork: each worker loads the model itself from now on.

        Why is logged as a warning the first time this process sees that
        reason for this model, not on every load.
        A zygote with no workers is stopped now (its memory is wasted); one
        that forked workers before goes on until they have exited, as they
        die with it.
        """
        with _REFUSALS_SAID_LOCK:
            first_time = (self.model_name, reason) not in _REFUSALS_SAID
            _REFUSALS_SAID.add((self.model_name, reason))
        if first_time:
            _log.warning("model %r: each worker loads its own copy of the weights: %s", self.model_name, reason)
        with self._lock:
            self.refusal = reason
            current = self._current
            idle = current is not None and not current.has_workers()
            if idle:
                self._current = None
        if current is None:
            return
        if idle:
            current.close(grace=2.0)
        else:
            current.retire()

    def kill(self) -> None:
        current = self._current
        if current is not None:
            current.kill()

    def close(self, grace: float = 2.0) -> None:
        """Stop the zygote (its workers should be closed first: they die with it)."""
        with self._lock:
            self.closed = True
            current, self._current = self._current, None
        if current is not None:
            current.close(grace)
