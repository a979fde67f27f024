"""The worker process: ``python -m neuropod.worker --fd N --package DIR ...``.

It loads one package through the in-process executor (as a parent would),
says HELLO, then answers INFER messages until told to shut down or until
its parent goes away. It must run
on any Python 3.9+ with numpy and the model's framework (it may be another
interpreter than the parent's, importing neuropod from the parent's source
tree through PYTHONPATH), so it imports nothing beyond the standard library,
numpy and neuropod's framework-free core.

Inputs are numpy views of the parent's segments (no copy). Outputs are
copied once into segments this worker owns and lent to the parent until it
releases them; an output that is a view of an input goes back as a reference
to the parent's own segment (no copy at all).

With ``--zygote`` it loads the model and then forks workers on the parent's
orders instead of serving (:mod:`neuropod.ope.zygote`); each child goes on
as a worker above, with the model already loaded.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import OutputValidationError, WireFormatError
from .executors.base import Executor
from .ope import stages, wire
from .ope.channel import MAILBOX_BYTES, Channel, ChannelClosed
from .ope.shm import PeerSegments, Segment, SegmentPool
from .ope.spin import SpinPolicy
from .ope.tensors import check_crossing_size
from .ope.waiting import WORKER, Waiting
from .spec import SpecValidator

if TYPE_CHECKING:
    from .executors.inprocess import InProcessExecutor

__all__ = ["main", "describe_exception", "set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid watch below still catches an orphaned worker


def describe_exception(exc: BaseException) -> List[str]:
    """texts of an ERROR / LOAD_FAILED message: type name, message, traceback, module."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return [type(exc).__name__, str(exc), text, type(exc).__module__]


