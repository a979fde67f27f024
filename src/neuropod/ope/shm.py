"""Shared-memory segments, the pool that reuses them, and arrays that view them.

A segment is an anonymous memory file (``memfd_create``) by default, or,
with an explicit ``shm_dir``, a file there that is unlinked the moment it is
created: either way it lives exactly as long as some process holds its file
descriptor or a mapping of it, and a memfd never has a name at all (no window
in which a killed process leaves one behind, and nothing to see in a
sandbox's ``/dev/shm``). The fd travels to
the peer over the control socket (SCM_RIGHTS), so no name is ever needed
again and no segment can outlive its owners, whatever kills them.

The memory is reserved with ``posix_fallocate`` when the segment is made, so
a full shm filesystem raises :class:`~neuropod.errors.SharedMemoryError`
there instead of a SIGBUS on first write. Fresh memory is slow to touch (page
faults), so freed segments go back to a pool sorted by size class and are
reused; the pool keeps at most ``cache_bytes`` of idle segments.
"""

from __future__ import annotations

import functools
import mmap
import os
import secrets
import threading
import weakref
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import SharedMemoryError, WireFormatError

__all__ = [
    "DEFAULT_SHM_DIR",
    "MIN_SEGMENT_BYTES",
    "Segment",
    "SegmentPool",
    "PeerSegments",
    "size_class",
    "leased_array",
]

DEFAULT_SHM_DIR = "/dev/shm"
MIN_SEGMENT_BYTES = 4096
# MAP_POPULATE pre-faults the whole mapping in one go (far cheaper than one
# fault per page on first touch); mmap exposes the constant from Python 3.10.
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000 if os.uname().sysname == "Linux" else 0)


def size_class(nbytes: int) -> int:
    """The segment size that holds ``nbytes``: a power of two, at least a page."""
    if nbytes <= MIN_SEGMENT_BYTES:
        return MIN_SEGMENT_BYTES
    return 1 << (nbytes - 1).bit_length()


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


