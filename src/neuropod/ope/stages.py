"""Where the time of an out-of-process call goes: per-stage timing, off by default.

Turn it on before the model is loaded, with ``NEUROPOD_OPE_STAGES=1`` in the
environment or :func:`enable`, which returns the recorder; read the results
with ``recorder.summary()`` (median microseconds per stage). Each worker
started from then on times its side too (forked from a zygote or not): its
parent tells it so in its mailbox before it starts, and it looks once, when it
starts. Each side reports to an *observer*: the caller to :data:`observer`
(the recorder), a worker to a :class:`WorkerStamps`; off, both report to
:class:`NullObserver`, whose clock reads nothing (a few no-op calls per call).
A backend with a conversion step of its own (torch's ``to_tensors``) tells
the worker's observer how long it took through its ``conversion_observer``. The recorder keeps the last
:data:`KEPT_CALLS` calls, so timing may stay on in a long-running process.

Every timestamp is ``time.perf_counter_ns()``, which on Linux reads
``CLOCK_MONOTONIC``: one clock for all processes of the machine, so the
parent can subtract the worker's timestamps (left in the mailbox,
:meth:`~neuropod.ope.channel.Channel.leave_stamps`) from its own.

The stages of one call, in order (:data:`STAGES`):

* ``parent encode``: from ``Connection.call`` to the request's bytes;
* ``parent send``: writing them to the mailbox or the socket (until the
  worker has them, if that came first: a send on the socket may wake the
  worker before it returns);
* ``wake``: until the worker has the bytes (a spinning worker notices within a
  microsecond; a sleeping one pays a wake-up);
* ``worker decode``: the bytes to numpy inputs;
* ``worker convert``: the backend's numpy-to-framework conversion, where the
  backend has it as a step of its own (torch's ``to_tensors``); elsewhere it
  is part of ``worker call``;
* ``worker call``: the model, through the worker's in-process executor;
* ``worker encode``: the outputs to the reply's bytes;
* ``return``: the reply's send, until the parent has it;
* ``parent decode``: the bytes to the arrays ``infer`` returns.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from typing import Callable, Deque, Dict, Optional, Sequence, Tuple, Union

__all__ = [
    "ENV",
    "KEPT_CALLS",
    "STAGES",
    "NullObserver",
    "StageRecorder",
    "WorkerStamps",
    "enable",
    "disable",
    "observer",
    "recorder",
    "enabled_in_environment",
]

#: The environment variable that turns stage timing on ("1").
ENV = "NEUROPOD_OPE_STAGES"
STAGES = (
    "parent encode",
    "parent send",
    "wake",
    "worker decode",
    "worker convert",
    "worker call",
    "worker encode",
    "return",
    "parent decode",
)
clock = time.perf_counter_ns
#: Calls a recorder keeps (the oldest go first): about 4 MB of timestamps.
KEPT_CALLS = 10_000


def enabled_in_environment() -> bool:
    return os.environ.get(ENV) == "1"


class NullObserver:
    """Stage timing off: reads no clock, keeps nothing (the default observer of both sides)."""

    __slots__ = ()
    timing = False
    #: ``int()`` is 0: the cheapest call there is (a builtin), on a path that runs twice per call on each side.
    clock = staticmethod(int)

    def add(self, parent: Sequence[int], worker: Sequence[int]) -> None:
        pass

    def reply(self, seen: int, decoded: int, called: int) -> None:
        pass

    def converted(self, nanoseconds: int) -> None:
        pass


NULL = NullObserver()


class WorkerStamps:
    """A worker's observer while its parent times stages: it leaves each call's stamps in the mailbox.

    Args:
        leave: puts the stamps where the parent reads them
            (:meth:`~neuropod.ope.channel.Channel.leave_stamps`).
    """

    __slots__ = ("leave", "convert_ns")
    timing = True

    clock = staticmethod(clock)

    def __init__(self, leave: Callable[[Sequence[int]], None]) -> None:
        self.leave = leave
        self.convert_ns = 0

    def converted(self, nanoseconds: int) -> None:
        """The backend's own numpy-to-framework step took this long (its ``conversion_observer``)."""
        self.convert_ns += nanoseconds

    def reply(self, seen: int, decoded: int, called: int) -> None:
        """The reply is encoded: leave this call's stamps (request seen, decoded, called, encoded, convert)."""
        self.leave((seen, decoded, called, clock(), self.convert_ns))
        self.convert_ns = 0


class StageRecorder:
    """The caller's observer while stage timing is on: the last ``kept`` timed calls and their summary.

    Args:
        kept: how many calls to keep (older ones are dropped).
    """

    clock = staticmethod(clock)
    timing = True

    def __init__(self, kept: int = KEPT_CALLS) -> None:
        self.calls: Deque[Tuple[int, ...]] = collections.deque(maxlen=kept)
        self.recorded = 0  # calls added since the last clear, kept or not

    def add(self, parent: Sequence[int], worker: Sequence[int]) -> None:
        """One call: the parent's 5 timestamps (start, encoded, sent, reply seen, done) and the worker's 5 stamps
        (request seen, decoded, called, encoded, convert nanoseconds); a worker that does not time leaves zeros."""
        self.calls.append(tuple(parent[:5]) + tuple(worker[:5]))
        self.recorded += 1

    def clear(self) -> None:
        self.calls.clear()
        self.recorded = 0

    @staticmethod
    def stages_of(call: Sequence[int]) -> Optional[Dict[str, int]]:
        """One call's stage durations in nanoseconds (None when the worker did not time it)."""
        began, encoded, sent, seen, done, w_seen, w_decoded, w_called, w_encoded, convert = call
        if not w_seen:
            return None
        # A send through the socket may wake the worker before the send returns here: the
        # message was out by the time the worker had it.
        sent = min(sent, w_seen)
        return {
            "parent encode": encoded - began,
            "parent send": sent - encoded,
            "wake": w_seen - sent,
            "worker decode": w_decoded - w_seen,
            "worker convert": convert,
            "worker call": w_called - w_decoded - convert,
            "worker encode": w_encoded - w_called,
            "return": seen - w_encoded,
            "parent decode": done - seen,
        }

    def summary(self) -> Dict[str, float]:
        """Median microseconds of each stage, and of the whole call (``total``), over the calls kept."""
        timed = [stages for stages in map(self.stages_of, self.calls) if stages is not None]
        if not timed:
            return {}
        result = {stage: statistics.median(call[stage] for call in timed) / 1e3 for stage in STAGES}
        result["total"] = statistics.median(call[4] - call[0] for call in self.calls) / 1e3
        return result


#: The recorder the call path writes to; None while stage timing is off.
recorder: Optional[StageRecorder] = StageRecorder() if enabled_in_environment() else None
#: What a caller's call reports its stages to: the recorder, or the null observer while timing is off.
observer: Union[StageRecorder, NullObserver] = recorder if recorder is not None else NULL


def enable() -> StageRecorder:
    """Time every OPE call from now on (and in every worker started from now on); returns the recorder."""
    global recorder, observer
    os.environ[ENV] = "1"
    if recorder is None:
        recorder = StageRecorder()
    observer = recorder
    return recorder


def disable() -> None:
    global recorder, observer
    os.environ.pop(ENV, None)
    recorder = None
    observer = NULL
