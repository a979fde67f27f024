"""Options of out-of-process execution, read from ``load_neuropod(..., use_ope=True, **options)``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import OptionError
from .shm import DEFAULT_SHM_DIR

__all__ = ["OpeOptions", "RESTART_POLICIES"]

#: ``always``: a worker that died or hung is replaced on the next call;
#: ``never``: the model stays broken and every later call raises WorkerCrashedError.
RESTART_POLICIES = ("always", "never")


@dataclass(frozen=True)
class OpeOptions:
    """How a model's workers run.

    Attributes:
        workers: worker processes serving the model; concurrent ``infer``
            calls are spread over them (default 1: calls queue).
        spin_us: microseconds either side busy-polls for the other's next
            message before sleeping. Spinning skips a 40-90 us process
            wake-up on short calls at the cost of that much CPU per call;
            0 disables it (default 100).
        cpu_affinity: CPUs to pin workers to: a list of ints (every worker
            gets that set) or a list of lists (worker ``i`` gets entry
            ``i % len``). None leaves scheduling to the OS.
        python_executable: the interpreter that runs the workers (default:
            this one). It needs numpy and the model's framework; neuropod is
            imported from this process's source tree.
        timeout: seconds one call may take; a worker that does not answer in
            time is killed and replaced, and the call raises
            WorkerTimeoutError. None (default) waits forever.
        restart_policy: ``"always"`` or ``"never"`` (see RESTART_POLICIES).
        start_timeout: seconds a worker may take to load the model.
        shm_dir: directory of the shared-memory filesystem for tensors.
        shm_cache_bytes: idle shared memory each side keeps for reuse.
        worker_env: extra environment variables for the workers.
    """

    workers: int = 1
    spin_us: float = 100.0
    cpu_affinity: Optional[Tuple[Tuple[int, ...], ...]] = None
    python_executable: str = field(default_factory=lambda: sys.executable)
    timeout: Optional[float] = None
    restart_policy: str = "always"
    start_timeout: float = 120.0
    shm_dir: str = DEFAULT_SHM_DIR
    shm_cache_bytes: int = 1 << 30
    worker_env: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def split(cls, extra: Mapping[str, Any]) -> Tuple[OpeOptions, Dict[str, Any]]:
        """Take the OPE options out of ``extra``; return them and what is left for the backend.

        Raises:
            OptionError: an option has a wrong type or value (named in the message).
        """
        rest = dict(extra)
        values: Dict[str, Any] = {}
        if "workers" in rest:
            values["workers"] = _positive_int("workers", rest.pop("workers"))
        if "spin_us" in rest:
            values["spin_us"] = _non_negative("spin_us", rest.pop("spin_us"))
        if "cpu_affinity" in rest:
            values["cpu_affinity"] = _affinity(rest.pop("cpu_affinity"))
        if "python_executable" in rest:
            executable = os.fspath(rest.pop("python_executable"))
            if not os.access(executable, os.X_OK):
                raise OptionError(f"python_executable: {executable!r} is not an executable file")
            values["python_executable"] = executable
        if "timeout" in rest:
            timeout = rest.pop("timeout")
            values["timeout"] = None if timeout is None else _positive("timeout", timeout)
        if "restart_policy" in rest:
            policy = rest.pop("restart_policy")
            if policy not in RESTART_POLICIES:
                raise OptionError(f"restart_policy: expected one of {', '.join(RESTART_POLICIES)}, got {policy!r}")
            values["restart_policy"] = policy
        if "start_timeout" in rest:
            values["start_timeout"] = _positive("start_timeout", rest.pop("start_timeout"))
        if "shm_dir" in rest:
            shm_dir = os.fspath(rest.pop("shm_dir"))
            if not os.path.isdir(shm_dir):
                raise OptionError(f"shm_dir: {shm_dir!r} is not a directory")
            values["shm_dir"] = shm_dir
        if "shm_cache_bytes" in rest:
            cache = rest.pop("shm_cache_bytes")
            if not isinstance(cache, int) or isinstance(cache, bool) or cache < 0:
                raise OptionError(f"shm_cache_bytes: expected a non-negative int, got {cache!r}")
            values["shm_cache_bytes"] = cache
        if "worker_env" in rest:
            env = rest.pop("worker_env") or {}
            if not isinstance(env, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()
            ):
                raise OptionError("worker_env: expected a dict of str -> str")
            values["worker_env"] = tuple(sorted(env.items()))
        return cls(**values), rest

    def cpus_of_worker(self, index: int) -> Tuple[int, ...]:
        if not self.cpu_affinity:
            return ()
        return self.cpu_affinity[index % len(self.cpu_affinity)]


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OptionError(f"{name}: expected a positive int, got {value!r}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise OptionError(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise OptionError(f"{name}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _cpu_set(value: Any) -> Tuple[int, ...]:
    cpus = tuple(value)
    if not cpus or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
        raise OptionError(f"cpu_affinity: expected CPU numbers, got {value!r}")
    return cpus


def _affinity(value: Any) -> Optional[Tuple[Tuple[int, ...], ...]]:
    if value is None:
        return None
    try:
        items = list(value)
    except TypeError:
        raise OptionError(f"cpu_affinity: expected a list of CPUs or a list of lists, got {value!r}") from None
    if items and all(isinstance(item, int) for item in items):
        return (_cpu_set(items),)
    return tuple(_cpu_set(item) if not isinstance(item, int) else (item,) for item in items) or None
