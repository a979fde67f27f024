"""Zip packages: deterministic writing and safe, cached extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Optional

from ..errors import ManifestError, PackageError, UnsafePackageError
from . import layout
from .manifest import parse_manifest, sha256_file, verify_files

__all__ = ["write_zip", "extract_cached", "verify_extracted", "cache_root"]


def cache_root() -> Path:
    """Where extracted zips live: ``$NEUROPOD_CACHE_DIR`` or ``~/.cache/neuropod``."""
    base = os.environ.get("NEUROPOD_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "neuropod"


def write_zip(source_dir: Path, zip_path: Path, compression: int = zipfile.ZIP_DEFLATED) -> None:
    """Zip ``source_dir`` with sorted entries and fixed timestamps (same tree, same bytes).

    ``compression`` is ``zipfile.ZIP_DEFLATED`` or ``zipfile.ZIP_STORED``.

    Empty directories (a Python model's ``0/data`` with no data files) are kept
    as directory entries, so the extracted tree matches the directory form.
    """
    entries: Dict[str, Optional[Path]] = {}
    for path in source_dir.rglob("*"):
        name = path.relative_to(source_dir).as_posix()
        if path.is_file():
            entries[name] = path
        elif path.is_dir() and not any(path.iterdir()):
            entries[name + "/"] = None
    with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=layout.ZIP_TIMESTAMP)
            source = entries[name]
            if source is None:
                info.external_attr = (0o40755 << 16) | 0x10  # a directory, MS-DOS directory flag too
                zf.writestr(info, b"")
                continue
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            zf.writestr(info, source.read_bytes())


def _check_entry(info: zipfile.ZipInfo, zip_path: Path) -> None:
    name = info.filename
    posix = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafePackageError(f"{zip_path}: entry {name!r} has an absolute path; refusing to extract")
    if ".." in posix.parts:
        raise UnsafePackageError(f"{zip_path}: entry {name!r} climbs out of the package with '..'; refusing to extract")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafePackageError(f"{zip_path}: entry {name!r} is a symbolic link; refusing to extract")


def extract_cached(zip_path: Path) -> Path:
    """Extract ``zip_path`` once into the cache, keyed by its content hash.

    Every entry is checked before anything is written (no absolute paths, no
    ``..``, no links). Extraction goes to a temporary sibling that is renamed
    into place, so a concurrent or interrupted load never sees half a tree.
    """
    try:
        key = sha256_file(zip_path)
    except OSError as exc:
        raise PackageError(f"{zip_path}: cannot be read: {exc}") from None
    target = cache_root() / "packages" / key
    if (target / layout.CONFIG).exists():
        return target
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"{zip_path}: not a valid zip package: {exc}") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_entry(info, zip_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=target.parent))
        try:
            try:
                zf.extractall(staging)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise PackageError(f"{zip_path}: corrupt zip package: {exc}") from None
            if not (staging / layout.CONFIG).is_file():
                raise PackageError(f"{zip_path}: no {layout.CONFIG} at the top of the zip; is this a neuropod package?")
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / layout.CONFIG).exists():  # lost a race to a complete copy is fine
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


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
    try:
        with zipfile.ZipFile(zip_path) as zf:
            files = [info for info in zf.infolist() if not info.is_dir()]
            if any(info.filename == layout.MANIFEST for info in files):
                data = zf.read(layout.MANIFEST)
                expected = parse_manifest(data, f"{zip_path}!{layout.MANIFEST}")
                expected_manifest: Optional[str] = hashlib.sha256(data).hexdigest()
            else:
                expected = {info.filename: _entry_digest(zf, info) for info in files}
                expected_manifest = None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"{zip_path}: not a valid zip package: {exc}") from None
    source = f"{zip_path.name}'s {layout.MANIFEST}" if expected_manifest else f"the zip {zip_path.name}"
    verify_files(root, expected, source)
    cached_manifest = root / layout.MANIFEST
    if expected_manifest is not None and (
        cached_manifest.is_symlink()
        or not cached_manifest.is_file()
        or sha256_file(cached_manifest) != expected_manifest
    ):
        raise ManifestError(f"package file {layout.MANIFEST!r} in {root} differs from the one in {zip_path}")
    if expected_manifest is None and cached_manifest.exists():
        raise ManifestError(f"package file {layout.MANIFEST!r} in {root} is not in {zip_path} (added after packaging)")
    return expected_manifest is not None


def _entry_digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    digest = hashlib.sha256()
    with zf.open(info) as entry:
        for chunk in iter(lambda: entry.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
