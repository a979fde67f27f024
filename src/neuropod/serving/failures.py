"""What a client is told when its request fails, for both protocols.

A client's mistake (a 4xx status) is answered with the first line of its
error, bounded: the client needs to know what to fix. A failure of the model
or the server (500 / INTERNAL) is answered with a request id and nothing
else: tracebacks, file paths and the model author's messages go to the
server log under that id, where the operator finds them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Tuple

from ..errors import ServerFailure
from ..kserve.status import INTERNAL, Status, status_for

__all__ = ["ServerFailure", "public_failure", "MAX_MESSAGE_CHARS"]

logger = logging.getLogger("neuropod.serving")

#: Longest error message a client is sent.
MAX_MESSAGE_CHARS = 1000


def public_failure(exc: BaseException, request_id: str = "", model: str = "") -> Tuple[Status, str]:
    """The status and the one-line message a client gets for ``exc`` (logging INTERNAL ones)."""
    status = status_for(exc)
    if isinstance(exc, ServerFailure):
        return status, str(exc)
    if status is INTERNAL:
        request_id = request_id or uuid.uuid4().hex[:16]
        logger.error(
            "request failed",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"request_id": request_id, "model": model, "error_type": type(exc).__name__},
        )
        what = f"model {model!r} failed on this request" if model else "the server failed on this request"
        return status, f"{what}; request id {request_id} (the server log has the details)"
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return status, line


def sanitised(exc: BaseException, request_id: str = "", model: str = "") -> BaseException:
    """``exc`` itself for a client's mistake; a logged :class:`ServerFailure` in its place otherwise."""
    status, message = public_failure(exc, request_id, model)
    if status is INTERNAL and not isinstance(exc, ServerFailure):
        return ServerFailure(message)
    return exc
