"""The KServe v2 REST body: a JSON document, optionally followed by raw tensor bytes.

With the *binary tensor data* extension, a tensor entry carries
``parameters.binary_data_size`` instead of ``data``, its bytes sit in the tail
after the JSON in entry order, and the ``Inference-Header-Content-Length``
header gives the length of the JSON part. Requests (``inputs``) and responses
(``outputs``) are framed the same way, so the server and the remote client
both use :func:`encode_tensors`, :func:`join_body`, :func:`split_body` and
:func:`decode_tensors`. Pure standard library and numpy.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputValidationError
from . import HEADER_LENGTH_HEADER
from .datatypes import datatype_of, decode_json, decode_raw, encode_raw, json_values

__all__ = ["JSON_CONTENT_TYPE", "BINARY_CONTENT_TYPE", "encode_tensors", "join_body", "split_body", "decode_tensors"]

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


def encode_tensors(
    tensors: Mapping[str, np.ndarray], raw: Callable[[str], bool]
) -> Tuple[List[Dict[str, Any]], List[bytes]]:
    """JSON entries for ``tensors`` and the raw chunks of those for which ``raw(name)`` is true."""
    entries = []
    chunks = []
    for name, array in tensors.items():
        entry: Dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if raw(name):
            chunk = encode_raw(array)
            chunks.append(chunk)
            entry["parameters"] = {"binary_data_size": len(chunk)}
        else:
            entry["data"] = json_values(array)
        entries.append(entry)
    return entries, chunks


def join_body(document: Mapping[str, Any], chunks: List[bytes]) -> Tuple[bytes, Dict[str, str]]:
    """The body of ``document`` followed by ``chunks``, and its Content-Type (and length) headers."""
    header = json.dumps(document).encode("utf-8")
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([header, *chunks]), {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(header))}


def split_body(body: bytes, header_length: Optional[str]) -> Tuple[Dict[str, Any], memoryview]:
    """The JSON document of a body and the raw tail after it.

    Raises:
        InputValidationError: a bad length header or JSON that is not an object.
    """
    if header_length is None:
        json_part, tail = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InputValidationError(f"{HEADER_LENGTH_HEADER}: expected an integer, got {header_length!r}") from None
        if not 0 <= length <= len(body):
            raise InputValidationError(f"{HEADER_LENGTH_HEADER} is {length}, but the body holds {len(body)} bytes")
        json_part, tail = body[:length], memoryview(body)[length:]
    try:
        document = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputValidationError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputValidationError("body is nested too deeply") from None
    if not isinstance(document, dict):
        raise InputValidationError("body must be a JSON object")
    return document, tail


def parameters(entry: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """An entry's ``parameters`` object (empty when absent)."""
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputValidationError(f"{where}: 'parameters' must be a JSON object")
    return params


def decode_tensors(entries: Any, tail: memoryview, kind: str) -> Dict[str, np.ndarray]:
    """numpy arrays from the ``inputs`` or ``outputs`` entries of a document and its raw tail.

    Args:
        entries: the list of tensor entries.
        tail: the raw bytes after the JSON.
        kind: ``"input"`` or ``"output"``, for messages.

    Raises:
        InputValidationError: a malformed entry, a repeated name, or raw bytes
            that do not add up (every byte of the tail must be claimed).
    """
    if not isinstance(entries, list):
        raise InputValidationError(f"body: '{kind}s' must be a list of tensors")
    tensors: Dict[str, np.ndarray] = {}
    offset = 0
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputValidationError(f"{kind}s[{index}]: expected an object with name, datatype, shape and data")
        name = entry["name"]
        datatype, shape = entry.get("datatype"), entry.get("shape")
        if not isinstance(datatype, str) or not isinstance(shape, list):
            raise InputValidationError(f"{kind} {name!r}: 'datatype' (a string) and 'shape' (a list) are required")
        if name in tensors:
            raise InputValidationError(f"{kind} {name!r} appears more than once")
        size = parameters(entry, f"{kind} {name!r}").get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise InputValidationError(
                    f"{kind} {name!r}: binary_data_size {size!r} does not fit the {len(tail) - offset} bytes left"
                )
            tensors[name] = decode_raw(datatype, shape, tail[offset : offset + size], name)
            offset += size
        elif "data" in entry:
            tensors[name] = decode_json(datatype, shape, entry["data"], name)
        else:
            raise InputValidationError(f"{kind} {name!r}: has neither 'data' nor binary_data_size")
    if offset != len(tail):
        raise InputValidationError(f"the body holds {len(tail) - offset} binary bytes that no {kind} claims")
    return tensors
