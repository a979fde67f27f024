"""Numpy arrays to shared-memory references and back (both sides use these)."""

from __future__ import annotations

import mmap
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import WireFormatError
from . import wire
from .shm import Segment, SegmentPool, leased_array

__all__ = ["write_tensor", "read_tensor"]


def write_tensor(name: str, array: np.ndarray, pool: SegmentPool) -> Tuple[wire.TensorRef, Optional[Segment]]:
    """Copy ``array`` into a segment from ``pool``: its reference and the segment (None when empty)."""
    kind = array.dtype.kind
    if kind in "USO":
        encoded = [
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1).tolist()
        ]
        size = wire.string_block_size(encoded)
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
    memory: Optional[mmap.mmap],
    on_release: Optional[Callable[[], None]] = None,
) -> np.ndarray:
    """The array ``ref`` describes, viewing ``memory`` (strings are decoded into a copy).

    ``on_release`` runs once nothing views the bytes any more (at once for
    strings and empty tensors). Every offset and length is checked first.
    """
    if ref.segment == wire.NO_SEGMENT or memory is None:
        if ref.dtype_code == wire.STRING_CODE or ref.nbytes != 0 or wire.element_count(ref.shape) != 0:
            raise WireFormatError(f"tensor {ref.name!r} has bytes but no segment")
        if on_release is not None:
            on_release()
        return np.empty(ref.shape, dtype=wire.dtype_of_code(ref.dtype_code))
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
    return leased_array(memory, ref.offset, ref.nbytes, dtype, ref.shape, on_release)
