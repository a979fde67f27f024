"""``isolation="sandbox"``: the worker runs in Linux namespaces made by bubblewrap.

What the worker sees (everything read-only unless said otherwise):

* the system's ``/usr`` (and the ``/lib``, ``/bin`` links into it), the
  dynamic loader's cache, the Python installation(s) that run it, the
  neuropod source it imports and the package, at their usual paths;
* a private ``/proc`` (its own PID namespace: no other process of the
  machine), a minimal ``/dev``, and private size-limited tmpfs mounts on
  ``/tmp`` and ``/dev/shm`` (the only writable places, gone with the worker);
* with ``gpus=``, the NVIDIA device nodes asked for and a read-only ``/sys``;
* no network (its own network namespace with only a loopback device), no
  home directory, no other host file, no capabilities, a new session (no
  terminal to inject keystrokes into), no further user namespaces.

Limits: ``memory_limit`` is RLIMIT_AS, ``max_open_files`` RLIMIT_NOFILE and
``max_processes`` RLIMIT_NPROC, all set *inside* the sandbox's user
namespace with ``prlimit`` (so the process count is this sandbox's alone).
Linux does not enforce RLIMIT_NPROC for root, so when the caller is root the
worker also goes into a cgroup-v1 ``pids`` group (and ``cpu`` for ``cpus``)
of its own where the machine has one. ``cpus`` pins the worker to that many
CPUs and sizes the frameworks' thread pools. Wall time per call is the OPE
``timeout`` option.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import site
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import IsolationError
from .base import WorkerLaunch, isolated_environment
from .options import IsolationOptions

__all__ = ["plan_sandbox", "sandbox_paths", "CgroupLimits"]

_log = logging.getLogger(__name__)

#: Top-level links or directories of the system, bound read-only when they exist.
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The few files of /etc the dynamic loader and the C library read.
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")


def _interpreter_paths(python: str) -> List[str]:
    """The directories an interpreter needs: its installation and, for a venv, the venv."""
    paths = []
    real = os.path.realpath(python)
    paths.append(str(Path(real).parent.parent))  # .../bin/python -> the installation prefix
    venv = Path(os.path.abspath(python)).parent.parent
    config = venv / "pyvenv.cfg"
    if config.is_file():
        paths.append(str(venv))
        for line in config.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                paths.append(str(Path(value.strip()).parent))
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths += [sys.prefix, sys.base_prefix, sys.exec_prefix]
        paths += [entry for entry in _import_path() if os.path.isabs(entry)]
    return paths


def _import_path() -> List[str]:
    """Where this interpreter's imports come from: site-packages, their ``.pth`` entries, PYTHONPATH.

    Not ``sys.path`` itself: its first entry is the caller's script or working
    directory, which may hold anything and which a worker never imports from.
    """
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    entries = list(sites) + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for directory in sites:
        try:
            pth_files = sorted(Path(directory).glob("*.pth"))
        except OSError:
            continue
        for pth in pth_files:  # editable installs point at their source trees this way
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    entries.append(line if os.path.isabs(line) else str(Path(directory) / line))
    return [entry for entry in entries if os.path.isdir(entry)]


def sandbox_paths(python: str, package_root: str, source_root: str, extra: Sequence[str] = ()) -> List[str]:
    """The host paths (besides the system's) a sandboxed worker sees, without ones inside others."""
    wanted = _interpreter_paths(python) + [source_root, package_root] + list(extra)
    chosen: List[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if os.path.exists(p)}):
        if path == "/" or path.startswith("/usr/"):
            continue
        if any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in chosen):
            continue
        chosen.append(path)
    return chosen