class _Server:
    """Answers the parent's calls on one channel, one at a time.

    A call: :meth:`Channel.receive_bytes` (as the waiting strategy says),
    :func:`wire.unpack`, the model, :func:`wire.pack`, :meth:`Channel.send_bytes`.
    """

    def __init__(
        self,
        channel: Channel,
        model: Executor,
        shm_dir: str,
        cache_bytes: int,
        spin_ns: int,
        parent_pid: int,
        output_validator: Optional[SpecValidator] = None,
        meet_caller: bool = True,
        max_tensor_bytes: int = 16 << 30,
    ) -> None:
        self.channel = channel
        self.shm_dir = shm_dir
        self.max_tensor_bytes = max_tensor_bytes
        self.model = model
        self.output_validator = output_validator
        # The parent's spin_mode option and stage timing, left in the mailbox before we started.
        self.policy = SpinPolicy(spin_ns, channel.peer_spin_mode() or "adaptive")
        # Wait for calls on the CPU the caller sleeps on (neuropod.ope.colocate); not when pinned by cpu_affinity.
        self.waiting = Waiting(self.policy, WORKER if meet_caller else None)
        self.parent_pid = parent_pid
        self.pending_drops: List[int] = []
        self.pool = SegmentPool(shm_dir, cache_bytes, on_destroy=self.pending_drops.append)
        self.peer = PeerSegments()
        self.lent: Dict[int, Segment] = {}  # our segments the parent still views
        self.announced: set = set()
        self._placed: List[Segment] = []  # segments filled for the reply being built
        self._input_refs: Dict[int, wire.TensorRef] = {}  # the call's segment-held inputs, by their mapping
        self.observer: Union[stages.NullObserver, stages.WorkerStamps] = stages.NULL
        if channel.peer_timing():
            self.observer = stages.WorkerStamps(channel.leave_stamps)
            backend = getattr(model, "backend", None)
            if hasattr(backend, "conversion_observer"):  # a backend with a conversion step of its own
                backend.conversion_observer = self.observer.converted  # type: ignore[union-attr]

    def check_parent(self) -> None:
        if os.getppid() != self.parent_pid:
            raise ChannelClosed()

    def serve(self) -> None:
        channel, waiting, clock = self.channel, self.waiting, self.observer.clock
        while True:
            try:
                data, fds = channel.receive_bytes(waiting, None, self.check_parent)
            except ChannelClosed:
                return
            seen = clock()
            kind, request_id, inputs, message = wire.unpack(data, fds)
            if message is not None:  # not all inline: segments to map, drop or take back, references to read
                for (segment_id, size), fd in zip(message.new_segments, fds):
                    self.peer.add(segment_id, size, fd)
                for segment_id in message.drop_segments:
                    self.peer.drop(segment_id)
                for segment_id in message.release_segments:
                    segment = self.lent.pop(segment_id, None)
                    if segment is not None:
                        self.pool.release(segment)
            if kind == wire.Kind.SHUTDOWN:
                return
            if kind == wire.Kind.INFER:
                self.answer(request_id, inputs, message, seen)

    def answer(
        self, request_id: int, inputs: Optional[Dict[str, np.ndarray]], message: Optional[wire.Message], seen: int
    ) -> None:
        """Run the model on a call's inputs (read from ``message`` unless they all came inline) and reply."""
        clock = self.observer.clock
        input_refs = self._input_refs  # filled by _inputs for _passthrough; empty between calls
        try:
            if message is not None:
                inputs = self._inputs(message)
            decoded = clock()
            assert inputs is not None
            outputs = self.model.infer(inputs)
            del inputs
        except Exception as exc:
            input_refs.clear()
            self._send_error(request_id, exc)
            return
        called = clock()
        try:
            data, reply = wire.pack(
                wire.Kind.RESULT,
                request_id,
                outputs,
                self._write_output,
                self._passthrough if input_refs else None,
                self._lists(request_id) if self.pending_drops else None,
            )
        except Exception as exc:  # an output that cannot cross: its segments go back, none was announced
            for segment in self._placed:
                if self.lent.pop(segment.id, None) is not None:
                    self.pool.release(segment)
            self._send_error(request_id, exc)
            return
        finally:
            if input_refs:
                input_refs.clear()
            if self._placed:
                self._placed.clear()
        if reply is None:  # the usual answer: all inline, nothing to announce
            self.observer.reply(seen, decoded, called)
            self.channel.send_bytes(data)
            return
        fds: List[int] = []
        announcing = [segment_id for segment_id, _ in reply.new_segments]
        if announcing:
            fds = [self.lent[segment_id].fd for segment_id in announcing]
            if len(fds) > wire.MAX_FDS_PER_MESSAGE:
                self._announce_in_batches(reply, fds)
                fds = []
                data = wire.encode(reply)
        self.observer.reply(seen, decoded, called)
        self.channel.send_bytes(data, fds)
        self.announced.update(announcing)

    def _lists(self, request_id: int) -> wire.Message:
        """A RESULT message holding the segments we destroyed since the last message."""
        reply = wire.Message(wire.Kind.RESULT, request_id, drop_segments=self.pending_drops[:])
        del self.pending_drops[:]
        return reply

    def _send_error(self, request_id: int, exc: Exception) -> None:
        reply = wire.Message(wire.Kind.ERROR, request_id, texts=describe_exception(exc))
        if self.pending_drops:
            reply.drop_segments = self.pending_drops[:]
            del self.pending_drops[:]
        self.channel.send(reply)

    def _inputs(self, message: wire.Message) -> Dict[str, np.ndarray]:
        """The inputs of an INFER message; notes which segment each segment-held input views."""
        inputs: Dict[str, np.ndarray] = {}
        # Inputs in segments view the parent's mappings directly (their base is the
        # mmap), which is how an output that is a view of an input is recognised.
        input_refs = self._input_refs
        for ref in message.tensors:
            if ref.owner != wire.OWNER_SENDER:
                raise WireFormatError(f"input {ref.name!r} claims to live in one of the worker's segments")
            if ref.segment == wire.NO_SEGMENT:
                inputs[ref.name] = wire.read_tensor(ref, message.inline)
            else:
                memory = self.peer.get(ref.segment)
                inputs[ref.name] = wire.read_tensor(ref, memory)
                input_refs[id(memory)] = ref
        return inputs

    def _write_output(self, name: str, array: Any, inline: wire.InlineArea, reply: wire.Message) -> wire.TensorRef:
        """Copy one output for the parent; one that cannot cross fails as the parent's check would."""
        problem = wire.crossing_problem(name, getattr(array, "ndim", 0))
        if problem:
            raise OutputValidationError(f"output {name!r}: {problem}")
        if isinstance(array, np.ndarray):
            check_crossing_size("output", name, array, self.max_tensor_bytes, self.shm_dir)
        try:
            ref, segment = wire.write_tensor(name, array, self.pool, inline)
        except UnicodeEncodeError as exc:
            raise OutputValidationError(
                f"output {name!r}: string {exc.object!r} cannot be encoded as UTF-8 ({exc.reason})"
            ) from None
        except (WireFormatError, AttributeError, TypeError):
            # Not in the spec, not an array, a dtype the spec does not allow: the
            # parent's validator names the problem; the wire error is only for the rest.
            if self.output_validator is not None:
                self.output_validator.validate({name: array})
            raise
        if segment is not None:
            self._placed.append(segment)
            self.lent[segment.id] = segment
            if segment.id not in self.announced:
                reply.new_segments.append((segment.id, segment.size))
        return ref

    def _announce_in_batches(self, reply: wire.Message, fds: List[int]) -> None:
        step = wire.MAX_FDS_PER_MESSAGE
        for start in range(0, len(fds), step):
            batch = wire.Message(
                wire.Kind.SEGMENTS, reply.request_id, new_segments=reply.new_segments[start : start + step]
            )
            self.channel.send(batch, fds[start : start + step])
        reply.new_segments = []

    def _passthrough(self, name: str, array: Any, reply: wire.Message) -> Optional[wire.TensorRef]:
        """A reference to the parent's own memory when ``array`` views one of its segments."""
        if not isinstance(array, np.ndarray):
            return None
        problem = wire.crossing_problem(name, array.ndim)
        if problem:
            raise OutputValidationError(f"output {name!r}: {problem}")
        base = array.base
        while isinstance(base, np.ndarray):  # a view of a view of an input
            base = base.base
        ref = self._input_refs.get(id(base)) if base is not None else None
        if ref is None or array.nbytes == 0 or not array.flags.c_contiguous:
            return None
        if array.dtype.byteorder == ">" or array.dtype.name not in wire.DTYPE_NAMES:
            return None
        memory = self.peer.get(ref.segment)
        start = array.__array_interface__["data"][0] - np.frombuffer(memory, np.uint8, 1).__array_interface__["data"][0]
        if start < 0 or start + array.nbytes > len(memory):
            return None
        code = wire.dtype_code(array.dtype)
        return wire.TensorRef(name, code, array.shape, ref.segment, start, array.nbytes, wire.OWNER_RECEIVER)

    def close(self) -> None:
        self.pool.close()
        self.peer.clear()


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m neuropod.worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited control socket (a zygote's: fork orders)")
    parser.add_argument("--mailbox-fd", type=int, default=-1, help="inherited mailbox segment (not for --zygote)")
    parser.add_argument("--zygote", action="store_true", help="load the model, then fork workers on order")
    parser.add_argument("--package", required=True, help="package directory (already extracted and verified)")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--options", default="{}", help="backend options as JSON")
    parser.add_argument("--spin-us", type=float, default=0.0)
    parser.add_argument("--shm-dir", default="/dev/shm")
    parser.add_argument("--cache-bytes", type=int, default=1 << 30)
    parser.add_argument("--max-tensor-bytes", type=int, default=16 << 30, help="largest output that may cross")
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin to")
    args = parser.parse_args(argv)
    if not args.zygote and args.mailbox_fd < 0:
        parser.error("--mailbox-fd is required (except with --zygote)")
    return args


def _load_model(package_dir: str, options_json: str) -> Tuple[InProcessExecutor, SpecValidator]:
    """The model, through the same in-process executor a parent uses, and its output validator.

    (The validator names outputs that cannot cross to the parent.)
    """
    from .backends import BackendOptions
    from .executors.inprocess import InProcessExecutor
    from .package import open_package

    package = open_package(package_dir, verify=False)  # the parent verified it
    executor = InProcessExecutor(package, BackendOptions.from_json(options_json))
    return executor, SpecValidator(package.config.output_spec, "output")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    set_parent_death_signal()
    if os.getppid() != args.parent_pid:
        return 0  # the parent died before we could ask to follow it
    if args.zygote:
        return _zygote_main(args)
    channel = _open_channel(args.fd, args.mailbox_fd)
    _pin(args.cpus)
    try:
        model, output_validator = _load_model(args.package, args.options)
    except Exception as exc:
        channel.send(wire.Message(wire.Kind.LOAD_FAILED, texts=describe_exception(exc)))
        return 1
    return _serve(channel, model, output_validator, args, args.parent_pid, pinned=bool(args.cpus))


def _zygote_main(args: argparse.Namespace) -> int:
    """Load the model, fork workers on the parent's orders; each child goes on in :func:`_serve`."""
    from .ope import zygote

    control = socket.socket(fileno=args.fd)
    os.set_inheritable(args.fd, False)
    threads_before_load = zygote.native_threads()
    try:
        model, output_validator = _load_model(args.package, args.options)
    except Exception as exc:
        zygote.report_load_failure(control, describe_exception(exc))
        return 1
    # Nothing may run the model before this point (no warm-up call): thread pools (OpenMP, torch's
    # intra-op pool) would start here, and a fork copies only the forking thread: a warm-up belongs in _serve.
    order = zygote.serve_forks(control, threads_before_load)
    if order is None:  # the parent closed the model (or died)
        return 0
    # A forked worker: it dies with its zygote, which dies with the parent.
    set_parent_death_signal()
    if os.getppid() != order.zygote_pid:
        return 0
    channel = _open_channel(order.fd, order.mailbox_fd)
    if order.cpus:
        _pin(",".join(str(cpu) for cpu in order.cpus))
        _size_thread_pools(len(order.cpus), args.options)
    return _serve(channel, model, output_validator, args, order.zygote_pid, pinned=bool(order.cpus))


def _open_channel(fd: int, mailbox_fd: int) -> Channel:
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)  # processes the model starts must not hold our channel open
    mailbox = mmap.mmap(mailbox_fd, MAILBOX_BYTES)
    os.close(mailbox_fd)
    return Channel(sock, mailbox, side=1)


def _pin(cpus: str) -> None:
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})


def _size_thread_pools(cpu_count: int, options_json: str) -> None:
    """A forked worker pinned to ``cpu_count`` CPUs sizes torch's pool as a worker pinned before loading would.

    (OpenMP read the CPU count when the zygote loaded torch, before any pinning.)
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    from .backends import BackendOptions

    if BackendOptions.from_json(options_json).intra_op_threads is None:
        torch.set_num_threads(cpu_count)


def _serve(
    channel: Channel,
    model: Executor,
    output_validator: SpecValidator,
    args: argparse.Namespace,
    parent_pid: int,
    pinned: bool,
) -> int:
    hello = [str(os.getpid()), sys.version.split()[0], np.__version__]
    channel.send(wire.Message(wire.Kind.HELLO, texts=hello))
    server = _Server(
        channel,
        model,
        args.shm_dir,
        args.cache_bytes,
        int(args.spin_us * 1000),
        parent_pid,
        output_validator,
        meet_caller=not pinned,
        max_tensor_bytes=args.max_tensor_bytes,
    )
    try:
        server.serve()
    finally:
        server.close()
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
