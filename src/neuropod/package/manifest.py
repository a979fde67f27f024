"""``manifest.json``: sha256 hashes of every package file, written and verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping

from ..errors import ManifestError, PackageError
from . import layout
from .files import parse_json, read_regular
from .progress import ByteProgress

__all__ = ["compute_manifest", "write_manifest", "verify_manifest", "parse_manifest", "verify_files", "sha256_file"]

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_files(root: Path) -> Dict[str, Path]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel != layout.MANIFEST:
                files[rel] = path
    return files


def compute_manifest(root: Path) -> Dict[str, object]:
    files = _package_files(root)
    total = sum(p.stat().st_size for p in files.values())
    digests = {}
    with ByteProgress(f"hash {root.name}", total) as progress:
        for rel, path in files.items():
            digests[rel] = sha256_file(path)
            progress.advance(path.stat().st_size)
    return {"manifest_version": layout.MANIFEST_VERSION, "files": digests}


def write_manifest(root: Path) -> None:
    """Write ``manifest.json`` in the style of the package's other metadata (``json.dump(..., indent=4)``).

    Files are listed by sorted relative path, so the same tree gives the same bytes.
    """
    (root / layout.MANIFEST).write_text(json.dumps(compute_manifest(root), indent=4), encoding="utf-8")


def verify_manifest(root: Path) -> bool:
    """Check every file against ``manifest.json``.

    Returns False when the package has no manifest (packages written by the
    original before manifests existed). A file that was changed, removed or
    added since packaging is refused with its name.

    Raises:
        ManifestError: naming the offending file.
    """
    path = root / layout.MANIFEST
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_symlink():
        raise ManifestError(f"{path}: a symbolic link; packages may not contain links")
    try:
        data = read_regular(path)
    except PackageError as exc:
        raise ManifestError(str(exc)) from None
    verify_files(root, parse_manifest(data, str(path)), layout.MANIFEST)
    return True


def parse_manifest(data: bytes, where: str) -> Dict[str, str]:
    """The ``files`` of a manifest's bytes: relative path -> sha256.

    Raises:
        ManifestError: the bytes are not a manifest.
    """
    try:
        manifest = parse_json(data, where)
    except PackageError as exc:
        raise ManifestError(str(exc)) from None
    expected = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        raise ManifestError(f"{where}: malformed manifest: field 'files' is not an object of path -> sha256")
    return expected


def verify_files(root: Path, expected: Mapping[str, str], source: str) -> None:
    """Check the files under ``root`` (``manifest.json`` aside) are exactly ``expected`` (path -> sha256).

    ``source`` names where the expected digests come from, for messages.

    Raises:
        ManifestError: naming the first changed, missing, linked or added file.
    """
    actual = _package_files(root)
    for rel, digest in expected.items():
        file = actual.get(rel)
        if file is None:
            raise ManifestError(f"package file {rel!r} is listed in {source} but missing from {root}")
        if file.is_symlink():
            raise ManifestError(f"package file {rel!r} is a symbolic link; packages may not contain links")
        if sha256_file(file) != digest:
            raise ManifestError(f"package file {rel!r} does not match its sha256 in {source} (tampered or corrupt)")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise ManifestError(f"package file {extra[0]!r} is not listed in {source} (added after packaging)")
