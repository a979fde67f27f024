"""The control-message format between a parent and its OPE workers.

The codec: it turns messages (and the arrays a call carries) into bytes
and back. The layout of those bytes, every constant of the format and the
check of a message's header live in :mod:`neuropod.ope.layouts`; the names
are re-exported here. Messages are small: large tensors' bytes never travel
in them, only references into shared-memory segments. Nothing is pickled.
The decoder trusts no count, length or offset it reads: each is checked
against what is left of the message (here) and against the size of the
segment it points into (:func:`check_tensor_ref`).

Its two entries are :func:`pack` (a message and the arrays it carries to
bytes) and :func:`unpack` (bytes to arrays, or to a message whose tensors
are references into segments); the usual small call is served by the
inline cache inside them (:func:`encode_inline` / :func:`decode_inline`).

The tensors section of a call is the same bytes call after call (same
names, shapes and places), so the decoder keeps the parsed result of the
last few it saw and only parses a section it has not seen.

Small tensors (up to :data:`INLINE_TENSOR_BYTES`, and
:data:`INLINE_MESSAGE_BYTES` per message) travel inline: for them a shared
segment would cost more (pool, release tracking) than copying a few bytes
through the mailbox.

A string tensor's bytes are an offsets table of ``n + 1`` little-endian u64
(``offsets[0] == 0``, non-decreasing) followed by the UTF-8 text of the
``n`` elements in C order; element ``i`` is ``text[offsets[i]:offsets[i+1]]``.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from ..errors import WireFormatError
from .shm import Segment, SegmentPool, leased_array

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER",
    "Kind",
    "TensorRef",
    "Message",
    "encode",
    "decode",
    "check_tensor_ref",
    "dtype_code",
    "dtype_of_code",
    "encode_strings",
    "decode_strings",
    "string_block_size",
    "STRING_CODE",
    "DTYPE_NAMES",
    "element_count",
    "OWNER_SENDER",
    "OWNER_RECEIVER",
    "NO_SEGMENT",
    "MAX_MESSAGE_BYTES",
    "MAX_FDS_PER_MESSAGE",
    "MAX_NDIM",
    "MAX_TENSORS",
    "MAX_NAME_BYTES",
    "crossing_problem",
]

from . import layouts
from .layouts import (  # the message's layout, re-exported: the codec's users read it here
    HEADER,
    INLINE_ALIGN,
    INLINE_MESSAGE_BYTES,
    INLINE_TENSOR_BYTES,
    MAGIC,
    MAX_FDS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_TENSORS,
    MAX_TEXT_BYTES,
    MESSAGE,
    NO_SEGMENT,
    OWNER_RECEIVER,
    OWNER_SENDER,
    STRING_CODE,
    VERSION,
    Kind,
)

_DTYPE_CODES = layouts.DTYPE_CODES
_U16, _U32, _SEGMENT, _TENSOR_HEAD = layouts.U16, layouts.U32, layouts.SEGMENT, layouts.TENSOR_HEAD
_REQUEST_ID, _REQUEST_ID_AT = layouts.REQUEST_ID, layouts.REQUEST_ID_AT
_NO_LISTS, _NO_LISTS_AT, _INLINE_LENGTH_AT = layouts.NO_LISTS, layouts.NO_LISTS_AT, layouts.INLINE_LENGTH_AT

#: numpy dtype names that cross as raw bytes (everything but strings).
DTYPE_NAMES = frozenset(name for name in _DTYPE_CODES if name != "string")
_CODE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_CODE_DTYPES: Dict[int, np.dtype] = {}


_CODE_OF_DTYPE: Dict[np.dtype, int] = {}


def dtype_code(dtype: np.dtype) -> int:
    """The wire code of a numpy dtype (unicode/bytes arrays are strings)."""
    code = _CODE_OF_DTYPE.get(dtype)  # dtype.name is slow; this runs per tensor per call
    if code is not None:
        return code
    if dtype.kind in "US":
        return STRING_CODE
    code = _DTYPE_CODES.get(dtype.name)
    if code is None:
        raise WireFormatError(f"dtype {dtype} cannot cross to a worker; supported: {', '.join(_DTYPE_CODES)}")
    if dtype.kind not in "USO":
        _CODE_OF_DTYPE[dtype] = code
    return code


def dtype_of_code(code: int) -> np.dtype:
    """The little-endian numpy dtype of a (non-string) wire code."""
    dtype = _CODE_DTYPES.get(code)
    if dtype is None:
        name = _CODE_NAMES.get(code)
        if name is None or name == "string":
            raise WireFormatError(f"unknown dtype code {code}")
        if name == "bfloat16":
            import ml_dtypes  # only bfloat16 tensors need it

            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(name).newbyteorder("<")
        _CODE_DTYPES[code] = dtype
    return dtype


@dataclass
class TensorRef:
    """Where one tensor's bytes lie: a segment, an offset and a length."""

    name: str
    dtype_code: int
    shape: Tuple[int, ...]
    segment: int
    offset: int
    nbytes: int
    owner: int = OWNER_SENDER


