"""``neuropod cache list | prune | clear``: the caches of :mod:`neuropod.package.cache`, with sizes."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

import click

from ._cli_errors import user_errors
from ._cli_types import ByteSize, Duration
from .envs import store as _registers_the_envs_cache_kind  # noqa: F401
from .units import format_age, format_bytes

__all__ = ["cache"]


def _kinds(kind: Tuple[str, ...]) -> Optional[List[str]]:
    return list(kind) or None


_KIND_OPTION = click.option(
    "--kind",
    multiple=True,
    metavar="NAME",
    help="Only this cache (repeatable): 'packages' (extracted zips) or 'envs' (built environments). Default: all.",
)


@click.group()
def cache() -> None:
    """List, prune and clear neuropod's caches: extracted package zips and built environments."""


@cache.command("list")
@_KIND_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def list_command(kind: Tuple[str, ...], as_json: bool) -> None:
    """Every cache entry with its size and last use, most recent first."""
    from .package.cache import list_entries
    from .package.settings import cache_root

    entries = list_entries(_kinds(kind))
    if as_json:
        rows = [
            {"kind": e.kind, "key": e.key, "path": str(e.path), "bytes": e.size, "last_used": e.last_used}
            for e in entries
        ]
        click.echo(json.dumps({"cache_dir": str(cache_root()), "entries": rows}, indent=2))
        return
    click.echo(f"cache folder: {cache_root()}")
    if not entries:
        click.echo("empty")
        return
    now = time.time()
    for entry in entries:
        used = format_age(now - entry.last_used)
        click.echo(f"{entry.kind:<9} {entry.key[:16]:<16} {format_bytes(entry.size):>10}  used {used}")
    by_kind: Dict[str, int] = {}
    for entry in entries:
        by_kind[entry.kind] = by_kind.get(entry.kind, 0) + entry.size
    click.echo("total: " + ", ".join(f"{name} {format_bytes(size)}" for name, size in sorted(by_kind.items())))


def _report(removed: List[Any], dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for entry in removed:
        click.echo(f"{verb} {entry.kind} {entry.key[:16]} ({format_bytes(entry.size)}) {entry.path}")
    click.echo(f"{verb} {len(removed)} entries, {format_bytes(sum(e.size for e in removed))}")


@cache.command()
@click.option(
    "--older-than",
    metavar="AGE",
    type=Duration(),
    help="Remove entries unused for this long: 30d, 12h, 15m, 90s (a bare number: seconds).",
)
@click.option(
    "--max-size",
    metavar="SIZE",
    type=ByteSize(minimum=0),
    help="Then remove the least recently used until each cache is under this: 1GiB, 512MB (a bare number: bytes).",
)
@_KIND_OPTION
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@user_errors
def prune(older_than: Optional[float], max_size: Optional[int], kind: Tuple[str, ...], dry_run: bool) -> None:
    """Remove entries not used recently (--older-than) or beyond a size (--max-size); entries in use are kept."""
    from .errors import OptionError
    from .package.cache import prune as prune_entries

    if older_than is None and max_size is None:
        raise OptionError("cache prune: give --older-than AGE, --max-size SIZE or both (`cache clear` removes all)")
    _report(prune_entries(older_than=older_than, max_bytes=max_size, kinds=_kinds(kind), dry_run=dry_run), dry_run)


@cache.command()
@_KIND_OPTION
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@user_errors
def clear(kind: Tuple[str, ...], dry_run: bool) -> None:
    """Remove every entry (the next load of a zip extracts it again; entries in use are kept)."""
    from .package.cache import clear as clear_entries

    _report(clear_entries(kinds=_kinds(kind), dry_run=dry_run), dry_run)
