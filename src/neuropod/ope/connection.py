"""The caller's end of one worker's channel: segments, leases and the call itself.

A call is four steps, each in one module:

1. :func:`wire.pack <neuropod.ope.wire.pack>` turns the inputs into one
   message (the usual small call comes from the codec's inline cache; a
   large input is copied into a segment by :meth:`Connection._place`, a
   leased one goes by reference through :meth:`Connection._lend`);
2. :meth:`Channel.send_bytes <neuropod.ope.channel.Channel.send_bytes>`
   puts it in the mailbox (or on the socket, for a worker that sleeps);
3. :meth:`Channel.receive_bytes <neuropod.ope.channel.Channel.receive_bytes>`
   waits for the answer as the :class:`~neuropod.ope.waiting.Waiting`
   strategy says (spin, then sleep where the worker will meet us);
4. :func:`wire.unpack <neuropod.ope.wire.unpack>` turns the answer into
   arrays (inline ones straight from the cache; others view the worker's
   segments, :meth:`Connection._outputs`).

What the call reports to when stage timing is on is the stage observer
(:data:`neuropod.ope.stages.observer`; a null one by default). Nothing here
decides what a failure means: the channel's ChannelClosed / ChannelTimeout,
a malformed answer's WireFormatError and the worker's ErrorReply go to the
caller (:class:`~neuropod.ope.client.WorkerProcess`), which words them
(:mod:`neuropod.ope.failures`).

One connection serves one call at a time (the supervisor hands a worker to
one caller at a time); :meth:`forget_segment` may come from any thread.
"""

from __future__ import annotations

import collections
import functools
import os
import socket
import threading
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple, Union

import numpy as np

from ..errors import ErrorReply, InputValidationError, WireFormatError
from . import stages, wire
from .channel import MAILBOX_BYTES, Channel
from .options import OpeOptions
from .shm import PeerSegments, Segment, SegmentPool, leased_array
from .tensors import check_crossing_size
from .waiting import Waiting

__all__ = ["Connection", "LeaseLookup"]

#: Finds whether an array lies in one of our segments: (segment, offset, base array) or None.
LeaseLookup = Callable[[np.ndarray], Optional[Tuple[Segment, int, np.ndarray]]]
#: Segment id -> (segment, the caller's base array for a lease, None for a segment we filled for this call).
_InCall = Dict[int, Tuple[Segment, Optional[np.ndarray]]]