@dataclass
class Message:
    kind: int
    request_id: int = 0
    texts: List[str] = field(default_factory=list)
    new_segments: List[Tuple[int, int]] = field(default_factory=list)
    drop_segments: List[int] = field(default_factory=list)
    release_segments: List[int] = field(default_factory=list)
    tensors: List[TensorRef] = field(default_factory=list)
    #: The inline area (bytearray when decoded, so arrays viewing it are writable).
    inline: Union[bytes, bytearray] = b""


def crossing_problem(name: object, ndim: int) -> str:
    """Why a tensor cannot cross the wire ("" when it can): the sender checks before sending.

    These are the decoder's own limits, so a sender never hands its peer a
    message the peer must refuse (and a worker never dies of one).
    """
    if not isinstance(name, str):
        return f"a tensor name must be a string, got {type(name).__name__} {name!r}"
    if ndim > MAX_NDIM:
        return f"rank {ndim} exceeds the limit of {MAX_NDIM} dimensions between processes"
    if len(name) > MAX_NAME_BYTES // 4:  # cheap bound first: a UTF-8 character is at most 4 bytes
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            size = 0  # reported below
        if size > MAX_NAME_BYTES:
            return f"the name is {size} bytes of UTF-8; the limit is {MAX_NAME_BYTES}"
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the name cannot be encoded as UTF-8 ({exc.reason})"
    return ""


