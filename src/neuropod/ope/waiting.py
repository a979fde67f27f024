"""How one side of an OPE channel waits for the next message: the one waiting strategy.

A wait has two phases, and this decides both:

* **spin**: busy-poll the mailbox's counter for a budget of nanoseconds
  (yielding the CPU at each look). The budget comes from a
  :class:`~neuropod.ope.spin.SpinPolicy` (it spins while spinning pays and a
  core is idle, and learns from how each wait went) or is a fixed number;
* **sleep**: a blocking receive on the socket. *Where* to sleep is the
  co-location part (:mod:`neuropod.ope.colocate`): a caller whose wait does
  not spin holds its thread on its CPU while it sleeps and leaves that CPU
  in the mailbox (:data:`CALLER`); a worker waits for the next call on the
  CPU its caller sleeps on, without spinning, while the caller does
  (:data:`WORKER`). With neither, each side sleeps where the scheduler puts it.

The channel (:mod:`neuropod.ope.channel`) is handed a :class:`Waiting` with
each receive and provides the mechanism: whether the message is there, taking
it, sleeping on the socket, the meeting word. Every decision is here.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple, Union

from .colocate import current_cpu, held_on
from .layouts import WORD
from .spin import SpinPolicy

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Waiting", "CALLER", "WORKER", "SpinPolicy"]

#: A caller: a wait without spinning sleeps held on this thread's CPU, and tells the peer which.
CALLER = "caller"
#: A worker: wait on the CPU the caller sleeps on while it does (no spinning then).
WORKER = "worker"

_yield = getattr(os, "sched_yield", lambda: None)
_now = time.perf_counter_ns
_read_counter = WORD.unpack_from


class Waiting:
    """One side's way of waiting for its next message (see the module's notes).

    Args:
        spin: a policy that decides each wait's spin budget and learns from
            it, or a fixed number of nanoseconds to spin.
        meet: :data:`CALLER`, :data:`WORKER` or None (sleep wherever).
    """

    __slots__ = ("policy", "spin_ns", "meet")

    def __init__(self, spin: Union[int, SpinPolicy] = 0, meet: Optional[str] = None) -> None:
        self.policy = spin if isinstance(spin, SpinPolicy) else None
        self.spin_ns = 0 if isinstance(spin, SpinPolicy) else int(spin)
        self.meet = meet

    def wait(
        self, channel: Channel, timeout: Optional[float], check_alive: Optional[Callable[[], None]]
    ) -> Tuple[bytes, List[int]]:
        """The next message's bytes and descriptors, waited for on ``channel``."""
        if self.meet == WORKER:
            with held_on(channel.peer_meeting_cpu()) as held:
                if held:  # on the caller's CPU while it sleeps: no spinning, our CPUs back as soon as the call comes
                    return _spin_then_sleep(channel, None, 0, False, timeout, check_alive)
                return _spin_then_sleep(channel, self.policy, self.spin_ns, False, timeout, check_alive)
        return _spin_then_sleep(channel, self.policy, self.spin_ns, self.meet == CALLER, timeout, check_alive)


def _spin_then_sleep(
    channel: Channel,
    policy: Optional[SpinPolicy],
    spin_ns: int,
    meet: bool,
    timeout: Optional[float],
    check_alive: Optional[Callable[[], None]],
) -> Tuple[bytes, List[int]]:
    # The counter is read here, not through Channel.arrived: this runs on every call, on both sides.
    mailbox, seq_at, expected = channel.mailbox, channel.inbox_seq_at, channel.received + 1
    if _read_counter(mailbox, seq_at)[0] >= expected:
        if policy is not None:
            policy.waited(0)
        return channel.take()
    if policy is not None:
        spin_ns = policy.budget()
    began = _now()
    if meet and spin_ns <= 0 and not (policy is not None and policy.machine_busy()):
        cpu = current_cpu()
        with held_on(cpu) as held:
            channel.publish_meeting(cpu + 1 if held and cpu is not None else 0)
            found = channel.sleep(timeout, check_alive)
        if policy is not None:
            policy.waited(_now() - began)
        return found
    if channel.meeting:
        channel.publish_meeting(0)
    if timeout is not None:
        spin_ns = min(spin_ns, int(timeout * 1e9))  # the spin counts against the timeout too
    if spin_ns > 0:
        spin_until = began + spin_ns
        while _now() < spin_until:
            # Yielding hands the CPU to the peer when both share one (a busy
            # or small machine), where a plain spin would only delay the answer.
            _yield()
            if _read_counter(mailbox, seq_at)[0] >= expected:
                if policy is not None:
                    policy.won()
                    policy.waited(_now() - began)
                return channel.take()
        if policy is not None:
            policy.lost()
        if timeout is not None:
            timeout = max(0.0, timeout - (_now() - began) / 1e9)
    found = channel.sleep(timeout, check_alive)
    if policy is not None:
        policy.waited(_now() - began)
    return found
