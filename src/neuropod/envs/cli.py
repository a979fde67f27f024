"""``neuropod envs list | build | prune | doctor``."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from .._cli_errors import user_errors
from .._cli_types import Duration
from ..errors import NeuropodError
from ..units import format_age, format_bytes

__all__ = ["envs"]


@click.group()
def envs() -> None:
    """List, build, prune and diagnose the environments packages run in (docs/environments.md)."""
    # Off a terminal a build reports one log line per step: show them.
    logger = logging.getLogger("neuropod.envs")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@envs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def list_command(as_json: bool) -> None:
    """What environments exist: where, what they hold, size and last use."""
    from ..package.cache import tree_bytes
    from .store import built_environments, envs_dir, registered_environments

    rows: List[Dict[str, Any]] = []
    for environment in registered_environments() + built_environments():
        meta: Dict[str, Any] = {}
        if environment.built:
            meta = json.loads(Path(environment.path, "neuropod-env.json").read_text())
        rows.append(
            {
                "key": environment.key or "(registered)",
                "path": environment.path,
                "python": environment.python_version,
                "holds": meta.get("requirements") or sorted(f"{k}=={v}" for k, v in environment.packages.items()),
                "bytes": tree_bytes(environment.path) if environment.built else None,
                "last_used": environment.last_used() if environment.built else None,
            }
        )
    if as_json:
        click.echo(json.dumps({"envs_dir": str(envs_dir()), "environments": rows}, indent=2))
        return
    click.echo(f"environments folder: {envs_dir()}")
    if not rows:
        click.echo("no environments yet (`neuropod envs build PATH` builds one)")
    now = time.time()
    for row in rows:
        size = format_bytes(row["bytes"]) if row["bytes"] is not None else "-"
        used = format_age(now - row["last_used"]) if row["last_used"] else "-"
        holds = ", ".join(row["holds"][:6]) + (" ..." if len(row["holds"]) > 6 else "")
        click.echo(f"{row['key']:<18} python {row['python']:<8} {size:>10}  used {used:<14} {holds}")
        click.echo(f"{'':<18} {row['path']}")


#: One requirement: a distribution name, optional extras, optional version clauses, an optional marker.
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\s*\[[A-Za-z0-9._,\s-]*\])?"
    r"(?:\s*(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+"
    r"(?:\s*,\s*(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?\s*(?:;.*)?$"
)


def _requirement_lines(requirements_file: str) -> Tuple[str, ...]:
    """The requirement lines of ``-r FILE``; a line that is none is named here, not after every Python fails."""
    from ..errors import RequirementsError

    lines = []
    for number, raw in enumerate(Path(requirements_file).read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if not _REQUIREMENT.match(line):
            raise RequirementsError(
                f"{requirements_file} line {number}: {line!r} is not a requirement "
                "(expected name==version, e.g. six==1.16.0)"
            )
        lines.append(line)
    return tuple(lines)


def _needs(
    paths: Tuple[str, ...],
    platform: Optional[str],
    version_range: Optional[str],
    python: Optional[str],
    requirements_file: Optional[str],
) -> List[Any]:
    from ..package import open_package
    from ..versions import VersionRange, framework_of
    from .need import Need, need_of

    needs = [need_of(open_package(path, verify=True)) for path in paths]
    if platform or python or requirements_file:
        lines: Tuple[str, ...] = ()
        if requirements_file:
            lines = _requirement_lines(requirements_file)
        distribution = framework_of(platform) if platform else None
        needs.append(
            Need(
                source="",
                platform=platform or "python",
                distribution=distribution,
                framework_range=VersionRange.parse(version_range or "*"),
                python_ranges=(VersionRange.parse(python, field="--python"),) if python else (),
                requirements=lines,
            )
        )
    if not needs:
        raise click.UsageError("name a package PATH, or a requirement set (--platform/--range, --python, -r)")
    return needs


@envs.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("--platform", help="Build for a framework: a platform name (torchscript, tensorflow, onnx ...).")
@click.option("--range", "version_range", help="The framework versions it must hold (npm-style, as in configs).")
@click.option("--python", help="The Python versions it may have (npm-style range: 3.9, '>=3.10').")
@click.option(
    "-r",
    "--requirements",
    "requirements_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Pinned name==version lines to install too.",
)
@click.option(
    "--find-links", type=click.Path(exists=True, file_okay=False), help="Offline: install only wheels from this folder."
)
@user_errors
def build(
    paths: Tuple[str, ...],
    platform: Optional[str],
    version_range: Optional[str],
    python: Optional[str],
    requirements_file: Optional[str],
    find_links: Optional[str],
) -> None:
    """Build the environments packages (or a requirement set) need, ahead of their first load.

    For production images and CI caches: run it where the image is built,
    with NEUROPOD_ENVS_DIR pointing into the image.
    """
    from ..errors import MissingExtraError
    from ..extras import install_command
    from .build import Builder
    from .interpreters import find_uv
    from .select import find_environment

    if find_uv() is None:
        raise MissingExtraError(
            f"neuropod envs build needs the 'envs' extra (uv is missing): {install_command('envs')}"
        )
    builder = Builder(find_links=find_links)
    for need in _needs(paths, platform, version_range, python, requirements_file):
        label = need.source or need.describe()
        if need.source and (not need.asks_for_anything or not need.problems_here()):
            click.echo(f"{label}: this Python serves it (it loads in-process); nothing to build")
            continue
        found = find_environment(need)
        if found is not None:
            click.echo(f"{label}: already served by {found.path} ({found.python_version})")
            continue
        plan = builder.plan(need)
        click.echo(
            f"{label}: building {plan.path} (python {plan.interpreter.version}: {', '.join(plan.requirements)})",
            err=True,
        )
        environment = builder.build(plan)
        click.echo(f"{label}: built {environment.path}")


@envs.command()
@click.option(
    "--older-than",
    metavar="AGE",
    default="30d",
    show_default=True,
    type=Duration(),
    help="Remove environments not used for this long: 30d, 12h, 90s (a bare number: seconds; 0 = all).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@user_errors
def prune(older_than: float, dry_run: bool) -> None:
    """Remove built environments not used recently, and leftovers of interrupted builds."""
    from filelock import FileLock, Timeout

    from ..package.cache import tree_bytes
    from .store import built_environments, envs_dir, remove

    cutoff = time.time() - older_than
    freed, removed = 0, 0
    root = envs_dir()
    for environment in built_environments():
        if environment.last_used() > cutoff:
            continue
        size = tree_bytes(environment.path)
        if not dry_run:
            try:
                with FileLock(str(root / f".{environment.key}.lock"), timeout=0):
                    remove(environment.path)
            except Timeout:
                click.echo(f"{environment.key}: being built or used by another process; kept")
                continue
        freed, removed = freed + size, removed + 1
        click.echo(f"{'would remove' if dry_run else 'removed'} {environment.path} ({format_bytes(size)})")
    stale = time.time() - 86400
    for leftover in list(root.glob(".tmp-*")) if root.is_dir() else []:
        if leftover.stat().st_mtime < stale and not dry_run:
            shutil.rmtree(leftover, ignore_errors=True)
            click.echo(f"removed leftover {leftover}")
    click.echo(f"{'would free' if dry_run else 'freed'} {format_bytes(freed)} in {removed} environment(s)")


@envs.command()
@click.argument("path")
@user_errors
def doctor(path: str) -> None:
    """What a package needs, what here would serve it, and what is missing."""
    from ..package import open_package
    from .build import Builder
    from .interpreters import discover_interpreters, find_uv
    from .need import need_of
    from .store import built_environments, registered_environments

    need = need_of(open_package(path, verify=True))
    click.echo(f"package:      {path}")
    click.echo(f"needs:        {need.describe()}")
    problems = need.problems_here()
    here = (
        "serves it (loads in-process)" if not problems or not need.asks_for_anything else "lacks " + "; ".join(problems)
    )
    click.echo(f"this process: {need.found_here()}: {here}")
    serving = [env for env in registered_environments() + built_environments() if need.served_by(env)]
    for env in serving:
        click.echo(f"served by:    {env.path} ({env.describe((need.distribution,) if need.distribution else ())})")
    uv = find_uv()
    click.echo(f"builder:      {'uv at ' + uv if uv else 'pip + venv (install neuropod-python[envs] for uv)'}")
    pythons = ", ".join(f"{i.version} ({i.executable})" for i in discover_interpreters(uv)) or "none"
    click.echo(f"pythons:      {pythons}")
    if serving or not problems or not need.asks_for_anything:
        return
    try:
        plan = Builder(uv).plan(need)
    except NeuropodError as exc:
        click.echo(f"missing:      {exc}")
        raise SystemExit(1) from None
    click.echo(f"would build:  python {plan.interpreter.version} + {', '.join(plan.requirements)} -> {plan.path}")
    click.echo(f"command:      neuropod envs build {path}")