def _clip_text(text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_TEXT_BYTES:
        data = data[: MAX_TEXT_BYTES - 16].decode("utf-8", "ignore").encode("utf-8") + b"\n... (truncated)"
    return data


# Per-call caches (both sides send the same few names and ranks on every call).
_NAME_PREFIXES: Dict[str, bytes] = {}  # name -> u16 length + UTF-8 name
_NAMES: Dict[bytes, str] = {}  # UTF-8 name -> name
_CACHED_NAMES_MAX = 4096  # a model that makes up new names forever must not grow them without bound
_TENSOR_LAYOUTS: Dict[int, struct.Struct] = {}  # ndim -> head + dims + location


def _tensor_layout(ndim: int) -> struct.Struct:
    layout = _TENSOR_LAYOUTS.get(ndim)
    if layout is None:
        layout = _TENSOR_LAYOUTS[ndim] = struct.Struct(f"<BBBx{ndim}QIQQ")
    return layout


def _name_prefix(name: str) -> bytes:
    prefix = _NAME_PREFIXES.get(name)
    if prefix is None:
        data = name.encode("utf-8")
        prefix = _U16.pack(len(data)) + data
        if len(_NAME_PREFIXES) < _CACHED_NAMES_MAX:
            _NAME_PREFIXES[name] = prefix
    return prefix


def encode(message: Message) -> bytes:
    """Serialise ``message`` (texts longer than the limit are truncated)."""
    if message.texts or message.new_segments or message.drop_segments or message.release_segments:
        parts: List[Union[bytes, bytearray]] = [_U16.pack(len(message.texts))]
        for text in message.texts:
            data = _clip_text(text)
            parts.append(_U32.pack(len(data)))
            parts.append(data)
        parts.append(_U16.pack(len(message.new_segments)))
        for segment_id, size in message.new_segments:
            parts.append(_SEGMENT.pack(segment_id, size))
        parts.append(_U32.pack(len(message.drop_segments)))
        if message.drop_segments:
            parts.append(struct.pack(f"<{len(message.drop_segments)}I", *message.drop_segments))
        parts.append(_U32.pack(len(message.release_segments)))
        if message.release_segments:
            parts.append(struct.pack(f"<{len(message.release_segments)}I", *message.release_segments))
    else:  # the usual call and answer
        parts = [_NO_LISTS]
    tensors = message.tensors
    parts.append(_U32.pack(len(message.inline)))
    parts.append(_U16.pack(len(tensors)))
    for ref in tensors:
        shape = ref.shape
        parts.append(_name_prefix(ref.name))
        parts.append(
            _tensor_layout(len(shape)).pack(
                ref.dtype_code, len(shape), ref.owner, *shape, ref.segment, ref.offset, ref.nbytes
            )
        )
    parts.append(message.inline)
    body = b"".join(parts)
    data = HEADER.pack(MAGIC, VERSION, message.kind, message.request_id, len(body)) + body
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireFormatError(f"control message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return data


_HEADER_SIZE = HEADER.size
_TENSOR_HEAD_SIZE = _TENSOR_HEAD.size


def decode(data: Union[bytes, bytearray, memoryview]) -> Message:
    """Parse one message; raise :class:`WireFormatError` on anything malformed.

    Every fixed-size field is read with ``struct.unpack_from``, which refuses
    to read past the end (``struct.error``); variable-length fields are
    checked by hand. This runs twice per call, so it is written flat.
    """
    size = len(data)
    if type(data) is not bytes:
        MESSAGE.check_size(size)
        data = bytes(data)  # one small copy; slicing bytes is far cheaper than slicing a memoryview
    _, _, kind, request_id, _ = MESSAGE.check(data)  # size, magic, version, kind, body length
    what = "the body"
    try:
        pos = _HEADER_SIZE
        texts: List[str] = []
        new_segments: List[Tuple[int, int]] = []
        drops: List[int] = []
        releases: List[int] = []
        if data.startswith(_NO_LISTS, pos):  # the usual call and answer
            pos += len(_NO_LISTS)
        else:
            what = "the texts"
            (count,) = _U16.unpack_from(data, pos)
            pos += 2
            for index in range(count):
                (length,) = _U32.unpack_from(data, pos)
                pos += 4
                if length > MAX_TEXT_BYTES:
                    raise WireFormatError(f"text {index} claims {length} bytes; the limit is {MAX_TEXT_BYTES}")
                end = pos + length
                if end > size:
                    raise WireFormatError(f"message truncated: text {index} of {length} bytes at byte {pos}")
                texts.append(str(data[pos:end], "utf-8"))
                pos = end
            what = "the new segments"
            (count,) = _U16.unpack_from(data, pos)
            pos += 2
            if count > MAX_FDS_PER_MESSAGE:
                raise WireFormatError(f"{count} new segments in one message; the limit is {MAX_FDS_PER_MESSAGE}")
            for _ in range(count):
                segment_id, segment_size = _SEGMENT.unpack_from(data, pos)
                pos += _SEGMENT.size
                if segment_id == NO_SEGMENT:
                    raise WireFormatError("a new segment uses the reserved id 0")
                new_segments.append((segment_id, segment_size))
            what = "the segment lists"
            for ids in (drops, releases):
                (count,) = _U32.unpack_from(data, pos)
                pos += 4
                if pos + 4 * count > size:
                    raise WireFormatError(f"message truncated: {count} segment ids at byte {pos}")
                if count:
                    ids.extend(struct.unpack_from(f"<{count}I", data, pos))
                pos += 4 * count
        what = "the inline area"
        (inline_length,) = _U32.unpack_from(data, pos)
        pos += 4
    except struct.error:
        raise WireFormatError(f"message truncated while reading {what}") from None
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"{what}: a name or text is not valid UTF-8: {exc}") from None
    tensors_end = size - inline_length
    if tensors_end < pos:
        raise WireFormatError(f"inline area of {inline_length} bytes does not fit in the {size}-byte message")
    section = data[pos:tensors_end]
    tensors = _PARSED_TENSORS.get(section)
    if tensors is None:
        tensors = _decode_tensors(section)
        if len(section) <= _PARSED_SECTION_MAX_BYTES:
            if len(_PARSED_TENSORS) >= _PARSED_TENSORS_MAX:
                _PARSED_TENSORS.clear()
            _PARSED_TENSORS[section] = tensors
    inline = bytearray(data[tensors_end:]) if inline_length else bytearray()
    return Message(kind, request_id, texts, new_segments, drops, releases, list(tensors), inline)


# Tensors sections seen lately -> their parse. The refs are shared between the
# messages decoded from equal sections: receivers read them, never change them.
_PARSED_TENSORS: Dict[bytes, Tuple[TensorRef, ...]] = {}
_PARSED_TENSORS_MAX = 256
_PARSED_SECTION_MAX_BYTES = 8192  # so the cache stays under 2 MiB; long sections are rare and parse anyway


def _decode_tensors(data: bytes) -> Tuple[TensorRef, ...]:
    """Parse a tensors section (count, then each tensor), which must be all of ``data``."""
    size = len(data)
    what = "the tensors"
    try:
        (count,) = _U16.unpack_from(data, 0)
        pos = 2
        if count > MAX_TENSORS:
            raise WireFormatError(f"{count} tensors in one message; the limit is {MAX_TENSORS}")
        tensors = []
        for index in range(count):
            (length,) = _U16.unpack_from(data, pos)
            pos += 2
            end = pos + length
            if end + _TENSOR_HEAD_SIZE > size:
                raise WireFormatError(f"message truncated: tensor {index}'s name at byte {pos}")
            raw_name = data[pos:end]
            name = _NAMES.get(raw_name)
            if name is None:
                what = f"tensor {index}'s name"
                name = str(raw_name, "utf-8")
                if len(_NAMES) < _CACHED_NAMES_MAX:
                    _NAMES[raw_name] = name
            ndim = data[end + 1]
            if ndim > MAX_NDIM:
                raise WireFormatError(f"tensor {name!r}: rank {ndim} exceeds the limit of {MAX_NDIM}")
            layout = _TENSOR_LAYOUTS.get(ndim) or _tensor_layout(ndim)
            what = f"tensor {name!r}"
            fields = layout.unpack_from(data, end)
            pos = end + layout.size
            code = fields[0]
            if code not in _CODE_NAMES:
                raise WireFormatError(f"tensor {name!r}: unknown dtype code {code}")
            owner = fields[2]
            if owner > OWNER_RECEIVER:
                raise WireFormatError(f"tensor {name!r}: unknown owner {owner}")
            dims_end = 3 + ndim
            tensors.append(
                TensorRef(
                    name, code, fields[3:dims_end], fields[dims_end], fields[dims_end + 1], fields[dims_end + 2], owner
                )
            )
    except struct.error:
        raise WireFormatError(f"message truncated while reading {what}") from None
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"{what}: a name or text is not valid UTF-8: {exc}") from None
    if pos != size:
        raise WireFormatError(f"{size - pos} stray bytes after the last tensor")
    return tuple(tensors)


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def check_tensor_ref(ref: TensorRef, segment_size: int) -> None:
    """Check that ``ref`` fits in a segment of ``segment_size`` bytes and matches its shape.

    Raises:
        WireFormatError: naming the tensor and the sizes that disagree.
    """
    if ref.offset > segment_size or ref.nbytes > segment_size - ref.offset:
        raise WireFormatError(
            f"tensor {ref.name!r}: bytes [{ref.offset}, {ref.offset + ref.nbytes}) lie outside "
            f"segment {ref.segment} of {segment_size} bytes"
        )
    count = element_count(ref.shape)
    if ref.dtype_code == STRING_CODE:
        if ref.nbytes < 8 * (count + 1):
            needed = 8 * (count + 1)
            raise WireFormatError(
                f"tensor {ref.name!r}: {count} strings need an offsets table of {needed} bytes, got {ref.nbytes}"
            )
    else:
        expected = count * dtype_of_code(ref.dtype_code).itemsize
        if ref.nbytes != expected:
            raise WireFormatError(
                f"tensor {ref.name!r}: shape {list(ref.shape)} needs {expected} bytes, ref says {ref.nbytes}"
            )


