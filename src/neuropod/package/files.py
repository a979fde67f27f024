"""Reading a package's files without trusting them.

Only regular files inside the package are read; every metadata file has a
size bound; JSON must be valid UTF-8 text of bounded depth. A FIFO, a device
or a link that leaves the package is refused before anything is opened for
reading, so a hostile package can neither block a reader nor make it read
forever.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..errors import PackageError, UnsafePackageError

__all__ = ["METADATA_MAX_BYTES", "JSON_MAX_DEPTH", "ZIP_READ_ERRORS", "read_regular", "read_json", "check_tree"]

#: Largest ``config.json``, ``manifest.json``, ``0/config.json`` or ``0/requirements.lock`` read.
METADATA_MAX_BYTES = 16 << 20
#: Deepest nesting of objects and lists accepted in a package's JSON.
JSON_MAX_DEPTH = 64

#: What :mod:`zipfile` (and numpy's ``.npz`` reader on top of it) raises for a corrupt, truncated,
#: encrypted or oddly compressed archive, or a non-UTF-8 entry name: caught where a package's zip is
#: read and turned into a PackageError naming the file.
ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    RuntimeError,  # an encrypted entry
    NotImplementedError,  # an unknown compression method
    UnicodeDecodeError,  # an entry name flagged UTF-8 that is not
    struct.error,
    OverflowError,
    KeyError,
    ValueError,
    OSError,
)


def read_regular(path: Path, limit: int = METADATA_MAX_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO cannot stall the reader) and checked with
    ``fstat`` on the open descriptor, so what is checked is what is read.

    Raises:
        PackageError: naming the file: missing, not a regular file, or too big.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PackageError(f"{path}: not found") from None
    except OSError as exc:
        raise PackageError(f"{path}: cannot be opened: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePackageError(f"{path}: not a regular file ({_kind(info.st_mode)}); refusing to read it")
        if info.st_size > limit:
            raise PackageError(f"{path}: {info.st_size} bytes, more than the {limit} a metadata file may have")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # grew while being read
            raise PackageError(f"{path}: more than the {limit} bytes a package's metadata file may have")
        return data
    except OSError as exc:
        raise PackageError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_json(path: Path, limit: int = METADATA_MAX_BYTES) -> Any:
    """Parse ``path`` as JSON: a regular file, UTF-8, nested at most ``JSON_MAX_DEPTH`` deep, valid Unicode.

    Raises:
        PackageError: naming the file and what is wrong with it.
    """
    return parse_json(read_regular(path, limit), str(path))


def parse_json(data: bytes, where: str) -> Any:
    """Parse JSON bytes from a package (see :func:`read_json`); ``where`` names them in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{where}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    depth = _max_depth(text)
    if depth > JSON_MAX_DEPTH:
        raise PackageError(f"{where}: JSON nested {depth} deep, more than the {JSON_MAX_DEPTH} allowed")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"{where}: cannot be read as JSON: {exc}") from None
    try:
        # "\ud800" is valid JSON but no text: it would fail later, far from here, on the first encode.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PackageError(f"{where}: a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    return value


def _max_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (checked before parsing, so parsing never recurses deep)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > JSON_MAX_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def check_tree(root: Path) -> None:
    """Refuse a package tree holding anything but regular files, directories and links that stay inside it.

    Runs whether or not the package has a manifest: a legacy package's link
    in ``0/ops`` or ``0/code`` pointing outside would otherwise load outside
    code, and a FIFO would block its reader.

    Raises:
        UnsafePackageError: naming the entry.
    """
    resolved_root = root.resolve()
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(directory) / name
            try:
                mode = path.lstat().st_mode
            except OSError as exc:
                raise PackageError(f"{path}: cannot be read: {exc.strerror or exc}") from None
            if stat.S_ISLNK(mode):
                target = Path(os.path.realpath(path))  # never raises: a loop resolves to itself
                if target != resolved_root and resolved_root not in target.parents:
                    raise UnsafePackageError(
                        f"{path.relative_to(root).as_posix()}: a link to {os.readlink(path)!r}, outside the package; "
                        "refusing to open it"
                    )
                try:
                    mode = target.stat().st_mode
                except OSError:
                    raise UnsafePackageError(f"{path.relative_to(root).as_posix()}: a broken or looping link") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafePackageError(
                    f"{path.relative_to(root).as_posix()}: {_kind(mode)}, not a regular file; refusing the package"
                )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a link"
    return "not a regular file"
