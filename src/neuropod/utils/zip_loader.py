"""The original's ``neuropod.utils.zip_loader``: a package zip as a directory.

A zip is extracted into the package cache, verified against its manifest
(see :mod:`neuropod.package.cache`), and reused by later calls; the cache owns
those directories, so :data:`TO_CLEANUP` stays empty and :func:`cleanup` has
nothing to delete.
"""

from __future__ import annotations

import os
from typing import List, Union

from ..package import open_package

__all__ = ["TO_CLEANUP", "cleanup", "extract_neuropod_if_necessary"]

#: Directories to delete at exit (the original's temporary extractions); the cache owns ours.
TO_CLEANUP: List[str] = []


def cleanup() -> None:
    """Delete the directories in :data:`TO_CLEANUP` (there are none: extractions live in the cache)."""
    import shutil

    while TO_CLEANUP:
        shutil.rmtree(TO_CLEANUP.pop(), ignore_errors=True)


def extract_neuropod_if_necessary(path: Union[str, os.PathLike[str]]) -> str:
    """``path`` itself for a package directory; for a zip, its verified extraction in the cache."""
    if os.path.isdir(path):
        return os.fspath(path)
    return str(open_package(path).root)