def string_block_size(encoded: Sequence[bytes]) -> int:
    return 8 * (len(encoded) + 1) + sum(len(item) for item in encoded)


def encode_strings(encoded: Sequence[bytes], out: memoryview) -> None:
    """Write pre-encoded UTF-8 ``encoded`` strings as offsets table + text into ``out``."""
    count = len(encoded)
    lengths = np.fromiter((len(item) for item in encoded), dtype=np.uint64, count=count)
    offsets = np.frombuffer(out, dtype="<u8", count=count + 1)
    offsets[0] = 0
    np.cumsum(lengths, out=offsets[1:])
    start = 8 * (count + 1)
    text = b"".join(encoded)
    out[start : start + len(text)] = text


def decode_strings(name: str, buffer: memoryview, shape: Tuple[int, ...]) -> np.ndarray:
    """A numpy unicode array from a string block, checking every offset.

    ``buffer`` is exactly the tensor's ``nbytes``.
    """
    count = element_count(shape)
    table_bytes = 8 * (count + 1)
    if len(buffer) < table_bytes:
        raise WireFormatError(f"tensor {name!r}: string block of {len(buffer)} bytes is shorter than its offsets table")
    offsets = np.frombuffer(buffer, dtype="<u8", count=count + 1)
    text_bytes = len(buffer) - table_bytes
    if offsets[0] != 0 or int(offsets[-1]) != text_bytes or (count and bool(np.any(np.diff(offsets) > text_bytes))):
        raise WireFormatError(f"tensor {name!r}: string offsets do not describe {text_bytes} bytes of text")
    if count and bool(np.any(offsets[1:] < offsets[:-1])):
        raise WireFormatError(f"tensor {name!r}: string offsets decrease")
    text = bytes(buffer[table_bytes:])
    bounds = offsets.tolist()
    try:
        items = [text[bounds[i] : bounds[i + 1]].decode("utf-8") for i in range(count)]
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"tensor {name!r}: a string is not valid UTF-8: {exc}") from None
    if not items:
        return np.empty(shape, dtype="U1")
    return np.array(items, dtype=str).reshape(shape)


