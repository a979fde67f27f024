"""The control channel between a parent and one worker (the mailbox's layout: :mod:`neuropod.ope.layouts`).

Two parts:

* a **mailbox**: a small shared-memory segment with one box per direction.
  A box holds a sequence counter, the length of the message and the message
  itself, plus a flag the receiver raises while it sleeps. Sending writes the
  message, then bumps the counter; receiving polls the counter. Polling
  shared memory costs nanoseconds where waking a sleeping process costs
  10-90 us, so a receiver that expects an answer soon busy-polls for a
  bounded time first. How long, and where it then sleeps, is not decided
  here: each receive is handed a :class:`~neuropod.ope.waiting.Waiting`,
  and this module only provides what it needs (:meth:`Channel.arrived`,
  :meth:`Channel.take`, :meth:`Channel.sleep`, the meeting word).
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
from . import layouts, wire
from .spin import SPIN_MODES
from .waiting import Waiting
from .wire import decode_checked

__all__ = ["Channel", "ChannelClosed", "ChannelTimeout", "POLL_SLICE_S", "MAILBOX_BYTES", "STAMP_SLOTS"]

#: Longest a sleeping reader waits before it runs its liveness check.
POLL_SLICE_S = 0.1
_FIRST_SLICE_S = 0.001
_FD_BYTES = array.array("i").itemsize
_ANCILLARY_SPACE = socket.CMSG_SPACE(wire.MAX_FDS_PER_MESSAGE * _FD_BYTES)
_TRUNCATED = socket.MSG_TRUNC | socket.MSG_CTRUNC

# The mailbox's layout (neuropod.ope.layouts).
_COUNTER = _LENGTH = layouts.WORD
_SEQ_AT, _LENGTH_AT, _SLEEPING_AT = layouts.SEQ_AT, layouts.LENGTH_AT, layouts.SLEEPING_AT
_SETTINGS_AT, _MEETING_AT, _TAKEN_AT = layouts.SETTINGS_AT, layouts.MEETING_AT, layouts.TAKEN_AT
_STAMPS_AT, _PAYLOAD_AT, _STAMPS = layouts.STAMPS_AT, layouts.PAYLOAD_AT, layouts.STAMPS
_SPIN_MODE_MASK, _TIMING_BIT = layouts.SPIN_MODE_MASK, layouts.TIMING_BIT
STAMP_SLOTS = layouts.STAMP_SLOTS
MAILBOX_BYTES = layouts.MAILBOX_BYTES
_BOX_BYTES = layouts.BOX_BYTES
_ON_SOCKET = layouts.ON_SOCKET
_DOORBELL = layouts.DOORBELL
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds
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
        self.received = 0  # messages taken from the peer's box
        #: Where the peer's box counts the messages it published (read with :data:`COUNTER`; :meth:`arrived`).
        self.inbox_seq_at = self._in + _SEQ_AT
        self._buffer = bytearray(wire.MAX_MESSAGE_BYTES + 1)
        self._view = memoryview(self._buffer)
        self._receive_timeout = 0.0  # the socket's SO_RCVTIMEO (0: none)
        self.meeting = 0  # the word at _MEETING_AT of our box, as we last wrote it

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

    def take(self) -> Tuple[bytes, List[int]]:
        """The bytes of the oldest message the peer has published and we have not read.

        When more than one is waiting, this one came through the socket (see the
        module's notes on order); the length field describes the last one.
        """
        self.received += 1
        mailbox, box = self.mailbox, self._in
        _COUNTER.pack_into(mailbox, self._out + _TAKEN_AT, self.received)
        if _COUNTER.unpack_from(mailbox, box + _SEQ_AT)[0] > self.received:
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
        layouts.MESSAGE.check_size(length)
        start = box + _PAYLOAD_AT
        return mailbox[start : start + length], []  # one copy, as bytes: the box is reused by the next message

    def arrived(self) -> bool:
        """Whether the peer has published a message we have not taken."""
        return bool(_COUNTER.unpack_from(self.mailbox, self.inbox_seq_at)[0] > self.received)

    def receive_bytes(
        self,
        waiting: Union[int, Waiting],
        timeout: Optional[float] = None,
        check_alive: Optional[Callable[[], None]] = None,
    ) -> Tuple[bytes, List[int]]:
        """The next message, still encoded, and the descriptors it carries.

        ``waiting`` decides how long to spin and where to sleep
        (:mod:`neuropod.ope.waiting`); a number is nanoseconds to spin.
        ``check_alive`` runs while the wait sleeps (it raises ChannelClosed
        when the peer is gone).

        Raises:
            ChannelClosed: the peer is gone.
            ChannelTimeout: nothing came within ``timeout`` seconds.
            WireFormatError: the message is malformed.
        """
        if not isinstance(waiting, Waiting):
            waiting = Waiting(waiting)
        return waiting.wait(self, timeout, check_alive)

    def sleep(self, timeout: Optional[float], check_alive: Optional[Callable[[], None]]) -> Tuple[bytes, List[int]]:
        """Wait for the next message in a blocking receive on the socket, in slices of growing length.

        ``check_alive`` runs whenever a slice ends empty-handed (it raises
        ChannelClosed when the peer is gone); ChannelTimeout after ``timeout``.
        """
        mailbox = self.mailbox
        expected = self.received + 1
        seq_at = self._in + _SEQ_AT
        read_counter = _COUNTER.unpack_from
        deadline = None if timeout is None else time.monotonic() + timeout
        sleeping_at = self._in + _SLEEPING_AT
        wait = _FIRST_SLICE_S
        while True:
            _COUNTER.pack_into(mailbox, sleeping_at, 1)
            try:
                if read_counter(mailbox, seq_at)[0] >= expected:
                    return self.take()
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
                        return self.take()
                    raise
                if found is not None:
                    self.received += 1
                    _COUNTER.pack_into(mailbox, self._out + _TAKEN_AT, self.received)
                    return found
            finally:
                _COUNTER.pack_into(mailbox, sleeping_at, 0)

    def publish_meeting(self, word: int) -> None:
        """Tell the peer the CPU this side sleeps on in its calls (1 + the CPU; 0: none)."""
        if self.meeting != word:
            _COUNTER.pack_into(self.mailbox, self._out + _MEETING_AT, word)
            self.meeting = word

    def peer_meeting_cpu(self) -> Optional[int]:
        """The CPU the peer sleeps on in its calls (``Waiting(meet=CALLER)``), or None while it does not."""
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
        waiting: Union[int, Waiting],
        timeout: Optional[float] = None,
        check_alive: Optional[Callable[[], None]] = None,
    ) -> Tuple[wire.Message, List[int]]:
        """The next message, decoded, and the descriptors it carries (see :meth:`receive_bytes`)."""
        data, fds = self.receive_bytes(waiting, timeout, check_alive)
        return decode_checked(data, fds), fds

    def close(self) -> None:
        self.sock.close()
