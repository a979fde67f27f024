"""What went wrong with a worker, in the words a caller reads: one place for every failure's wording.

The connection (:mod:`neuropod.ope.connection`) and the process handle
(:mod:`neuropod.ope.process`) only say *what happened* (the peer hung up, a
wait ran out, the worker answered ERROR, the process ended with this
status); :class:`Failures` turns that into the exception the caller gets.
"""

from __future__ import annotations

import signal
from typing import Optional, Sequence

from .. import errors
from ..errors import WorkerCrashedError, WorkerError, WorkerTimeoutError
from ..isolation.options import IsolationOptions, format_bytes

__all__ = ["Failures", "describe_returncode", "remote_error"]


def describe_returncode(returncode: Optional[int]) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def remote_error(texts: Sequence[str], where: str) -> Exception:
    """The exception a worker reported, rebuilt on this side.

    A neuropod error keeps its class and message (so callers catch the same
    thing as in-process); anything else becomes :class:`WorkerError`. The
    worker's traceback is in ``remote_traceback`` and in the ``__cause__``.
    """
    type_name, message, trace, module = (list(texts) + ["", "", "", ""])[:4]
    error_class = getattr(errors, type_name, None) if module == errors.__name__ else None
    exc: Exception
    if isinstance(error_class, type) and issubclass(error_class, errors.NeuropodError):
        exc = error_class(message)
    else:
        exc = WorkerError(f"{type_name}: {message} (raised in {where})")
        exc.remote_type = type_name
    exc.remote_traceback = trace  # type: ignore[attr-defined]
    exc.__cause__ = WorkerError(f"traceback in {where}:\n{trace}")
    return exc


def _with_code(error: WorkerCrashedError, returncode: Optional[int]) -> WorkerCrashedError:
    error.returncode = returncode
    return error


class Failures:
    """The wording of one model's worker failures.

    Args:
        model_name: for messages.
        isolation: how its workers run (a memory limit or a sandbox is a likely cause worth naming).
    """

    def __init__(self, model_name: str, isolation: IsolationOptions) -> None:
        self.model_name = model_name
        self.isolation = isolation

    @property
    def _memory_limit(self) -> Optional[int]:
        return self.isolation.memory_limit if self.isolation.isolated else None

    def crashed(self, pid: Optional[int], returncode: Optional[int], when: str, closing: bool) -> WorkerCrashedError:
        """A worker that died during a call (``when``), or while idle before it took one."""
        how = describe_returncode(returncode)
        if closing:
            message = f"model {self.model_name!r} was closed during the call (its worker, pid {pid}, {how})"
        else:
            message = f"the worker (pid {pid}) of model {self.model_name!r} {how} {when}{self._limit_hint(returncode)}"
        return _with_code(WorkerCrashedError(message), returncode)

    def crashed_loading(self, returncode: Optional[int]) -> WorkerCrashedError:
        return _with_code(
            WorkerCrashedError(
                f"the worker for model {self.model_name!r} {describe_returncode(returncode)} while loading the model"
                f"{self._limit_hint(returncode) or self._start_hint()}"
            ),
            returncode,
        )

    def zygote_died(self, returncode: Optional[int], zygote_pid: int) -> WorkerCrashedError:
        return _with_code(
            WorkerCrashedError(
                f"the worker for model {self.model_name!r} {describe_returncode(returncode)} while loading the model "
                f"(in its zygote, pid {zygote_pid}, which forks the workers)"
            ),
            returncode,
        )

    def load_timed_out(self, start_timeout: float) -> WorkerTimeoutError:
        return WorkerTimeoutError(
            f"the worker for model {self.model_name!r} did not load it within start_timeout={start_timeout}s"
        )

    def load_error(self, texts: Sequence[str]) -> Exception:
        return remote_error(texts, f"the worker loading model {self.model_name!r}")

    def timed_out(self, pid: Optional[int], timeout: Optional[float]) -> WorkerTimeoutError:
        return WorkerTimeoutError(
            f"the worker (pid {pid}) of model {self.model_name!r} did not answer within timeout={timeout}s; "
            "it was killed and will be replaced"
        )

    def out_of_memory(self, pid: Optional[int], texts: Sequence[str]) -> Optional[WorkerCrashedError]:
        """A MemoryError under a memory limit (the worker is then killed and replaced); None for any other error."""
        limit = self._memory_limit
        # The backend may wrap the MemoryError (InferenceError naming it); its traceback names it either way.
        if not limit or not any("MemoryError" in text for text in texts[:3]):
            return None
        return _with_code(
            WorkerCrashedError(
                f"the worker (pid {pid}) of model {self.model_name!r} ran past its memory_limit of "
                f"{format_bytes(limit)} ({limit} bytes) during the call and was killed; it will be replaced"
            ),
            None,
        )

    def out_of_memory_note(self) -> str:
        """``last_failure`` of a worker killed by :meth:`out_of_memory`."""
        return f"ran past its memory_limit of {format_bytes(self._memory_limit or 0)}"

    def model_error(self, pid: Optional[int], texts: Sequence[str]) -> Exception:
        return remote_error(texts, f"the worker (pid {pid}) of model {self.model_name!r}")

    def _limit_hint(self, returncode: Optional[int]) -> str:
        """For a worker killed by a signal under a memory limit (native code that aborts when allocation fails)."""
        limit = self._memory_limit
        killed = returncode is not None and returncode < 0
        return f" (its memory_limit is {format_bytes(limit)}: it may have run past it)" if limit and killed else ""

    def _start_hint(self) -> str:
        """For an isolated worker that died before it could report: its level and limits are the usual suspects."""
        if not self.isolation.isolated:
            return ""
        return (
            f"; it ran under isolation {self.isolation.describe()}: a limit set too low (max_open_files, "
            "memory_limit, max_processes) or a container engine that could not start it (its message is on stderr)"
        )