class CgroupLimits:
    """A ``pids`` (and ``cpu``) cgroup per worker, for callers whose RLIMIT_NPROC Linux ignores (root).

    cgroup v1 (a ``pids`` and a ``cpu`` hierarchy under /sys/fs/cgroup) or a
    pure cgroup v2 mount at /sys/fs/cgroup whose root delegates those
    controllers. The worker's launcher writes its own pid into each group's
    ``cgroup.procs`` before it starts bubblewrap, so everything in the
    sandbox is counted.
    """

    ROOT = Path("/sys/fs/cgroup")

    def __init__(self, max_processes: Optional[int], cpus: Optional[int]) -> None:
        self.groups: List[Path] = []
        name = f"neuropod-{os.getpid()}-{secrets.token_hex(4)}"
        unified = (self.ROOT / "cgroup.subtree_control").exists()
        enabled = set((self.ROOT / "cgroup.subtree_control").read_text().split()) if unified else set()
        wanted = []
        if max_processes:
            wanted.append(("pids", {"pids.max": str(max_processes)}))
        if cpus and unified:
            wanted.append(("cpu", {"cpu.max": f"{100000 * cpus} 100000"}))
        elif cpus:
            wanted.append(("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(100000 * cpus)}))
        if unified:  # one group holds every controller
            settings = {
                key: value for controller, pairs in wanted if controller in enabled for key, value in pairs.items()
            }
            wanted = [("", settings)] if settings else []
        for controller, settings in wanted:
            hierarchy = self.ROOT / controller if controller else self.ROOT
            if not (hierarchy / "cgroup.procs").exists() or not os.access(hierarchy, os.W_OK):
                continue
            _sweep(hierarchy)
            group = hierarchy / name
            try:
                group.mkdir()
                for key, value in settings.items():
                    (group / key).write_text(value)
            except OSError as exc:
                _log.warning("cannot set up cgroup %s for a sandboxed worker: %s", group, exc)
                _remove(group)
                continue
            self.groups.append(group)

    @property
    def controllers(self) -> List[str]:
        names: List[str] = []
        for group in self.groups:
            if group.parent == self.ROOT:  # cgroup v2: what this group limits
                names += [key.split(".")[0] for key in ("pids.max", "cpu.max") if (group / key).exists()]
            else:
                names.append(group.parent.name)
        return names

    def prefix(self) -> List[str]:
        """A shell that joins the groups, then runs the rest of the command."""
        if not self.groups:
            return []
        joins = " && ".join(f"echo $$ > {group}/cgroup.procs" for group in self.groups)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "neuropod-cgroup"]

    def remove(self) -> None:
        groups, self.groups = self.groups, []
        busy = [group for group in groups if not _remove(group)]
        if busy:  # the sandbox's processes are still being killed: try again shortly
            threading.Thread(target=_remove_soon, args=(busy,), name="neuropod-cgroup-rm", daemon=True).start()


def _remove(group: Path) -> bool:
    try:
        group.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _remove_soon(groups: List[Path], attempts: int = 100) -> None:
    for _ in range(attempts):  # up to 5 s; what is left then goes in a later sweep
        groups = [group for group in groups if not _remove(group)]
        if not groups:
            return
        time.sleep(0.05)


def _sweep(hierarchy: Path) -> None:
    """Remove empty groups of processes that are gone (a caller killed before it cleaned up)."""
    try:
        entries = list(hierarchy.glob("neuropod-*"))
    except OSError:
        return
    for group in entries:
        try:
            owner = int(group.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            _remove(group)


def _gpu_devices(gpus: Optional[str]) -> List[str]:
    """``--dev-bind`` arguments for NVIDIA device nodes (``gpus``: ``"all"`` or an index), and /sys for the driver."""
    if gpus is None:
        return []
    shared = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    cards = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*")) if gpus == "all" else [f"/dev/nvidia{gpus}"]
    argv: List[str] = []
    for device in shared + cards:
        if os.path.exists(device):
            argv += ["--dev-bind", device, device]
    if not any(os.path.exists(card) for card in cards):
        raise IsolationError(
            f"option 'gpus': {gpus!r} asks for GPUs, but no {' or '.join(cards) or '/dev/nvidiaN'} exists"
        )
    return argv + ["--ro-bind", "/sys", "/sys"]


def find_bwrap() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise IsolationError(
            "isolation='sandbox' needs bubblewrap, and 'bwrap' is not on PATH; "
            "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
        )
    return bwrap


def plan_sandbox(
    isolation: IsolationOptions,
    *,
    python: str,
    env: Dict[str, str],
    worker_env: Dict[str, str],
    fds: Tuple[int, int],
    package_root: str,
    source_root: str,
    cpus: Tuple[int, ...],
) -> WorkerLaunch:
    bwrap = find_bwrap()
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    if not os.path.exists(prlimit):
        raise IsolationError("isolation='sandbox' needs 'prlimit' (util-linux) for its limits; it is not on PATH")
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    # The private mounts go first, so that a package or interpreter under /tmp stays visible on top of them.
    size = ["--size", str(isolation.tmp_bytes)] if isolation.tmp_bytes else []
    argv += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/tmp", *size, "--tmpfs", "/dev/shm"]
    for path in _SYSTEM:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in _ETC:
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for path in sandbox_paths(python, package_root, source_root, isolation.sandbox_paths):
        argv += ["--ro-bind", path, path]
    argv += _gpu_devices(isolation.gpus)
    # bubblewrap's root is a tmpfs of its own: read-only, so that /tmp and /dev/shm are the only writable places.
    argv += ["--remount-ro", "/", "--hostname", "neuropod-sandbox", "--chdir", "/tmp", "--"]
    limits = []
    if isolation.memory_limit:
        limits.append(f"--as={isolation.memory_limit}")
    if isolation.max_open_files:
        limits.append(f"--nofile={isolation.max_open_files}")
    if isolation.max_processes:
        limits.append(f"--nproc={isolation.max_processes}")
    if limits:
        argv += [prlimit, *limits, "--"]
    cgroups: Optional[CgroupLimits] = None
    if os.geteuid() == 0:
        cgroups = CgroupLimits(isolation.max_processes, isolation.cpus)
        if isolation.max_processes and "pids" not in cgroups.controllers:
            _log.warning(
                "max_processes=%s is not enforced: the caller is root (Linux ignores RLIMIT_NPROC for root) "
                "and no writable cgroup-v1 pids hierarchy is mounted at /sys/fs/cgroup/pids",
                isolation.max_processes,
            )
        argv = cgroups.prefix() + argv
    python_path = os.pathsep.join([source_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # The worker is pid 2 of its PID namespace, a child of bubblewrap's pid 1; when this
    # process dies, bubblewrap (--die-with-parent) takes the whole namespace down.
    return WorkerLaunch(
        prefix=argv,
        python=python,
        fds=fds,
        pass_fds=fds,
        parent_pid=1,
        shm_dir="/dev/shm",
        env=isolated_environment(isolation, env, worker_env, python_path, cpus),
        package_root=package_root,
        cleanup=cgroups.remove if cgroups is not None else (lambda: None),
        signal_offset=128,
    )
