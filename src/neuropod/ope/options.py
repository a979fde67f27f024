"""Options of out-of-process execution: :class:`OpeOptions`, the worker pool of one model."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from ..errors import OptionError
from ..options import Options, flag, number, one_of, optional_flag, setting
from .shm import DEFAULT_SHM_DIR
from .spin import SPIN_MODES

__all__ = ["OpeOptions", "OPE_OPTIONS", "RESTART_POLICIES"]

#: ``always``: a worker that died or hung is replaced on the next call;
#: ``never``: the model stays broken and every later call raises WorkerCrashedError.
RESTART_POLICIES = ("always", "never")


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
    if isinstance(env, tuple) and all(isinstance(pair, tuple) and len(pair) == 2 for pair in env):
        env = dict(env)  # the form this check returns
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


_COUNT = number("a positive int", 1, integer=True)
_MICROSECONDS = number("a non-negative number", 0, integer=False)
_SECONDS = number("a positive number of seconds", 0, integer=False, inclusive=False)
_SECONDS_OR_NONE = number("a positive number of seconds", 0, integer=False, inclusive=False, optional=True)
_BYTES = number("a non-negative int", 0, integer=True)
# Below the inline size a limit would refuse the small tensors every call carries.
_TENSOR_BYTES = number("an int of at least 4096 bytes", 4096, integer=True)


@dataclass(frozen=True)
class OpeOptions(Options):
    """How a model's worker pool runs (``load_neuropod(..., use_ope=True, **options)``).

    Each field is one option; its doc says what it does. The longer story:

    * ``spin_us`` / ``spin_mode``: spinning skips a process wake-up (9-40 us
      on the VMs measured, docs/benchmarks.md) on short calls at the cost of
      up to that much CPU per call. ``"adaptive"`` spins only while spinning
      pays (most recent waits end within the spin) and the machine has an
      idle core, and the caller's side stretches its spin (up to 10x
      ``spin_us``) when answers usually come a little after ``spin_us``;
      ``"fixed"`` always spins ``spin_us``. See :mod:`neuropod.ope.spin`.
    * ``colocate``: while a call sleeps for its answer on a machine with an
      idle CPU, the caller's thread and the worker's serving thread wait on
      the caller's CPU, so each hand-over is a switch between two tasks on
      one CPU rather than the wake-up of an idle one (workers pinned with
      ``cpu_affinity`` keep to their CPUs). See :mod:`neuropod.ope.colocate`.
    * ``python_executable``: it needs numpy and the model's framework;
      neuropod is imported from this process's source tree.
    * ``timeout``: a worker that does not answer in time is killed and
      replaced, and the call raises WorkerTimeoutError. ``timeout`` means the
      same for a remote model (seconds one call may take, None: no limit);
      only the defaults differ: a model call may rightly take minutes, and a
      worker that dies is noticed without a limit.
    * ``share_weights``: applies to plain processes (``isolation="process"``)
      of Python and TorchScript models on the CPU; elsewhere each worker
      loads its own copy (see :func:`neuropod.ope.zygote.sharing_refusal`).
      A replacement worker is then a fork (tens of milliseconds), not a load.
    * ``max_tensor_bytes``: counts elements x item size whatever the array's
      strides; a larger tensor, or one larger than the shared memory that can
      be had, is refused with SharedMemoryError before any copy (a broadcast
      view of terabytes costs bytes in the caller and would otherwise be
      copied until the machine runs out of memory).
    """

    APPLIES = "it is an option of out-of-process execution (use_ope=True)"
    REMOTE = "it is an option of out-of-process workers; the server decides how its models run"

    workers: int = setting(1, check=_COUNT, doc="worker processes serving the model; concurrent calls spread over them")
    spin_us: float = setting(
        100.0, check=_MICROSECONDS, doc="microseconds to busy-poll for the next message (0: never)"
    )
    spin_mode: str = setting(
        "adaptive", check=one_of(*SPIN_MODES), doc="'adaptive': spin while it pays and a core is idle; 'fixed'"
    )
    colocate: bool = setting(True, check=flag, doc="while a call sleeps, caller and worker wait on the caller's CPU")
    cpu_affinity: Optional[Tuple[Tuple[int, ...], ...]] = setting(
        None, check=_affinity, doc="CPUs to pin workers to: a list (every worker), or a list per worker (i % len)"
    )
    python_executable: str = setting(
        check=_executable,
        factory=lambda: sys.executable,
        shown="this interpreter",
        doc="the interpreter of the workers",
    )
    timeout: Optional[float] = setting(
        None, check=_SECONDS_OR_NONE, doc="seconds one call may take, then the worker is replaced (None: no limit)"
    )
    restart_policy: str = setting(
        "always", check=one_of(*RESTART_POLICIES), doc="'always' or 'never' replace a dead worker"
    )
    start_timeout: float = setting(120.0, check=_SECONDS, doc="seconds a worker may take to load the model")
    shm_dir: str = setting(DEFAULT_SHM_DIR, check=_directory, doc="directory of the shared-memory filesystem")
    shm_cache_bytes: int = setting(1 << 30, check=_BYTES, doc="idle shared memory each side keeps for reuse")
    worker_env: Tuple[Tuple[str, str], ...] = setting(
        (), check=_environment_variables, doc="extra environment variables for the workers"
    )
    pass_env: Union[str, Tuple[str, ...]] = setting(
        (), check=_variable_names, doc="variables passed to workers beyond the allow-list ('*': all)"
    )
    share_weights: Optional[bool] = setting(
        None,
        check=optional_flag,
        doc="fork the workers from one process that loaded the model (None: where it applies; True: warn where not)",
    )
    max_tensor_bytes: int = setting(
        16 << 30, check=_TENSOR_BYTES, doc="largest logical size of one tensor crossing to or from a worker"
    )

    def cpus_of_worker(self, index: int) -> Tuple[int, ...]:
        if not self.cpu_affinity:
            return ()
        return self.cpu_affinity[index % len(self.cpu_affinity)]


#: The options of out-of-process execution, derived from :class:`OpeOptions`.
OPE_OPTIONS = OpeOptions.table()
