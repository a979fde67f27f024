"""System shared memory regions (the v2 shared-memory extension): tensors that never cross the socket.

A client on the same host creates a POSIX shared memory object (``shm_open``;
tritonclient.utils.shared_memory does), registers it under a name with a key,
an offset and a size, and then names the region, an offset and a byte size
in an input's or a requested output's parameters
(``shared_memory_region``, ``shared_memory_offset``,
``shared_memory_byte_size``). The server reads such inputs from the region
and writes such outputs into it; the response then carries only their
datatype, shape and the region's parameters.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import InputValidationError

__all__ = ["SharedMemoryRegions", "Region", "SHM_ROOT"]

#: Where POSIX shared memory objects live on Linux.
SHM_ROOT = Path("/dev/shm")


@dataclass
class Region:
    """One registered region: ``byte_size`` bytes from ``offset`` of the object named ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> Dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def _span(self, offset: int, byte_size: int, tensor: str) -> int:
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InputValidationError(
                f"tensor {tensor!r}: bytes {offset}..{offset + byte_size} are outside shared memory region "
                f"{self.name!r} ({self.byte_size} bytes)"
            )
        return self.offset + offset

    def read(self, offset: int, byte_size: int, tensor: str) -> bytes:
        start = self._span(offset, byte_size, tensor)
        return self.mapping[start : start + byte_size]

    def write(self, offset: int, byte_size: int, data: bytes, tensor: str) -> None:
        if len(data) > byte_size:
            raise InputValidationError(
                f"output {tensor!r}: {len(data)} bytes do not fit the {byte_size} bytes given for it in shared "
                f"memory region {self.name!r}"
            )
        start = self._span(offset, len(data), tensor)
        self.mapping[start : start + len(data)] = data


class SharedMemoryRegions:
    """The regions registered with one server (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: Dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InputValidationError("shared memory register: the region needs a name")
        object_name = key[1:] if key.startswith("/") else key
        if not object_name or "/" in object_name or object_name in (".", ".."):
            raise InputValidationError(f"shared memory key {key!r}: expected a POSIX shared memory name like '/name'")
        if byte_size <= 0:
            raise InputValidationError(f"shared memory region {name!r}: byte_size must be positive, got {byte_size}")
        with self._lock:
            if name in self._regions:
                raise InputValidationError(f"shared memory region {name!r} is already registered")
            try:
                fd = os.open(SHM_ROOT / object_name, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise InputValidationError(f"shared memory key {key!r}: no such object on this host") from None
            except OSError as exc:
                raise InputValidationError(f"shared memory key {key!r}: cannot open it ({exc.strerror})") from None
            try:
                size = os.fstat(fd).st_size
                if offset < 0 or offset + byte_size > size:
                    raise InputValidationError(
                        f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} exceeds the "
                        f"{size} bytes of {key!r}"
                    )
                mapping = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str) -> None:
        """Forget region ``name`` (every region when empty); unknown names are no error."""
        with self._lock:
            names = list(self._regions) if not name else [name]
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    region.mapping.close()

    def status(self, name: str = "") -> List[Dict[str, object]]:
        with self._lock:
            if name:
                return [self.get(name).status()]
            return [region.status() for region in self._regions.values()]

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InputValidationError(f"no shared memory region named {name!r} is registered")
        return region

    def find(self, name: Optional[str]) -> Optional[Region]:
        return self.get(name) if name else None

    def close(self) -> None:
        self.unregister("")
