"""Zip packages: deterministic streamed writing, bounded and verified extraction, the extraction cache.

Files are streamed in chunks both ways (a model is never held in memory
whole), with progress in bytes for large ones. Extraction is bounded (total
size and expansion ratio, checked against the archive's declared sizes before
anything is written) and verified on the way: each entry is hashed while it
is written and compared with the zip's own ``manifest.json`` before the tree
is renamed into the cache, so a refused package is extracted nowhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Optional, Tuple

from ..errors import ManifestError, PackageError, UnsafePackageError
from ..progress import Progress
from . import layout
from .files import METADATA_MAX_BYTES, ZIP_READ_ERRORS
from .manifest import manifest_text, parse_manifest, sha256_file, verify_files
from .settings import RATIO_FLOOR_BYTES, cache_root, extraction_limits, packages_cache_dir

__all__ = [
    "write_zip",
    "check_zip_holds_tree",
    "extract_zip",
    "extract_cached",
    "verify_extracted",
    "cache_root",
    "packages_cache_dir",
    "extraction_limits",
    "AUTO_COMPRESSION",
]

_CHUNK = 4 << 20
# A chunk at least this big is hashed on the helper thread; below it, handing it over costs more than it saves.
_THREADED_HASH_BYTES = 1 << 20
#: ``zip_compression=AUTO_COMPRESSION`` (the default): each file stored or deflated, whichever its bytes suit.
AUTO_COMPRESSION = None
# A file whose sample deflates by less than this fraction is stored: weights rarely compress, and deflating
# hundreds of megabytes to save a few percent costs more than the bytes it saves.
_MIN_SAVING = 0.10
# The sample: this many bytes in all, read as _SAMPLE_SLICES slices spread over the file. A file's head is no
# sample of it: a TorchScript or Keras archive starts with code and metadata (text that deflates well) and
# holds its weights after them.
_SAMPLE_BYTES = 1 << 20
_SAMPLE_SLICES = 64


# --- writing -----------------------------------------------------------------------------------


def write_zip(
    source_dir: Path,
    zip_path: Path,
    compression: Optional[int] = AUTO_COMPRESSION,
    add_manifest: bool = False,
) -> Dict[str, str]:
    """Zip ``source_dir`` with sorted entries and fixed timestamps (same tree, same bytes).

    Args:
        compression: ``zipfile.ZIP_DEFLATED``, ``zipfile.ZIP_STORED``, or
            ``AUTO_COMPRESSION`` (None): each file deflated unless a sample of
            it saves less than 10 % (weights are stored as they are).
        add_manifest: hash each file while zipping it and add ``manifest.json``
            as the last entry (one read of every file instead of two). The
            tree itself must then have no manifest.

    Empty directories (a Python model's ``0/data`` with no data files) are kept
    as directory entries, so the extracted tree matches the directory form.

    Returns:
        The sha256 of each file entry, by name (the manifest's own entry aside).
    """
    entries: Dict[str, Optional[Path]] = {}
    for path in source_dir.rglob("*"):
        name = path.relative_to(source_dir).as_posix()
        if path.is_file():
            entries[name] = path
        elif path.is_dir() and not any(path.iterdir()):
            entries[name + "/"] = None
    if add_manifest and layout.MANIFEST in entries:
        raise PackageError(f"{source_dir}: already has a {layout.MANIFEST}; cannot add one")
    total = sum(p.stat().st_size for p in entries.values() if p is not None)
    digests: Dict[str, str] = {}
    with Progress(f"zip {zip_path.name}", total) as progress:
        with zipfile.ZipFile(zip_path, "w") as zf, _EntryWriter(zf, progress) as writer:
            for name in sorted(entries):
                source = entries[name]
                info = zipfile.ZipInfo(name, date_time=layout.ZIP_TIMESTAMP)
                if source is None:
                    info.external_attr = (0o40755 << 16) | 0x10  # a directory, MS-DOS directory flag too
                    zf.writestr(info, b"")
                    continue
                info.external_attr = 0o644 << 16
                info.compress_type = compression if compression is not None else _suited_compression(source)
                digests[name] = writer.write(info, source)
            if add_manifest:
                data = manifest_text(digests)  # the bytes write_manifest writes for the same tree
                info = zipfile.ZipInfo(layout.MANIFEST, date_time=layout.ZIP_TIMESTAMP)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED if compression is None else compression
                zf.writestr(info, data.encode("utf-8"))
    return digests


def check_zip_holds_tree(zip_path: Path, root: Path) -> None:
    """Check, from the zip's directory and manifest alone, that it holds ``root``'s files.

    The packaging pipeline self-tests the tree it has just zipped instead of
    extracting the zip again: :func:`write_zip` hashed and wrote each file's
    bytes in one pass, so what is left to check is that every file went in
    whole, with its name, and that the manifest lists exactly those files.
    Nothing but the manifest entry is read.

    Raises:
        PackageError: naming the first file that differs.
    """
    on_disk = {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).as_posix() != layout.MANIFEST
    }
    with _open_zip(zip_path) as zf:
        try:
            zipped = {info.filename: info.file_size for info in zf.infolist() if not info.is_dir()}
            manifest_data = (
                _read_entry(zf, zf.getinfo(layout.MANIFEST), zip_path) if layout.MANIFEST in zipped else None
            )
        except ZIP_READ_ERRORS as exc:
            raise PackageError(f"{zip_path}: not a valid zip package: {type(exc).__name__}: {exc}") from None
    zipped.pop(layout.MANIFEST, None)
    for name in sorted(set(on_disk) | set(zipped)):
        if name not in zipped:
            raise PackageError(f"{zip_path}: {name!r} of {root} is missing from the zip")
        if name not in on_disk:
            raise PackageError(f"{zip_path}: holds {name!r}, which {root} does not")
        if zipped[name] != on_disk[name]:
            raise PackageError(f"{zip_path}: {name!r} holds {zipped[name]} bytes where {root} has {on_disk[name]}")
    if manifest_data is not None:
        listed, _ = parse_manifest(manifest_data, f"{zip_path}!{layout.MANIFEST}")
        if set(listed) != set(zipped):
            odd = sorted(set(listed) ^ set(zipped))[0]
            raise ManifestError(f"{zip_path}: its {layout.MANIFEST} and its entries disagree on {odd!r}")


def _suited_compression(path: Path) -> int:
    """Deflate ``path`` unless slices spread over it deflate by less than ``_MIN_SAVING``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4096:
            return zipfile.ZIP_DEFLATED
        if size <= _SAMPLE_BYTES:
            slices = [f.read()]
        else:
            length = _SAMPLE_BYTES // _SAMPLE_SLICES
            step = (size - length) / (_SAMPLE_SLICES - 1)
            slices = []
            for index in range(_SAMPLE_SLICES):
                f.seek(int(index * step))
                slices.append(f.read(length))
    sampled = sum(len(piece) for piece in slices)
    deflated = sum(len(zlib.compress(piece, 1)) for piece in slices)
    return zipfile.ZIP_DEFLATED if 1 - deflated / sampled >= _MIN_SAVING else zipfile.ZIP_STORED


class _EntryWriter:
    """Streams files into a zip through one reused buffer, hashing each chunk while it is written.

    The sha256 of a chunk runs on a helper thread while this one computes the
    zip's CRC and writes it: both release the GIL, so on two cores the hash
    costs no time of its own. Reading into the same buffer each time spares a
    fresh allocation (and its page faults) for every few megabytes of weights.
    """

    def __init__(self, zf: zipfile.ZipFile, progress: Progress) -> None:
        self._zf = zf
        self._progress = progress
        self._buffer = bytearray(_CHUNK)
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="neuropod-zip-hash")

    def write(self, info: zipfile.ZipInfo, source: Path) -> str:
        """Stream ``source`` into the zip as ``info``; return its sha256."""
        digest = hashlib.sha256()
        view = memoryview(self._buffer)
        with open(source, "rb", buffering=0) as src:
            size = os.fstat(src.fileno()).st_size
            info.file_size = size
            with self._zf.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as dst:
                while True:
                    count = src.readinto(self._buffer)
                    if not count:
                        break
                    chunk = view[:count]
                    hashed = self._hasher.submit(digest.update, chunk) if count >= _THREADED_HASH_BYTES else None
                    if hashed is None:
                        digest.update(chunk)
                    dst.write(chunk)
                    if hashed is not None:
                        hashed.result()  # the buffer is read again only once the hash is done with it
                    self._progress.advance(count)
        return digest.hexdigest()

    def __enter__(self) -> _EntryWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._hasher.shutdown()


# --- extracting --------------------------------------------------------------------------------


def _check_entry(info: zipfile.ZipInfo, zip_path: Path) -> None:
    name = info.filename
    posix = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafePackageError(f"{zip_path}: entry {name!r} has an absolute path; refusing to extract")
    if ".." in posix.parts:
        raise UnsafePackageError(f"{zip_path}: entry {name!r} climbs out of the package with '..'; refusing to extract")
    if "\0" in name or not posix.parts:
        raise UnsafePackageError(f"{zip_path}: entry {name!r} is not a file name; refusing to extract")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafePackageError(f"{zip_path}: entry {name!r} is a symbolic link; refusing to extract")
    if info.flag_bits & 0x1:
        raise PackageError(f"{zip_path}: entry {name!r} is encrypted; packages are not")


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except ZIP_READ_ERRORS as exc:
        raise PackageError(f"{zip_path}: not a valid zip package: {type(exc).__name__}: {exc}") from None


def _check_bounds(zip_path: Path, infos: list) -> int:
    total = sum(info.file_size for info in infos)
    max_bytes, max_ratio = extraction_limits()
    if total > max_bytes:
        raise PackageError(
            f"{zip_path}: would extract to {total} bytes, more than the {max_bytes} allowed "
            "(raise $NEUROPOD_MAX_EXTRACTED_BYTES for a bigger model)"
        )
    archive_size = max(1, zip_path.stat().st_size)
    if total > RATIO_FLOOR_BYTES and total / archive_size > max_ratio:
        raise PackageError(
            f"{zip_path}: would expand {total / archive_size:.0f}-fold ({archive_size} bytes to {total}), "
            f"more than the {max_ratio:g} allowed; a zip bomb? (raise $NEUROPOD_MAX_EXTRACTION_RATIO if not)"
        )
    return total


def extract_zip(zip_path: Path, destination: Path, verify: bool = True) -> bool:
    """Extract a package zip into the new directory ``destination``, checking it on the way.

    Every entry is checked before anything is written (no absolute paths, no
    ``..``, no links, no duplicates, sizes within :func:`extraction_limits`);
    each file is hashed as it is written and, with ``verify``, compared with
    the zip's own manifest. On any error ``destination`` is removed.

    Returns:
        Whether the zip has a manifest.

    Raises:
        PackageError: the zip is corrupt, too big, or not a package.
        UnsafePackageError: an entry would escape the package.
        ManifestError: (``verify``) a file differs from the zip's manifest.
    """
    destination.mkdir(parents=True)
    try:
        return _extract_into(zip_path, destination, verify)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _extract_into(zip_path: Path, destination: Path, verify: bool) -> bool:
    with _open_zip(zip_path) as zf:
        try:
            infos = zf.infolist()
        except ZIP_READ_ERRORS as exc:
            raise PackageError(f"{zip_path}: not a valid zip package: {type(exc).__name__}: {exc}") from None
        seen = set()
        for info in infos:
            _check_entry(info, zip_path)
            key = info.filename.rstrip("/")
            if key in seen:
                raise UnsafePackageError(f"{zip_path}: entry {info.filename!r} appears twice; refusing to extract")
            seen.add(key)
        total = _check_bounds(zip_path, infos)
        names = {info.filename for info in infos}
        if layout.CONFIG not in names:
            raise PackageError(f"{zip_path}: no {layout.CONFIG} at the top of the zip; is this a neuropod package?")
        manifest = None
        if layout.MANIFEST in names:
            info = zf.getinfo(layout.MANIFEST)
            if info.file_size > METADATA_MAX_BYTES:
                raise PackageError(f"{zip_path}!{layout.MANIFEST}: {info.file_size} bytes, more than allowed")
            manifest, _ = parse_manifest(_read_entry(zf, info, zip_path), f"{zip_path}!{layout.MANIFEST}")
        digests: Dict[str, str] = {}
        with Progress(f"extract {zip_path.name}", total) as progress:
            for info in infos:
                target = destination.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                try:
                    (target if info.is_dir() else target.parent).mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # e.g. a file entry "0" and an entry "0/config.json"
                    raise UnsafePackageError(
                        f"{zip_path}: entry {info.filename!r} clashes with another entry: {exc.strerror or exc}"
                    ) from None
                if not info.is_dir():
                    digests[info.filename] = _extract_entry(zf, info, target, zip_path, progress)
    if manifest is not None and verify:
        source = f"{zip_path.name}'s {layout.MANIFEST}"
        for rel, digest in manifest.items():
            if rel not in digests:
                raise ManifestError(f"package file {rel!r} is listed in {source} but missing from {zip_path}")
            if digests[rel] != digest:
                raise ManifestError(f"package file {rel!r} does not match its sha256 in {source} (tampered or corrupt)")
        extra = sorted(set(digests) - set(manifest) - {layout.MANIFEST})
        if extra:
            raise ManifestError(f"package file {extra[0]!r} is not listed in {source} (added after packaging)")
    return manifest is not None


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path) -> bytes:
    try:
        return zf.read(info)
    except ZIP_READ_ERRORS as exc:
        raise PackageError(f"{zip_path}: entry {info.filename!r} is corrupt: {type(exc).__name__}: {exc}") from None


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    written = 0
    try:
        with zf.open(info) as src, open(target, "xb") as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                written += len(chunk)
                if written > info.file_size:  # zipfile stops at the declared size; never trust that alone
                    raise PackageError(f"{zip_path}: entry {info.filename!r} holds more than its declared size")
                digest.update(chunk)
                dst.write(chunk)
                progress.advance(len(chunk))
    except PackageError:
        raise
    except FileExistsError:
        raise UnsafePackageError(f"{zip_path}: entry {info.filename!r} clashes with another entry") from None
    except ZIP_READ_ERRORS as exc:
        raise PackageError(f"{zip_path}: entry {info.filename!r} is corrupt: {type(exc).__name__}: {exc}") from None
    return digest.hexdigest()


