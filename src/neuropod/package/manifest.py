"""``manifest.json``: sha256 hashes of every package file, written and verified.

The bytes are the original Neuropod's (its last version):
``json.dump({"manifest_version": 1, "files": {relative path: sha256}}, indent=4, sort_keys=True)``.
Manifests written here before recorded a ``sizes`` map too; they still
verify, their sizes checked before any file is hashed. For the others, the
sizes on disk are held to the extraction limit (``NEUROPOD_MAX_EXTRACTED_BYTES``)
before hashing, so a swapped 1 TiB sparse file is refused at once rather
than hashed for minutes (a zip's own entry sizes are checked too, see
:mod:`neuropod.package.archive`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from ..errors import ManifestError, PackageError
from ..progress import Progress
from . import layout
from .files import parse_json, read_regular
from .settings import extraction_limits

__all__ = [
    "compute_manifest",
    "manifest_document",
    "manifest_text",
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
    """``{"manifest_version": 1, "files": relative path -> sha256}`` of every file under ``root`` but the manifest."""
    files = _package_files(root)
    sizes = {rel: path.stat().st_size for rel, path in files.items()}
    digests = {}
    with Progress(f"hash {root.name}", sum(sizes.values())) as progress:
        for rel, path in files.items():
            digests[rel] = sha256_file(path)
            progress.advance(sizes[rel])
    return manifest_document(digests)


def manifest_document(digests: Mapping[str, str]) -> Dict[str, object]:
    """The manifest's JSON object."""
    return {"manifest_version": layout.MANIFEST_VERSION, "files": dict(digests)}


def manifest_text(digests: Mapping[str, str]) -> str:
    """The manifest's text, as the original wrote it: 4-space indent, keys sorted, no trailing newline."""
    return json.dumps(manifest_document(digests), indent=4, sort_keys=True)


def write_manifest(root: Path) -> None:
    """Write ``manifest.json`` (see :func:`manifest_text`): the same tree gives the same bytes."""
    digests = compute_manifest(root)["files"]
    (root / layout.MANIFEST).write_text(manifest_text(digests), encoding="utf-8")  # type: ignore[arg-type]


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
    """``(files, sizes)`` of a manifest's bytes: relative path -> sha256, and -> size.

    Sizes are recorded only by manifests written here before the original's
    format was matched; for others the map is empty.

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
    _check_total(root, total, source)
    with Progress(f"verify {root.name}", total) as progress:
        for rel, digest in expected.items():
            if sha256_file(actual[rel]) != digest:
                raise ManifestError(f"package file {rel!r} does not match its sha256 in {source} (tampered or corrupt)")
            progress.advance(actual[rel].stat().st_size)


def _check_total(root: Path, total: int, source: str) -> None:
    """Refuse, before hashing, files that add up to more than a package may hold (the extraction limit)."""
    limit, _ = extraction_limits()
    if total > limit:
        raise ManifestError(
            f"the files of {root} listed in {source} add up to {total} bytes, more than the {limit} a package may "
            "hold ($NEUROPOD_MAX_EXTRACTED_BYTES); refused before hashing them (tampered, or raise the limit)"
        )
