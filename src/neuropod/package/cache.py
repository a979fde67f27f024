"""Neuropod's caches on disk: listed, pruned by age, trimmed by size, cleared.

Each cache is a :class:`CacheKind`: it lists its entries (path, size, last
use) and removes one. Two are known: ``packages`` (extracted zips, one
directory per zip content hash; see :mod:`neuropod.package.archive`) and
``envs`` (the built environments of :mod:`neuropod.envs`, registered by
:mod:`neuropod.envs.store`, which this module sits below). ``neuropod cache list | prune | clear``
works over every kind; another cache plugs in with :func:`register_cache_kind`.

The packages cache is also trimmed after each new extraction: least recently
used entries go first until it is under ``NEUROPOD_CACHE_MAX_BYTES``
(default 50 GiB; ``20GiB``, ``500M``), and with ``NEUROPOD_CACHE_MAX_AGE`` (``30d``, ``12h``;
unset by default) entries unused that long go too. The entry just extracted is
always kept. Removal renames an entry away first, so no reader sees half of
one; a process that already loaded a model keeps its open files.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

from ..errors import OptionError
from ..units import parse_bytes, parse_duration
from .settings import packages_cache_dir

__all__ = [
    "CacheEntry",
    "CacheKind",
    "register_cache_kind",
    "cache_kinds",
    "tree_bytes",
    "list_entries",
    "prune",
    "clear",
    "trim_packages_cache",
]

_DEFAULT_MAX_BYTES = 50 << 30
# Staging directories of extractions that died (kill -9) are removed once this old.
_STALE_STAGING_S = 24 * 3600


@dataclass(frozen=True)
class CacheEntry:
    """One entry of a cache: its ``kind``, ``key``, ``path``, ``size`` in bytes and ``last_used`` (epoch seconds)."""

    kind: str
    key: str
    path: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class CacheKind:
    """A cache neuropod keeps: how to list its entries and remove one (False: in use, kept)."""

    name: str
    entries: Callable[[], List[CacheEntry]]
    remove: Callable[[CacheEntry], bool]


_KINDS: Dict[str, CacheKind] = {}


def register_cache_kind(kind: CacheKind) -> None:
    """Add a cache to ``neuropod cache`` (a later registration of the same name replaces it)."""
    _KINDS[kind.name] = kind


def cache_kinds() -> List[CacheKind]:
    return list(_KINDS.values())


def tree_bytes(path: Union[str, os.PathLike[str]]) -> int:
    """Disk use of a folder's files (hard-linked files, as uv's environments have, count in full)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _package_entries() -> List[CacheEntry]:
    root = packages_cache_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            last_used = folder.stat().st_mtime
        except OSError:
            continue  # removed meanwhile
        found.append(CacheEntry("packages", folder.name, folder, tree_bytes(folder), last_used))
    return found


def _remove_folder(path: Path) -> bool:
    """Rename away, then delete: a reader never finds half an entry under the real name."""
    doomed = path.with_name(f".remove-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return True  # someone else removed it
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _remove_package_entry(entry: CacheEntry) -> bool:
    return _remove_folder(entry.path)


register_cache_kind(CacheKind("packages", _package_entries, _remove_package_entry))


def _selected(kinds: Optional[Iterable[str]]) -> List[CacheKind]:
    if kinds is None:
        return cache_kinds()
    chosen = []
    for name in kinds:
        if name not in _KINDS:
            raise OptionError(f"cache kind {name!r}: expected one of {sorted(_KINDS)}")
        chosen.append(_KINDS[name])
    return chosen


def list_entries(kinds: Optional[Iterable[str]] = None) -> List[CacheEntry]:
    """Every entry of the caches named (all by default), most recently used first."""
    entries = [entry for kind in _selected(kinds) for entry in kind.entries()]
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def prune(
    older_than: Optional[float] = None,
    max_bytes: Optional[int] = None,
    kinds: Optional[Iterable[str]] = None,
    keep: Iterable[Path] = (),
    dry_run: bool = False,
) -> List[CacheEntry]:
    """Remove entries unused for ``older_than`` seconds, then the least recently used until under ``max_bytes``.

    ``max_bytes`` applies to each kind separately. Entries under ``keep`` and
    entries in use (a kind says so) are kept. Returns what was removed (or,
    with ``dry_run``, what would be).
    """
    kept_paths = {Path(p).resolve() for p in keep}
    removed: List[CacheEntry] = []
    now = time.time()
    for kind in _selected(kinds):
        entries = sorted(kind.entries(), key=lambda e: e.last_used, reverse=True)
        total = sum(e.size for e in entries)
        for entry in reversed(entries):  # oldest first
            too_old = older_than is not None and now - entry.last_used > older_than
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big) or entry.path.resolve() in kept_paths:
                continue
            if dry_run or kind.remove(entry):
                removed.append(entry)
                total -= entry.size
    return removed


def clear(kinds: Optional[Iterable[str]] = None, dry_run: bool = False) -> List[CacheEntry]:
    """Remove every entry of the caches named (all by default); entries in use are kept."""
    return prune(older_than=-1.0, kinds=kinds, dry_run=dry_run)


def trim_packages_cache(keep: Path) -> None:
    """After an extraction: bound the packages cache by size (and age, if configured), keeping ``keep``."""
    size_text = os.environ.get("NEUROPOD_CACHE_MAX_BYTES")
    max_bytes = parse_bytes("$NEUROPOD_CACHE_MAX_BYTES", size_text, minimum=0) if size_text else _DEFAULT_MAX_BYTES
    age_text = os.environ.get("NEUROPOD_CACHE_MAX_AGE")
    older_than = parse_duration("$NEUROPOD_CACHE_MAX_AGE", age_text) if age_text else None
    prune(older_than=older_than, max_bytes=max_bytes, kinds=["packages"], keep=[keep])
    _remove_stale_staging(packages_cache_dir())


def _remove_stale_staging(root: Path) -> None:
    cutoff = time.time() - _STALE_STAGING_S
    for leftover in root.glob(".*"):
        try:
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