def zip_key(zip_path: Path) -> str:
    """The zip's content hash: the name of its cache entry."""
    size = zip_path.stat().st_size
    digest = hashlib.sha256()
    with Progress(f"hash {zip_path.name}", size) as progress, open(zip_path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
            progress.advance(len(chunk))
    return digest.hexdigest()


def extract_cached(zip_path: Path, verify: bool = True) -> Tuple[Path, Optional[bool]]:
    """The cache entry of ``zip_path``, extracted (and verified) once, keyed by the zip's content hash.

    Extraction goes to a temporary sibling that is renamed into place only
    once complete and (with ``verify``) checked against the zip's manifest: a
    concurrent or interrupted load never sees half a tree, and a refused
    package leaves nothing behind. After a new entry, the cache is trimmed to
    its size bound (see :mod:`neuropod.package.cache`).

    Returns:
        ``(root, has_manifest)``; ``has_manifest`` is None for an entry found
        in the cache, which the caller must still check against the zip
        (:func:`verify_extracted`).
    """
    try:
        key = zip_key(zip_path)
    except OSError as exc:
        raise PackageError(f"{zip_path}: cannot be read: {exc.strerror or exc}") from None
    target = packages_cache_dir() / key
    if (target / layout.CONFIG).exists():
        _touch(target)
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=target.parent))
    try:
        staging.rmdir()  # extract_zip makes it again and removes it on failure
        has_manifest = extract_zip(zip_path, staging, verify=verify)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / layout.CONFIG).exists():  # lost a race to a complete copy is fine
                raise
            return target, None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _touch(target)
    from .cache import trim_packages_cache  # the cache module lists entries through this one

    trim_packages_cache(keep=target)
    return target, has_manifest


