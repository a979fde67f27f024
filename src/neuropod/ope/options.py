"""Options of out-of-process execution, read from ``load_neuropod(..., use_ope=True, **options)``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple, Union

from ..errors import OptionError
from ..executors.options import Option, OptionTable, flag, number, one_of
from .shm import DEFAULT_SHM_DIR
from .spin import SPIN_MODES

__all__ = ["OpeOptions", "OPE_OPTIONS", "RESTART_POLICIES"]

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
            message before sleeping. Spinning skips a process wake-up
            (9-40 us on the VMs measured, docs/benchmarks.md) on short calls
            at the cost of up to that much CPU per call; 0 disables it
            (default 100).
        spin_mode: ``"adaptive"`` (default) spins only while spinning pays
            (most recent waits end within the spin) and the machine has an
            idle core, and the caller's side stretches its spin (up to 10x
            ``spin_us``) when the answers usually come a little after
            ``spin_us``; ``"fixed"`` always spins ``spin_us``. See
            :mod:`neuropod.ope.spin`.
        colocate: while a call sleeps for its answer (``spin_us=0``, or
            spins that do not pay) on a machine with an idle CPU, the
            caller's thread and the worker's serving thread wait on the CPU
            the caller runs on, so each hand-over is a switch between two
            tasks on one CPU rather than the wake-up of an idle one (default
            True; workers pinned with ``cpu_affinity`` keep to their CPUs).
            See :mod:`neuropod.ope.colocate`.
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
        pass_env: names of this process's variables the workers also get
            beyond the allow-list of :mod:`neuropod.ope.environment`, or
            ``"*"`` for the whole environment.
        share_weights: load the model once in a zygote process and fork the
            workers from it, so they share one copy of the weights (and a
            replacement worker is a fork, tens of milliseconds, not a
            load). Applies to plain
            processes (``isolation="process"``) of Python and TorchScript
            models on the CPU; elsewhere each worker loads its own copy
            (see :func:`neuropod.ope.zygote.sharing_refusal`). None (default):
            share where it applies; True: the same, and a warning is logged
            where it does not apply; False: never share.
        max_tensor_bytes: the largest logical size (elements x item size,
            whatever the array's strides) of one tensor that may cross to or
            from a worker. A larger one is refused before any copy with
            SharedMemoryError, and so is one larger than the shared memory
            that can be had: a broadcast view of terabytes costs bytes in the
            caller and would otherwise be copied until the machine runs out
            of memory. Default 16 GiB.
    """

    workers: int = 1
    spin_us: float = 100.0
    spin_mode: str = "adaptive"
    colocate: bool = True
    cpu_affinity: Optional[Tuple[Tuple[int, ...], ...]] = None
    python_executable: str = field(default_factory=lambda: sys.executable)
    timeout: Optional[float] = None
    restart_policy: str = "always"
    start_timeout: float = 120.0
    shm_dir: str = DEFAULT_SHM_DIR
    shm_cache_bytes: int = 1 << 30
    worker_env: Tuple[Tuple[str, str], ...] = ()
    pass_env: Union[str, Tuple[str, ...]] = ()
    share_weights: Optional[bool] = None
    max_tensor_bytes: int = 16 << 30

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> OpeOptions:
        """The OPE options among checked ``load_neuropod`` option values (see :data:`OPE_OPTIONS`)."""
        return cls(**{option.name: values[option.name] for option in OPE_OPTIONS if option.name in values})

    def cpus_of_worker(self, index: int) -> Tuple[int, ...]:
        if not self.cpu_affinity:
            return ()
        return self.cpu_affinity[index % len(self.cpu_affinity)]


def _cpu_set(value: Any) -> Tuple[int, ...]:
    cpus = tuple(value)
    if not cpus or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
        raise OptionError(f"cpu_affinity: expected CPU numbers, got {value!r}")
    count = os.cpu_count() or 0
    missing = [cpu for cpu in cpus if count and cpu >= count]
    if missing:  # refused here, not as a worker dying at start with "exited with code 1"
        raise OptionError(f"cpu_affinity: this machine has CPUs 0-{count - 1}, got {missing[0]} in {value!r}")
    return cpus


