"""Numpy arrays to shared-memory references and back (both sides use these)."""

from __future__ import annotations

import mmap
import os
from typing import Callable, List, Optional, Tuple, Union, cast

import numpy as np

from ..errors import SharedMemoryError, WireFormatError
from . import wire
from .shm import DEFAULT_SHM_DIR, Segment, SegmentPool, leased_array

__all__ = ["write_tensor", "read_tensor", "InlineArea", "check_crossing_size", "logical_bytes"]

# Tensors from this size on are also checked against the shared memory that can be had (reading it
# costs tens of microseconds: smaller tensors are bounded by max_tensor_bytes alone).
_AVAILABILITY_CHECKED_FROM = 64 << 20


def logical_bytes(array: np.ndarray) -> int:
    """Bytes a copy of ``array`` takes: every element, whatever its strides (a broadcast view counts in full).

    For strings, a bound of the encoded size (UTF-8 takes at most 4 bytes per character, numpy's 'U' takes 4).
    """
    return int(array.size) * max(int(array.dtype.itemsize), 1)


def available_shared_memory(shm_dir: str) -> Optional[int]:
    """Bytes of shared memory a segment can have now: free memory, and free space in ``shm_dir`` (None: unknown).

    A memfd (the default) and a tmpfs both take their pages from memory, so
    the memory available to this process (``MemAvailable``, within its cgroup's
    limit) bounds them both.
    """
    limits = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    limits.extend(_cgroup_room())
    if shm_dir != DEFAULT_SHM_DIR:
        try:
            stat = os.statvfs(shm_dir)
            limits.append(stat.f_bavail * stat.f_frsize)
        except OSError:
            pass
    return min(limits) if limits else None


def _cgroup_room() -> List[int]:
    """What this process's cgroup (v2) still lets it allocate, where it sets a limit."""
    try:
        with open("/proc/self/cgroup") as cgroup:
            path = next((line.strip()[3:] for line in cgroup if line.startswith("0::")), None)
        if path is None:
            return []
        base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as limit_file:
            limit = limit_file.read().strip()
        if limit == "max":
            return []
        with open(os.path.join(base, "memory.current")) as current_file:
            return [max(0, int(limit) - int(current_file.read()))]
    except (OSError, ValueError):
        return []


def check_crossing_size(what: str, name: str, array: np.ndarray, limit: int, shm_dir: str) -> None:
    """Refuse, before any copy, a tensor larger than ``limit`` or than the shared memory that can be had.

    ``what`` is "input" or "output". Raises SharedMemoryError naming the
    tensor, its logical size and the limit it exceeds.
    """
    size = logical_bytes(array)
    if size <= wire.INLINE_TENSOR_BYTES:
        return
    shape = list(array.shape)
    if size > limit:
        raise SharedMemoryError(
            f"{what} {name!r}: {array.dtype} {shape} is {size} bytes logically ({_human(size)}), more than "
            f"max_tensor_bytes={limit} ({_human(limit)}) may cross to or from a worker; nothing was copied"
        )
    if size >= _AVAILABILITY_CHECKED_FROM:
        available = available_shared_memory(shm_dir)
        if available is not None and size > available:
            raise SharedMemoryError(
                f"{what} {name!r}: {array.dtype} {shape} is {size} bytes logically ({_human(size)}), more than the "
                f"{available} bytes ({_human(available)}) of shared memory available now; nothing was copied"
            )


def _human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


