"""The control channel between a parent and one worker.

Two parts:

* a **mailbox**: a small shared-memory segment with one box per direction.
  A box holds a sequence counter, the length of the message and the message
  itself, plus a flag the receiver raises while it sleeps. Sending writes the
  message, then bumps the counter; receiving polls the counter. Polling
  shared memory costs nanoseconds where a socket round trip costs tens of
  microseconds and waking a sleeping process on another CPU 40-90 us, so the
  receiver busy-polls for a bounded time (``spin_ns``) first.
* a **SOCK_SEQPACKET Unix socket**: it carries the messages that bring file
  descriptors (new shared-memory segments, SCM_RIGHTS), wakes a receiver that
  stopped spinning and sleeps in ``poll`` (a one-byte doorbell), and tells
  each side when the other has gone (hang-up).

Ordering: the counter is written after the message, and x86 keeps stores in
order, so a reader that sees the new count sees the whole message. On other
CPUs (weaker memory order) every message goes through the socket and the
counter only signals it. The one race left is the classic one of a sleeper's
flag and a sender's counter passing each other in the store buffers; a
sleeper therefore wakes on its own after 1 ms, then 2, 4 ... up to
:data:`POLL_SLICE_S`, and looks again.
"""

from __future__ import annotations

import array
import collections
import mmap
import os
import platform
import select
import socket
import struct
import time
from typing import Callable, Deque, List, Optional, Sequence, Tuple

from ..errors import ChannelClosed, ChannelTimeout, WireFormatError
from . import wire

__all__ = ["Channel", "ChannelClosed", "ChannelTimeout", "POLL_SLICE_S", "MAILBOX_BYTES"]

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
_SEQ_AT, _LENGTH_AT, _SLEEPING_AT, _PAYLOAD_AT = 0, 8, 16, 64
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
        self._stash: Deque[Tuple[bytes, List[int]]] = collections.deque()
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)

    # -- sending -------------------------------------------------------------

    def send(self, message: wire.Message, fds: Sequence[int] = ()) -> None:
        data = wire.encode(message)
        mailbox, box = self.mailbox, self._out
        if fds or not _MESSAGES_IN_MAILBOX:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            else:
                self.sock.send(data)
            length = _ON_SOCKET
        else:
            start = box + _PAYLOAD_AT
            mailbox[start : start + len(data)] = data
            length = len(data)
        _LENGTH.pack_into(mailbox, box + _LENGTH_AT, length)
        self._sent += 1
        _COUNTER.pack_into(mailbox, box + _SEQ_AT, self._sent)  # publishes the message
        if _COUNTER.unpack_from(mailbox, box + _SLEEPING_AT)[0]:
            self.sock.send(_DOORBELL)

    # -- receiving -----------------------------------------------------------

    def _socket_message(self, block: bool) -> Optional[Tuple[bytes, List[int]]]:
        """The next real message from the socket (doorbells are skipped), or None if none is waiting."""
        while True:
            try:
                size, ancillary, flags, _ = self.sock.recvmsg_into(
                    [self._view], _ANCILLARY_SPACE, 0 if block else socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return None
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
            if size == 1 and self._buffer[0:1] == _DOORBELL and not fds:
                continue
            return bytes(self._view[:size]), fds

    def _take(self) -> Tuple[wire.Message, List[int]]:
        """Read the oldest message the peer has published and we have not read.

        A side sends several messages without an answer in between only when
        all but the last carry descriptors (SEGMENTS batches), and those go
        through the socket, in order. So when more than one is waiting, this
        one came through the socket; the length field describes the last one.
        """
        self._received += 1
        mailbox, box = self.mailbox, self._in
        if _COUNTER.unpack_from(mailbox, box + _SEQ_AT)[0] > self._received:
            length = _ON_SOCKET
        else:
            length = _LENGTH.unpack_from(mailbox, box + _LENGTH_AT)[0]
        fds: List[int] = []
        if length == _ON_SOCKET:
            found = self._stash.popleft() if self._stash else self._socket_message(block=True)
            assert found is not None
            data, fds = found
        else:
            if length > wire.MAX_MESSAGE_BYTES:
                raise WireFormatError(f"mailbox message claims {length} bytes; the limit is {wire.MAX_MESSAGE_BYTES}")
            start = box + _PAYLOAD_AT
            data = mailbox[start : start + length]  # one copy, as bytes: the box is reused by the next message
        try:
            message = wire.decode(data)
            if len(fds) != len(message.new_segments):
                raise WireFormatError(
                    f"message announces {len(message.new_segments)} segments but carries {len(fds)} descriptors"
                )
        except BaseException:
            _close_all(fds)
            raise
        return message, fds

    def receive(
        self,
        spin_ns: int,
        timeout: Optional[float] = None,
        check_alive: Optional[Callable[[], None]] = None,
    ) -> Tuple[wire.Message, List[int]]:
        """The next message and the descriptors it carries.

        Raises:
            ChannelClosed: the peer is gone.
            ChannelTimeout: nothing came within ``timeout`` seconds.
            WireFormatError: the message is malformed.
        """
        mailbox = self.mailbox
        seq_at = self._in + _SEQ_AT
        expected = self._received + 1
        read_counter = _COUNTER.unpack_from
        if read_counter(mailbox, seq_at)[0] >= expected:
            return self._take()
        if spin_ns > 0:
            now = time.perf_counter_ns
            spin_until = now() + spin_ns
            while now() < spin_until:
                # Yielding hands the CPU to the peer when both share one (a busy
                # or small machine), where a plain spin would only delay the answer.
                _yield()
                if read_counter(mailbox, seq_at)[0] >= expected:
                    return self._take()
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
                if self._poller.poll(wait * 1000):
                    # Doorbells, a message that brings descriptors (kept for _take), or a hang-up.
                    try:
                        found = self._socket_message(block=False)
                    except ChannelClosed:
                        # The peer may have published its last message just before it went.
                        if read_counter(mailbox, seq_at)[0] >= expected:
                            return self._take()
                        raise
                    if found is not None:
                        self._stash.append(found)
                elif check_alive is not None:
                    try:
                        check_alive()
                    except ChannelClosed:
                        if read_counter(mailbox, seq_at)[0] >= expected:
                            return self._take()
                        raise
            finally:
                _COUNTER.pack_into(mailbox, sleeping_at, 0)
            wait = min(wait * 2, POLL_SLICE_S)

    def close(self) -> None:
        for _, fds in self._stash:
            _close_all(fds)
        self._stash.clear()
        self.sock.close()
