"""How a worker process is started at each isolation level.

:func:`plan_worker` turns the isolation options into a :class:`WorkerLaunch`:
the command that goes before ``python -m neuropod.worker``, the
interpreter, the numbers the worker sees its two inherited descriptors under,
the environment, and what to clean up after the worker is gone. The control
socket and the mailbox are inherited; every tensor segment's descriptor
travels over that socket (``SCM_RIGHTS``) at every level, so the sandbox and
the container use the same shared-memory transport as a plain worker.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

from .base import WorkerLaunch
from .options import IsolationOptions

__all__ = ["WorkerLaunch", "plan_worker", "worker_cpus"]


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
