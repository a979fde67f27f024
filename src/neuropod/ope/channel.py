"""The control channel: one SOCK_SEQPACKET Unix socket pair per worker.

A seqpacket socket keeps message boundaries and carries file descriptors
(SCM_RIGHTS), which is how shared-memory segments reach the peer. Waiting for
a message first spins on non-blocking reads for a bounded time (``spin_ns``):
waking a sleeping process on another CPU costs tens of microseconds, more
than a small model call, so a short spin answers those calls without any
wake-up. After the spin it blocks in ``poll`` in short slices, calling a
liveness check between slices (is the worker / the parent still there?).
"""

from __future__ import annotations

import array
import os
import select
import socket
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import WireFormatError
from . import wire

__all__ = ["Channel", "ChannelClosed", "ChannelTimeout", "POLL_SLICE_S"]

#: How often a blocked reader runs its liveness check.
POLL_SLICE_S = 0.1
_FD_BYTES = array.array("i").itemsize
_ANCILLARY_SPACE = socket.CMSG_SPACE(wire.MAX_FDS_PER_MESSAGE * _FD_BYTES)
_TRUNCATED = socket.MSG_TRUNC | socket.MSG_CTRUNC
_yield = getattr(os, "sched_yield", lambda: None)


class ChannelClosed(Exception):
    """The peer closed its end (it exited or crashed)."""


class ChannelTimeout(Exception):
    """No message arrived within the timeout."""


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of a control socket. Not thread-safe: one caller at a time."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._buffer = bytearray(wire.MAX_MESSAGE_BYTES + 1)
        self._view = memoryview(self._buffer)
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)

    def send(self, message: wire.Message, fds: Sequence[int] = ()) -> None:
        data = wire.encode(message)
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.send(data)

    def _read(self) -> Optional[Tuple[wire.Message, List[int]]]:
        try:
            size, ancillary, flags, _ = self.sock.recvmsg_into([self._view], _ANCILLARY_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except ConnectionResetError:
            raise ChannelClosed() from None
        fds: List[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % _FD_BYTES
                fds.extend(array.array("i", data[:usable]))
        if size == 0 and not fds:
            raise ChannelClosed()
        try:
            if flags & _TRUNCATED:
                raise WireFormatError("a control message or its descriptors were truncated")
            message = wire.decode(self._view[:size])
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
        read = self._read
        result = read()
        if result is not None:
            return result
        now = time.perf_counter_ns
        if spin_ns > 0:
            spin_until = now() + spin_ns
            while now() < spin_until:
                # Yielding hands the CPU to the peer when both share it (a busy or
                # small machine), where a plain spin would only delay the answer.
                _yield()
                result = read()
                if result is not None:
                    return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_SLICE_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise ChannelTimeout()
            if self._poller.poll(wait * 1000):
                result = read()
                if result is not None:
                    return result
            elif check_alive is not None:
                check_alive()

    def close(self) -> None:
        self.sock.close()
