"""A model server speaking the KServe v2 (Open Inference Protocol) over gRPC and REST.

Layout: :mod:`.dataplane` (protocol-neutral requests, health, metadata,
inference), :mod:`.repository` (which models, loaded how), :mod:`.batching`,
and the thin :mod:`.grpc_adapter` and :mod:`.rest_adapter` run by
:mod:`.server`. The protocol itself (tensor wire formats, REST framing, gRPC
messages, exception class <-> status) is :mod:`neuropod.kserve`, shared with
the remote client. Needs the ``serve`` extra (``pip install 'neuropod-python[serve]'``);
importing this package alone imports none of it.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

__all__ = ["ModelServer", "ServerConfig", "ModelRepository", "ModelSettings", "ServedModel"]

_EXPORTS: Dict[str, str] = {
    "ModelServer": "server",
    "ServerConfig": "server",
    "ModelRepository": "repository",
    "ModelSettings": "repository",
    "ServedModel": "repository",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuropod.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> Any:
    return sorted(list(globals()) + list(_EXPORTS))
