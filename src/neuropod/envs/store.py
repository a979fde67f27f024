"""Where environments live, what each holds, and probing an interpreter for it.

Built environments are virtual environments under :func:`envs_dir`, one
folder per content hash (``<key>/``), each with a ``neuropod-env.json`` that
records what it holds. Environments the user registers
(``NEUROPOD_ENVIRONMENTS``: interpreters or venv folders, separated by
``os.pathsep``) are probed once; the probe is cached in ``probes.json`` until
the interpreter or its site-packages change.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import EnvironmentBuildError
from ..package.cache import CacheEntry, CacheKind, register_cache_kind, tree_bytes

__all__ = [
    "Environment",
    "envs_dir",
    "registered_paths",
    "probe",
    "built_environments",
    "registered_environments",
    "normalize_name",
    "METADATA",
]

logger = logging.getLogger("neuropod.envs")

#: The file in each built environment that says what it holds.
METADATA = "neuropod-env.json"
#: Touched on every use: ``neuropod envs list`` and ``prune`` read its mtime.
LAST_USED = ".last-used"

# Runs under the probed interpreter (any Python 3.6+, standard library only).
_PROBE = r"""
import json, sys, sysconfig
try:
    from importlib import metadata
    packages = {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}
except ImportError:  # Python 3.7: read the dist-info folders' METADATA headers
    import glob, os
    packages = {}
    for info in [i for e in sys.path for i in glob.glob(os.path.join(e or ".", "*.dist-info", "METADATA"))]:
        head = {}
        with open(info, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    break  # the end of the headers
                key, _, value = line.partition(":")
                head.setdefault(key.strip(), value.strip())
        if head.get("Name"):
            packages.setdefault(head["Name"], head.get("Version", ""))
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
                  "purelib": sysconfig.get_paths()["purelib"], "packages": packages}))
"""


def envs_dir() -> Path:
    """``$NEUROPOD_ENVS_DIR``, else ``$XDG_CACHE_HOME/neuropod/envs``, else ``~/.cache/neuropod/envs``."""
    configured = os.environ.get("NEUROPOD_ENVS_DIR")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "neuropod" / "envs"


def normalize_name(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Environment:
    """A Python environment a worker can run in.

    Attributes:
        python: its interpreter.
        python_version: ``"3.9.18"``.
        packages: normalised distribution name -> version, as installed there.
        path: the environment's folder (a venv), or the interpreter's prefix.
        key: the content hash of a built environment ("" for a registered one).
    """

    python: str
    python_version: str
    packages: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    key: str = ""

    @property
    def built(self) -> bool:
        return bool(self.key)

    def version_of(self, distribution: str) -> Optional[str]:
        return self.packages.get(normalize_name(distribution))

    def describe(self, distributions: tuple = ()) -> str:
        held = [f"{d} {self.version_of(d)}" for d in distributions if self.version_of(d)]
        return ", ".join([f"python {self.python_version}", *held])

    def touch(self) -> None:
        """Record a use (for ``list`` and ``prune``)."""
        if self.key:
            try:
                Path(self.path, LAST_USED).touch()
            except OSError:
                pass

    def last_used(self) -> float:
        for name in (LAST_USED, METADATA):
            try:
                return Path(self.path, name).stat().st_mtime
            except OSError:
                continue
        return 0.0


def registered_paths() -> List[str]:
    """The interpreters named by ``NEUROPOD_ENVIRONMENTS`` (a venv folder stands for its ``bin/python``)."""
    found = []
    for entry in filter(None, os.environ.get("NEUROPOD_ENVIRONMENTS", "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            path = path / "bin" / "python"
        found.append(str(path))
    return found


def _probe_cache() -> Path:
    return envs_dir() / "probes.json"


def _stamp(*paths: str) -> List[float]:
    stamps = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            stamps.append(-1.0)
    return stamps


def probe(executable: str, use_cache: bool = True) -> Dict[str, Any]:
    """Python version, site-packages and installed distributions of ``executable``.

    Cached in ``probes.json`` until the interpreter or its site-packages
    folder changes (installing or removing a package changes the folder).

    Raises:
        EnvironmentBuildError: the interpreter cannot be run.
    """
    cache_file = _probe_cache()
    cache: Dict[str, Any] = {}
    if use_cache:
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(executable)
        if entry and entry.get("stamp") == _stamp(executable, entry["result"].get("purelib", "")):
            return dict(entry["result"])
    try:
        done = subprocess.run(
            [executable, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentBuildError(f"environment {executable}: cannot run it ({exc})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentBuildError(f"environment {executable}: probing it failed ({last})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["packages"] = {normalize_name(k): v for k, v in result["packages"].items()}
    if use_cache:
        cache[executable] = {"stamp": _stamp(executable, result["purelib"]), "result": result}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_name(f".probes.{os.getpid()}.{threading.get_ident()}.json")
            temporary.write_text(json.dumps(cache))
            os.replace(temporary, cache_file)
        except OSError:
            pass  # a read-only cache only costs a probe next time
    return result


def built_environments() -> List[Environment]:
    """Every complete environment under :func:`envs_dir` (half-built ones are in ``.tmp-*`` and skipped)."""
    root = envs_dir()
    found: List[Environment] = []
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        meta_file = folder / METADATA
        if folder.name.startswith(".") or not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            logger.warning("environment %s: unreadable %s; ignoring it", folder, METADATA)
            continue
        found.append(
            Environment(
                python=str(folder / "bin" / "python"),
                python_version=meta["python"],
                packages=meta["packages"],
                path=str(folder),
                key=folder.name,
            )
        )
    return found


def registered_environments() -> List[Environment]:
    """The user's environments (``NEUROPOD_ENVIRONMENTS``), probed; unusable ones are logged and skipped."""
    found = []
    for executable in registered_paths():
        try:
            result = probe(executable)
        except EnvironmentBuildError as exc:
            logger.warning("%s (from NEUROPOD_ENVIRONMENTS); ignoring it", exc)
            continue
        prefix = str(Path(executable).parent.parent)
        found.append(Environment(executable, result["python"], result["packages"], path=prefix))
    return found


def remove(path: str) -> None:
    """Delete an environment: renamed first, so no reader ever sees half of one."""
    folder = Path(path)
    doomed = folder.with_name(f".tmp-remove-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# -- the "envs" kind of neuropod's caches (neuropod cache list | prune | clear) ----------


def _env_entries() -> List[CacheEntry]:
    return [
        CacheEntry("envs", env.key, Path(env.path), tree_bytes(env.path), env.last_used())
        for env in built_environments()
    ]


def _remove_env_entry(entry: CacheEntry) -> bool:
    from filelock import FileLock, Timeout

    try:
        # The lock envs holds while building or using an environment: a busy one is kept.
        with FileLock(str(envs_dir() / f".{entry.key}.lock"), timeout=0):
            remove(str(entry.path))
    except Timeout:
        return False
    except FileNotFoundError:
        pass
    return True


register_cache_kind(CacheKind("envs", _env_entries, _remove_env_entry))
