"""The worker process: ``python -m neuropod.ope.worker --fd N --package DIR ...``.

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
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import OutputValidationError, WireFormatError
from ..executors.base import Executor
from ..spec import SpecValidator
from . import stages, wire
from .channel import MAILBOX_BYTES, Channel, ChannelClosed, decode_checked
from .shm import PeerSegments, Segment, SegmentPool
from .spin import SpinPolicy
from .tensors import InlineArea, check_crossing_size, read_tensor, write_tensor

if TYPE_CHECKING:
    from ..executors.inprocess import InProcessExecutor

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
        # Wait for calls on the CPU the caller sleeps on (neuropod.ope.colocate); not when pinned by cpu_affinity.
        self.meet_caller = meet_caller
        self.model = model
        self.output_validator = output_validator
        # The parent's spin_mode option and stage timing, left in the mailbox before we started.
        self.policy = SpinPolicy(spin_ns, channel.peer_spin_mode() or "adaptive")
        self.parent_pid = parent_pid
        self.pending_drops: List[int] = []
        self.pool = SegmentPool(shm_dir, cache_bytes, on_destroy=self.pending_drops.append)
        self.peer = PeerSegments()
        self.lent: Dict[int, Segment] = {}  # our segments the parent still views
        self.announced: set = set()
        self.timing = channel.peer_timing()
        self._convert_ns = 0
        if self.timing:
            self._time_conversion()

    def check_parent(self) -> None:
        if os.getppid() != self.parent_pid:
            raise ChannelClosed()

    def serve(self) -> None:
        channel, policy = self.channel, self.policy
        while True:
            try:
                if self.meet_caller:
                    data, fds = channel.receive_on_peer_cpu(policy, self.check_parent)
                else:
                    data, fds = channel.receive_bytes(policy, None, self.check_parent)
            except ChannelClosed:
                return
            seen = stages.clock() if self.timing else 0
            if not fds:
                small = wire.decode_inline(data)
                if small is not None and small[0] == wire.Kind.INFER:  # the usual call: small tensors only
                    self.answer_small(small[1], small[2], seen)
                    continue
            message = decode_checked(data, fds)
            for (segment_id, size), fd in zip(message.new_segments, fds):
                self.peer.add(segment_id, size, fd)
            for segment_id in message.drop_segments:
                self.peer.drop(segment_id)
            for segment_id in message.release_segments:
                segment = self.lent.pop(segment_id, None)
                if segment is not None:
                    self.pool.release(segment)
            if message.kind == wire.Kind.SHUTDOWN:
                return
            if message.kind == wire.Kind.INFER:
                self.answer(message, seen)

    def answer_small(self, request_id: int, inputs: Dict[str, np.ndarray], seen: int) -> None:
        """Answer a call whose inputs all came inline; the reply is built in full only when it must be."""
        decoded = stages.clock() if self.timing else 0
        try:
            outputs = self.model.infer(inputs)
        except Exception as exc:
            self._send_error(request_id, exc)
            return
        del inputs
        called = stages.clock() if self.timing else 0
        data = None if self.pending_drops else wire.encode_inline(wire.Kind.RESULT, request_id, outputs)
        if data is None:
            self._reply(request_id, outputs, {}, seen, decoded, called)
            return
        if self.timing:
            self._leave_stamps(seen, decoded, called)
        self.channel.send_bytes(data)

    def answer(self, message: wire.Message, seen: int = 0) -> None:
        try:
            inputs, input_refs = self._inputs(message)
            decoded = stages.clock() if self.timing else 0
            outputs = self.model.infer(inputs)
            del inputs
        except Exception as exc:
            self._send_error(message.request_id, exc)
            return
        called = stages.clock() if self.timing else 0
        self._reply(message.request_id, outputs, input_refs, seen, decoded, called)

    def _send_error(self, request_id: int, exc: Exception) -> None:
        reply = wire.Message(wire.Kind.ERROR, request_id, texts=describe_exception(exc))
        if self.pending_drops:
            reply.drop_segments = self.pending_drops[:]
            del self.pending_drops[:]
        self.channel.send(reply)

    def _reply(
        self,
        request_id: int,
        outputs: Dict[str, np.ndarray],
        input_refs: Dict[int, wire.TensorRef],
        seen: int = 0,
        decoded: int = 0,
        called: int = 0,
    ) -> None:
        announcing: List[int] = []
        try:
            reply, fds = self.run_result(request_id, outputs, input_refs, announcing)
        except Exception as exc:  # an output that cannot cross
            self._send_error(request_id, exc)  # an error reply carries no segments: they went back to the pool
            return
        if self.pending_drops:
            reply.drop_segments = self.pending_drops[:]
            del self.pending_drops[:]
        if self.timing:
            self._leave_stamps(seen, decoded, called)
        self.channel.send(reply, fds)
        self.announced.update(announcing)

    def _leave_stamps(self, seen: int, decoded: int, called: int) -> None:
        self.channel.leave_stamps((seen, decoded, called, stages.clock(), self._convert_ns))
        self._convert_ns = 0

    def _time_conversion(self) -> None:
        """Stage timing: time the backend's own numpy-to-framework step, where it has one."""
        backend = getattr(self.model, "backend", None)
        convert = getattr(backend, "to_tensors", None)
        if convert is None:
            return

        def timed(inputs: Dict[str, np.ndarray]) -> object:
            began = stages.clock()
            try:
                return convert(inputs)
            finally:
                self._convert_ns += stages.clock() - began

        backend.to_tensors = timed  # type: ignore[union-attr]

    def _inputs(self, message: wire.Message) -> Tuple[Dict[str, np.ndarray], Dict[int, wire.TensorRef]]:
        """The inputs of an INFER message, and which segment each segment-held input views."""
        inputs: Dict[str, np.ndarray] = {}
        # Inputs in segments view the parent's mappings directly (their base is the
        # mmap), which is how an output that is a view of an input is recognised.
        input_refs: Dict[int, wire.TensorRef] = {}
        for ref in message.tensors:
            if ref.owner != wire.OWNER_SENDER:
                raise WireFormatError(f"input {ref.name!r} claims to live in one of the worker's segments")
            if ref.segment == wire.NO_SEGMENT:
                inputs[ref.name] = read_tensor(ref, message.inline)
            else:
                memory = self.peer.get(ref.segment)
                inputs[ref.name] = read_tensor(ref, memory)
                input_refs[id(memory)] = ref
        return inputs, input_refs

    def run_result(
        self,
        request_id: int,
        outputs: Dict[str, np.ndarray],
        input_refs: Dict[int, wire.TensorRef],
        announcing: List[int],
    ) -> Tuple[wire.Message, List[int]]:
        """The RESULT message for ``outputs`` and its descriptors.

        The ids of segments the reply introduces to the parent are added to
        ``announcing``; they count as announced only once the reply is sent.
        """
        reply = wire.Message(wire.Kind.RESULT, request_id)
        fds: List[int] = []
        inline = InlineArea()
        try:
            for name, array in outputs.items():
                passthrough = self._passthrough(name, array, input_refs)
                if passthrough is not None:
                    ref = passthrough
                else:
                    ref, segment = self._write_output(name, array, inline)
                    if segment is not None:
                        self.lent[segment.id] = segment
                        if segment.id not in self.announced:
                            announcing.append(segment.id)
                            reply.new_segments.append((segment.id, segment.size))
                            fds.append(segment.fd)
                reply.tensors.append(ref)
        except BaseException:
            for ref in reply.tensors:
                segment = self.lent.pop(ref.segment, None) if ref.owner == wire.OWNER_SENDER else None
                if segment is not None:
                    self.pool.release(segment)
            del announcing[:]
            raise
        reply.inline = inline.getvalue()
        if len(fds) > wire.MAX_FDS_PER_MESSAGE:
            self._announce_in_batches(reply, fds)
            fds = []
        return reply, fds

    def _write_output(
        self, name: str, array: np.ndarray, inline: InlineArea
    ) -> Tuple[wire.TensorRef, Optional[Segment]]:
        """Copy one output for the parent; one that cannot cross fails as the parent's check would."""
        problem = wire.crossing_problem(name, getattr(array, "ndim", 0))
        if problem:
            raise OutputValidationError(f"output {name!r}: {problem}")
        if isinstance(array, np.ndarray):
            check_crossing_size("output", name, array, self.max_tensor_bytes, self.shm_dir)
        try:
            return write_tensor(name, array, self.pool, inline)
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

    def _announce_in_batches(self, reply: wire.Message, fds: List[int]) -> None:
        step = wire.MAX_FDS_PER_MESSAGE
        for start in range(0, len(fds), step):
            batch = wire.Message(
                wire.Kind.SEGMENTS, reply.request_id, new_segments=reply.new_segments[start : start + step]
            )
            self.channel.send(batch, fds[start : start + step])
        reply.new_segments = []

    def _passthrough(
        self, name: str, array: np.ndarray, input_refs: Dict[int, wire.TensorRef]
    ) -> Optional[wire.TensorRef]:
        """A reference to the parent's own memory when ``array`` views one of its segments."""
        if not input_refs or not isinstance(array, np.ndarray):
            return None
        base = array.base
        while isinstance(base, np.ndarray):  # a view of a view of an input
            base = base.base
        ref = input_refs.get(id(base)) if base is not None else None
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
    parser = argparse.ArgumentParser(prog="python -m neuropod.ope.worker", description=__doc__)
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
    from ..backends import BackendOptions
    from ..executors.inprocess import InProcessExecutor
    from ..package import open_package

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
    from . import zygote

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
    from ..backends import BackendOptions

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
