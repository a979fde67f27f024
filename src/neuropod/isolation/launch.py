"""How a worker process is started at each isolation level.

:func:`plan_worker` turns the isolation options into a :class:`WorkerLaunch`:
the command that goes before ``python -m neuropod.ope.worker``, the
interpreter, the numbers the worker sees its two inherited descriptors under,
the environment, and what to clean up after the worker is gone. The control
socket and the mailbox are inherited; every tensor segment's descriptor
travels over that socket (``SCM_RIGHTS``) at every level, so the sandbox and
the container use the same shared-memory transport as a plain worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .options import IsolationOptions

__all__ = ["WorkerLaunch", "plan_worker", "worker_cpus"]


@dataclass
class WorkerLaunch:
    """Everything the client needs to start one worker.

    Attributes:
        prefix: the command before the interpreter (empty for a plain process).
        python: the interpreter, as the worker's side sees it.
        fds: the control socket's and the mailbox's descriptor numbers in the worker.
        pass_fds: descriptors the spawned command inherits.
        parent_pid: the pid the worker sees as its parent (it exits when that changes).
        shm_dir: where the worker makes its own segments.
        env: the spawned command's whole environment.
        package_root: the package directory as the worker sees it.
        cleanup: runs once the worker is gone (removes cgroups, containers).
        signal_offset: the launcher reports a worker killed by signal N as exit
            status ``signal_offset + N`` (bubblewrap and podman: 128); 0 for none.
    """

    prefix: List[str]
    python: str
    fds: Tuple[int, int]
    pass_fds: Tuple[int, ...]
    parent_pid: int
    shm_dir: str
    env: Dict[str, str]
    package_root: str
    cleanup: Callable[[], None] = field(default=lambda: None)
    signal_offset: int = 0

    def returncode(self, status: Optional[int]) -> Optional[int]:
        """The worker's own return code (negative: the signal) from the launcher's."""
        if status is not None and self.signal_offset and self.signal_offset < status < self.signal_offset + 65:
            return self.signal_offset - status
        return status


def worker_cpus(isolation: IsolationOptions, index: int, pinned: Tuple[int, ...]) -> Tuple[int, ...]:
    """The CPUs worker ``index`` runs on: its ``cpu_affinity`` entry, else ``cpus`` of the allowed ones."""
    if pinned or not isolation.cpus:
        return pinned
    allowed = sorted(os.sched_getaffinity(0))
    count = min(isolation.cpus, len(allowed))
    start = (index * count) % len(allowed)
    return tuple(sorted(allowed[(start + i) % len(allowed)] for i in range(count)))


def plan_worker(
    isolation: IsolationOptions,
    *,
    python: str,
    env: Dict[str, str],
    worker_env: Dict[str, str],
    fds: Tuple[int, int],
    package_root: str,
    source_root: str,
    shm_dir: str,
    cpus: Tuple[int, ...],
) -> WorkerLaunch:
    """The launch of one worker at ``isolation.level``.

    Args:
        python: the interpreter a plain worker runs.
        env: this process's environment, plus PYTHONPATH for the worker.
        worker_env: the caller's extra variables for the worker (the ``worker_env`` option).
        fds: the control socket and the mailbox, as numbered here.
        package_root: the extracted package directory.
        source_root: the directory holding the ``neuropod`` package the worker imports.
        shm_dir: where a plain worker makes its segments.
        cpus: the CPUs the worker is pinned to (empty: any).

    Raises:
        IsolationError: the sandbox or container tool is missing or cannot run.
    """
    if isolation.level == "sandbox":
        from .sandbox import plan_sandbox

        return plan_sandbox(
            isolation,
            python=python,
            env=env,
            worker_env=worker_env,
            fds=fds,
            package_root=package_root,
            source_root=source_root,
            cpus=cpus,
        )
    if isolation.level == "container":
        from .container import plan_container

        return plan_container(
            isolation,
            env=env,
            worker_env=worker_env,
            fds=fds,
            package_root=package_root,
            source_root=source_root,
            cpus=cpus,
        )
    return WorkerLaunch([], python, fds, fds, os.getpid(), shm_dir, {**env, **worker_env}, package_root)


#: Environment variables an isolated worker keeps from the caller's (the rest may hold secrets).
KEPT_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def isolated_environment(
    isolation: IsolationOptions,
    env: Dict[str, str],
    worker_env: Dict[str, str],
    python_path: str,
    cpus: Tuple[int, ...],
) -> Dict[str, str]:
    """A small environment for an isolated worker: no caller secrets, a private HOME."""
    clean = {name: env[name] for name in KEPT_VARIABLES if name in env}
    clean.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME="/tmp",
        TMPDIR="/tmp",
        PYTHONPATH=python_path,
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
    )
    threads = len(cpus) if cpus else isolation.cpus
    if threads:  # frameworks size their thread pools from the machine, not from the affinity mask
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
            clean[name] = str(threads)
    clean.update(worker_env)
    return clean
