"""The control channel between a parent and one worker.

Two parts:

* a **mailbox**: a small shared-memory segment with one box per direction.
  A box holds a sequence counter, the length of the message and the message
  itself, plus a flag the receiver raises while it sleeps. Sending writes the
  message, then bumps the counter; receiving polls the counter. Polling
  shared memory costs nanoseconds where waking a sleeping process costs
  10-90 us, so a receiver that expects an answer soon busy-polls for a
  bounded time first (how long: :class:`~neuropod.ope.spin.SpinPolicy`).
* a **SOCK_SEQPACKET Unix socket**: it carries every message to a receiver
  that sleeps (the whole message, in one ``send``: the receiver wakes with
  it in hand, as with a pipe), the messages that bring file descriptors (new
  shared-memory segments, SCM_RIGHTS), and tells each side when the other
  has gone (hang-up).

Ordering: the counter is written after the message, and x86 keeps stores in
order, so a reader that sees the new count sees the whole message. On other
CPUs (weaker memory order) every message goes through the socket and the
counter only signals it. A sender picks the mailbox or the socket by the
receiver's sleep flag; the one race left is the classic one of that flag and
the sender's counter passing each other in the store buffers (the receiver
goes to sleep just as the sender writes to the mailbox). The sender looks at
the flag again after publishing and then rings a one-byte doorbell on the
socket; and a sleeper wakes on its own after 1 ms, then 2, 4 ... up to
:data:`POLL_SLICE_S`, and looks again.

Message order: a side sends several messages without an answer in between
only when all but the last carry descriptors (SEGMENTS batches), which go
through the socket. So a real message that arrives on the socket is always
the next one, and at most one message, the last, waits in the mailbox.
"""

from __future__ import annotations

import array
import mmap
import os
import platform
import socket
import struct
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..errors import ChannelClosed, ChannelTimeout, WireFormatError
from . import wire
from .colocate import current_cpu, held_on
from .spin import SPIN_MODES, SpinPolicy

__all__ = ["Channel", "ChannelClosed", "ChannelTimeout", "POLL_SLICE_S", "MAILBOX_BYTES", "STAMP_SLOTS"]

#: Longest a sleeping reader waits before it runs its liveness check.
POLL_SLICE_S = 0.1
_FIRST_SLICE_S = 0.001
_FD_BYTES = array.array("i").itemsize
_ANCILLARY_SPACE = socket.CMSG_SPACE(wire.MAX_FDS_PER_MESSAGE * _FD_BYTES)
_TRUNCATED = socket.MSG_TRUNC | socket.MSG_CTRUNC
_yield = getattr(os, "sched_yield", lambda: None)

