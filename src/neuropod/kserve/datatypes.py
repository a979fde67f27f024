"""KServe v2 tensor wire formats: datatype names, raw bytes, typed contents and JSON.

Everything the protocol says about how a tensor travels lives here, as
constants and pure functions over numpy arrays; the gRPC and REST adapters
only move these bytes and lists in and out of their messages.

* Raw form (gRPC ``raw_*_contents``, REST binary extension): numbers as
  little-endian C-order bytes; FP16 and BF16 only travel this way (or as JSON
  numbers). BYTES elements each carry a 4-byte little-endian length prefix.
* Typed form (gRPC ``contents``): one repeated field per datatype family.
* JSON form (REST): a flat (or nested) list in C order.

No length or shape that came over the wire is trusted: element counts are
checked against byte counts before anything is reshaped.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from ..errors import InputValidationError
from ..spec import numpy_dtype

__all__ = [
    "DTYPE_TO_DATATYPE",
    "DATATYPE_TO_DTYPE",
    "CONTENTS_FIELD",
    "BYTES_LENGTH_PREFIX",
    "MAX_RANK",
    "datatype_of",
    "dtype_for_datatype",
    "check_shape",
    "decode_raw",
    "encode_raw",
    "decode_contents",
    "contents_values",
    "decode_json",
    "json_values",
]

#: Raw tensor bytes: a message field, or a slice of a body (no copy).
Buffer = Union[bytes, memoryview]

#: neuropod dtype -> KServe v2 datatype.
DTYPE_TO_DATATYPE: Dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "float32": "FP32",
    "float64": "FP64",
    "string": "BYTES",
}

#: KServe v2 datatype -> neuropod dtype.
DATATYPE_TO_DTYPE: Dict[str, str] = {v: k for k, v in DTYPE_TO_DATATYPE.items()}

#: The ``InferTensorContents`` field that holds each datatype (FP16/BF16 have none: raw only).
CONTENTS_FIELD: Dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: Each BYTES element in raw form: this length prefix, then the bytes.
BYTES_LENGTH_PREFIX = struct.Struct("<I")

#: Deepest tensor a request may describe.
MAX_RANK = 32

#: Most elements a shape may describe, counting only its non-zero dimensions: an
#: empty tensor ``[0, 10**29]`` carries no data, yet numpy still refuses to
#: reshape to it, so the extent is bounded even when the element count is 0.
#: 2**40 elements is terabytes, far past any request's byte limit.
MAX_EXTENT = 2**40


#: numpy dtype -> KServe datatype, filled as dtypes are met (``dtype.name`` is slow to compute).
_DATATYPE_OF_DTYPE: Dict[np.dtype, str] = {}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype of a numpy array (unicode and bytes arrays are BYTES)."""
    dtype = array.dtype
    datatype = _DATATYPE_OF_DTYPE.get(dtype)
    if datatype is not None:
        return datatype
    if dtype.kind in "USO":
        return "BYTES"
    datatype = DTYPE_TO_DATATYPE.get(dtype.name)
    if datatype is None:
        raise InputValidationError(f"numpy dtype {dtype} has no KServe v2 datatype")
    _DATATYPE_OF_DTYPE[dtype] = datatype
    return datatype


def dtype_for_datatype(datatype: str, tensor: str) -> str:
    """The neuropod dtype of a KServe datatype; names the tensor when unknown."""
    dtype = DATATYPE_TO_DTYPE.get(datatype)
    if dtype is None:
        raise InputValidationError(
            f"tensor {tensor!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPE_TO_DTYPE)}"
        )
    return dtype


def check_shape(shape: Sequence[Any], tensor: str) -> Tuple[Tuple[int, ...], int]:
    """Check a shape from the wire; return it as a tuple and its element count."""
    if len(shape) > MAX_RANK:
        raise InputValidationError(f"tensor {tensor!r}: rank {len(shape)} is above the limit of {MAX_RANK}")
    dims = tuple(shape)
    for dim in dims:  # a loop, not all(...): this runs for every tensor of every request
        if type(dim) is not int or dim <= 0:
            return _check_odd_shape(shape, tensor)
    count = math.prod(dims)
    if count > MAX_EXTENT:
        return _check_odd_shape(shape, tensor)
    return dims, count  # the usual shape: no zero, nothing odd


