"""Sleeping calls wait on one CPU (neuropod.ope.colocate): the caller's thread and the worker's serving thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import List, Set

import numpy as np
import pytest
from ope_models import channel_pair, make_identity_model, make_tool_model

from neuropod import load_neuropod
from neuropod.errors import ChannelClosed, ChannelTimeout, OptionError, WorkerCrashedError
from neuropod.ope import wire
from neuropod.ope.channel import Channel, decode_checked
from neuropod.ope.colocate import current_cpu, hold_thread_on, restore_thread
from neuropod.ope.spin import BUSY_LOOKS, LOAD_CHECK_NS, SpinPolicy
from neuropod.ope.waiting import CALLER, WORKER, Waiting
from neuropod.packagers import create_python_neuropod

ALL_CPUS = os.sched_getaffinity(0)
# CI's machines have 2 cores; a pin to one CPU is not observable on a machine (or CPU set) of one.
pytestmark = pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs a process allowed on two CPUs or more")

# A model that says which CPUs its calling thread, and a thread it starts, may use.
AFFINITY_CODE = """
import os
import threading

import numpy as np


def get_model(data_root):
    def where(x):
        born = []
        thread = threading.Thread(target=lambda: born.append(sorted(os.sched_getaffinity(0))))
        thread.start()
        thread.join()
        mask = np.zeros(64, np.int64)
        mask[sorted(os.sched_getaffinity(0))] = 1
        mask_of_born = np.zeros(64, np.int64)
        mask_of_born[born[0]] = 1
        return {"caller": mask, "born": mask_of_born, "pid": np.array([os.getpid()], np.int64)}

    return where
