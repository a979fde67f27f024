"""Waiting on one CPU: the caller and its worker meet where the caller runs while the caller sleeps.

A call that sleeps for its answer (``spin_us=0``, or spinning that does
not pay) pays two wake-ups. Left to the scheduler, the worker
wakes on an idle CPU, and so does the caller when the answer comes (Linux
places a woken task on an idle CPU rather than behind the task that woke
it). On the VMs we measured, waking an idle (halted) vCPU costs far more
than a switch between two tasks on one CPU, and more the longer it slept: a
pipe round trip to an echo process cost 38-83 us that way, against 16-18 us
with both ends on one CPU, whatever the echo computed in between (see
docs/ope.md, "Sleeping calls wait on one CPU").

So while the caller sleeps in a call, it holds its thread on the CPU it is
on and tells the worker which one (a word in the mailbox); the worker's
serving thread waits for the next call on that CPU, and takes back its own
CPU set as soon as a call wakes it, so the model runs (and any thread it
starts is born) with the CPUs it had. Each side restores its mask at once:
a pin lasts only while its side sleeps. Pinning costs a few microseconds of
system calls a call, so spinning calls do not do it; nor do calls while the
caller's spin policy finds the machine busy (no idle CPU): then no vCPU
halts, a wake-up is cheap anyway, and holding both sides on one CPU beside a
busy neighbour did not make calls faster (docs/ope.md).

Nothing here applies where the calls to do it are missing (other systems,
a C library without ``sched_getcpu``): every function then returns None and
the sides sleep as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Callable, Iterator, Optional, Set

__all__ = ["current_cpu", "held_on", "hold_thread_on", "restore_thread"]


def _cpu_reader() -> Optional[Callable[[], int]]:
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function  # type: ignore[no-any-return]


_read_cpu = _cpu_reader()


def current_cpu() -> Optional[int]:
    """The CPU this thread runs on now (None where it cannot be told)."""
    if _read_cpu is None:
        return None
    cpu = _read_cpu()
    return cpu if cpu >= 0 else None


def hold_thread_on(cpu: int) -> Optional[Set[int]]:
    """Pin the calling thread to ``cpu``; its previous CPU set (for :func:`restore_thread`), or None if it cannot."""
    try:
        previous = os.sched_getaffinity(0)
        if cpu not in previous:  # a CPU this thread may not use (cpuset, the user's own pinning)
            return None
        if len(previous) > 1:
            os.sched_setaffinity(0, (cpu,))
    except (AttributeError, OSError):
        return None
    return previous


def restore_thread(previous: Set[int]) -> None:
    """Give the calling thread back the CPU set :func:`hold_thread_on` returned."""
    if len(previous) > 1:
        try:
            os.sched_setaffinity(0, previous)
        except OSError:  # a CPU went offline or left our cpuset meanwhile: keep what the kernel allows
            pass


@contextlib.contextmanager
def held_on(cpu: Optional[int]) -> Iterator[bool]:
    """Hold the calling thread on ``cpu`` for the block (None: leave it be); yields whether it is held there."""
    previous = None if cpu is None else hold_thread_on(cpu)
    try:  # entered at once: an interrupt from here on still gives the thread its CPUs back
        yield previous is not None
    finally:
        if previous is not None:
            restore_thread(previous)