# Box layout (native byte order: both ends run on this machine). Offsets are
# 8-byte aligned so each counter is written by one store.
_COUNTER = struct.Struct("=Q")
_LENGTH = struct.Struct("=Q")
_SEQ_AT, _LENGTH_AT, _SLEEPING_AT, _SETTINGS_AT, _MEETING_AT, _TAKEN_AT, _STAMPS_AT, _PAYLOAD_AT = (
    0,
    8,
    16,
    24,
    32,
    40,
    48,
    128,
)
# The settings word: the spin mode's number (1 + its index in SPIN_MODES) in the low byte, then a timing bit.
_SPIN_MODE_MASK, _TIMING_BIT = 0xFF, 1 << 8
#: Timestamps a side may leave in its box for the other (stage timing, :mod:`neuropod.ope.stages`).
STAMP_SLOTS = (_PAYLOAD_AT - _STAMPS_AT) // 8
_STAMPS = struct.Struct(f"={STAMP_SLOTS}Q")
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds
_BOX_BYTES = _PAYLOAD_AT + wire.MAX_MESSAGE_BYTES
#: Size of a mailbox segment (two boxes).
MAILBOX_BYTES = 2 * _BOX_BYTES
#: Length value meaning "this message came through the socket".
_ON_SOCKET = 2**64 - 1
_DOORBELL = b"!"
_MESSAGES_IN_MAILBOX = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of a control channel. Not thread-safe: one caller at a time.

    Args:
        sock: this end of the socket pair.
        mailbox: the mapped mailbox segment (:data:`MAILBOX_BYTES`), shared by both ends.
        side: 0 for the parent, 1 for the worker.
    """

    def __init__(self, sock: socket.socket, mailbox: mmap.mmap, side: int) -> None:
        if len(mailbox) < MAILBOX_BYTES:
            raise WireFormatError(f"mailbox of {len(mailbox)} bytes is smaller than {MAILBOX_BYTES}")
        sock.setblocking(True)
        self.sock = sock
        self.mailbox = mailbox
        self._out = side * _BOX_BYTES
        self._in = (1 - side) * _BOX_BYTES
        # A mailbox is fresh (zeroed) when a worker starts; either side may already
        # have published by the time the other builds its end, so never read the counts here.
        self._sent = 0
        self._received = 0
        self._buffer = bytearray(wire.MAX_MESSAGE_BYTES + 1)
        self._view = memoryview(self._buffer)
        self._receive_timeout = 0.0  # the socket's SO_RCVTIMEO (0: none)
        self._meeting = 0  # the word at _MEETING_AT of our box, as we last wrote it

    # -- sending -------------------------------------------------------------

    def send(self, message: wire.Message, fds: Sequence[int] = ()) -> None:
        self.send_bytes(wire.encode(message), fds)

    def send_bytes(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one encoded message (and the descriptors it announces)."""
        mailbox, box = self.mailbox, self._out
        sleeping_at = box + _SLEEPING_AT
        if fds or not _MESSAGES_IN_MAILBOX or _COUNTER.unpack_from(mailbox, sleeping_at)[0]:
            # The receiver sleeps in a receive: the message itself wakes it (one send, as on a pipe).
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                self.sock.send(data)
            _LENGTH.pack_into(mailbox, box + _LENGTH_AT, _ON_SOCKET)
            self._sent += 1
            _COUNTER.pack_into(mailbox, box + _SEQ_AT, self._sent)
            return
        start = box + _PAYLOAD_AT
        mailbox[start : start + len(data)] = data
        _LENGTH.pack_into(mailbox, box + _LENGTH_AT, len(data))
        self._sent += 1
        _COUNTER.pack_into(mailbox, box + _SEQ_AT, self._sent)  # publishes the message
        if _COUNTER.unpack_from(mailbox, sleeping_at)[0]:  # it fell asleep meanwhile
            self.sock.send(_DOORBELL)

    def peer_took_everything(self) -> bool:
        """Whether the peer has taken every message we sent (each side counts what it takes in its box).

        After the peer died, False means it died before our last message reached it: it never saw it.
        """
        return bool(_COUNTER.unpack_from(self.mailbox, self._in + _TAKEN_AT)[0] >= self._sent)

    def set_peer_settings(self, spin_mode: str, timing: bool) -> None:
        """Tell the peer how to spin and whether to time its stages (:mod:`neuropod.ope.stages`).

        The parent writes them before its worker starts (or is forked) and the
        worker reads them once, as it starts: the parent's ``spin_mode`` option
        and its stage timing hold for the worker too, whenever the worker's
        zygote was started.
        """
        code = (SPIN_MODES.index(spin_mode) + 1) | (_TIMING_BIT if timing else 0)
        _COUNTER.pack_into(self.mailbox, self._out + _SETTINGS_AT, code)

    def peer_spin_mode(self) -> Optional[str]:
        """The mode the peer asked for with :meth:`set_peer_settings`, or None if it has not."""
        code = _COUNTER.unpack_from(self.mailbox, self._in + _SETTINGS_AT)[0] & _SPIN_MODE_MASK
        return SPIN_MODES[code - 1] if 0 < code <= len(SPIN_MODES) else None

    def peer_timing(self) -> bool:
        """Whether the peer asked for stage timing with :meth:`set_peer_settings`."""
        return bool(_COUNTER.unpack_from(self.mailbox, self._in + _SETTINGS_AT)[0] & _TIMING_BIT)

    def leave_stamps(self, stamps: Sequence[int]) -> None:
        """Put up to :data:`STAMP_SLOTS` timestamps where the peer reads them with :meth:`peer_stamps`."""
        _STAMPS.pack_into(self.mailbox, self._out + _STAMPS_AT, *(list(stamps) + [0] * STAMP_SLOTS)[:STAMP_SLOTS])

    def peer_stamps(self) -> Tuple[int, ...]:
        return _STAMPS.unpack_from(self.mailbox, self._in + _STAMPS_AT)

    # -- receiving -----------------------------------------------------------

    def _socket_message(self) -> Optional[Tuple[bytes, List[int]]]:
        """The next message on the socket, or None for a doorbell.

        Raises BlockingIOError when none came within the receive timeout (:meth:`_set_receive_timeout`).
        """
        try:
            size, ancillary, flags, _ = self.sock.recvmsg_into([self._view], _ANCILLARY_SPACE)
        except ConnectionResetError:
            raise ChannelClosed() from None
        fds: List[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_BYTES
                fds.extend(array.array("i", payload[:usable]))
        if size == 0 and not fds:
            raise ChannelClosed()
        if flags & _TRUNCATED:
            _close_all(fds)
            raise WireFormatError("a control message or its descriptors were truncated")
        if size == 1 and self._buffer[0] == _DOORBELL[0] and not fds:
            return None
        return bytes(self._view[:size]), fds

    def _take(self) -> Tuple[bytes, List[int]]:
        """The bytes of the oldest message the peer has published and we have not read.

        When more than one is waiting, this one came through the socket (see the
        module's notes on order); the length field describes the last one.
        """
        self._received += 1
        mailbox, box = self.mailbox, self._in
        _COUNTER.pack_into(mailbox, self._out + _TAKEN_AT, self._received)
        if _COUNTER.unpack_from(mailbox, box + _SEQ_AT)[0] > self._received:
            length = _ON_SOCKET
        else:
            length = _LENGTH.unpack_from(mailbox, box + _LENGTH_AT)[0]
        if length == _ON_SOCKET:
            while True:  # the peer sent it before it counted it: it is there
                try:
                    found = self._socket_message()
                except BlockingIOError:
                    continue
                if found is not None:  # else a doorbell rung late
                    return found
        if length > wire.MAX_MESSAGE_BYTES:
            raise WireFormatError(f"mailbox message claims {length} bytes; the limit is {wire.MAX_MESSAGE_BYTES}")
        start = box + _PAYLOAD_AT
        return mailbox[start : start + length], []  # one copy, as bytes: the box is reused by the next message

    def receive_bytes(
        self,
        spin: Union[int, SpinPolicy],
        timeout: Optional[float] = None,
        check_alive: Optional[Callable[[], None]] = None,
        meet: bool = False,
    ) -> Tuple[bytes, List[int]]:
        """The next message, still encoded, and the descriptors it carries.

        ``spin`` is how many nanoseconds to busy-poll before sleeping, or a
        policy that decides it (and learns from how the wait went). With
        ``meet``, a wait that does not spin at all holds this thread on its
        CPU while it sleeps and tells the peer which CPU that is
        (:meth:`peer_meeting_cpu`, :mod:`neuropod.ope.colocate`), unless the
        policy finds the machine busy (no idle CPU to spare a wake-up of).

        Raises:
            ChannelClosed: the peer is gone.
            ChannelTimeout: nothing came within ``timeout`` seconds.
            WireFormatError: the message is malformed.
        """
        mailbox = self.mailbox
        seq_at = self._in + _SEQ_AT
        expected = self._received + 1
        read_counter = _COUNTER.unpack_from
        policy = spin if isinstance(spin, SpinPolicy) else None
        if read_counter(mailbox, seq_at)[0] >= expected:
            if policy is not None:
                policy.waited(0)
            return self._take()
        spin_ns = spin.budget() if isinstance(spin, SpinPolicy) else spin
        now = time.perf_counter_ns
        began = now()
        if meet and spin_ns <= 0 and not (policy is not None and policy.machine_busy()):
            found = self._sleep_on_this_cpu(expected, timeout, check_alive)
            if policy is not None:
                policy.waited(now() - began)
            return found
        if self._meeting:
            self._publish_meeting(0)
        if timeout is not None:
            spin_ns = min(spin_ns, int(timeout * 1e9))  # the spin counts against the timeout too
        if spin_ns > 0:
            spin_until = began + spin_ns
            while now() < spin_until:
                # Yielding hands the CPU to the peer when both share one (a busy
                # or small machine), where a plain spin would only delay the answer.
                _yield()
                if read_counter(mailbox, seq_at)[0] >= expected:
                    if policy is not None:
                        policy.won()
                        policy.waited(now() - began)
                    return self._take()
            if policy is not None:
                policy.lost()
            if timeout is not None:
                timeout = max(0.0, timeout - (now() - began) / 1e9)
        found = self._sleep(expected, timeout, check_alive)
        if policy is not None:
            policy.waited(now() - began)
        return found

    def receive_on_peer_cpu(
        self, spin: Union[int, SpinPolicy], check_alive: Optional[Callable[[], None]] = None
    ) -> Tuple[bytes, List[int]]:
        """The next message, waited for where the peer sleeps: the worker's side of ``meet``.

        While the peer holds its thread on a CPU (:meth:`peer_meeting_cpu`),
        this thread waits on that CPU without spinning and has its own CPUs
        back as soon as the message comes; otherwise, and where it may not
        use that CPU, it waits as :meth:`receive_bytes` with ``spin`` does.
        """
        with held_on(self.peer_meeting_cpu()) as held:
            return self.receive_bytes(0 if held else spin, None, check_alive)

    def _sleep(
        self, expected: int, timeout: Optional[float], check_alive: Optional[Callable[[], None]]
    ) -> Tuple[bytes, List[int]]:
        """Wait for the next message in a blocking receive on the socket, in slices of growing length."""
        mailbox = self.mailbox
        seq_at = self._in + _SEQ_AT
        read_counter = _COUNTER.unpack_from
        deadline = None if timeout is None else time.monotonic() + timeout
        sleeping_at = self._in + _SLEEPING_AT
        wait = _FIRST_SLICE_S
        while True:
            _COUNTER.pack_into(mailbox, sleeping_at, 1)
            try:
                if read_counter(mailbox, seq_at)[0] >= expected:
                    return self._take()
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ChannelTimeout()
                    wait = min(wait, left)
                self._set_receive_timeout(wait)
                try:
                    try:
                        # The message itself (see send_bytes), a late doorbell, or a hang-up.
                        found = self._socket_message()
                    except BlockingIOError:  # the slice ran out
                        if check_alive is not None:
                            check_alive()
                        wait = min(wait * 2, POLL_SLICE_S)
                        continue
                except ChannelClosed:
                    # The peer may have published its last message just before it went.
                    if read_counter(mailbox, seq_at)[0] >= expected:
                        return self._take()
                    raise
                if found is not None:
                    self._received += 1
                    _COUNTER.pack_into(mailbox, self._out + _TAKEN_AT, self._received)
                    return found
            finally:
                _COUNTER.pack_into(mailbox, sleeping_at, 0)

    def _sleep_on_this_cpu(
        self, expected: int, timeout: Optional[float], check_alive: Optional[Callable[[], None]]
    ) -> Tuple[bytes, List[int]]:
        cpu = current_cpu()
        with held_on(cpu) as held:
            word = cpu + 1 if held and cpu is not None else 0
            if self._meeting != word:
                self._publish_meeting(word)
            return self._sleep(expected, timeout, check_alive)

    def _publish_meeting(self, word: int) -> None:
        _COUNTER.pack_into(self.mailbox, self._out + _MEETING_AT, word)
        self._meeting = word

    def peer_meeting_cpu(self) -> Optional[int]:
        """The CPU the peer sleeps on in its calls (``receive_bytes(meet=True)``), or None while it does not."""
        word = _COUNTER.unpack_from(self.mailbox, self._in + _MEETING_AT)[0]
        return word - 1 if word else None

    def _set_receive_timeout(self, seconds: float) -> None:
        # A blocking receive that times out (SO_RCVTIMEO) wakes at once when a message
        # comes, where poll() and then a receive cost a second wake-up path (twice the
        # latency on a loaded machine). Set only when the slice changes.
        if seconds != self._receive_timeout:
            whole = int(seconds)
            micros = max(int((seconds - whole) * 1e6), 0 if whole else 1)  # 0 s 0 us would mean "forever"
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(whole, micros))
            self._receive_timeout = seconds

    def receive(
        self,
        spin: Union[int, SpinPolicy],
        timeout: Optional[float] = None,
        check_alive: Optional[Callable[[], None]] = None,
        meet: bool = False,
    ) -> Tuple[wire.Message, List[int]]:
        """The next message, decoded, and the descriptors it carries (see :meth:`receive_bytes`)."""
        data, fds = self.receive_bytes(spin, timeout, check_alive, meet)
        return decode_checked(data, fds), fds

    def close(self) -> None:
        self.sock.close()


def decode_checked(data: bytes, fds: List[int]) -> wire.Message:
    """Decode a received message and check it announces as many segments as it brought descriptors.

    On any error the descriptors are closed.
    """
    try:
        message = wire.decode(data)
        if len(fds) != len(message.new_segments):
            raise WireFormatError(
                f"message announces {len(message.new_segments)} segments but carries {len(fds)} descriptors"
            )
    except BaseException:
        _close_all(fds)
        raise
    return message
