"""The control-message format between a parent and its OPE workers.

Every constant of the format lives here: magic, version, struct layouts,
message kinds, dtype codes and size limits. Messages are small: tensor bytes
never travel in them, only references into shared-memory segments. Nothing
is pickled. The decoder trusts no count, length or offset it reads: each is
checked against what is left of the message (here) and against the size of
the segment it points into (:func:`check_tensor_ref`).

A message, little-endian throughout::

    header   magic "NPOP" | version u16 | kind u16 | request id u64 | body length u32
    texts    count u16, then per text: length u32 | UTF-8 bytes
    segments count u16, then per new segment: segment id u32 | size u64
             (the file descriptors ride along as SCM_RIGHTS, in the same order)
    drops    count u32, then segment ids u32 the sender destroyed
    releases count u32, then segment ids u32 of the receiver's blocks the
             sender no longer uses
    inline   length u32 of the inline area that ends the message
    tensors  count u16, then per tensor:
             name length u16 | UTF-8 name | dtype code u8 | ndim u8 | owner u8 | pad
             | dims u64 * ndim | segment id u32 | offset u64 | nbytes u64
    then the inline area: the bytes of the small tensors carried in the
             message itself; such a tensor has segment id 0 and its offset
             counts from the start of this area (aligned to INLINE_ALIGN)

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

import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import WireFormatError

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

MAGIC = b"NPOP"
# 3: the mailbox's boxes gained the meeting word (neuropod.ope.colocate), and their stamps moved after it.
VERSION = 3

HEADER = struct.Struct("<4sHHQI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SEGMENT = struct.Struct("<IQ")
_TENSOR_HEAD = struct.Struct("<BBBx")
_TENSOR_LOCATION = struct.Struct("<IQQ")

#: Largest control message either side sends or accepts (fits a default socket buffer).
MAX_MESSAGE_BYTES = 128 * 1024
#: File descriptors per message (the kernel allows 253 per SCM_RIGHTS message).
MAX_FDS_PER_MESSAGE = 250
MAX_TEXT_BYTES = 16 * 1024
MAX_NDIM = 32
MAX_TENSORS = 1024
#: Longest tensor name in UTF-8 bytes (its length is a u16).
MAX_NAME_BYTES = 0xFFFF
#: Largest tensor whose bytes travel inside the control message ...
INLINE_TENSOR_BYTES = 4096
#: ... and most inline bytes one message carries (the rest go through segments).
INLINE_MESSAGE_BYTES = 64 * 1024
#: Inline tensors start at multiples of this (numpy and frameworks like aligned data).
INLINE_ALIGN = 16
#: Segment id meaning "no bytes" (a tensor with zero elements).
NO_SEGMENT = 0
#: A tensor lies in a segment owned by the message's sender ...
OWNER_SENDER = 0
#: ... or in one owned by its receiver (an output that is a view of an input).
OWNER_RECEIVER = 1


class Kind:
    """Message kinds."""

    HELLO = 1  # worker -> parent: model loaded; texts: pid, python version, numpy version
    LOAD_FAILED = 2  # worker -> parent: texts: error type, message, traceback
    INFER = 3  # parent -> worker: inputs
    RESULT = 4  # worker -> parent: outputs
    ERROR = 5  # worker -> parent: texts: error type, message, traceback
    SHUTDOWN = 6  # parent -> worker: exit cleanly
    SEGMENTS = 7  # either way: only new segments (when one message cannot carry all fds)

    ALL = frozenset({1, 2, 3, 4, 5, 6, 7})


# Codes are part of the format: never renumber, only append.
_DTYPE_CODES: Dict[str, int] = {
    "bool": 1,
    "int8": 2,
    "int16": 3,
    "int32": 4,
    "int64": 5,
    "uint8": 6,
    "uint16": 7,
    "uint32": 8,
    "uint64": 9,
    "float16": 10,
    "float32": 11,
    "float64": 12,
    "bfloat16": 13,
    "string": 14,
}
STRING_CODE = _DTYPE_CODES["string"]
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
#: A message with no texts, segments, drops or releases: every count zero.
_NO_LISTS = _U16.pack(0) + _U16.pack(0) + _U32.pack(0) + _U32.pack(0)


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
    if size > MAX_MESSAGE_BYTES:
        raise WireFormatError(f"control message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    if type(data) is not bytes:
        data = bytes(data)  # one small copy; slicing bytes is far cheaper than slicing a memoryview
    what = "the header"
    try:
        magic, version, kind, request_id, body_length = HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise WireFormatError(f"bad magic {bytes(magic)!r}: expected {MAGIC!r}")
        if version != VERSION:
            raise WireFormatError(f"wire version {version} is not supported (this side speaks {VERSION})")
        if kind not in Kind.ALL:
            raise WireFormatError(f"unknown message kind {kind}")
        if _HEADER_SIZE + body_length != size:
            raise WireFormatError(f"header says the body has {body_length} bytes, message has {size - _HEADER_SIZE}")
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


# -- the small call: only inline tensors -------------------------------------
#
# Most calls carry a few small tensors and nothing else, with the same names,
# dtypes and shapes call after call. Such a message is the same bytes every
# time except the request id and the tensors' own bytes, so each side keeps
# its layout: the sender joins the fixed parts with the arrays' bytes, the
# receiver (after one full decode and check of the first such message) cuts
# arrays straight out of its copy of the inline area.

_REQUEST_ID = struct.Struct("<Q")
_REQUEST_ID_AT = 8  # in HEADER: magic 4 | version 2 | kind 2 | request id 8 | body length 4
_NO_LISTS_AT = _HEADER_SIZE
_INLINE_LENGTH_AT = _NO_LISTS_AT + len(_NO_LISTS)
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


def decode_inline(data: bytes) -> Optional[Tuple[int, int, Dict[str, np.ndarray]]]:
    """(kind, request id, arrays) of a message that carries only inline tensors; None for any other message.

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
    return reader.kind, request_id, arrays