class Segment:
    """One shared-memory segment, mapped in this process.

    Attributes:
        id: the owner's number for it (never 0).
        size: its size in bytes.
        fd: its file descriptor (kept by the owner to hand to new peers).
        memory: its mapping.
    """

    __slots__ = ("id", "size", "fd", "memory", "__weakref__")

    def __init__(self, segment_id: int, size: int, fd: int, memory: mmap.mmap) -> None:
        self.id = segment_id
        self.size = size
        self.fd = fd
        self.memory = memory

    @classmethod
    def create(cls, segment_id: int, size: int, shm_dir: str) -> Segment:
        memfd = shm_dir == DEFAULT_SHM_DIR and hasattr(os, "memfd_create")
        where = "memory (memfd)" if memfd else shm_dir
        try:
            if memfd:
                fd = os.memfd_create(f"neuropod-{segment_id}", os.MFD_CLOEXEC)
            else:
                path = os.path.join(shm_dir, f"neuropod-{os.getpid()}-{secrets.token_hex(8)}")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.unlink(path)  # from now on the fds and mappings alone keep it alive
        except OSError as exc:
            raise SharedMemoryError(f"cannot create a shared-memory segment in {where}: {exc}") from exc
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                raise SharedMemoryError(
                    f"cannot reserve {size} bytes of shared memory in {where}: {exc.strerror or exc}; "
                    f"free memory or space there, or point the 'shm_dir' option at a larger tmpfs"
                ) from exc
            memory = _map(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(segment_id, size, fd, memory)

    def close(self) -> None:
        """Close the fd and unmap (the mapping stays while arrays still view it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.memory.close()
        except BufferError:
            pass  # arrays still view it: the mapping goes when the last one does


class SegmentPool:
    """Segments this process owns, reused by size class. Thread-safe.

    Args:
        shm_dir: where segments are created.
        cache_bytes: idle segments kept for reuse; beyond that they are destroyed.
        on_destroy: called with a segment id when one is destroyed, so peers
            that mapped it can unmap it too.
    """

    def __init__(
        self,
        shm_dir: str = DEFAULT_SHM_DIR,
        cache_bytes: int = 1 << 30,
        on_destroy: Optional[Callable[[int], None]] = None,
    ) -> None:
        self.shm_dir = shm_dir
        self.cache_bytes = cache_bytes
        self.on_destroy = on_destroy
        self._lock = threading.Lock()
        self._idle: Dict[int, List[Segment]] = {}
        self._idle_bytes = 0
        self._segments: Dict[int, Segment] = {}
        self._next_id = 1
        self._closed = False

    def acquire(self, nbytes: int) -> Segment:
        """A segment of at least ``nbytes`` (reused when one is idle)."""
        size = size_class(nbytes)
        with self._lock:
            idle = self._idle.get(size)
            if idle:
                self._idle_bytes -= size
                return idle.pop()
            segment_id = self._next_id
            self._next_id += 1
        segment = Segment.create(segment_id, size, self.shm_dir)
        with self._lock:
            self._segments[segment_id] = segment
        return segment

    def release(self, segment: Segment) -> None:
        """Give ``segment`` back; nothing may view it any more."""
        with self._lock:
            if self._closed or segment.id not in self._segments:
                return
            if self._idle_bytes + segment.size <= self.cache_bytes:
                self._idle.setdefault(segment.size, []).append(segment)
                self._idle_bytes += segment.size
                return
            del self._segments[segment.id]
        segment.close()
        if self.on_destroy is not None:
            self.on_destroy(segment.id)

    def get(self, segment_id: int) -> Optional[Segment]:
        return self._segments.get(segment_id)

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes

    def __len__(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            segments = list(self._segments.values())
            self._segments.clear()
            self._idle.clear()
            self._idle_bytes = 0
        for segment in segments:
            segment.close()


class PeerSegments:
    """The other side's segments, mapped here by their ids."""

    def __init__(self) -> None:
        self._memory: Dict[int, mmap.mmap] = {}

    def add(self, segment_id: int, size: int, fd: int) -> None:
        try:
            if size <= 0 or size != os.fstat(fd).st_size:
                raise WireFormatError(
                    f"segment {segment_id}: announced {size} bytes, its file has {os.fstat(fd).st_size}"
                )
            self._memory[segment_id] = _map(fd, size)
        finally:
            os.close(fd)

    def drop(self, segment_id: int) -> None:
        # Not closed explicitly: arrays may still view it; the mapping goes with the last one.
        self._memory.pop(segment_id, None)

    def get(self, segment_id: int) -> mmap.mmap:
        memory = self._memory.get(segment_id)
        if memory is None:
            raise WireFormatError(f"segment {segment_id} is unknown on this side")
        return memory

    def __contains__(self, segment_id: int) -> bool:
        return segment_id in self._memory

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        self._memory.clear()


def leased_array(
    memory: mmap.mmap,
    offset: int,
    nbytes: int,
    dtype: np.dtype,
    shape: tuple,
    on_release: Optional[Callable[[], None]] = None,
) -> np.ndarray:
    """A numpy array viewing ``memory[offset:offset + nbytes]``.

    Its base is a private uint8 array (views of views collapse onto it, so it
    lives exactly as long as any array the caller derives). ``on_release``
    runs when that base is garbage collected: that is when the block may be
    reused.
    """
    holder = np.frombuffer(memory, dtype=np.uint8, count=nbytes, offset=offset)
    if on_release is not None:
        # A bare weakref with a callback costs a fraction of weakref.finalize
        # (this runs for every output of every call); the set keeps it alive.
        watch = weakref.ref(holder, functools.partial(_released, on_release))
        _WATCHES[id(watch)] = watch
    return holder.view(dtype).reshape(shape)


# id -> weakref (weakrefs to arrays are not hashable themselves).
_WATCHES: Dict[int, weakref.ref[np.ndarray]] = {}


def _released(on_release: Callable[[], None], watch: weakref.ref[np.ndarray]) -> None:
    _WATCHES.pop(id(watch), None)
    on_release()
