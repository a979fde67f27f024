"""The isolation options of ``load_neuropod`` and ``neuropod serve``.

``isolation="process"`` is a plain worker process (the default), ``"sandbox"``
a worker in Linux namespaces made by bubblewrap, ``"container"`` a worker in
an OCI container run by podman or docker. The other options here set the
limits of a sandboxed or containerised worker and how the container starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .. import units
from ..errors import OptionError
from ..options import Options, one_of, optional_positive_int, setting

__all__ = ["ISOLATION_LEVELS", "ISOLATION_OPTIONS", "IsolationOptions", "parse_bytes"]

#: From weakest to strongest; the one list of isolation levels (the ``isolation``
#: option and the trust policy's levels check against it).
ISOLATION_LEVELS = ("process", "sandbox", "container")


def parse_bytes(name: str, value: Any) -> Optional[int]:
    """``None``, or bytes as :func:`neuropod.units.parse_bytes` reads them (``2048``, ``"512MiB"``, ``"2G"``)."""
    return None if value is None else units.parse_bytes(f"option {name!r}", value)


def _strings(name: str, value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not all(isinstance(item, (str, os.PathLike)) for item in value):
        raise OptionError(f"option {name!r}: expected a list of strings, got {value!r}")
    return tuple(os.fspath(item) for item in value)


def _host_paths(name: str, value: Any) -> Tuple[str, ...]:
    """Existing host paths: a mistyped one would leave the model without a file it was promised."""
    paths = _strings(name, value)
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise OptionError(f"option {name!r}: no such file or directory: {', '.join(map(repr, missing))}")
    return paths


def _optional_directory(name: str, value: Any) -> Optional[str]:
    path = _optional_text(name, value)
    if path is not None and not os.path.isdir(path):
        raise OptionError(f"option {name!r}: expected a root filesystem directory, got {path!r} (not a directory)")
    return path


def _optional_command(name: str, value: Any) -> Optional[Tuple[str, ...]]:
    command = _strings(name, value)
    return command or None


def _optional_text(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise OptionError(f"option {name!r}: expected a non-empty string, got {value!r}")
    return os.fspath(value)


def _gpus(name: str, value: Any) -> Optional[str]:
    if value is None or value is False:
        return None
    if value is True:
        return "all"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise OptionError(f"option {name!r}: expected None, True ('all'), a GPU index or a device string, got {value!r}")


@dataclass(frozen=True)
class IsolationOptions(Options):
    """How far a model's workers are isolated from the caller and the host.

    ``level`` is not an option: the plan sets it (the ``isolation`` option, or
    the weakest the trust policy allows). The other fields are the options
    of isolated workers (``isolation="sandbox"`` or ``"container"``); a model
    that allocates past ``memory_limit`` fails with WorkerCrashedError naming
    it, and fork bombs stop at ``max_processes``.

    Raises:
        OptionError: a bad value, or ``container`` without an image, rootfs or launcher.
    """

    APPLIES = "it applies to isolated workers (isolation='sandbox' or 'container')"
    REMOTE = "it applies to isolated workers; the server decides how its models run"

    level: str = "process"
    memory_limit: Optional[int] = setting(
        None, check=parse_bytes, doc="address space of an isolated worker, bytes or '512MiB' (None: no limit)"
    )
    max_processes: Optional[int] = setting(
        256, check=optional_positive_int, doc="processes and threads an isolated worker may have"
    )
    max_open_files: Optional[int] = setting(
        1024, check=optional_positive_int, doc="open files (RLIMIT_NOFILE) of an isolated worker"
    )
    cpus: Optional[int] = setting(None, check=optional_positive_int, doc="CPUs an isolated worker may use (None: all)")
    sandbox_paths: Tuple[str, ...] = setting(
        (), check=_host_paths, doc="extra host paths a sandboxed worker sees read-only"
    )
    tmp_bytes: Optional[int] = setting(
        256 << 20, check=parse_bytes, doc="size of an isolated worker's private /tmp and /dev/shm"
    )
    image: Optional[str] = setting(None, check=_optional_text, doc="the OCI image of a container worker")
    rootfs: Optional[str] = setting(
        None,
        check=_optional_directory,
        doc="a root filesystem directory to run a container worker from, instead of an image",
    )
    container_engine: Optional[str] = setting(
        None, check=one_of(None, "podman", "docker"), doc="'podman' or 'docker' (None: the first one installed)"
    )
    container_args: Tuple[str, ...] = setting((), check=_strings, doc="extra arguments for '<engine> run'")
    container_python: str = setting("python3", check=_optional_text, doc="the interpreter inside the container")
    launcher: Optional[Tuple[str, ...]] = setting(
        None,
        check=_optional_command,
        doc="a command prefix that runs the worker command in a container (replaces the engine's)",
    )
    gpus: Optional[str] = setting(
        None, check=_gpus, doc="GPUs passed into an isolated worker: True/'all', an index, or None"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in ISOLATION_LEVELS:
            raise OptionError(f"option 'isolation': expected one of {', '.join(ISOLATION_LEVELS)}, got {self.level!r}")
        if self.level == "container" and not (self.image or self.rootfs or self.launcher):
            raise OptionError(
                "option 'isolation': 'container' needs 'image' (an OCI image), 'rootfs' (a root filesystem "
                "directory) or 'launcher' (a command prefix that runs the worker)"
            )

    @property
    def isolated(self) -> bool:
        return self.level != "process"

    def describe(self) -> str:
        """One line for ``neuropod inspect`` and logs."""
        if not self.isolated:
            return "process (a worker process with the caller's rights)"
        limits = [f"max_processes={self.max_processes}", f"max_open_files={self.max_open_files}"]
        if self.memory_limit:
            limits.insert(0, f"memory_limit={units.format_bytes(self.memory_limit)}")
        if self.cpus:
            limits.append(f"cpus={self.cpus}")
        if self.level == "sandbox":
            return (
                "sandbox (bubblewrap: read-only package, private /tmp, no network, own PID namespace; "
                + ", ".join(limits)
                + ")"
            )
        where = self.image or self.rootfs or " ".join(self.launcher or ())
        return f"container ({where}; " + ", ".join(limits) + ")"


#: The options of isolated workers, derived from :class:`IsolationOptions`.
ISOLATION_OPTIONS = IsolationOptions.table()

#: One byte formatter for every message (the OPE client takes it from here).
format_bytes = units.format_bytes
