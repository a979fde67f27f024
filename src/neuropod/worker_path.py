"""The one directory a worker in another interpreter puts on its ``PYTHONPATH``.

A worker started with another Python (``python_executable=``, an environment
built by version selection, a sandbox or a container) must import *this*
neuropod and nothing else of this process's environment. The directory that
holds the ``neuropod`` package is that in a source checkout (``src/``), but in
a normal install it is the whole ``site-packages``: putting it on the worker's
path would make the other interpreter import this interpreter's numpy (built
for another Python) and shadow the pins of a built environment.

So the worker's path is a directory holding only the package: the package's
own parent when that holds nothing else importable (an editable ``src/``
layout), otherwise a copy of the package in neuropod's cache, made once per
content (a copy, not a symlink, so a sandbox or a container that mounts the
directory sees real files). The copy lives beside the other caches, so a
read-only ``site-packages`` is no obstacle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional, Tuple

__all__ = ["worker_code_root"]

PACKAGE_DIR = Path(__file__).resolve().parent
# What may sit beside the package in a directory used as is: metadata, no importable code.
_HARMLESS_SUFFIXES = (".egg-info", ".dist-info", ".pth")
_HARMLESS_NAMES = {"__pycache__", ".DS_Store"}

_lock = threading.Lock()
_cached: Optional[str] = None


def worker_code_root() -> str:
    """A directory whose only importable entry is this ``neuropod`` package."""
    global _cached
    with _lock:
        if _cached is None or not (Path(_cached) / "neuropod" / "__init__.py").is_file():
            parent = PACKAGE_DIR.parent
            _cached = str(parent) if _holds_only_neuropod(parent) else str(_copy_of_package())
        return _cached


def _holds_only_neuropod(directory: Path) -> bool:
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    for name in names:
        if name == PACKAGE_DIR.name or name in _HARMLESS_NAMES or name.endswith(_HARMLESS_SUFFIXES):
            continue
        return False
    return True


def _package_files() -> Iterator[Tuple[Path, os.stat_result]]:
    for folder, subfolders, files in os.walk(PACKAGE_DIR):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                path = Path(folder, name)
                yield path, path.stat()


def _fingerprint() -> str:
    # Paths, sizes and modification times: cheap to read on every start, and any edit
    # or reinstall changes them. A wrong match is impossible to miss: the copy holds
    # the files as they were, and a changed file has another size or time.
    digest = hashlib.sha256(str(PACKAGE_DIR).encode())
    for path, stat in _package_files():
        digest.update(f"{path.relative_to(PACKAGE_DIR)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _copy_of_package() -> Path:
    from ._version import __version__
    from .package.settings import cache_root

    bases = [cache_root() / "worker-code", Path(tempfile.gettempdir()) / f"neuropod-worker-code-{os.getuid()}"]
    name = f"{__version__}-{_fingerprint()}"
    last_error: Optional[OSError] = None
    for base in bases:
        target = base / name
        if (target / "neuropod" / "__init__.py").is_file():
            return target
        try:
            base.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
            try:
                shutil.copytree(PACKAGE_DIR, building / "neuropod", ignore=shutil.ignore_patterns("__pycache__"))
                os.rename(building, target)
            except OSError:
                shutil.rmtree(building, ignore_errors=True)
                if (target / "neuropod" / "__init__.py").is_file():  # another process made it first
                    return target
                raise
            return target
        except OSError as exc:
            last_error = exc
    raise OSError(f"cannot write a copy of neuropod for worker processes under {bases[0]} or {bases[1]}: {last_error}")