def _check_odd_shape(shape: Sequence[Any], tensor: str) -> Tuple[Tuple[int, ...], int]:
    count = 1
    extent = 1  # the product of the non-zero dimensions
    dims = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise InputValidationError(f"tensor {tensor!r}: shape {list(shape)} must hold non-negative ints")
        dims.append(int(dim))
        count *= int(dim)
        extent *= max(int(dim), 1)
        if extent > MAX_EXTENT:
            raise InputValidationError(
                f"tensor {tensor!r}: shape {list(shape)} is too large; its non-zero dimensions may span "
                f"at most {MAX_EXTENT} elements"
            )
    return tuple(dims), count


def _reshaped(array: np.ndarray, dims: Tuple[int, ...], tensor: str) -> np.ndarray:
    """``array`` in shape ``dims``; numpy's refusal becomes an error that names the tensor."""
    try:
        return array.reshape(dims)
    except ValueError as exc:
        raise InputValidationError(f"tensor {tensor!r}: cannot take shape {list(dims)}: {exc}") from None


@functools.cache
def _wire_dtype(dtype: str) -> np.dtype:
    """The little-endian numpy dtype of a numeric neuropod dtype on the wire."""
    return numpy_dtype(dtype).newbyteorder("<")


def _decode_bytes_elements(data: Buffer, count: int, tensor: str) -> List[bytes]:
    items: List[bytes] = []
    offset = 0
    end = len(data)
    prefix = BYTES_LENGTH_PREFIX.size
    view = memoryview(data)
    for _ in range(count):
        if offset + prefix > end:
            raise InputValidationError(f"tensor {tensor!r}: raw BYTES data ends after {len(items)} of {count} elements")
        (length,) = BYTES_LENGTH_PREFIX.unpack_from(data, offset)
        offset += prefix
        if offset + length > end:
            raise InputValidationError(
                f"tensor {tensor!r}: raw BYTES element {len(items)} claims {length} bytes, only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != end:
        raise InputValidationError(
            f"tensor {tensor!r}: raw BYTES data holds {end - offset} bytes past its {count} elements"
        )
    return items


def _strings(items: Sequence[Any], tensor: str) -> np.ndarray:
    """A numpy unicode array from wire elements (bytes are decoded as UTF-8)."""
    try:
        values = [item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else str(item) for item in items]
    except UnicodeDecodeError as exc:
        raise InputValidationError(f"tensor {tensor!r}: a BYTES element is not valid UTF-8: {exc}") from None
    return np.array(values, dtype="U") if values else np.zeros(0, dtype="U1")


def _numbers(values: Sequence[Any], dtype: np.dtype, datatype: str, tensor: str) -> np.ndarray:
    """A numpy array of ``values``, refusing what numpy would silently change.

    Integers out of the dtype's range are refused, not wrapped; a fraction for
    an integer datatype is refused, not truncated; a finite number too large
    for a float datatype is refused, not turned into infinity.
    """
    has_floats = False
    if dtype.kind in "iu" and len(values):
        for value in values:
            if isinstance(value, float):
                if not value.is_integer():
                    raise InputValidationError(f"tensor {tensor!r}: {datatype} takes whole numbers, got {value!r}")
                has_floats = True
        info = np.iinfo(dtype)
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InputValidationError(f"tensor {tensor!r}: a value does not fit {datatype}: {bad}")
    try:
        if has_floats:
            # Whole floats (2.0) are exact as Python ints; numpy would go through float64 otherwise.
            values = [int(value) if isinstance(value, float) else value for value in values]
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InputValidationError(f"tensor {tensor!r}: a value does not fit {datatype}: {exc}") from None
    if _is_float(dtype):
        _refuse_overflow(values, array, datatype, tensor)
    return array


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"  # ml_dtypes' bfloat16 is kind "V"


def _refuse_overflow(values: Sequence[Any], array: np.ndarray, datatype: str, tensor: str) -> None:
    """Refuse finite ``values`` that became infinite in ``array`` (1e300 as FP32)."""
    finite = np.isfinite(array.astype(np.float32) if array.dtype.name == "bfloat16" else array)
    if finite.all():
        return
    wide = np.array(values, dtype=np.float64)  # the values themselves, before narrowing
    overflowed = np.isfinite(wide) & ~finite
    if overflowed.any():
        bad = float(wide[overflowed][0])
        raise InputValidationError(f"tensor {tensor!r}: {bad!r} is out of the range of {datatype}")


def decode_raw(datatype: str, shape: Sequence[Any], data: Buffer, tensor: str) -> np.ndarray:
    """A numpy array from raw bytes; checks the byte count against the shape.

    Numbers come back as a read-only view of ``data`` (no copy); BYTES as a
    unicode array.
    """
    dtype = dtype_for_datatype(datatype, tensor)
    dims, count = check_shape(shape, tensor)
    if dtype == "string":
        return _reshaped(_strings(_decode_bytes_elements(data, count, tensor), tensor), dims, tensor)
    np_dtype = _wire_dtype(dtype)
    expected = count * np_dtype.itemsize
    if len(data) != expected:
        raise InputValidationError(
            f"tensor {tensor!r}: {datatype} shape {list(dims)} needs {expected} raw bytes, got {len(data)}"
        )
    return _reshaped(np.frombuffer(data, dtype=np_dtype), dims, tensor)


def encode_raw(array: np.ndarray) -> bytes:
    """Raw bytes of an array: little-endian numbers, or length-prefixed UTF-8 strings."""
    if array.dtype.kind in "USO":
        pack = BYTES_LENGTH_PREFIX.pack
        parts = []
        for item in array.reshape(-1).tolist():
            encoded = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def decode_contents(datatype: str, shape: Sequence[Any], contents: Any, tensor: str) -> np.ndarray:
    """A numpy array from a gRPC ``InferTensorContents`` message."""
    dtype = dtype_for_datatype(datatype, tensor)
    dims, count = check_shape(shape, tensor)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InputValidationError(f"tensor {tensor!r}: {datatype} cannot travel in typed contents; send it raw")
    values = getattr(contents, field)
    if len(values) != count:
        raise InputValidationError(
            f"tensor {tensor!r}: shape {list(dims)} needs {count} values, {field} holds {len(values)}"
        )
    if dtype == "string":
        return _reshaped(_strings(values, tensor), dims, tensor)
    return _reshaped(_numbers(values, numpy_dtype(dtype), datatype, tensor), dims, tensor)


def contents_values(array: np.ndarray) -> Tuple[str, List[Any]]:
    """The ``InferTensorContents`` field name and values for an array."""
    datatype = datatype_of(array)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InputValidationError(f"{datatype} cannot travel in typed contents")
    if datatype == "BYTES":
        return field, [
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1).tolist()
        ]
    return field, array.reshape(-1).tolist()


