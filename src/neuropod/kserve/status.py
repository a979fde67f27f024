"""The one place that turns an exception into a protocol status.

Both adapters call :func:`status_for`; the status comes from the
exception's class alone, so a new error class gets the right HTTP and gRPC
codes everywhere by being added to one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Type

from ..errors import (
    AuthenticationError,
    InputValidationError,
    ModelNotFoundError,
    ModelNotReadyError,
    OutputValidationError,
    RequestTooLargeError,
    SpecError,
)

__all__ = ["Status", "status_for"]


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
_TABLE: Tuple[Tuple[Type[BaseException], Status], ...] = (
    (OutputValidationError, INTERNAL),
    (RequestTooLargeError, Status(413, "RESOURCE_EXHAUSTED")),
    (InputValidationError, Status(400, "INVALID_ARGUMENT")),
    (SpecError, Status(400, "INVALID_ARGUMENT")),
    (ModelNotFoundError, Status(404, "NOT_FOUND")),
    (ModelNotReadyError, Status(503, "UNAVAILABLE")),
    (AuthenticationError, Status(401, "UNAUTHENTICATED")),
)


def status_for(exc: BaseException) -> Status:
    """The status a request that raised ``exc`` is answered with (INTERNAL if unknown)."""
    for cls, status in _TABLE:
        if isinstance(exc, cls):
            return status
    return INTERNAL