# -- tensors: in the message (inline) or in a segment --------------------------


class InlineArea:
    """The inline area of one message being built: small tensors' bytes, aligned."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: List[Union[bytes, bytearray]] = []
        self.size = 0

    def fits(self, nbytes: int) -> bool:
        return nbytes <= INLINE_TENSOR_BYTES and self.size + nbytes + INLINE_ALIGN <= INLINE_MESSAGE_BYTES

    def add(self, data: Union[bytes, bytearray]) -> int:
        """Append ``data``; its offset in the area."""
        padding = -self.size % INLINE_ALIGN
        if padding:
            self.parts.append(bytes(padding))
            self.size += padding
        offset = self.size
        self.parts.append(data)
        self.size += len(data)
        return offset

    def getvalue(self) -> bytes:
        return b"".join(self.parts) if self.parts else b""


def write_tensor(
    name: str, array: np.ndarray, pool: SegmentPool, inline: Optional[InlineArea] = None
) -> Tuple[TensorRef, Optional[Segment]]:
    """Copy ``array`` into ``inline`` when it fits there, else into a segment from ``pool``.

    Returns its reference and the segment (None when inline or empty).
    """
    dtype = array.dtype
    if inline is not None and dtype.kind not in "USO":
        nbytes = array.nbytes
        if 0 < nbytes <= INLINE_TENSOR_BYTES and inline.fits(nbytes):  # the common small tensor
            code = dtype_code(dtype)
            wire_dtype = dtype_of_code(code)
            data = (array if dtype == wire_dtype else array.astype(wire_dtype)).tobytes()
            return TensorRef(name, code, array.shape, NO_SEGMENT, inline.add(data), nbytes), None
    if dtype.kind in "USO":
        encoded = [
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1).tolist()
        ]
        size = string_block_size(encoded)
        if inline is not None and inline.fits(size):
            block = bytearray(size)
            encode_strings(encoded, memoryview(block))
            return TensorRef(name, STRING_CODE, array.shape, NO_SEGMENT, inline.add(block), size), None
        segment = pool.acquire(size)
        try:
            with memoryview(segment.memory) as view:
                encode_strings(encoded, view[:size])
        except BaseException:
            pool.release(segment)
            raise
        return TensorRef(name, STRING_CODE, array.shape, segment.id, 0, size), segment
    code = dtype_code(array.dtype)
    nbytes = array.nbytes
    if nbytes == 0:
        return TensorRef(name, code, array.shape, NO_SEGMENT, 0, 0), None
    segment = pool.acquire(nbytes)
    try:
        np.ndarray(array.shape, dtype_of_code(code), buffer=segment.memory)[...] = array
    except BaseException:
        pool.release(segment)
        raise
    return TensorRef(name, code, array.shape, segment.id, 0, nbytes), segment


def read_tensor(
    ref: TensorRef,
    memory: Optional[Union[mmap.mmap, bytes, bytearray]],
    on_release: Optional[Callable[[], None]] = None,
) -> np.ndarray:
    """The array ``ref`` describes, viewing ``memory`` (strings are decoded into a copy).

    ``memory`` is the segment ``ref`` names, or for an inline tensor (segment
    0) the message's inline area.

    ``on_release`` runs once nothing views the bytes any more (at once for
    strings and empty tensors). Every offset and length is checked first.
    """
    if ref.segment == NO_SEGMENT or memory is None:
        if on_release is not None:
            on_release()
        if ref.nbytes and memory is not None and ref.segment == NO_SEGMENT:
            return _read_inline(ref, memory)
        if ref.nbytes == 0 and ref.dtype_code != STRING_CODE and element_count(ref.shape) == 0:
            return np.empty(ref.shape, dtype=dtype_of_code(ref.dtype_code))
        raise WireFormatError(f"tensor {ref.name!r} has bytes but no segment")
    check_tensor_ref(ref, len(memory))
    if ref.dtype_code == STRING_CODE:
        try:
            with memoryview(memory) as view:
                return decode_strings(ref.name, view[ref.offset : ref.offset + ref.nbytes], ref.shape)
        finally:
            if on_release is not None:
                on_release()
    dtype = dtype_of_code(ref.dtype_code)
    if on_release is None:  # nothing to track: a plain view (its base is the mapping)
        return np.ndarray(ref.shape, dtype, buffer=memory, offset=ref.offset)
    return leased_array(cast(mmap.mmap, memory), ref.offset, ref.nbytes, dtype, ref.shape, on_release)


def _read_inline(ref: TensorRef, area: Union[mmap.mmap, bytes, bytearray]) -> np.ndarray:
    """An inline tensor: a (writable) view of the message's inline area, or decoded strings."""
    if ref.dtype_code != STRING_CODE:
        # numpy checks the bounds itself; only a ref that fails them (or whose nbytes
        # disagrees with its shape) pays for the full check and its message.
        try:
            array = np.ndarray(ref.shape, dtype_of_code(ref.dtype_code), buffer=area, offset=ref.offset)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.nbytes == ref.nbytes:
            return array
        check_tensor_ref(ref, len(area))
        raise WireFormatError(f"tensor {ref.name!r} does not fit the inline area")  # check_tensor_ref caught it
    check_tensor_ref(ref, len(area))
    with memoryview(area) as view:
        return decode_strings(ref.name, view[ref.offset : ref.offset + ref.nbytes], ref.shape)