def _affinity(name: str, value: Any) -> Optional[Tuple[Tuple[int, ...], ...]]:
    if value is None:
        return None
    try:
        items = list(value)
    except TypeError:
        raise OptionError(f"cpu_affinity: expected a list of CPUs or a list of lists, got {value!r}") from None
    if items and all(isinstance(item, int) for item in items):
        return (_cpu_set(items),)
    return tuple(_cpu_set(item) if not isinstance(item, int) else (item,) for item in items) or None


def _executable(name: str, value: Any) -> str:
    executable = os.fspath(value)
    if not os.access(executable, os.X_OK):
        raise OptionError(f"python_executable: {executable!r} is not an executable file")
    return executable


def _directory(name: str, value: Any) -> str:
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise OptionError(f"{name}: {path!r} is not a directory")
    return path


def _environment_variables(name: str, value: Any) -> Tuple[Tuple[str, str], ...]:
    env = value or {}
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise OptionError(f"{name}: expected a dict of str -> str")
    return tuple(sorted(env.items()))


def _variable_names(name: str, value: Any) -> Union[str, Tuple[str, ...]]:
    if value == "*":
        return "*"
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"{name}: expected a list of variable names, or '*' for the whole environment; got {value!r}")
    return tuple(value)


def _flag_or_none(name: str, value: Any) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise OptionError(f"option {name!r}: expected None, True or False, got {value!r}")
    return value


_DEFAULTS = OpeOptions()
_COUNT = number("a positive int", 1, integer=True)
_MICROSECONDS = number("a non-negative number", 0, integer=False)
_SECONDS = number("a positive number of seconds", 0, integer=False, inclusive=False)
_SECONDS_OR_NONE = number("a positive number of seconds", 0, integer=False, inclusive=False, optional=True)
_BYTES = number("a non-negative int", 0, integer=True)
# Below the inline size a limit would refuse the small tensors every call carries.
_TENSOR_BYTES = number("an int of at least 4096 bytes", 4096, integer=True)

#: The options of out-of-process execution (``use_ope=True``); the fields of :class:`OpeOptions`.
OPE_OPTIONS: OptionTable = (
    Option("workers", "worker processes serving the model", _DEFAULTS.workers, _COUNT),
    Option("spin_us", "microseconds to busy-poll for the next message", _DEFAULTS.spin_us, _MICROSECONDS),
    Option("spin_mode", "'adaptive': spin while it pays and a core is idle; 'fixed'", "adaptive", one_of(*SPIN_MODES)),
    Option("colocate", "while a call sleeps, caller and worker wait on the caller's CPU", True, flag),
    Option("cpu_affinity", "CPUs to pin workers to (a list, or a list per worker)", None, _affinity),
    Option("python_executable", "the interpreter that runs the workers", _DEFAULTS.python_executable, _executable),
    Option("timeout", "seconds one call may take (None: no limit)", None, _SECONDS_OR_NONE),
    Option("restart_policy", "'always' or 'never' replace a dead worker", "always", one_of(*RESTART_POLICIES)),
    Option("start_timeout", "seconds a worker may take to load the model", _DEFAULTS.start_timeout, _SECONDS),
    Option("shm_dir", "directory of the shared-memory filesystem", _DEFAULTS.shm_dir, _directory),
    Option("shm_cache_bytes", "idle shared memory kept for reuse", _DEFAULTS.shm_cache_bytes, _BYTES),
    Option("worker_env", "extra environment variables for the workers", (), _environment_variables),
    Option("pass_env", "variables passed to workers beyond the allow-list ('*': all)", (), _variable_names),
    Option(
        "share_weights",
        "fork the workers from one process that loaded the model (None: where it applies)",
        None,
        _flag_or_none,
    ),
    Option(
        "max_tensor_bytes",
        "largest logical size of one tensor crossing to or from a worker",
        _DEFAULTS.max_tensor_bytes,
        _TENSOR_BYTES,
    ),
)