class Connection:
    """The parent's end of one worker's control channel, made before the worker starts.

    Args:
        pool: the parent's segment pool for inputs (shared by the model's workers).
        options: the OPE options (shared memory, limits, spin mode).
        waiting: how calls wait for their answers.

    The worker's ends are :attr:`child_socket` and :attr:`mailbox_fd`, to be
    handed to the process; :meth:`handed_over` closes our copies.
    """

    def __init__(self, pool: SegmentPool, options: OpeOptions, waiting: Waiting) -> None:
        self.pool = pool
        self.options = options
        self.waiting = waiting
        mailbox = Segment.create(0, MAILBOX_BYTES, options.shm_dir)
        parent_end, self.child_socket = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.mailbox_fd = mailbox.fd
        self.mailbox_inode = os.fstat(mailbox.fd).st_ino  # names the mailbox in /proc/self/fd (leak checks)
        self.channel = Channel(parent_end, mailbox.memory, side=0)
        # Before the worker can look: it reads them once, as it starts.
        self.channel.set_peer_settings(options.spin_mode, timing=stages.recorder is not None)
        self.segments = PeerSegments()  # the worker's segments, mapped here
        self.releases: Deque[int] = collections.deque()  # its segments our arrays no longer view
        self.abandoned: Set[int] = set()  # calls interrupted after they were sent: their answers are dropped
        self._state_lock = threading.Lock()
        self.known: Set[int] = set()  # our segments the worker has mapped
        self.pending_drops: List[int] = []  # ... and that we destroyed since the last message
        self._request_id = 0
        self.sending = False  # the current call's request is being sent or is sent
        self.handed = False  # ... and it is all in the channel (the worker may not have it yet)
        # The current call's segments: filled for it (the pool gets them back after it) and used by it.
        self._temporary: Dict[int, Segment] = {}
        self._in_call: _InCall = {}
        self._find_lease: Optional[LeaseLookup] = None

    def handed_over(self) -> None:
        """The worker has its ends (or will never get them): close our copies (our mapping stays)."""
        self.child_socket.close()
        if self.mailbox_fd >= 0:
            os.close(self.mailbox_fd)
            self.mailbox_fd = -1

    def close(self) -> None:
        """Close the channel (arrays that view the worker's segments stay valid)."""
        self.handed_over()
        self.channel.close()
        self.segments.clear()

    def forget_segment(self, segment_id: int) -> None:
        """One of our segments was destroyed: tell the worker to unmap it with the next message."""
        with self._state_lock:
            if segment_id in self.known:
                self.known.discard(segment_id)
                self.pending_drops.append(segment_id)

    def receive_start(self, timeout: float, check_alive: Callable[[], None]) -> wire.Message:
        """The worker's first message (HELLO or LOAD_FAILED)."""
        message, fds = self.channel.receive(0, timeout, check_alive)
        for fd in fds:
            os.close(fd)
        return message

    def shut_down(self) -> None:
        """Ask the worker to exit (it may be gone already)."""
        try:
            self.channel.send(wire.Message(wire.Kind.SHUTDOWN))
        except (OSError, ValueError):
            pass

    # -- the call ------------------------------------------------------------

    def call(
        self,
        inputs: Dict[str, np.ndarray],
        find_lease: Optional[LeaseLookup],
        timeout: Optional[float],
        check_alive: Callable[[], None],
    ) -> Dict[str, np.ndarray]:
        """Run the model in the worker on ``inputs``.

        ``find_lease`` is None when no input can be one of the caller's shared arrays.

        Raises:
            ChannelClosed, OSError: the worker hung up (while :attr:`sending`; :attr:`handed` says whether
                the request was all sent).
            ChannelTimeout: no answer within ``timeout`` seconds.
            WireFormatError: a malformed answer.
            ErrorReply: the worker answered with an error.
        """
        observer = stages.observer
        clock = observer.clock
        began = clock()
        self.sending = self.handed = False
        self._request_id = request_id = self._request_id + 1
        if len(inputs) > wire.MAX_TENSORS:
            raise InputValidationError(
                f"inputs: {len(inputs)} tensors in one call; a worker takes at most {wire.MAX_TENSORS}"
            )
        self._find_lease = find_lease
        try:
            data, request = wire.pack(
                wire.Kind.INFER,
                request_id,
                inputs,
                self._place,
                self._lend if find_lease is not None else None,
                self._lists(request_id) if self.pending_drops or self.releases else None,
            )
            encoded = clock()
            self.sending = True
            if request is None:  # the usual call: nothing to announce
                self.channel.send_bytes(data)
            else:
                self._send(data, request)
            self.handed = True
            sent = clock()
            try:
                reply, seen = self._receive(request_id, timeout, check_alive, clock)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # KeyboardInterrupt: the answer still comes, to be dropped
                    self.abandoned.add(request_id)
                raise
            outputs = reply if isinstance(reply, dict) else self._outputs(reply)
            if observer.timing:
                observer.add((began, encoded, sent, seen, clock()), self.channel.peer_stamps())
            return outputs
        finally:
            temporary = self._temporary
            if temporary:
                for segment in temporary.values():
                    self.pool.release(segment)
                temporary.clear()
            if self._in_call:
                self._in_call.clear()
            self._find_lease = None

    def _lists(self, request_id: int) -> wire.Message:
        """A message holding what the worker must learn besides the inputs (drops, releases)."""
        message = wire.Message(wire.Kind.INFER, request_id)
        if self.pending_drops:  # a drop that lands just after this look goes with the next call
            with self._state_lock:
                message.drop_segments, self.pending_drops = self.pending_drops, []
        releases = self.releases
        if releases:
            message.release_segments = [releases.popleft() for _ in range(len(releases))]
        return message

    @staticmethod
    def _check_crossing(name: str, array: np.ndarray) -> None:
        problem = wire.crossing_problem(name, array.ndim)
        if problem:
            raise InputValidationError(f"input {name!r}: {problem}")

    def _lend(self, name: str, array: np.ndarray, request: wire.Message) -> Optional[wire.TensorRef]:
        """A reference to an input that lies in one of the caller's leases (no copy), else None."""
        self._check_crossing(name, array)
        assert self._find_lease is not None
        lease = self._find_lease(array)
        if lease is None:
            return None
        segment, offset, base = lease
        self._in_call[segment.id] = (segment, base)
        self._announce(segment, request)
        return wire.TensorRef(name, wire.dtype_code(array.dtype), array.shape, segment.id, offset, array.nbytes)

    def _place(self, name: str, array: np.ndarray, inline: wire.InlineArea, request: wire.Message) -> wire.TensorRef:
        """An input copied into the message's inline area when it fits, else into a segment of the pool."""
        self._check_crossing(name, array)
        check_crossing_size("input", name, array, self.options.max_tensor_bytes, self.options.shm_dir)
        try:
            ref, filled = wire.write_tensor(name, array, self.pool, inline)
        except UnicodeEncodeError as exc:
            raise InputValidationError(
                f"input {name!r}: string {exc.object!r} cannot be encoded as UTF-8 ({exc.reason})"
            ) from None
        if filled is not None:
            self._temporary[filled.id] = filled
            self._in_call[filled.id] = (filled, None)
            self._announce(filled, request)
        return ref

    def _announce(self, segment: Segment, request: wire.Message) -> None:
        # The worker learns of a segment only once the request is sent: until then
        # a later input may still fail, and the segment go back to the pool unannounced.
        if segment.id not in self.known and all(segment.id != known for known, _ in request.new_segments):
            request.new_segments.append((segment.id, segment.size))

    def _send(self, data: bytes, request: wire.Message) -> None:
        """Send the encoded request and the descriptors of the segments it introduces."""
        if not request.new_segments:
            self.channel.send_bytes(data)
            return
        in_call = self._in_call
        announcing = [segment_id for segment_id, _ in request.new_segments]
        fds = [in_call[segment_id][0].fd for segment_id in announcing]
        step = wire.MAX_FDS_PER_MESSAGE
        if len(fds) > step:  # the kernel caps descriptors per message: announce them ahead
            for start in range(0, len(fds), step):
                batch = wire.Message(
                    wire.Kind.SEGMENTS, request.request_id, new_segments=request.new_segments[start : start + step]
                )
                self.channel.send(batch, fds[start : start + step])
            request.new_segments, fds = [], []
            data = wire.encode(request)
        self.channel.send_bytes(data, fds)
        with self._state_lock:
            self.known.update(announcing)

    def _receive(
        self,
        request_id: int,
        timeout: Optional[float],
        check_alive: Callable[[], None],
        clock: Callable[[], int],
    ) -> Tuple[Union[wire.Message, Dict[str, np.ndarray]], int]:
        """The worker's answer (the outputs themselves when they all came inline, else the RESULT message)
        and when it came."""
        channel, waiting, abandoned = self.channel, self.waiting, self.abandoned
        while True:
            data, fds = channel.receive_bytes(waiting, timeout, check_alive)
            seen = clock()
            kind, answered, arrays, message = wire.unpack(data, fds)
            if message is not None:
                for (segment_id, size), fd in zip(message.new_segments, fds):
                    self.segments.add(segment_id, size, fd)
                for segment_id in message.drop_segments:
                    self.segments.drop(segment_id)
                if kind == wire.Kind.SEGMENTS:
                    continue
            if answered in abandoned and kind in (wire.Kind.RESULT, wire.Kind.ERROR):
                abandoned.discard(answered)
                if message is not None:
                    self._drop_answer(message)
                continue
            if answered != request_id:
                raise WireFormatError(f"worker answered request {answered}, expected {request_id}")
            if kind == wire.Kind.ERROR and message is not None:
                raise ErrorReply(message.texts)
            if kind != wire.Kind.RESULT:
                raise WireFormatError(f"worker answered a call with message kind {kind}")
            return (arrays if message is None else message), seen  # type: ignore[return-value]

    def _drop_answer(self, reply: wire.Message) -> None:
        """Let go of an abandoned call's answer: the worker's segments its outputs were in go back to it."""
        for ref in reply.tensors:
            if ref.owner != wire.OWNER_RECEIVER and ref.segment != wire.NO_SEGMENT:
                self.releases.append(ref.segment)

    def _outputs(self, reply: wire.Message) -> Dict[str, np.ndarray]:
        outputs: Dict[str, np.ndarray] = {}
        release = self.releases.append
        adopted: Dict[int, np.ndarray] = {}  # our temporary segments that outputs now view
        for ref in reply.tensors:
            if ref.owner == wire.OWNER_RECEIVER:
                outputs[ref.name] = self._view_of_input(ref, adopted)
            elif ref.segment == wire.NO_SEGMENT:
                outputs[ref.name] = wire.read_tensor(ref, reply.inline)
            else:
                memory = self.segments.get(ref.segment)
                outputs[ref.name] = wire.read_tensor(ref, memory, functools.partial(release, ref.segment))
        return outputs

    def _view_of_input(self, ref: wire.TensorRef, adopted: Dict[int, np.ndarray]) -> np.ndarray:
        """An output the worker says is a view of one of this call's inputs."""
        entry = self._in_call.get(ref.segment)
        if entry is None or ref.dtype_code == wire.STRING_CODE:
            raise WireFormatError(
                f"output {ref.name!r} claims to view segment {ref.segment}, which no input of this call used"
            )
        segment, lent_base = entry
        base = lent_base if lent_base is not None else adopted.get(segment.id)
        if base is None:
            # This call's copy now lives as long as the outputs that view it.
            del self._temporary[segment.id]
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