# -- the small call: only inline tensors -------------------------------------
#
# Most calls carry a few small tensors and nothing else, with the same names,
# dtypes and shapes call after call. Such a message is the same bytes every
# time except the request id and the tensors' own bytes, so each side keeps
# its layout: the sender joins the fixed parts with the arrays' bytes, the
# receiver (after one full decode and check of the first such message) cuts
# arrays straight out of its copy of the inline area.

_LAYOUTS_MAX = 256
_NOT_INLINE = None  # cached for a message or key that does not take the small path
_BIG_ENDIAN = sys.byteorder == "big"  # native arrays would need a byte swap


class _InlineWriter:
    """The fixed bytes of a message of one kind whose tensors (fixed names, dtypes, shapes) all travel inline."""

    __slots__ = ("start", "rest", "paddings")

    def __init__(self, message: Message, paddings: List[bytes]) -> None:
        data = encode(message)
        self.start = data[:_REQUEST_ID_AT]
        self.rest = data[_REQUEST_ID_AT + 8 : len(data) - len(message.inline)]
        self.paddings = paddings  # zero bytes before each tensor's bytes

    def encode(self, request_id: int, arrays: Sequence[np.ndarray]) -> bytes:
        parts: List[Any] = [self.start, _REQUEST_ID.pack(request_id), self.rest]
        for padding, array in zip(self.paddings, arrays):
            if padding:
                parts.append(padding)
            parts.append(array)  # its buffer: raises BufferError for a non-contiguous array
        return b"".join(parts)


