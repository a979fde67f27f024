"""The KServe v2 (Open Inference Protocol) as both ends speak it: the model server and the remote client.

* :mod:`.datatypes` — how a tensor travels: datatype names, raw bytes, typed contents, JSON.
* :mod:`.rest` — the REST body: JSON, optionally followed by raw tensor bytes.
* :mod:`.proto` — the gRPC messages (needs ``protobuf``, part of the ``serve`` extra).
* :mod:`.status` — which error class goes with which HTTP and gRPC status, both ways.

The constants both ends share live here. Importing this package imports no
gRPC, protobuf or HTTP library. Internal: the public faces are
:mod:`neuropod.serving` and ``load_neuropod(URL)`` (docs/api.md).
"""

from __future__ import annotations

__all__ = ["BINARY_EXTENSION", "DEFAULT_MAX_MESSAGE_BYTES", "EXTENSIONS", "HEADER_LENGTH_HEADER"]

#: Largest request or response either protocol accepts unless configured otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: The protocol extension for raw tensor bytes after a REST body's JSON.
BINARY_EXTENSION = "binary_tensor_data"

#: Protocol extensions neuropod's server implements (listed in its server metadata).
EXTENSIONS = (BINARY_EXTENSION, "statistics", "model_repository", "system_shared_memory")

#: The HTTP header giving the length of the JSON part of a body that carries raw tensors after it.
HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