def _flatten(data: Any) -> List[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: List[Any] = []
    stack = [data]
    # Iterative so a deeply nested body cannot exhaust the recursion limit.
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def decode_json(datatype: str, shape: Sequence[Any], data: Any, tensor: str) -> np.ndarray:
    """A numpy array from a REST JSON ``data`` list (flat or nested, C order)."""
    dtype = dtype_for_datatype(datatype, tensor)
    dims, count = check_shape(shape, tensor)
    flat = _flatten(data)
    if len(flat) != count:
        raise InputValidationError(
            f"tensor {tensor!r}: shape {list(dims)} needs {count} values, data holds {len(flat)}"
        )
    if dtype == "string":
        if not all(isinstance(item, str) for item in flat):
            raise InputValidationError(f"tensor {tensor!r}: BYTES data must be a list of strings")
        return _reshaped(_strings(flat, tensor), dims, tensor)
    if dtype == "bool":
        if not all(isinstance(item, bool) for item in flat):
            raise InputValidationError(f"tensor {tensor!r}: BOOL data must be a list of true/false")
        return _reshaped(np.array(flat, dtype=bool), dims, tensor)
    if not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in flat):
        raise InputValidationError(f"tensor {tensor!r}: {datatype} data must be a list of numbers")
    return _reshaped(_numbers(flat, numpy_dtype(dtype), datatype, tensor), dims, tensor)


def json_values(array: np.ndarray) -> List[Any]:
    """A flat JSON-ready list of an array's values (FP16/BF16 as floats)."""
    if array.dtype.kind in "S":
        return [item.decode("utf-8", "replace") for item in array.reshape(-1).tolist()]
    if array.dtype.kind in "UO":
        return [str(item) for item in array.reshape(-1).tolist()]
    if array.dtype.name in ("bfloat16", "float16"):
        array = array.astype(np.float32)
    return array.reshape(-1).tolist()  # type: ignore[no-any-return]