_WRITERS: Dict[Tuple[Any, ...], Optional[_InlineWriter]] = {}


def _inline_writer(key: Tuple[Any, ...]) -> Optional[_InlineWriter]:
    kind, layout = key
    if len(layout) > MAX_TENSORS:
        return _NOT_INLINE
    tensors: List[TensorRef] = []
    paddings: List[bytes] = []
    size = 0
    for name, dtype, shape in layout:
        if (
            not isinstance(dtype, np.dtype)
            or dtype.name not in DTYPE_NAMES  # strings, objects and the like are encoded in full
            or dtype.byteorder == ">"
            or crossing_problem(name, len(shape))
        ):
            return _NOT_INLINE
        nbytes = element_count(shape) * dtype.itemsize
        padding = -size % INLINE_ALIGN
        if not 0 < nbytes <= INLINE_TENSOR_BYTES or size + padding + nbytes > INLINE_MESSAGE_BYTES - INLINE_ALIGN:
            return _NOT_INLINE
        paddings.append(bytes(padding))
        size += padding
        tensors.append(TensorRef(name, dtype_code(dtype), tuple(shape), NO_SEGMENT, size, nbytes))
        size += nbytes
    try:
        return _InlineWriter(Message(kind, 0, tensors=tensors, inline=bytes(size)), paddings)
    except WireFormatError:  # too long for one message: the full path says so
        return _NOT_INLINE


def encode_inline(kind: int, request_id: int, tensors: Mapping[str, np.ndarray]) -> Optional[bytes]:
    """The message of ``kind`` carrying ``tensors`` (and nothing else) inline; None when they cannot all go inline.

    None also for anything but contiguous numpy arrays of a wire dtype in
    native (little-endian) order: the caller then builds the message in full.
    """
    try:
        key = (kind, tuple([(name, array.dtype, array.shape) for name, array in tensors.items()]))
        writer = _WRITERS[key]
    except KeyError:
        if len(_WRITERS) >= _LAYOUTS_MAX:
            _WRITERS.clear()
        writer = _WRITERS[key] = _inline_writer(key)
    except (AttributeError, TypeError):  # not arrays, or an unhashable name
        return None
    if writer is None or _BIG_ENDIAN:
        return None
    try:
        return writer.encode(request_id, list(tensors.values()))
    except (BufferError, TypeError, ValueError):  # a strided view: the full path copies it
        return None


class _InlineReader:
    """How to cut the tensors of one layout out of a message's inline area (checked once, by a full decode)."""

    __slots__ = ("start", "kind", "inline_at", "tensors")

    def __init__(self, data: bytes, message: Message, inline_at: int) -> None:
        self.start = data[:_REQUEST_ID_AT]  # magic, version, kind
        self.kind = message.kind
        self.inline_at = inline_at
        self.tensors = [
            (ref.name, dtype_of_code(ref.dtype_code), element_count(ref.shape), ref.offset, ref.shape)
            for ref in message.tensors
        ]

    def read(self, data: bytes) -> Tuple[int, Dict[str, np.ndarray]]:
        inline = bytearray(data[self.inline_at :])  # arrays view this private, writable copy
        frombuffer = np.frombuffer
        arrays = {}
        for name, dtype, count, offset, shape in self.tensors:
            array = frombuffer(inline, dtype, count, offset)
            arrays[name] = array if len(shape) == 1 else array.reshape(shape)
        return _REQUEST_ID.unpack_from(data, _REQUEST_ID_AT)[0], arrays


_READERS: Dict[bytes, Optional[_InlineReader]] = {}


def _inline_reader(data: bytes, inline_at: int) -> Optional[_InlineReader]:
    message = decode(data)  # every check of the full decoder, once per layout
    for ref in message.tensors:
        if ref.segment != NO_SEGMENT or ref.owner != OWNER_SENDER or ref.dtype_code == STRING_CODE or not ref.nbytes:
            return _NOT_INLINE
        check_tensor_ref(ref, len(message.inline))
    return _InlineReader(data, message, inline_at)