"""


def make_affinity_model(root: Path) -> Path:
    code_dir = root / "where_code"
    (code_dir / "where_pkg").mkdir(parents=True)
    (code_dir / "where_pkg" / "__init__.py").write_text(AFFINITY_CODE)
    return create_python_neuropod(
        root / "where",
        "where",
        data_paths=[],
        code_path_spec=[{"python_root": str(code_dir), "dirs_to_package": ["where_pkg"]}],
        entrypoint_package="where_pkg",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [None]}],
        output_spec=[
            {"name": "caller", "dtype": "int64", "shape": [64]},
            {"name": "born", "dtype": "int64", "shape": [64]},
            {"name": "pid", "dtype": "int64", "shape": [1]},
        ],
    )


def as_if_idle(model) -> None:
    """Make the caller's spin policy see an idle machine: a busy one (CI's shared hosts) turns the meeting off."""
    model.executor.workers[0].spin_policy.read_runnable = lambda: 0


def cpus_of(mask: np.ndarray) -> Set[int]:
    return {int(cpu) for cpu in np.flatnonzero(mask)}


def wait_for_affinity(tid: int, wanted: Set[int], seconds: float = 5.0) -> Set[int]:
    """The affinity of thread ``tid`` once it is ``wanted`` (or what it is after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        now = os.sched_getaffinity(tid)
        if now == wanted or time.monotonic() > deadline:
            return now
        time.sleep(0.001)


def test_a_thread_is_held_on_its_cpu_and_given_back_its_cpus() -> None:
    cpu = current_cpu()
    assert cpu in ALL_CPUS
    previous = hold_thread_on(cpu)
    try:
        assert previous == ALL_CPUS
        assert os.sched_getaffinity(0) == {cpu}
        # Per thread: another thread of this process keeps every CPU.
        seen: List[Set[int]] = []
        other = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        other.start()  # (born of a held thread: it inherits the pin, which is why workers unpin before a call)
        other.join()
        assert seen == [{cpu}]
    finally:
        restore_thread(previous)
    assert os.sched_getaffinity(0) == ALL_CPUS
    seen.clear()
    other = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    other.start()
    other.join()
    assert seen == [ALL_CPUS]


def test_a_cpu_the_thread_may_not_use_is_refused_and_a_thread_on_one_cpu_stays() -> None:
    assert hold_thread_on(max(ALL_CPUS) + 1000) is None
    assert os.sched_getaffinity(0) == ALL_CPUS
    only = min(ALL_CPUS)
    os.sched_setaffinity(0, {only})
    try:
        assert hold_thread_on(max(ALL_CPUS)) is None  # a CPU of the machine, but not of this thread
        assert os.sched_getaffinity(0) == {only}
        previous = hold_thread_on(only)
        assert previous == {only}
        restore_thread(previous)
        assert os.sched_getaffinity(0) == {only}
    finally:
        os.sched_setaffinity(0, ALL_CPUS)


@pytest.fixture()
def pair():
    with channel_pair() as ends:
        yield ends


def answer_while_asleep(sleeper: Channel, answerer: Channel, request_id: int, held: List[Set[int]]) -> threading.Thread:
    """Answer ``sleeper`` once it sleeps, noting which CPUs its thread (this one) may use while it sleeps."""
    tid = threading.get_native_id()

    def answer() -> None:
        while not sleeper.mailbox[sleeper._in + 16]:  # the sleeper's sleeping flag
            time.sleep(0.0005)
        held.append(os.sched_getaffinity(tid))
        answerer.send(wire.Message(wire.Kind.RESULT, request_id))

    responder = threading.Thread(target=answer)
    responder.start()
    return responder


def test_a_meeting_sleeper_is_held_on_its_cpu_and_says_which(pair) -> None:
    parent, worker = pair
    held: List[Set[int]] = []
    responder = answer_while_asleep(parent, worker, 1, held)
    assert parent.receive(Waiting(0, CALLER), timeout=10)[0].request_id == 1
    responder.join()
    meeting = worker.peer_meeting_cpu()
    assert meeting in ALL_CPUS and held == [{meeting}]
    assert os.sched_getaffinity(0) == ALL_CPUS  # given back once the answer came
    # An answer already there: no wait, nothing changes.
    worker.send(wire.Message(wire.Kind.RESULT, 2))
    assert parent.receive(Waiting(0, CALLER))[0].request_id == 2
    assert worker.peer_meeting_cpu() == meeting
    # A wait that may spin says it no longer sleeps on one CPU.
    threading.Timer(0.01, worker.send, args=(wire.Message(wire.Kind.RESULT, 3),)).start()
    assert parent.receive(Waiting(1_000_000, CALLER))[0].request_id == 3
    assert worker.peer_meeting_cpu() is None
    # Without meet, a sleeper keeps its CPUs.
    held.clear()
    responder = answer_while_asleep(parent, worker, 4, held)
    assert parent.receive(0, timeout=10)[0].request_id == 4
    responder.join()
    assert held == [ALL_CPUS] and worker.peer_meeting_cpu() is None
    # A meeting sleep that times out gives the CPUs back too.
    with pytest.raises(ChannelTimeout):
        parent.receive(Waiting(0, CALLER), timeout=0.02)
    assert os.sched_getaffinity(0) == ALL_CPUS and worker.peer_meeting_cpu() in ALL_CPUS


def test_the_workers_side_waits_on_the_peers_cpu_and_gets_its_cpus_back(pair) -> None:
    parent, worker = pair
    held: List[Set[int]] = []
    responder = answer_while_asleep(worker, parent, 1, held)  # no meeting yet: waits with its CPUs
    assert decode_checked(*worker.receive_bytes(Waiting(0, WORKER))).request_id == 1
    responder.join()
    assert held == [ALL_CPUS]
    with pytest.raises(ChannelTimeout):
        parent.receive(Waiting(0, CALLER), timeout=0.02)  # a sleeping caller leaves its CPU in the mailbox
    meeting = worker.peer_meeting_cpu()
    assert meeting in ALL_CPUS
    held.clear()
    responder = answer_while_asleep(worker, parent, 2, held)
    assert decode_checked(*worker.receive_bytes(Waiting(0, WORKER))).request_id == 2
    responder.join()
    assert held == [{meeting}] and os.sched_getaffinity(0) == ALL_CPUS
    parent.close()  # the peer has gone: the wait on its CPU ends in ChannelClosed and gives the CPUs back
    with pytest.raises(ChannelClosed):
        worker.receive_bytes(Waiting(0, WORKER))
    assert os.sched_getaffinity(0) == ALL_CPUS


def test_no_meeting_while_the_machine_is_busy(pair) -> None:
    parent, worker = pair
    runnable = [1]
    clock = [0]
    policy = SpinPolicy(0, read_runnable=lambda: runnable[0], clock=lambda: clock[0])
    held: List[Set[int]] = []
    responder = answer_while_asleep(parent, worker, 1, held)
    parent.receive(Waiting(policy, CALLER), timeout=10)
    responder.join()
    meeting = worker.peer_meeting_cpu()
    assert meeting in ALL_CPUS and held == [{meeting}]
    runnable[0] = len(ALL_CPUS) + 1  # a task waits for a CPU at every look from now on
    for _ in range(BUSY_LOOKS):
        clock[0] += LOAD_CHECK_NS
        policy.machine_busy()
    assert policy.busy
    held.clear()
    responder = answer_while_asleep(parent, worker, 2, held)
    parent.receive(Waiting(policy, CALLER), timeout=10)
    responder.join()
    assert held == [ALL_CPUS] and worker.peer_meeting_cpu() is None


def test_the_worker_waits_on_the_callers_cpu_and_runs_the_model_with_its_own(tmp_path: Path) -> None:
    where = make_affinity_model(tmp_path)
    x = {"x": np.ones(1, np.float32)}
    with load_neuropod(where, use_ope=True, spin_us=0) as model:
        as_if_idle(model)
        for _ in range(20):
            out = model.infer(x)
            # The model's thread, and one it starts, have every CPU: the pin lasts only while the worker waits.
            assert cpus_of(out["caller"]) == ALL_CPUS and cpus_of(out["born"]) == ALL_CPUS
            assert os.sched_getaffinity(0) == ALL_CPUS  # the caller's thread too, after the call
        published = model.executor.workers[0].channel.meeting - 1
        assert published in ALL_CPUS
        worker_pid = int(out["pid"][0])
        # Between calls the worker's serving thread waits on the CPU the caller slept on.
        assert wait_for_affinity(worker_pid, {published}) == {published}
    # Off: the worker never leaves its CPUs, whatever the caller does.
    with load_neuropod(where, use_ope=True, spin_us=0, colocate=False) as model:
        for _ in range(5):
            out = model.infer(x)
        assert model.executor.workers[0].channel.meeting == 0
        time.sleep(0.05)
        assert os.sched_getaffinity(int(out["pid"][0])) == ALL_CPUS


def test_a_worker_pinned_with_cpu_affinity_keeps_to_its_cpus(tmp_path: Path) -> None:
    where = make_affinity_model(tmp_path)
    # Pinned to every CPU: the caller's CPU is one of them, so only the worker's own rule keeps it from following.
    with load_neuropod(where, use_ope=True, spin_us=0, cpu_affinity=sorted(ALL_CPUS)) as model:
        as_if_idle(model)
        os.sched_setaffinity(0, {min(ALL_CPUS)})
        try:
            for _ in range(5):
                out = model.infer({"x": np.ones(1, np.float32)})
            assert model.executor.workers[0].channel.meeting == min(ALL_CPUS) + 1  # the caller did sleep on one
        finally:
            os.sched_setaffinity(0, ALL_CPUS)
        assert cpus_of(out["caller"]) == ALL_CPUS
        time.sleep(0.05)
        assert os.sched_getaffinity(int(out["pid"][0])) == ALL_CPUS


def test_a_caller_on_one_cpu_brings_the_worker_there(tmp_path: Path) -> None:
    identity = make_identity_model(tmp_path, dtype="float32")
    target = max(ALL_CPUS)
    with load_neuropod(identity, use_ope=True, spin_us=0) as model:
        as_if_idle(model)
        os.sched_setaffinity(0, {target})
        try:
            for _ in range(5):
                model.infer({"x": np.ones(1, np.float32)})
            assert os.sched_getaffinity(0) == {target}  # the user's own pin is left as it was
        finally:
            os.sched_setaffinity(0, ALL_CPUS)
        worker_pid = model.executor.workers[0].pid
        assert wait_for_affinity(worker_pid, {target}) == {target}


def test_a_worker_that_dies_while_the_caller_sleeps_on_its_cpu_gives_the_caller_its_cpus_back(tmp_path: Path) -> None:
    tool = make_tool_model(tmp_path)
    with load_neuropod(tool, use_ope=True, spin_us=0) as model:
        as_if_idle(model)
        model.infer({"x": np.ones(1)})
        with pytest.raises(WorkerCrashedError):
            model.infer({"x": np.ones(1), "cmd": np.array(["kill"])})
        assert os.sched_getaffinity(0) == ALL_CPUS
        assert model.infer({"x": np.ones(1)})["y"].tolist() == [2.0]  # its replacement answers
        assert os.sched_getaffinity(0) == ALL_CPUS


def test_the_colocate_option_is_checked(tmp_path: Path) -> None:
    identity = make_identity_model(tmp_path, dtype="float32")
    with pytest.raises(OptionError, match="colocate"):
        load_neuropod(identity, use_ope=True, colocate="yes")
