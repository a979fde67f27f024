"""How long a side of an OPE channel busy-polls for the next message before it sleeps.

Spinning buys latency with CPU: a receiver that polls shared memory sees a
message within a microsecond, one that sleeps pays a wake-up (9-40 us on the
VMs we measured: the ``spin_us=0`` stage tables of docs/benchmarks.md), and a
spin that ends empty-handed wastes its whole budget. It pays when the answer usually comes within the budget *and* the
machine has a core to spare for it; on a busy machine the spinner takes the
core that the peer (or someone else) needs, and every call gets slower.

:class:`SpinPolicy` (``spin_mode="adaptive"``, the default) therefore spins
only while both hold:

* **It pays**: an average over recent spins (each weighs 1/16) of those that
  ended with the message stays at or above :data:`PAYS_AT`. Below it, the
  side stops spinning, and spins once every :data:`PROBE_EVERY` waits to see
  whether it would pay again (a model whose calls got shorter, a caller that
  calls back to back again).
* **A core is idle**: the machine's count of runnable tasks (the fourth
  field of ``/proc/loadavg``, read at most every :data:`LOAD_CHECK_NS`) is at
  most the CPUs this process may use (its affinity set when this module was
  imported, before a worker pins itself to its own CPUs). That count
  includes this process and a peer that is computing; one more means a task is waiting for a CPU, and spinning would
  hold one back from it (a spinner that yields hands its CPU to a CPU-bound
  neighbour for a whole time slice, milliseconds, where a sleeper woken by
  the socket preempts it at once). One reading is an instant; the machine
  counts as busy only when :data:`BUSY_LOOKS` (4) readings in a row say so
  (readings at least :data:`LOAD_CHECK_NS` apart, so 60 ms or more): on a
  machine with a few other processes about, one reading in several sees a
  short-lived task, and with two readings the caller stopped spinning for a
  while every few thousand calls, which set the p99.

**Stretching** (the parent's side only): a call whose answer usually comes
a little after the budget (a model that computes for a few hundred
microseconds) would spin in vain and then pay the wake-up on every call. The
parent's policy keeps an average of how long its waits took (each capped at
twice the limit), and while twice that average is longer than ``spin_us``
but no more than :data:`STRETCH_LIMIT` times it, it spins that long
instead, as long as at least :data:`STRETCH_PAYS_AT` of the recent
stretched waits that outlasted ``spin_us`` ended within the stretched
budget (waits spread widely around their average would lose whole
stretched budgets and gain nothing; one wait in :data:`PROBE_EVERY`
stretches anyway, to re-measure). Waits longer than the limit are left to
sleep: the wake-up is then a small part of the call. The worker's policy
does not stretch: what it waits for is the caller's next call, which may
never come.

``spin_mode="fixed"`` spins the whole budget before every wait (the
behaviour before the policy existed), for benchmarks and for machines
reserved for the model.

The runnable count is the whole machine's (``/proc/loadavg`` is not per
container or per CPU set): a process confined to a few CPUs of a busy machine
sees it busy while its own CPUs idle, and stops spinning where it would have
paid. The error is on the side of not spinning.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from ..errors import OptionError

__all__ = [
    "SpinPolicy",
    "BUSY_LOOKS",
    "SPIN_MODES",
    "PAYS_AT",
    "PROBE_EVERY",
    "LOAD_CHECK_NS",
    "STRETCH_LIMIT",
    "STRETCH_PAYS_AT",
    "runnable_tasks",
    "usable_cpus",
]

#: ``adaptive``: spin while it pays and a core is idle; ``fixed``: always spin the budget.
SPIN_MODES = ("adaptive", "fixed")
#: Share of recent spins that must end with the message for spinning to go on.
PAYS_AT = 0.5
#: While not spinning, spin on one wait in this many, to re-measure.
PROBE_EVERY = 32
#: How often the runnable count is read (nanoseconds).
LOAD_CHECK_NS = 20_000_000
#: Looks in a row that must see no idle core before spinning stops.
BUSY_LOOKS = 4
#: A stretching policy spins at most this many times its ``spin_ns`` to outlast a call.
STRETCH_LIMIT = 10
#: Share of recent stretched spins that must end with the message for stretching to go on.
STRETCH_PAYS_AT = 0.75
_WEIGHT = 1 / 16
_WAIT_WEIGHT = 1 / 8
_STRETCH_MARGIN = 2.0


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity set (the machine's CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Read once, at import: a worker imports this before it pins itself to the CPUs of its own, and the
# runnable count it compares against is all the model's processes', not those on its CPUs.
_CPUS_AT_IMPORT = usable_cpus()


def runnable_tasks() -> Optional[int]:
    """Tasks running or waiting for a CPU right now, machine-wide (None where /proc/loadavg is missing)."""
    try:
        with open("/proc/loadavg", "rb") as handle:
            return int(handle.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


class SpinPolicy:
    """Decides each wait's spin budget and learns from how the spin went.

    Args:
        spin_ns: the most one wait spins.
        mode: one of :data:`SPIN_MODES` (anything else raises OptionError).
        stretch: spin up to :data:`STRETCH_LIMIT` times ``spin_ns`` when the waits
            usually end a little after ``spin_ns`` (adaptive mode only; the parent's side).
        cpus: CPUs to compare the runnable count with (default: :func:`usable_cpus` at import).
        read_runnable: the runnable-task count (default: :func:`runnable_tasks`).
        clock: nanoseconds (default ``time.perf_counter_ns``); both are parameters for the tests.
    """

    __slots__ = (
        "spin_ns",
        "adaptive",
        "stretch_ns",
        "typical_wait",
        "stretch_paid",
        "_stretched_ns",
        "_waits_since_stretch",
        "cpus",
        "read_runnable",
        "clock",
        "paid",
        "busy",
        "_crowded_looks",
        "_load_checked",
        "_waits_since_spin",
        "spins",
        "wins",
    )

    def __init__(
        self,
        spin_ns: int,
        mode: str = "adaptive",
        stretch: bool = False,
        cpus: Optional[int] = None,
        read_runnable: Callable[[], Optional[int]] = runnable_tasks,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if mode not in SPIN_MODES:
            raise OptionError(f"spin_mode: expected one of {', '.join(map(repr, SPIN_MODES))}, got {mode!r}")
        self.spin_ns = max(0, int(spin_ns))
        self.adaptive = mode == "adaptive"
        self.stretch_ns = self.spin_ns * STRETCH_LIMIT if stretch and self.adaptive else self.spin_ns
        self.typical_wait: Optional[float] = None  # average of recent waits, ns (None: none yet)
        self.stretch_paid = 1.0  # like paid, over the stretched spins only
        self._stretched_ns = 0  # the current wait's budget where it is stretched, else 0
        self._waits_since_stretch = 0
        self.cpus = cpus or _CPUS_AT_IMPORT
        self.read_runnable = read_runnable
        self.clock = clock
        self.paid = 1.0  # average of recent spins that ended with the message (optimistic start)
        self.busy = False  # no idle core at the last BUSY_LOOKS looks
        self._crowded_looks = 0  # looks in a row that saw more runnable tasks than CPUs
        self._load_checked: Optional[int] = None
        self._waits_since_spin = 0
        self.spins = 0  # counts, for benchmarks and tests
        self.wins = 0

    def budget(self) -> int:
        """Nanoseconds to spin before this wait sleeps."""
        if not self.adaptive or not self.spin_ns:
            return self.spin_ns
        self._stretched_ns = 0  # until this wait's budget turns out stretched
        if self.machine_busy():
            return 0
        if self.paid < PAYS_AT:
            self._waits_since_spin += 1
            if self._waits_since_spin < PROBE_EVERY:
                return 0
        self._waits_since_spin = 0
        if self.typical_wait is not None:
            wanted = int(self.typical_wait * _STRETCH_MARGIN)
            if self.spin_ns < wanted <= self.stretch_ns:
                # Stretch while stretching pays (waits that vary widely around their
                # average would lose whole stretched budgets), and probe now and then.
                self._waits_since_stretch += 1
                if self.stretch_paid >= STRETCH_PAYS_AT or self._waits_since_stretch >= PROBE_EVERY:
                    self._waits_since_stretch = 0
                    self._stretched_ns = wanted
                    return wanted
        return self.spin_ns

    def machine_busy(self) -> bool:
        """Whether the last :data:`BUSY_LOOKS` looks found no idle core (looking again when one is due)."""
        now = self.clock()
        if self._load_checked is None or now - self._load_checked >= LOAD_CHECK_NS:
            self._load_checked = now
            runnable = self.read_runnable()
            crowded = runnable is not None and runnable > self.cpus
            self._crowded_looks = self._crowded_looks + 1 if crowded else 0
            self.busy = self._crowded_looks >= BUSY_LOOKS
        return self.busy

    def waited(self, nanoseconds: int) -> None:
        """A wait (spun, slept or both) ended after this long: what a stretching policy learns from."""
        if self.stretch_ns == self.spin_ns:
            return  # nothing to stretch
        if self._stretched_ns and nanoseconds > self.spin_ns:
            # Only waits that outlasted the plain budget tell whether stretching pays.
            if nanoseconds <= self._stretched_ns:
                self.stretch_paid += (1.0 - self.stretch_paid) * _WEIGHT
            else:
                self.stretch_paid -= self.stretch_paid * _WEIGHT
        # Capped, so that one long call (a warm-up, a retry) does not stop stretching for dozens of calls.
        sample = float(min(nanoseconds, 2 * self.stretch_ns))
        if self.typical_wait is None:
            self.typical_wait = sample
        else:
            self.typical_wait += (sample - self.typical_wait) * _WAIT_WEIGHT

    def won(self) -> None:
        """The message came while spinning."""
        self.spins += 1
        self.wins += 1
        self.paid += (1.0 - self.paid) * _WEIGHT

    def lost(self) -> None:
        """The whole budget went by without the message."""
        self.spins += 1
        self.paid -= self.paid * _WEIGHT