def _touch(entry: Path) -> None:
    """Mark a cache entry used now (its directory's times: nothing inside it changes)."""
    try:
        os.utime(entry)
    except OSError:
        pass  # a read-only cache still serves; eviction just sees it older


def verify_extracted(zip_path: Path, root: Path) -> bool:
    """Check the extracted copy ``root`` against the zip itself, not against files in the cache.

    The digests come from the zip's own ``manifest.json`` (and the cached
    manifest must be byte-identical to it); a zip without a manifest (written
    by the original) is compared entry by entry. So an edit anywhere in the
    cache, the manifest included, is found. Returns whether the zip has a manifest.

    Raises:
        ManifestError: naming the file that differs.
        PackageError: the zip cannot be read.
    """
    with _open_zip(zip_path) as zf:
        try:
            files = [info for info in zf.infolist() if not info.is_dir()]
            # The zip's own sizes: a cached file of another size is refused before it is hashed.
            sizes = {info.filename: info.file_size for info in files if info.filename != layout.MANIFEST}
            if any(info.filename == layout.MANIFEST for info in files):
                data = _read_entry(zf, zf.getinfo(layout.MANIFEST), zip_path)
                expected, _ = parse_manifest(data, f"{zip_path}!{layout.MANIFEST}")
                expected_manifest: Optional[str] = hashlib.sha256(data).hexdigest()
            else:
                expected = {info.filename: _entry_digest(zf, info, zip_path) for info in files}
                expected_manifest = None
        except ZIP_READ_ERRORS as exc:
            raise PackageError(f"{zip_path}: not a valid zip package: {type(exc).__name__}: {exc}") from None
    source = f"{zip_path.name}'s {layout.MANIFEST}" if expected_manifest else f"the zip {zip_path.name}"
    verify_files(root, expected, source, {rel: size for rel, size in sizes.items() if rel in expected})
    cached_manifest = root / layout.MANIFEST
    if expected_manifest is not None and (
        cached_manifest.is_symlink()
        or not cached_manifest.is_file()
        or sha256_file(cached_manifest) != expected_manifest
    ):
        raise ManifestError(f"package file {layout.MANIFEST!r} in {root} differs from the one in {zip_path}")
    if expected_manifest is None and (cached_manifest.exists() or cached_manifest.is_symlink()):
        raise ManifestError(f"package file {layout.MANIFEST!r} in {root} is not in {zip_path} (added after packaging)")
    return expected_manifest is not None


def _entry_digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with zf.open(info) as entry:
            for chunk in iter(lambda: entry.read(_CHUNK), b""):
                digest.update(chunk)
    except ZIP_READ_ERRORS as exc:
        raise PackageError(f"{zip_path}: entry {info.filename!r} is corrupt: {type(exc).__name__}: {exc}") from None
    return digest.hexdigest()
