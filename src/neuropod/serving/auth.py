"""Which of the server's methods need the bearer token: one table for both protocols.

Each logical method of the KServe v2 protocol (plus the Prometheus page) is
listed once with whether it needs the token. The server's health probes
(live, ready) stay open, so load balancers and orchestrators can probe a
server they hold no secret for; everything else needs ``Authorization:
Bearer <token>`` (a header over REST, metadata over gRPC) when the server has
a token. Model readiness needs it too: answered openly it tells anyone which
model names exist (NOT_FOUND or not).
"""

from __future__ import annotations

import hmac
from typing import Dict, Optional, Union

from ..errors import AuthenticationError

__all__ = ["NEEDS_TOKEN", "BearerToken"]

#: Logical method -> whether it needs the token.
NEEDS_TOKEN: Dict[str, bool] = {
    "ServerLive": False,  # health probes: open
    "ServerReady": False,
    "ModelReady": True,  # a per-model answer reveals which names exist
    "ServerMetadata": True,
    "ModelMetadata": True,
    "ModelInfer": True,
    "Metrics": True,
    "ModelStatistics": True,
    "RepositoryIndex": True,
    "RepositoryModelLoad": True,
    "RepositoryModelUnload": True,
    "SystemSharedMemoryStatus": True,
    "SystemSharedMemoryRegister": True,
    "SystemSharedMemoryUnregister": True,
}


class BearerToken:
    """Checks the ``authorization`` a call carries against the server's token (in constant time).

    Args:
        token: the token calls must carry; None lets every call through.
    """

    def __init__(self, token: Optional[str]) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def needed(self, method: str) -> bool:
        """Whether calls to ``method`` must carry the token (there is one, and the method needs it)."""
        return self._expected is not None and NEEDS_TOKEN[method]

    def check(self, method: str, given: Union[str, bytes, None], where: str) -> None:
        """Let a call to ``method`` through, or raise AuthenticationError.

        Args:
            method: a key of :data:`NEEDS_TOKEN`.
            given: the call's ``authorization`` value, or None when it has none.
            where: how the token is sent in this protocol, for the message.
        """
        if self._expected is None or not NEEDS_TOKEN[method]:
            return
        try:
            value = given.encode() if isinstance(given, str) else (given or b"")
        except UnicodeEncodeError:  # bytes that were not UTF-8 (kept as surrogates): no token matches them
            value = b""
        if not hmac.compare_digest(value, self._expected):
            raise AuthenticationError(f"{method} needs the server's bearer token ({where} 'Bearer <token>')")
