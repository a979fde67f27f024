"""What every isolation level's launch plan is made of: :class:`WorkerLaunch` and the worker's environment.

The levels (:mod:`.sandbox`, :mod:`.container`) build on this; :mod:`.launch` chooses among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .options import IsolationOptions

__all__ = ["WorkerLaunch", "isolated_environment", "KEPT_VARIABLES"]


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
