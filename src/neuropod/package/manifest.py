"""``manifest.json``: sha256 hashes of every package file, written and verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from ..errors import ManifestError, PackageError
from . import layout
from .files import parse_json, read_regular
from .progress import ByteProgress

__all__ = [
    "compute_manifest",
    "manifest_document",
    "write_manifest",
    "verify_manifest",
    "parse_manifest",
    "verify_files",
    "sha256_file",
]

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
    """``{"manifest_version", "files": path -> sha256, "sizes": path -> bytes}``.

    Sizes let a reader refuse a changed file before reading it (a swapped
    1 TiB sparse file is refused at once, not hashed for minutes).
    """
    files = _package_files(root)
    sizes = {rel: path.stat().st_size for rel, path in files.items()}
    digests = {}
    with ByteProgress(f"hash {root.name}", sum(sizes.values())) as progress:
        for rel, path in files.items():
            digests[rel] = sha256_file(path)
            progress.advance(sizes[rel])
    return manifest_document(digests, sizes)


def manifest_document(digests: Mapping[str, str], sizes: Mapping[str, int]) -> Dict[str, object]:
    """The manifest's JSON object, keys in the order :func:`write_manifest` writes them."""
    return {"manifest_version": layout.MANIFEST_VERSION, "files": dict(digests), "sizes": dict(sizes)}


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
    expected, sizes = parse_manifest(data, str(path))
    verify_files(root, expected, layout.MANIFEST, sizes)
    return True


def parse_manifest(data: bytes, where: str) -> Tuple[Dict[str, str], Dict[str, int]]:
    """``(files, sizes)`` of a manifest's bytes: relative path -> sha256, and -> size (empty when not recorded).

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
    sizes = manifest.get("sizes", {})
    if not isinstance(sizes, dict) or not all(
        type(size) is int and size >= 0 and rel in expected for rel, size in sizes.items()
    ):
        raise ManifestError(f"{where}: malformed manifest: field 'sizes' is not an object of listed path -> bytes")
    return expected, sizes


def verify_files(
    root: Path, expected: Mapping[str, str], source: str, sizes: Optional[Mapping[str, int]] = None
) -> None:
    """Check the files under ``root`` (``manifest.json`` aside) are exactly ``expected`` (path -> sha256).

    ``source`` names where the expected digests come from, for messages.
    Everything that needs no reading (missing, added, linked files, sizes
    where ``sizes`` records them) is checked before any file is hashed.

    Raises:
        ManifestError: naming the first changed, missing, linked or added file.
    """
    actual = _package_files(root)
    sizes = sizes or {}
    for rel in expected:
        file = actual.get(rel)
        if file is None:
            raise ManifestError(f"package file {rel!r} is listed in {source} but missing from {root}")
        if file.is_symlink():
            raise ManifestError(f"package file {rel!r} is a symbolic link; packages may not contain links")
        if rel in sizes and file.stat().st_size != sizes[rel]:
            raise ManifestError(
                f"package file {rel!r} has {file.stat().st_size} bytes where {source} says {sizes[rel]} "
                "(tampered or corrupt)"
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise ManifestError(f"package file {extra[0]!r} is not listed in {source} (added after packaging)")
    total = sum(actual[rel].stat().st_size for rel in expected)
    with ByteProgress(f"verify {root.name}", total) as progress:
        for rel, digest in expected.items():
            if sha256_file(actual[rel]) != digest:
                raise ManifestError(f"package file {rel!r} does not match its sha256 in {source} (tampered or corrupt)")
            progress.advance(actual[rel].stat().st_size)
