"""Reading the neuropod package format (a directory or a zip).

See :mod:`neuropod.package.layout` for the files a package holds.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ManifestError, PackageError, UnsafePackageError
from . import layout
from .archive import extract_cached, verify_extracted
from .config import PackageConfig
from .files import ZIP_READ_ERRORS, check_tree, read_json, read_regular
from .manifest import verify_manifest
from .testdata import read_test_data

__all__ = ["Package", "open_package", "PackageConfig", "layout"]


@dataclass(frozen=True)
class Package:
    """A package on disk, opened and checked.

    Attributes:
        root: the package directory (the cache directory for a zip).
        source: the path the caller gave.
        config: the parsed ``config.json``.
        has_manifest: whether a manifest was present (and verified, if asked).
    """

    root: Path
    source: Path
    config: PackageConfig
    has_manifest: bool

    @property
    def data_dir(self) -> Path:
        return self.root / layout.DATA_DIR

    @property
    def code_dir(self) -> Path:
        return self.root / layout.CODE_DIR

    @property
    def ops_dir(self) -> Path:
        return self.root / layout.OPS_DIR

    def backend_config(self) -> Dict[str, Any]:
        """``0/config.json``: backend settings; empty when absent."""
        path = self.root / layout.BACKEND_CONFIG
        if not path.exists() and not path.is_symlink():
            return {}
        data = read_json(path)
        if not isinstance(data, dict):
            raise PackageError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    def requirements(self) -> List[str]:
        """Pinned ``name==version`` lines of ``0/requirements.lock``."""
        path = self.root / layout.REQUIREMENTS
        if not path.exists() and not path.is_symlink():
            return []
        try:
            lines = read_regular(path).decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise PackageError(f"{path}: not UTF-8 text: {exc.reason}") from None
        return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]

    def custom_op_paths(self) -> List[Path]:
        paths = []
        for name in self.config.custom_ops:
            path = self.ops_dir / name
            if not path.is_file():
                raise PackageError(f"custom op {name!r} is listed in {layout.CONFIG} but {path} is missing")
            paths.append(path)
        return paths

    def test_data(self, trusted: bool = False) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
        return read_test_data(self.root, trusted=trusted)

    def files(self) -> List[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())


def open_package(path: Union[str, os.PathLike], verify: bool = True) -> Package:
    """Open a package directory or zip.

    Nothing is read from a file before it is checked: the tree may hold only
    regular files, directories and links that stay inside it; a directory's
    files are verified against its manifest; a zip is extracted once into a
    cache keyed by its content hash (bounded, and verified against the zip's
    own manifest before the entry exists), and a cached copy is checked
    against the zip itself each time (and extracted again if it changed).
    A zip whose package is refused leaves no cache entry behind.

    Args:
        path: a package directory or zip file.
        verify: check every file against ``manifest.json`` (refuses tampered,
            missing or added files).

    Raises:
        PackageError: the path is not a readable package.
        ManifestError: a file does not match the manifest.
        UnsafePackageError: a zip entry or a link would escape the package, or a file is not a regular one.
    """
    source = Path(path)
    if source.is_dir():
        check_tree(source)
        root = source
        has_manifest = verify_manifest(root) if verify else (root / layout.MANIFEST).exists()
        return Package(root=root, source=source, config=PackageConfig.read(root), has_manifest=has_manifest)
    if not source.is_file():
        if source.exists():
            raise UnsafePackageError(f"{source}: not a regular file or directory; refusing to read it")
        raise PackageError(f"{source}: no such package (not a directory or zip file)")
    if not _looks_like_zip(source):
        raise PackageError(f"{source}: neither a package directory nor a zip file")
    root, extracted_with_manifest = extract_cached(source, verify=verify)
    try:
        check_tree(root)
        if extracted_with_manifest is not None:
            has_manifest = extracted_with_manifest
        elif verify:  # found in the cache: check it against the zip, never against itself
            has_manifest = _verify_cached(source, root)
        else:
            has_manifest = (root / layout.MANIFEST).exists()
        # Read only now, from verified files.
        config = PackageConfig.read(root)
    except PackageError:
        shutil.rmtree(root, ignore_errors=True)  # a refused package keeps no extraction
        raise
    return Package(root=root, source=source, config=config, has_manifest=has_manifest)


def _looks_like_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except ZIP_READ_ERRORS:
        return False


def _verify_cached(source: Path, root: Path) -> bool:
    try:
        return verify_extracted(source, root)
    except ManifestError:
        # The zip is what the caller gave (the cache is keyed by its hash): something changed
        # the extracted copy, e.g. a model writing into its data dir. Extract again, verifying
        # on the way; if the fresh copy still differs, the zip disagrees with its own manifest.
        shutil.rmtree(root, ignore_errors=True)
        fresh, has_manifest = extract_cached(source, verify=True)
        return verify_extracted(source, fresh) if has_manifest is None else has_manifest
