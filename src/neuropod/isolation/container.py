"""``isolation="container"``: the worker runs in an OCI container (podman, or a ``launcher``).

The worker command is ``<engine> run ... IMAGE python3 -m neuropod.worker``.
Its control socket and mailbox go in as inherited descriptors 3 and 4
(``--preserve-fds=2``); every tensor segment's descriptor then travels over
that socket, so the container shares memory with the caller without sharing
an IPC namespace or ``/dev/shm``. The neuropod source of this process is
mounted read-only and put on ``PYTHONPATH`` (the worker speaks exactly this
process's wire format); the image needs Python, numpy and the framework.

Docker cannot pass descriptors into a container (``docker run`` has no
``--preserve-fds``), so it cannot carry this transport; ``launcher`` takes
any other command prefix that runs the worker command with descriptors 3 and
4 inherited.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
from typing import Callable, Dict, List, Tuple

from ..errors import IsolationError
from .base import WorkerLaunch, isolated_environment
from .options import IsolationOptions
from .sandbox import CgroupLimits

__all__ = ["plan_container", "find_engine", "CONTAINER_FDS"]

#: The descriptor numbers the worker finds its control socket and mailbox under.
CONTAINER_FDS = (3, 4)
_SOURCE_IN_CONTAINER = "/opt/neuropod-src"
_PACKAGE_IN_CONTAINER = "/opt/neuropod-package"


def find_engine(choice: str | None) -> str:
    """The container engine's path: ``choice``, else podman."""
    if choice == "docker":
        raise IsolationError(
            "container_engine='docker': docker cannot pass the worker's shared-memory descriptors into a "
            "container (docker run has no --preserve-fds); use podman, or a 'launcher' command prefix"
        )
    engine = shutil.which("podman")
    if engine is None:
        raise IsolationError(
            "isolation='container' needs podman on PATH (Debian/Ubuntu: apt-get install podman), "
            "or a 'launcher' command prefix that runs the worker command"
        )
    return engine


def _renumber(fds: Tuple[int, int]) -> List[str]:
    """A bash prefix that moves the two descriptors to 3 and 4 (via free high numbers) and runs the rest."""
    script = 'exec 1000<&"$1" 1001<&"$2" && exec 3<&1000 4<&1001 1000<&- 1001<&- && shift 2 && exec "$@"'
    bash = shutil.which("bash") or "/bin/bash"
    return [bash, "-c", script, "neuropod-fds", str(fds[0]), str(fds[1])]


def plan_container(
    isolation: IsolationOptions,
    *,
    env: Dict[str, str],
    worker_env: Dict[str, str],
    fds: Tuple[int, int],
    package_root: str,
    source_root: str,
    cpus: Tuple[int, ...],
) -> WorkerLaunch:
    cleanup = _nothing
    if isolation.launcher:
        command = list(isolation.launcher)
        package_path, python_path = package_root, source_root
    else:
        engine = find_engine(isolation.container_engine)
        name = f"neuropod-{os.getpid()}-{secrets.token_hex(4)}"
        package_path, python_path = _PACKAGE_IN_CONTAINER, _SOURCE_IN_CONTAINER
        command = [engine, "run", "--rm", "--name", name, "--preserve-fds=2", "--network=none", "--read-only"]
        command += ["--cap-drop=all", "--security-opt=no-new-privileges", "--workdir=/tmp"]
        command += ["-v", f"{package_root}:{package_path}:ro", "-v", f"{source_root}:{python_path}:ro"]
        tmp = f",size={isolation.tmp_bytes}" if isolation.tmp_bytes else ""
        command += [f"--tmpfs=/tmp:rw{tmp}", f"--shm-size={isolation.tmp_bytes or 64 << 20}"]
        if isolation.max_open_files:
            command.append(f"--ulimit=nofile={isolation.max_open_files}:{isolation.max_open_files}")
        cgroups_disabled = "--cgroups=disabled" in isolation.container_args
        if isolation.max_processes:
            command.append(f"--ulimit=nproc={isolation.max_processes}:{isolation.max_processes}")
            if not cgroups_disabled:
                command.append(f"--pids-limit={isolation.max_processes}")
        if cpus and not cgroups_disabled:  # without cgroups the worker's own affinity (--cpus) pins it
            command.append(f"--cpuset-cpus={','.join(map(str, cpus))}")
        if isolation.gpus is not None:
            # The NVIDIA container toolkit's CDI names: nvidia.com/gpu=all or =<index>.
            command.append(f"--device=nvidia.com/gpu={isolation.gpus}")
        command += list(isolation.container_args)
        worker_env = isolated_environment(isolation, env, worker_env, python_path, cpus)
        for key in sorted(worker_env):
            if key != "PATH":
                command += ["-e", f"{key}={worker_env[key]}"]
        command += ["--rootfs", isolation.rootfs] if isolation.rootfs else [str(isolation.image)]
        if isolation.memory_limit:
            # podman's --ulimit has no address-space limit and --memory needs cgroups, which these VMs
            # cannot give it: the image's prlimit (util-linux) sets RLIMIT_AS before Python starts.
            command += ["prlimit", f"--as={isolation.memory_limit}", "--"]
        cleanup = _remover(engine, name)
        if cgroups_disabled and os.geteuid() == 0:
            # Without cgroups of its own the container stays in podman's: start podman in a pids
            # (and cpu) group of this worker's, as the sandbox does (root ignores RLIMIT_NPROC).
            groups = CgroupLimits(isolation.max_processes, isolation.cpus)
            command = groups.prefix() + command
            cleanup = _both(cleanup, groups.remove)
    host_env = {
        key: value for key, value in env.items() if key in ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINERS_CONF")
    }
    host_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if isolation.launcher:
        host_env.update(isolated_environment(isolation, env, worker_env, python_path, cpus))
    # The worker is pid 1 of the container; its parent pid reads 0 there.
    return WorkerLaunch(
        prefix=_renumber(fds) + command,
        python=isolation.container_python,
        fds=CONTAINER_FDS,
        pass_fds=fds,
        parent_pid=0,
        shm_dir="/dev/shm",
        env=host_env,
        package_root=package_path,
        cleanup=cleanup,
        signal_offset=128,
    )


def _nothing() -> None:
    pass


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        first()
        second()

    return run


def _remover(engine: str, name: str) -> Callable[[], None]:
    def remove() -> None:
        # A hung or killed worker's container outlives the podman client we spawned: remove it
        # in the background (podman takes a while), so a restart does not wait for it.
        def run() -> None:
            subprocess.run(
                [engine, "rm", "-f", "-t", "0", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )

        threading.Thread(target=run, name="neuropod-container-rm", daemon=True).start()

    return remove
