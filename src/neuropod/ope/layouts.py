"""Every binary layout between a parent and its OPE processes, and the one check of what arrives.

Three layouts cross between processes:

* **the message** (:data:`MESSAGE`): what a caller and its worker send each
  other (a call, its answer, new segments), little-endian; its body is
  written and read by the codec, :mod:`neuropod.ope.wire`;
* **the mailbox**: two boxes in one shared-memory segment, one per
  direction, that carry a message without a system call (the offsets below;
  used by :mod:`neuropod.ope.channel`), in native byte order (both ends run
  on this machine);
* **the zygote's record** (:data:`ZYGOTE`): fork orders and exit reports
  between a parent and the zygote that forks its workers
  (:mod:`neuropod.ope.zygote`).

Nothing received is trusted: every record goes through
:meth:`RecordLayout.check` (size, header, magic, version, kind, body length)
before any field of its body is read, and a message read from a mailbox
through :meth:`RecordLayout.check_size` before it is copied out.
"""

from __future__ import annotations

import struct
from typing import FrozenSet, Optional, Tuple, Union

from ..errors import WireFormatError

__all__ = [
    "RecordLayout",
    "MESSAGE",
    "ZYGOTE",
    "Kind",
    "ZygoteKind",
    "MAILBOX_BYTES",
    "BOX_BYTES",
    "STAMP_SLOTS",
]

Bytes = Union[bytes, bytearray, memoryview]


class RecordLayout:
    """The header of one kind of record, and the check every received record of it passes first.

    Args:
        what: how messages name it ("control message", "zygote message").
        magic: its first four bytes.
        header: the header's struct: magic first, then (``versioned``) a u16
            version, then the kind, then the layout's own fields; a
            ``sized`` header ends with the body's length.
        kinds: the kinds a record may have.
        max_bytes: the largest record either side sends or accepts.
    """

    __slots__ = ("what", "magic", "header", "version", "kinds", "max_bytes", "sized", "_kind_at")

    def __init__(
        self,
        what: str,
        magic: bytes,
        header: struct.Struct,
        kinds: FrozenSet[int],
        max_bytes: int,
        version: Optional[int] = None,
        sized: bool = False,
    ) -> None:
        self.what = what
        self.magic = magic
        self.header = header
        self.version = version
        self.kinds = kinds
        self.max_bytes = max_bytes
        self.sized = sized
        self._kind_at = 1 if version is None else 2

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise WireFormatError(f"{self.what} of {size} bytes exceeds the {self.max_bytes}-byte limit")

    def check(self, data: Bytes) -> Tuple[int, ...]:
        """The header's fields of one received record; :class:`WireFormatError` for anything malformed."""
        size = len(data)
        self.check_size(size)
        if size < self.header.size:
            raise WireFormatError(f"{self.what} of {size} bytes is shorter than its {self.header.size}-byte header")
        fields: Tuple[int, ...] = self.header.unpack_from(data, 0)
        magic = bytes(fields[0])  # type: ignore[arg-type]
        if magic != self.magic:
            raise WireFormatError(f"{self.what}: bad magic {magic!r}: expected {self.magic!r}")
        if self.version is not None and fields[1] != self.version:
            raise WireFormatError(f"wire version {fields[1]} is not supported (this side speaks {self.version})")
        kind = fields[self._kind_at]
        if kind not in self.kinds:
            raise WireFormatError(f"{self.what}: unknown message kind {kind}")
        if self.sized and self.header.size + fields[-1] != size:
            raise WireFormatError(f"header says the body has {fields[-1]} bytes, message has {size - self.header.size}")
        return fields


# -- the message ---------------------------------------------------------------
#
#   header   magic "NPOP" | version u16 | kind u16 | request id u64 | body length u32
#   texts    count u16, then per text: length u32 | UTF-8 bytes
#   segments count u16, then per new segment: segment id u32 | size u64
#            (the file descriptors ride along as SCM_RIGHTS, in the same order)
#   drops    count u32, then segment ids u32 the sender destroyed
#   releases count u32, then segment ids u32 of the receiver's blocks the
#            sender no longer uses
#   inline   length u32 of the inline area that ends the message
#   tensors  count u16, then per tensor:
#            name length u16 | UTF-8 name | dtype code u8 | ndim u8 | owner u8 | pad
#            | dims u64 * ndim | segment id u32 | offset u64 | nbytes u64
#   then the inline area: the bytes of the small tensors carried in the
#            message itself; such a tensor has segment id 0 and its offset
#            counts from the start of this area (aligned to INLINE_ALIGN)

