"""Packages to attack: a small placeholder package, and zips written byte by byte."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from neuropod.packagers import create_placeholder_neuropod

INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", 2]}]
X = np.ones((3, 2), np.float32)


def placeholder_dir(path: Path, manifest: bool = True, **options: Any) -> Path:
    """A directory package; without ``manifest`` it is a legacy one (as the original wrote them)."""
    root = create_placeholder_neuropod(path, "target", INPUTS, OUTPUTS, package_as_zip=False, **options)
    if not manifest:
        (root / "manifest.json").unlink()
    return root


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# A zip written by hand: every field under the test's control (flags, method, names as bytes).
Entry = Tuple[bytes, bytes, Dict[str, Any]]


def raw_zip(path: Path, entries: Iterable[Entry]) -> Path:
    """Write ``(name, data, fields)`` entries; fields may set ``method``, ``flags``, ``crc``, ``size``, ``raw``.

    ``raw`` is the stored bytes as they are (already "compressed"); otherwise
    ``data`` is deflated for method 8 and stored for method 0.
    """
    local, central = b"", b""
    count = 0
    for name, data, fields in entries:
        method = fields.get("method", 8)
        flags = fields.get("flags", 0)
        stored = fields.get("raw")
        if stored is None:
            stored = _deflate(data) if method == 8 else data
        crc = fields.get("crc", zlib.crc32(data))
        size = fields.get("size", len(data))
        attr = fields.get("external_attr", 0o644 << 16)
        offset = len(local)
        header = struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(stored), size, len(name), 0
        )
        local += header + name + stored
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            0x031E,
            20,
            flags,
            method,
            0,
            0x21,
            crc,
            len(stored),
            size,
            len(name),
            0,
            0,
            0,
            0,
            attr,
            offset,
        )
        central += name
        count += 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def package_entries(root: Path, skip: Optional[set] = None) -> Dict[bytes, bytes]:
    """Every file of a package directory as zip entry name -> bytes."""
    return {
        p.relative_to(root).as_posix().encode(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in (skip or set())
    }