def decode_inline(data: bytes) -> Optional[Tuple[int, int, Dict[str, np.ndarray], None]]:
    """(kind, request id, arrays, None) of a message that carries only inline tensors; None for any other message.

    (The None stands for "no message": the form :func:`unpack` returns.)

    The arrays view one private, writable copy of the inline area. A message
    that this returns None for goes through :func:`decode`; one that is
    malformed raises :class:`WireFormatError` as there.
    """
    if len(data) < _INLINE_LENGTH_AT + 6 or not data.startswith(_NO_LISTS, _NO_LISTS_AT):
        return None
    inline_at = len(data) - _U32.unpack_from(data, _INLINE_LENGTH_AT)[0]
    # The layout: body length, the empty lists, inline length and the tensors section.
    layout = data[_REQUEST_ID_AT + 8 : inline_at]
    try:
        reader = _READERS[layout]
    except KeyError:
        if inline_at < _INLINE_LENGTH_AT or len(layout) > _PARSED_SECTION_MAX_BYTES:
            return None
        reader = _inline_reader(data, inline_at)
        if len(_READERS) >= _LAYOUTS_MAX:
            _READERS.clear()
        _READERS[layout] = reader
    if reader is None or not data.startswith(reader.start):
        return None
    request_id, arrays = reader.read(data)
    return reader.kind, request_id, arrays, None


# -- the codec's two entries ---------------------------------------------------

#: Where a side puts a tensor: ``place(name, array, inline, message)`` returns its reference. The side runs
#: its own checks, then :func:`write_tensor` (into ``inline`` when it fits there, else into one of its
#: segments, which it adds to ``message.new_segments`` when the receiver has not mapped it yet).
Place = Callable[[str, Any, "InlineArea", Message], TensorRef]
#: ``lend(name, array, message)``: a reference to memory the receiver maps already (a caller's leased
#: input, a worker's output that views an input), or None: the array is placed as any other.
Lend = Callable[[str, Any, Message], Optional[TensorRef]]


def pack(
    kind: int,
    request_id: int,
    arrays: Mapping[str, Any],
    place: Place,
    lend: Optional[Lend] = None,
    message: Optional[Message] = None,
) -> Tuple[bytes, Optional[Message]]:
    """A message of ``kind`` carrying ``arrays``, encoded; and the message when it was built in full.

    ``message``, if given, holds what else it carries (texts, drops,
    releases). The usual call and answer (small arrays of a layout seen
    before, nothing else to tell) come from the inline cache
    (:func:`encode_inline`): the layout's fixed bytes joined with the arrays'
    own, and no message. Any other is built in full: each array goes by
    ``lend``'s reference where it gives one, else where ``place`` puts it;
    the message returned lists the segments it introduces.
    """
    if lend is None and message is None:
        data = encode_inline(kind, request_id, arrays)
        if data is not None:
            return data, None
    if message is None:
        message = Message(kind, request_id)
    inline = InlineArea()
    tensors = message.tensors
    for name, array in arrays.items():
        ref = lend(name, array, message) if lend is not None else None
        tensors.append(ref if ref is not None else place(name, array, inline, message))
    message.inline = inline.getvalue()
    return encode(message), message


def unpack(data: bytes, fds: List[int]) -> Tuple[int, int, Optional[Dict[str, np.ndarray]], Optional[Message]]:
    """(kind, request id, arrays, message) of a received message; malformed ones raise WireFormatError.

    A message whose tensors all came inline, in a layout seen before, is read
    by the inline cache (:func:`decode_inline`): its arrays, and no message.
    Any other comes decoded in full, as a message (its tensors are
    references: :func:`read_tensor`), and no arrays. On an error the
    descriptors are closed.
    """
    if not fds:
        small = decode_inline(data)
        if small is not None:
            return small
    message = decode_checked(data, fds)
    return message.kind, message.request_id, None, message


def decode_checked(data: bytes, fds: List[int]) -> Message:
    """Decode a received message and check it announces as many segments as it brought descriptors.

    On any error the descriptors are closed.
    """
    try:
        message = decode(data)
        if len(fds) != len(message.new_segments):
            raise WireFormatError(
                f"message announces {len(message.new_segments)} segments but carries {len(fds)} descriptors"
            )
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return message