class InlineArea:
    """The inline area of one message being built: small tensors' bytes, aligned."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: List[Union[bytes, bytearray]] = []
        self.size = 0

    def fits(self, nbytes: int) -> bool:
        return (
            nbytes <= wire.INLINE_TENSOR_BYTES and self.size + nbytes + wire.INLINE_ALIGN <= wire.INLINE_MESSAGE_BYTES
        )

    def add(self, data: Union[bytes, bytearray]) -> int:
        """Append ``data``; its offset in the area."""
        padding = -self.size % wire.INLINE_ALIGN
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
) -> Tuple[wire.TensorRef, Optional[Segment]]:
    """Copy ``array`` into ``inline`` when it fits there, else into a segment from ``pool``.

    Returns its reference and the segment (None when inline or empty).
    """
    dtype = array.dtype
    if inline is not None and dtype.kind not in "USO":
        nbytes = array.nbytes
        if 0 < nbytes <= wire.INLINE_TENSOR_BYTES and inline.fits(nbytes):  # the common small tensor
            code = wire.dtype_code(dtype)
            wire_dtype = wire.dtype_of_code(code)
            data = (array if dtype == wire_dtype else array.astype(wire_dtype)).tobytes()
            return wire.TensorRef(name, code, array.shape, wire.NO_SEGMENT, inline.add(data), nbytes), None
    if dtype.kind in "USO":
        encoded = [
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1).tolist()
        ]
        size = wire.string_block_size(encoded)
        if inline is not None and inline.fits(size):
            block = bytearray(size)
            wire.encode_strings(encoded, memoryview(block))
            return wire.TensorRef(name, wire.STRING_CODE, array.shape, wire.NO_SEGMENT, inline.add(block), size), None
        segment = pool.acquire(size)
        try:
            with memoryview(segment.memory) as view:
                wire.encode_strings(encoded, view[:size])
        except BaseException:
            pool.release(segment)
            raise
        return wire.TensorRef(name, wire.STRING_CODE, array.shape, segment.id, 0, size), segment
    code = wire.dtype_code(array.dtype)
    nbytes = array.nbytes
    if nbytes == 0:
        return wire.TensorRef(name, code, array.shape, wire.NO_SEGMENT, 0, 0), None
    segment = pool.acquire(nbytes)
    try:
        np.ndarray(array.shape, wire.dtype_of_code(code), buffer=segment.memory)[...] = array
    except BaseException:
        pool.release(segment)
        raise
    return wire.TensorRef(name, code, array.shape, segment.id, 0, nbytes), segment


def read_tensor(
    ref: wire.TensorRef,
    memory: Optional[Union[mmap.mmap, bytes, bytearray]],
    on_release: Optional[Callable[[], None]] = None,
) -> np.ndarray:
    """The array ``ref`` describes, viewing ``memory`` (strings are decoded into a copy).

    ``memory`` is the segment ``ref`` names, or for an inline tensor (segment
    0) the message's inline area.

    ``on_release`` runs once nothing views the bytes any more (at once for
    strings and empty tensors). Every offset and length is checked first.
    """
    if ref.segment == wire.NO_SEGMENT or memory is None:
        if on_release is not None:
            on_release()
        if ref.nbytes and memory is not None and ref.segment == wire.NO_SEGMENT:
            return _read_inline(ref, memory)
        if ref.nbytes == 0 and ref.dtype_code != wire.STRING_CODE and wire.element_count(ref.shape) == 0:
            return np.empty(ref.shape, dtype=wire.dtype_of_code(ref.dtype_code))
        raise WireFormatError(f"tensor {ref.name!r} has bytes but no segment")
    wire.check_tensor_ref(ref, len(memory))
    if ref.dtype_code == wire.STRING_CODE:
        try:
            with memoryview(memory) as view:
                return wire.decode_strings(ref.name, view[ref.offset : ref.offset + ref.nbytes], ref.shape)
        finally:
            if on_release is not None:
                on_release()
    dtype = wire.dtype_of_code(ref.dtype_code)
    if on_release is None:  # nothing to track: a plain view (its base is the mapping)
        return np.ndarray(ref.shape, dtype, buffer=memory, offset=ref.offset)
    return leased_array(cast(mmap.mmap, memory), ref.offset, ref.nbytes, dtype, ref.shape, on_release)


def _read_inline(ref: wire.TensorRef, area: Union[mmap.mmap, bytes, bytearray]) -> np.ndarray:
    """An inline tensor: a (writable) view of the message's inline area, or decoded strings."""
    if ref.dtype_code != wire.STRING_CODE:
        # numpy checks the bounds itself; only a ref that fails them (or whose nbytes
        # disagrees with its shape) pays for the full check and its message.
        try:
            array = np.ndarray(ref.shape, wire.dtype_of_code(ref.dtype_code), buffer=area, offset=ref.offset)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.nbytes == ref.nbytes:
            return array
        wire.check_tensor_ref(ref, len(area))
        raise WireFormatError(f"tensor {ref.name!r} does not fit the inline area")  # check_tensor_ref caught it
    wire.check_tensor_ref(ref, len(area))
    with memoryview(area) as view:
        return wire.decode_strings(ref.name, view[ref.offset : ref.offset + ref.nbytes], ref.shape)
