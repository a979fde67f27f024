"""Slow and greedy REST clients: a bound on connections per client address, a deadline for the request head.

:class:`GuardedProtocolFactory` wraps aiohttp's protocol factory (the
``web.Server`` of an ``AppRunner``) for ``loop.create_server``. Each
connection gets a thin protocol in front of aiohttp's that

* refuses (closes) a connection from an address that already holds
  ``max_per_client`` connections, and
* closes a connection whose first request head (request line and headers,
  up to the blank line) has not arrived ``header_timeout_s`` after connecting.

Bodies get their own deadline where they are read (the REST adapter); idle
keep-alive connections are aiohttp's ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Callable, Optional

__all__ = ["GuardedProtocolFactory"]

logger = logging.getLogger("neuropod.serving")

_HEAD_END = b"\r\n\r\n"


class GuardedProtocolFactory:
    """A protocol factory bounding connections per client and the time to send a request head.

    Args:
        factory: aiohttp's protocol factory.
        max_per_client: most open connections from one client address.
        header_timeout_s: seconds a new connection has to send its first request head.
    """

    def __init__(self, factory: Callable[[], Any], max_per_client: int, header_timeout_s: float) -> None:
        self._factory = factory
        self.max_per_client = max_per_client
        self.header_timeout_s = header_timeout_s
        self.open_by_client: Counter[str] = Counter()

    def __call__(self) -> asyncio.Protocol:
        return _GuardedProtocol(self, self._factory())


class _GuardedProtocol(asyncio.Protocol):
    def __init__(self, guard: GuardedProtocolFactory, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._client: Optional[str] = None
        self._head = b""
        self._head_seen = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._refused = False

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        counts = self._guard.open_by_client
        if counts[client] >= self._guard.max_per_client:
            self._refused = True
            logger.warning(
                "refused a connection: too many from one client",
                extra={"client": client, "limit": self._guard.max_per_client},
            )
            transport.abort()
            return
        counts[client] += 1
        self._client = client
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout_s, self._too_slow)
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        if not self._head_seen:
            logger.info(
                "closed a connection that sent no request head in time",
                extra={"client": self._client, "timeout_s": self._guard.header_timeout_s},
            )
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            # Only the tail of what came so far can complete the blank line.
            self._head = (self._head + data)[-(len(_HEAD_END) + len(data)) :]
            if _HEAD_END in self._head:
                self._head_seen = True
                self._head = b""
                if self._timer is not None:
                    self._timer.cancel()
        self._inner.data_received(data)

    def eof_received(self) -> Any:
        if self._refused:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._refused:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._client is not None:
            counts = self._guard.open_by_client
            counts[self._client] -= 1
            if counts[self._client] <= 0:
                del counts[self._client]
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()
