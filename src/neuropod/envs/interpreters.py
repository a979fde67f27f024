"""Which Python interpreters exist here: uv's managed Pythons, pyenv's, and those on PATH."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import semantic_version

from ..errors import EnvironmentBuildError
from .store import probe

__all__ = ["Interpreter", "discover_interpreters", "find_uv", "MIN_PYTHON"]

#: The oldest Python neuropod's worker runs on. The library itself needs 3.9; its worker
#: (``neuropod.worker`` and what it imports) keeps to what Python 3.7 has, so
#: packages of the original's era (torch 1.4: Python <= 3.8; TensorFlow 1.15:
#: Python <= 3.7) run in environments built on those Pythons.
MIN_PYTHON = (3, 7)


@dataclass(frozen=True)
class Interpreter:
    executable: str
    version: str  # "3.9.18"

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def find_uv() -> Optional[str]:
    """The uv binary: ``$NEUROPOD_UV``, the ``uv`` Python package's, or ``uv`` on PATH (None: use pip)."""
    configured = os.environ.get("NEUROPOD_UV")
    if configured:
        return configured if configured.lower() not in ("0", "off", "none") else None
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _candidates(uv: Optional[str]) -> List[str]:
    found = [getattr(sys, "_base_executable", "") or sys.executable, sys.executable]
    if uv:
        try:
            # uv's own Pythons live in `uv python dir` (asking `uv python list` would probe pyenv's shims too).
            listed = subprocess.run(
                [uv, "python", "dir"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
            if listed.returncode == 0 and listed.stdout.strip():
                found += sorted(glob.glob(os.path.join(listed.stdout.strip(), "*", "bin", "python3")))
        except (OSError, subprocess.TimeoutExpired):
            pass
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")))
    for minor in range(MIN_PYTHON[1], 20):
        on_path = shutil.which(f"python3.{minor}")
        if on_path and f"{os.sep}shims{os.sep}" not in on_path:  # pyenv's shims: its versions are listed above
            found.append(on_path)
    return found


def discover_interpreters(uv: Optional[str] = None) -> List[Interpreter]:
    """One interpreter per Python minor version (>= 3.7), newest patch first, this process's own first."""
    best: Dict[str, Interpreter] = {}
    for executable in _candidates(uv):
        if not executable or not os.access(executable, os.X_OK):
            continue
        try:
            version = probe(executable)["python"]
        except (EnvironmentBuildError, ValueError, KeyError):
            continue
        parsed = semantic_version.Version(version)
        if (parsed.major, parsed.minor) < MIN_PYTHON:
            continue
        minor = f"{parsed.major}.{parsed.minor}"
        if minor not in best or parsed > semantic_version.Version(best[minor].version):
            best[minor] = Interpreter(os.path.realpath(executable), version)
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    ordered = sorted(best.values(), key=lambda i: semantic_version.Version(i.version), reverse=True)
    return sorted(ordered, key=lambda i: i.minor != ours)