MAGIC = b"NPOP"
# 3: the mailbox's boxes gained the meeting word (neuropod.ope.colocate), and their stamps moved after it.
VERSION = 3
HEADER = struct.Struct("<4sHHQI")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
SEGMENT = struct.Struct("<IQ")
TENSOR_HEAD = struct.Struct("<BBBx")
REQUEST_ID = struct.Struct("<Q")
REQUEST_ID_AT = 8  # in HEADER: magic 4 | version 2 | kind 2 | request id 8 | body length 4
#: A message with no texts, segments, drops or releases: every count zero.
NO_LISTS = U16.pack(0) + U16.pack(0) + U32.pack(0) + U32.pack(0)
NO_LISTS_AT = HEADER.size
INLINE_LENGTH_AT = NO_LISTS_AT + len(NO_LISTS)

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
#: Segment id meaning "no bytes" (a tensor with zero elements, or one carried inline).
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
DTYPE_CODES = {
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
STRING_CODE = DTYPE_CODES["string"]

MESSAGE = RecordLayout("control message", MAGIC, HEADER, Kind.ALL, MAX_MESSAGE_BYTES, version=VERSION, sized=True)


# -- the mailbox ---------------------------------------------------------------
#
# Two boxes, the parent's (it writes, side 0) first. A box, offsets 8-byte
# aligned so that each word is written by one store:
#
#   0   sequence   messages published (the receiver polls it)
#   8   length     of the message in the payload, or ON_SOCKET
#   16  sleeping   1 while the box's reader sleeps on the socket
#   24  settings   spin mode (1 + index in SPIN_MODES) in the low byte, then a timing bit
#   32  meeting    1 + the CPU this side sleeps on in a call (0: none)
#   40  taken      messages this side has taken from the other box
#   48  stamps     STAMP_SLOTS timestamps for the other side (stage timing)
#   128 payload    one message of up to MAX_MESSAGE_BYTES

WORD = struct.Struct("=Q")
SEQ_AT, LENGTH_AT, SLEEPING_AT, SETTINGS_AT, MEETING_AT, TAKEN_AT, STAMPS_AT, PAYLOAD_AT = 0, 8, 16, 24, 32, 40, 48, 128
SPIN_MODE_MASK, TIMING_BIT = 0xFF, 1 << 8
#: Timestamps a side may leave in its box for the other (stage timing, :mod:`neuropod.ope.stages`).
STAMP_SLOTS = (PAYLOAD_AT - STAMPS_AT) // 8
STAMPS = struct.Struct(f"={STAMP_SLOTS}Q")
BOX_BYTES = PAYLOAD_AT + MAX_MESSAGE_BYTES
#: Size of a mailbox segment (two boxes).
MAILBOX_BYTES = 2 * BOX_BYTES
#: Length value meaning "this message came through the socket".
ON_SOCKET = 2**64 - 1
#: What a sender writes to the socket to wake a reader that fell asleep as it wrote to the mailbox.
DOORBELL = b"!"


# -- the zygote's record -------------------------------------------------------
#
# One record per SOCK_SEQPACKET message: magic "NPZG" | kind u32 | a i64 | b i64
# (native order), then UTF-8 text.


class ZygoteKind:
    """Zygote record kinds. Parent -> zygote: FORK, KILL. Zygote -> parent: the others."""

    FORK = 1  # a: fork id; text: CPUs to pin to ("0,1", "" for any); fds: control socket, mailbox
    KILL = 2  # a: fork id; b: the signal
    FORKED = 11  # a: fork id; b: the child's pid
    REFUSED = 12  # a: fork id; text: why the zygote will not fork
    EXITED = 13  # a: fork id; b: its return code (negative: the signal; UNKNOWN_STATUS: it could not tell)
    LOAD_FAILED = 14  # text: error type, message, traceback, module, separated by NUL

    ALL = frozenset({1, 2, 11, 12, 13, 14})


ZYGOTE = RecordLayout("zygote message", b"NPZG", struct.Struct("=4sIqq"), ZygoteKind.ALL, 64 * 1024)


def encode_zygote(kind: int, a: int = 0, b: int = 0, text: str = "") -> bytes:
    data = ZYGOTE.header.pack(ZYGOTE.magic, kind, a, b) + text.encode("utf-8", "replace")
    return data[: ZYGOTE.max_bytes]


def decode_zygote(data: bytes) -> Tuple[int, int, int, str]:
    """(kind, a, b, text) of one zygote record; anything malformed raises WireFormatError."""
    _, kind, a, b = ZYGOTE.check(data)
    return kind, a, b, data[ZYGOTE.header.size :].decode("utf-8", "replace")
