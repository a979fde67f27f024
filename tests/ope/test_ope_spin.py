"""Adaptive spinning (neuropod.ope.spin), the channel's sleeping and spinning paths, and the small-call wire path."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
from ope_models import channel_pair, make_identity_model

from neuropod import load_neuropod
from neuropod.errors import ChannelClosed, ChannelTimeout, OptionError, WireFormatError
from neuropod.ope import wire
from neuropod.ope.channel import Channel
from neuropod.ope.spin import (
    BUSY_LOOKS,
    LOAD_CHECK_NS,
    PAYS_AT,
    PROBE_EVERY,
    STRETCH_LIMIT,
    STRETCH_PAYS_AT,
    SpinPolicy,
)
from neuropod.ope.waiting import Waiting

SPIN = 100_000


class Machine:
    """A fake clock and runnable-task count for the policy."""

    def __init__(self, runnable: Optional[int] = 1) -> None:
        self.now = 0
        self.runnable = runnable
        self.reads = 0

    def clock(self) -> int:
        return self.now

    def read(self) -> Optional[int]:
        self.reads += 1
        return self.runnable


def policy(machine: Machine, mode: str = "adaptive", cpus: int = 2, stretch: bool = False) -> SpinPolicy:
    return SpinPolicy(SPIN, mode, stretch=stretch, cpus=cpus, read_runnable=machine.read, clock=machine.clock)


def test_spins_while_spinning_pays_and_probes_after_it_stopped_paying() -> None:
    spin = policy(Machine())
    for _ in range(100):
        assert spin.budget() == SPIN
        spin.won()
    assert spin.paid > 0.99
    waits = 0
    while spin.paid >= PAYS_AT:  # the answers now come after the budget
        assert spin.budget() == SPIN
        spin.lost()
        waits += 1
    assert 5 <= waits <= 20  # a handful of misses, not one, and not hundreds
    budgets = [spin.budget() for _ in range(3 * PROBE_EVERY)]
    assert budgets.count(SPIN) == 3 and budgets[PROBE_EVERY - 1] == SPIN  # one probe per PROBE_EVERY waits
    # Probes that win bring spinning back.
    while spin.paid < PAYS_AT:
        if spin.budget():
            spin.won()
    assert all(spin.budget() == SPIN for _ in range(10))


def test_no_spinning_while_more_tasks_are_runnable_than_cpus() -> None:
    machine = Machine(runnable=2)
    spin = policy(machine, cpus=2)
    assert spin.budget() == SPIN  # this process and its computing peer: each has a core
    machine.runnable = 5
    for _ in range(BUSY_LOOKS - 1):  # a few crowded looks are instants, not a busy machine
        machine.now += LOAD_CHECK_NS
        assert spin.budget() == SPIN
    machine.runnable = 2  # an idle core seen between them starts the count again
    machine.now += LOAD_CHECK_NS
    assert spin.budget() == SPIN
    machine.runnable = 5
    for _ in range(BUSY_LOOKS - 1):
        machine.now += LOAD_CHECK_NS
        assert spin.budget() == SPIN
    machine.now += LOAD_CHECK_NS
    assert spin.budget() == 0 and spin.busy
    reads = machine.reads
    machine.now += LOAD_CHECK_NS - 1
    assert spin.budget() == 0 and machine.reads == reads  # /proc/loadavg is read at most once per period
    machine.runnable = 2
    machine.now += 1
    assert spin.budget() == SPIN and not spin.busy
    machine.runnable = None  # no /proc/loadavg: only the payoff decides
    machine.now += LOAD_CHECK_NS
    assert spin.budget() == SPIN


def test_fixed_mode_and_a_zero_budget_ignore_what_happened() -> None:
    machine = Machine(runnable=99)
    fixed = policy(machine, mode="fixed")
    for _ in range(200):
        assert fixed.budget() == SPIN
        fixed.lost()
    assert machine.reads == 0
    assert SpinPolicy(0, read_runnable=machine.read).budget() == 0


def test_a_stretching_policy_spins_through_calls_a_little_longer_than_its_budget() -> None:
    machine = Machine()
    spin = policy(machine, stretch=True)
    assert spin.budget() == SPIN  # nothing learnt yet
    spin.lost()
    spin.waited(3 * SPIN)  # the answer came after the budget: slept for it
    assert spin.budget() == 6 * SPIN
    for _ in range(50):  # answers at 3x keep coming within the stretched budget
        spin.won()
        spin.waited(3 * SPIN)
    assert spin.budget() == 6 * SPIN and spin.paid > 0.99
    for _ in range(50):  # the calls got short again: back to the plain budget
        spin.waited(SPIN // 10)
    assert spin.budget() == SPIN
    for _ in range(100):  # far longer calls than the limit: not worth spinning through
        spin.waited(2 * STRETCH_LIMIT * SPIN)
    assert spin.budget() == SPIN
    machine.runnable = 9  # a busy machine still stops every spin
    for _ in range(BUSY_LOOKS):
        machine.now += LOAD_CHECK_NS
        spin.budget()
    assert spin.budget() == 0
    # A wait that slept without spinning says nothing of whether stretching pays.
    busy = Machine()
    stretching = policy(busy, stretch=True)
    stretching.waited(3 * SPIN)
    assert stretching.budget() > SPIN
    busy.runnable = 9
    for _ in range(BUSY_LOOKS):
        busy.now += LOAD_CHECK_NS
        stretching.budget()
    assert stretching.budget() == 0
    stretching.waited(8 * SPIN)
    assert stretching.stretch_paid == 1.0
    # The worker's side, and fixed mode, never stretch.
    for other in (policy(Machine()), policy(Machine(), mode="fixed", stretch=True)):
        other.waited(3 * SPIN)
        assert other.budget() == SPIN


def test_stretching_stops_when_waits_spread_widely_around_their_average() -> None:
    spin = policy(Machine(), stretch=True)
    # Mostly quick, now and then far longer than twice the average: stretching wins nothing and loses.
    waits = [SPIN // 5, SPIN // 5, SPIN // 5, 16 * SPIN]
    stretched = []
    for index in range(400):
        budget = spin.budget()
        wait = waits[index % 4]
        if budget:
            spin.won() if wait <= budget else spin.lost()
        spin.waited(wait)
        stretched.append(budget > SPIN)
    assert spin.stretch_paid < STRETCH_PAYS_AT
    # After the first losses, only the probes stretch (one wait in PROBE_EVERY).
    assert sum(stretched[-4 * PROBE_EVERY :]) <= 5


def test_stretching_edges() -> None:
    spin = policy(Machine(), stretch=True)
    spin.waited(5 * SPIN)  # twice 5 is exactly the limit: still stretched
    assert spin.budget() == STRETCH_LIMIT * SPIN
    learnt = policy(Machine(), stretch=True)
    learnt.waited(2 * SPIN)
    learnt.waited(1000 * SPIN)  # one very long call counts as twice the limit, not a thousand times
    assert SPIN < learnt.budget() < STRETCH_LIMIT * SPIN
    # A side that has stopped spinning probes with the stretched budget.
    slow = policy(Machine(), stretch=True)
    slow.waited(3 * SPIN)
    slow.paid = PAYS_AT / 2  # plain spins stopped paying; stretched ones have not been tried
    budgets = [slow.budget() for _ in range(PROBE_EVERY)]
    assert budgets.count(0) == PROBE_EVERY - 1 and max(budgets) == 6 * SPIN
    zero = SpinPolicy(0, stretch=True, read_runnable=lambda: 1)  # spin_us=0 never spins, stretched or not
    zero.waited(3 * SPIN)
    assert zero.budget() == 0 and zero.typical_wait is None


def test_a_parent_learns_how_long_its_calls_wait(tmp_path: Path) -> None:
    identity = make_identity_model(tmp_path, dtype="float32")
    with load_neuropod(identity, use_ope=True) as model:
        for _ in range(20):  # one answer may be there before the wait begins (a wait of 0), not twenty
            model.infer({"x": np.ones(2, np.float32)})
        policy = model.executor.workers[0].spin_policy
        assert policy.stretch_ns == STRETCH_LIMIT * policy.spin_ns
        # At least the round trip, and not the seconds a wrong clock would give.
        assert 0 < policy.typical_wait < 1e9


def test_spin_mode_option_is_checked_and_reaches_the_worker(tmp_path: Path) -> None:
    identity = make_identity_model(tmp_path, dtype="float32")
    with pytest.raises(OptionError, match="spin_mode"):
        load_neuropod(identity, use_ope=True, spin_mode="sometimes")
    with load_neuropod(identity, use_ope=True, spin_mode="fixed") as model:
        assert model.infer({"x": np.ones(2, np.float32)})["x"].tolist() == [1, 1]
        worker = model.executor.workers[0]
        assert not worker.spin_policy.adaptive
        # What the worker reads from its side of the mailbox.
        mirror = Channel(socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)[0], worker.channel.mailbox, side=1)
        assert mirror.peer_spin_mode() == "fixed"


@pytest.fixture()
def pair():
    with channel_pair() as ends:
        yield ends


def message(request_id: int) -> wire.Message:
    return wire.Message(wire.Kind.INFER, request_id, texts=[f"call {request_id}"])


def test_a_sleeping_receiver_gets_the_whole_message_on_the_socket(pair) -> None:
    parent, worker = pair
    got: List[wire.Message] = []
    receiver = threading.Thread(target=lambda: got.extend(worker.receive(0)[0] for _ in range(3)))
    receiver.start()
    for request_id in (1, 2, 3):
        while not struct.unpack_from("=Q", parent.mailbox, 16)[0]:  # until it sleeps
            pass
        parent.send(message(request_id))
        while len(got) < request_id and receiver.is_alive():
            pass
    receiver.join(5)
    assert [m.texts for m in got] == [["call 1"], ["call 2"], ["call 3"]]
    # Socket messages still count in the mailbox, so a spinning receiver stays in step.
    parent.send(message(4))
    assert worker.receive(SPIN)[0].texts == ["call 4"]


def test_a_sleeper_wakes_in_slices_to_check_liveness_times_out_and_sees_a_hang_up(pair) -> None:
    parent, worker = pair
    checks: List[float] = []
    began = time.monotonic()
    with pytest.raises(ChannelTimeout):
        worker.receive(0, timeout=0.05, check_alive=lambda: checks.append(time.monotonic()))
    assert 0.05 <= time.monotonic() - began < 2
    # It woke to check on the peer more than once (how often is the kernel's: SO_RCVTIMEO rounds to its tick).
    assert len(checks) >= 2
    parent.send(message(1))  # nothing was lost: the next receive still gets the next message
    assert worker.receive(0, timeout=5)[0].texts == ["call 1"]
    closer = threading.Timer(0.02, parent.sock.close)
    closer.start()
    with pytest.raises(ChannelClosed):
        worker.receive(0, timeout=5)
    closer.join()


def test_a_spinning_receiver_reads_the_mailbox_and_learns(pair) -> None:
    parent, worker = pair
    spin = SpinPolicy(50_000_000, stretch=True, read_runnable=lambda: 1)
    timer = threading.Timer(0.005, parent.send, args=(message(1),))
    timer.start()
    began = time.perf_counter_ns()
    assert worker.receive(Waiting(spin))[0].texts == ["call 1"]
    took = time.perf_counter_ns() - began
    timer.join()
    assert (spin.spins, spin.wins) == (1, 1)
    assert 0 < spin.typical_wait <= took < 50e6  # how long that wait took (a busy machine starts the timer late)
    short = SpinPolicy(1000, stretch=True, read_runnable=lambda: 1)
    timer = threading.Timer(0.02, parent.send, args=(message(2),))
    timer.start()
    assert worker.receive(Waiting(short))[0].texts == ["call 2"]  # the spin ran out; the sleeper got it
    timer.join()
    assert (short.spins, short.wins) == (1, 0) and short.paid < 1
    assert short.typical_wait == 2 * short.stretch_ns  # the slept wait counts too (20 ms, capped)
    parent.send(message(3))
    assert worker.receive(Waiting(short))[0].texts == ["call 3"]  # already there: a wait of 0
    assert short.typical_wait == 2 * short.stretch_ns * (1 - 1 / 8)


def test_a_spin_longer_than_the_timeout_is_cut_to_it(pair) -> None:
    _, worker = pair
    began = time.monotonic()
    with pytest.raises(ChannelTimeout):
        worker.receive(Waiting(SpinPolicy(10_000_000_000, "fixed")), timeout=0.05)  # a 10 s spin
    assert time.monotonic() - began < 2


def test_small_tensors_take_the_cached_layout_and_anything_else_the_full_path() -> None:
    tensors = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.array(2.5),
        "b": np.array([True, False, True]),
        "i": np.arange(3, dtype=np.int64),
    }
    for request_id in (5, 6):
        data = wire.encode_inline(wire.Kind.INFER, request_id, tensors)
        assert data is not None
        full = wire.decode(data)
        assert full.request_id == request_id and [ref.name for ref in full.tensors] == list(tensors)
        kind, answered, arrays, _ = wire.decode_inline(data)
        assert (kind, answered) == (wire.Kind.INFER, request_id)
        for name, array in tensors.items():
            assert arrays[name].dtype == array.dtype and np.array_equal(arrays[name], array)
            assert arrays[name].flags.writeable
    assert wire.encode_inline(wire.Kind.INFER, 1, {"s": np.array(["text"])}) is None
    assert wire.encode_inline(wire.Kind.INFER, 1, {"big": np.zeros(wire.INLINE_TENSOR_BYTES + 1, np.uint8)}) is None
    assert wire.encode_inline(wire.Kind.INFER, 1, {"strided": np.arange(10)[::2]}) is None
    assert wire.encode_inline(wire.Kind.INFER, 1, {"swapped": np.arange(3, dtype=">f4")}) is None
    assert wire.encode_inline(wire.Kind.INFER, 1, {"empty": np.zeros(0, np.float32)}) is None
    assert wire.encode_inline(wire.Kind.INFER, 1, {"list": [1, 2]}) is None  # type: ignore[dict-item]
    assert wire.decode_inline(wire.encode(wire.Message(wire.Kind.ERROR, 1, texts=["x"]))) is None


def test_a_small_message_with_a_bad_layout_fails_as_the_full_decoder_does() -> None:
    valid = wire.encode_inline(wire.Kind.RESULT, 1, {"weird_name": np.ones(4, np.float32)})
    assert valid is not None
    tensor_end = len(valid) - 16  # then the 16-byte inline area
    data = bytearray(valid)
    struct.pack_into("<Q", data, tensor_end - 16, 1 << 40)  # the tensor's offset, far outside the inline area
    with pytest.raises(WireFormatError, match="outside"):
        wire.decode_inline(bytes(data))
    data = bytearray(valid)
    struct.pack_into("<I", data, tensor_end - 20, 9)  # now it claims a segment: not a small message any more
    assert wire.decode_inline(bytes(data)) is None
    with pytest.raises(WireFormatError):
        wire.decode_inline(bytes(valid[:-1]))  # one byte short


def test_an_unknown_spin_mode_is_refused() -> None:
    with pytest.raises(OptionError, match="spin_mode.*'sometimes'"):
        SpinPolicy(SPIN, "sometimes")


def test_a_core_is_idle_counts_the_cpus_this_process_may_use() -> None:
    # A process confined to one CPU (taskset, a CPU set) compares the runnable count with 1, not the machine's CPUs.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from neuropod.ope.spin import SpinPolicy; print(SpinPolicy(1).cpus)"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr
    assert SpinPolicy(SPIN).cpus == len(os.sched_getaffinity(0))
