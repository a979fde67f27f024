"""Which error class goes with which protocol status, in both directions.

The server's adapters answer an exception with :func:`status_for` (the status
comes from its class alone); the remote client turns a status back into the
class with :func:`error_class_for_http` and :func:`error_class_for_grpc`. One
table serves both, so a class and its status are written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, Type

from ..errors import (
    AuthenticationError,
    InputValidationError,
    ModelNotFoundError,
    ModelNotReadyError,
    NeuropodError,
    OutputValidationError,
    RemoteError,
    RequestTooLargeError,
    SpecError,
)

__all__ = ["Status", "INTERNAL", "status_for", "error_class_for_http", "error_class_for_grpc"]


@dataclass(frozen=True)
class Status:
    """A failure as both protocols state it.

    Attributes:
        http: the HTTP status code.
        grpc: the name of the ``grpc.StatusCode`` member.
    """

    http: int
    grpc: str


INTERNAL = Status(500, "INTERNAL")

# First match wins, so subclasses come before their bases: an
# OutputValidationError is a ValueError but means the model broke its spec.
_TABLE: Tuple[Tuple[Type[NeuropodError], Status], ...] = (
    (OutputValidationError, INTERNAL),
    (RequestTooLargeError, Status(413, "RESOURCE_EXHAUSTED")),
    (InputValidationError, Status(400, "INVALID_ARGUMENT")),
    (SpecError, Status(400, "INVALID_ARGUMENT")),
    (ModelNotFoundError, Status(404, "NOT_FOUND")),
    (ModelNotReadyError, Status(503, "UNAVAILABLE")),  # and ModelClosedError
    (AuthenticationError, Status(401, "UNAUTHENTICATED")),
)

# The other way: the first (most specific) class listed for a status. SpecError
# shares 400 with InputValidationError, which is what a client's request broke.
_BY_HTTP: Dict[int, Type[NeuropodError]] = {}
_BY_GRPC: Dict[str, Type[NeuropodError]] = {}
for _cls, _status in _TABLE:
    if _status is not INTERNAL:
        _BY_HTTP.setdefault(_status.http, _cls)
        _BY_GRPC.setdefault(_status.grpc, _cls)


def status_for(exc: BaseException) -> Status:
    """The status a request that raised ``exc`` is answered with (INTERNAL if unknown)."""
    for cls, status in _TABLE:
        if isinstance(exc, cls):
            return status
    return INTERNAL


def error_class_for_http(code: int) -> Type[NeuropodError]:
    """The error class a client raises for an HTTP error status (RemoteError when none matches)."""
    return _BY_HTTP.get(code, RemoteError)


def error_class_for_grpc(code: str) -> Type[NeuropodError]:
    """The error class a client raises for a gRPC status name (RemoteError when none matches)."""
    return _BY_GRPC.get(code, RemoteError)
