"""The isolation options of ``load_neuropod`` and ``neuropod serve``.

``isolation="process"`` is a plain worker process (the default), ``"sandbox"``
a worker in Linux namespaces made by bubblewrap, ``"container"`` a worker in
an OCI container run by podman or docker. The other options here set the
limits of a sandboxed or containerised worker and how the container starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from .. import units
from ..errors import OptionError
from ..executors.options import Option, OptionTable, one_of, optional_positive_int

__all__ = ["ISOLATION_LEVELS", "ISOLATION_OPTIONS", "IsolationOptions", "parse_bytes"]

#: From weakest to strongest.
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


_DEFAULT_PROCESSES = 256
_DEFAULT_OPEN_FILES = 1024

#: Options that apply to isolated workers (``isolation="sandbox"`` or ``"container"``).
ISOLATION_OPTIONS: OptionTable = (
    Option(
        "memory_limit", "address space of an isolated worker, bytes or '512MiB' (None: no limit)", None, parse_bytes
    ),
    Option(
        "max_processes", "processes and threads an isolated worker may have", _DEFAULT_PROCESSES, optional_positive_int
    ),
    Option("max_open_files", "open files of an isolated worker", _DEFAULT_OPEN_FILES, optional_positive_int),
    Option("cpus", "CPUs an isolated worker may use (None: all)", None, optional_positive_int),
    Option("sandbox_paths", "extra host paths a sandboxed worker sees read-only", (), _host_paths),
    Option("tmp_bytes", "size of an isolated worker's private /tmp and /dev/shm", 256 << 20, parse_bytes),
    Option("image", "the OCI image of a container worker", None, _optional_text),
    Option(
        "rootfs",
        "a root filesystem directory to run a container worker from, instead of an image",
        None,
        _optional_directory,
    ),
    Option(
        "container_engine",
        "'podman' or 'docker' (None: the first one installed)",
        None,
        one_of(None, "podman", "docker"),
    ),
    Option("container_args", "extra arguments for '<engine> run'", (), _strings),
    Option("container_python", "the interpreter inside the container", "python3", _optional_text),
    Option(
        "launcher",
        "a command prefix that runs the worker command in a container (replaces the engine's)",
        None,
        _optional_command,
    ),
    Option("gpus", "GPUs passed into an isolated worker: True/'all', an index, or None", None, _gpus),
)


@dataclass(frozen=True)
class IsolationOptions:
    """How far a model's workers are isolated from the caller and the host.

    Attributes:
        level: ``"process"``, ``"sandbox"`` or ``"container"``.
        memory_limit: RLIMIT_AS of the worker in bytes (None: no limit). A model
            that allocates past it fails with WorkerCrashedError naming it.
        max_processes: processes and threads the worker may have (fork bombs stop there).
        max_open_files: RLIMIT_NOFILE of the worker.
        cpus: CPUs the worker may use.
        sandbox_paths: extra host paths the sandbox shows read-only.
        tmp_bytes: size of the worker's private ``/tmp`` and ``/dev/shm``.
        image: OCI image for ``container``.
        rootfs: a root filesystem directory for ``container`` (instead of an image).
        container_engine: ``podman`` or ``docker``; None picks the installed one.
        container_args: extra arguments for ``<engine> run``.
        container_python: the interpreter inside the container.
        launcher: a full command prefix that runs the worker command (replaces the engine's).
        gpus: GPUs passed into a container (``"all"``, an index) or None.
    """

    level: str = "process"
    memory_limit: Optional[int] = None
    max_processes: Optional[int] = _DEFAULT_PROCESSES
    max_open_files: Optional[int] = _DEFAULT_OPEN_FILES
    cpus: Optional[int] = None
    sandbox_paths: Tuple[str, ...] = ()
    tmp_bytes: Optional[int] = 256 << 20
    image: Optional[str] = None
    rootfs: Optional[str] = None
    container_engine: Optional[str] = None
    container_args: Tuple[str, ...] = ()
    container_python: str = "python3"
    launcher: Optional[Tuple[str, ...]] = None
    gpus: Optional[str] = None

    @classmethod
    def from_values(cls, level: Optional[str], values: Mapping[str, Any]) -> IsolationOptions:
        """The isolation options among checked ``load_neuropod`` option values.

        Raises:
            OptionError: ``container`` without an image, rootfs or launcher.
        """
        level = level or "process"
        if level not in ISOLATION_LEVELS:
            raise OptionError(f"option 'isolation': expected one of {', '.join(ISOLATION_LEVELS)}, got {level!r}")
        fields = {option.name: values[option.name] for option in ISOLATION_OPTIONS if option.name in values}
        options = cls(level=level, **fields)
        if level == "container" and not (options.image or options.rootfs or options.launcher):
            raise OptionError(
                "option 'isolation': 'container' needs 'image' (an OCI image), 'rootfs' (a root filesystem "
                "directory) or 'launcher' (a command prefix that runs the worker)"
            )
        return options

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


#: One byte formatter for every message (the OPE client takes it from here).
format_bytes = units.format_bytes
