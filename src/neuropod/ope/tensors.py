"""How large a tensor may be to cross to or from a worker: checked before any copy (both sides use this)."""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from ..errors import SharedMemoryError
from .layouts import INLINE_TENSOR_BYTES
from .shm import DEFAULT_SHM_DIR

__all__ = ["check_crossing_size", "logical_bytes", "available_shared_memory"]

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
    if size <= INLINE_TENSOR_BYTES:
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
