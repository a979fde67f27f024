"""A worker's process: started as a plain (or isolated) process, or forked from the model's zygote.

:class:`ProcessHandle` is all the rest of OPE knows of a worker's process:
its pid, whether it still runs, its exit status (in the terms of the
isolation it runs under), and killing it. Which way it was started
(``subprocess.Popen`` through :func:`plan_worker`, or a
:class:`~neuropod.ope.zygote.ForkedProcess`) matters only here.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from concurrent.futures import Future
from typing import Dict, List, Optional, Tuple, Union

from ..errors import WorkerCrashedError
from ..isolation.launch import WorkerLaunch, plan_worker
from ..isolation.options import IsolationOptions
from ..worker_path import worker_code_root
from .environment import declared_names, worker_environment
from .options import OpeOptions
from .zygote import UNKNOWN_STATUS, ForkedProcess, ForkFailure, Zygote

__all__ = ["ProcessHandle", "make_zygote"]

#: Seconds to wait for a dead worker's exit status before it is killed (again) and waited for without limit.
_REAP_WAIT_S = 5.0


class _Spawner:
    """Starts workers from one long-lived thread.

    Linux sends PR_SET_PDEATHSIG when the *thread* that forked a child exits,
    so a worker started from a short-lived caller thread would be killed with
    it. Forking from a thread that lives as long as the process avoids that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.Queue[Tuple[List[str], Dict[str, str], Tuple[int, ...], Future]] = queue.Queue()
        self._pid = -1

    def spawn(self, argv: List[str], env: Dict[str, str], pass_fds: Tuple[int, ...]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a forked child without the thread
                self._requests = queue.Queue()
                threading.Thread(
                    target=self._run, args=(self._requests,), name="neuropod-ope-spawner", daemon=True
                ).start()
                self._pid = os.getpid()
        future: Future = Future()
        self._requests.put((argv, env, pass_fds, future))
        return future.result()  # type: ignore[no-any-return]

    @staticmethod
    def _run(requests: queue.Queue[Tuple[List[str], Dict[str, str], Tuple[int, ...], Future]]) -> None:
        while True:
            argv, env, pass_fds, future = requests.get()
            try:
                future.set_result(subprocess.Popen(argv, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL))
            except BaseException as exc:
                future.set_exception(exc)


_SPAWNER = _Spawner()


def _worker_env(package_root: str, options: OpeOptions) -> Dict[str, str]:
    # An allow-list of this process's variables, not all of them: the model may read its environment.
    env = worker_environment(os.environ, declared_names(package_root), options.pass_env)
    # Only neuropod's own code from this process: another interpreter must not import our numpy.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (worker_code_root(), env.get("PYTHONPATH", "")) if p)
    return env


def _worker_argv(launch: WorkerLaunch, backend_options_json: str, options: OpeOptions) -> List[str]:
    """``python -m neuropod.worker`` and the options every worker (and a zygote) takes."""
    return launch.prefix + [
        launch.python,
        "-m",
        "neuropod.worker",
        "--fd",
        str(launch.fds[0]),
        "--package",
        launch.package_root,
        "--parent-pid",
        str(launch.parent_pid),
        "--options",
        backend_options_json,
        "--spin-us",
        str(options.spin_us),
        "--shm-dir",
        launch.shm_dir,
        "--cache-bytes",
        str(options.shm_cache_bytes),
        "--max-tensor-bytes",
        str(options.max_tensor_bytes),
    ]


def make_zygote(package_root: str, model_name: str, backend_options_json: str, options: OpeOptions) -> Zygote:
    """The zygote of a model whose workers run as plain processes (see :mod:`neuropod.ope.zygote`)."""

    def spawn(control_fd: int) -> subprocess.Popen[bytes]:
        launch = plan_worker(
            IsolationOptions(),
            python=options.python_executable,
            env=_worker_env(package_root, options),
            worker_env=dict(options.worker_env),
            fds=(control_fd, control_fd),  # a zygote has no mailbox: its workers get theirs with each fork
            package_root=package_root,
            source_root=worker_code_root(),
            shm_dir=options.shm_dir,
            cpus=(),
        )
        argv = _worker_argv(launch, backend_options_json, options) + ["--zygote"]
        try:
            return _SPAWNER.spawn(argv, launch.env, (control_fd,))
        except OSError as exc:
            raise WorkerCrashedError(
                f"cannot start the zygote of model {model_name!r} with {options.python_executable}: {exc}"
            ) from exc

    return Zygote(spawn, model_name)


class ProcessHandle:
    """One worker process, spawned or forked.

    Build one with :meth:`fork` or :meth:`spawn`; :meth:`release` lets go of
    what it holds (a pidfd, an isolation's files) once the process is gone.
    """

    def __init__(self, process: Union[subprocess.Popen[bytes], ForkedProcess], launch: Optional[WorkerLaunch]) -> None:
        self.process = process
        self.launch = launch  # how a spawned worker was isolated (None: forked)

    @classmethod
    def fork(cls, zygote: Zygote, control_fd: int, mailbox_fd: int, cpus: Tuple[int, ...]) -> ProcessHandle:
        """Order a fork from ``zygote`` (see :meth:`wait_forked`)."""
        return cls(zygote.fork(control_fd, mailbox_fd, cpus), None)

    @classmethod
    def spawn(
        cls,
        isolation: IsolationOptions,
        package_root: str,
        backend_options_json: str,
        options: OpeOptions,
        control_fd: int,
        mailbox_fd: int,
        cpus: Tuple[int, ...],
    ) -> ProcessHandle:
        """Start ``python -m neuropod.worker`` (under ``isolation``) on the given socket and mailbox."""
        launch = plan_worker(
            isolation,
            python=options.python_executable,
            env=_worker_env(package_root, options),
            worker_env=dict(options.worker_env),
            fds=(control_fd, mailbox_fd),
            package_root=package_root,
            source_root=worker_code_root(),
            shm_dir=options.shm_dir,
            cpus=cpus,
        )
        try:
            argv = _worker_argv(launch, backend_options_json, options) + ["--mailbox-fd", str(launch.fds[1])]
            if cpus:
                argv += ["--cpus", ",".join(str(cpu) for cpu in cpus)]
            return cls(_SPAWNER.spawn(argv, launch.env, launch.pass_fds), launch)
        except BaseException:
            launch.cleanup()
            raise

    @property
    def pid(self) -> Optional[int]:
        """Its pid (a forked worker's once its zygote has reported the fork)."""
        return self.process.pid

    @property
    def forked(self) -> bool:
        return isinstance(self.process, ForkedProcess)

    def wait_forked(self, timeout: float) -> Optional[ForkFailure]:
        """For a forked worker: wait for the zygote's fork; None once forked, else why not."""
        assert isinstance(self.process, ForkedProcess)
        return self.process.wait_forked(timeout)

    def poll(self) -> Optional[int]:
        """Its raw exit status, None while it runs (one non-blocking look)."""
        return self.process.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Its raw exit status, waited for (``subprocess.TimeoutExpired`` after ``timeout``)."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Kill it (if it still runs) and wait for it."""
        try:
            self.process.kill()
        except OSError:
            pass
        self.process.wait()

    def reap(self) -> Optional[int]:
        """How it ended, in the terms of its isolation (None: unknown); killed first if it has not ended soon."""
        process = self.process
        try:
            status = process.wait(timeout=_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        if isinstance(process, ForkedProcess) and status == UNKNOWN_STATUS:
            return None  # its zygote could not learn how it ended
        launch = self.launch
        return launch.returncode(status) if launch is not None else status

    def release(self) -> None:
        """Let go of the pidfd and the isolation's files (the process is gone, or about to be)."""
        if isinstance(self.process, ForkedProcess):
            self.process.close()
        launch, self.launch = self.launch, None
        if launch is not None:
            launch.cleanup()
