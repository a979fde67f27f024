"""Structured logs: one JSON object per line, for the server's log stream.

Nothing here runs at import time: ``neuropod serve`` (or an embedding
program that wants it) calls :func:`configure_json_logging`. Library code
only logs through ``logging.getLogger("neuropod.serving")`` with ``extra``
fields, which the formatter puts into the JSON object.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, Optional, TextIO

__all__ = ["JsonLogFormatter", "configure_json_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """Formats a record as a JSON line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO, stream: Optional[TextIO] = None) -> logging.Handler:
    """Send ``neuropod.*`` logs to ``stream`` (stderr) as JSON lines; returns the handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("neuropod")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
