"""Issue 25, findings 1 and 2: one supervisor per model owns its workers' health.

A worker killed while idle (the OOM killer picks idle, large processes) must not
fail the next call, whatever kind of worker it is; a zygote that is stopped must
not be killed with its workers, nor cost a reload.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from ope_models import make_tool_model

from conftest import require_command
from neuropod import load_neuropod
from neuropod.errors import WorkerTimeoutError


@pytest.fixture(scope="module")
def tool_path(tmp_path_factory: pytest.TempPathFactory):
    return make_tool_model(tmp_path_factory.mktemp("tool"), package_as_zip=False)


def _pids(model) -> set:
    return {pid for pid in model.executor.worker_pids if pid is not None}


def _children(pid: int) -> list:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as text:
            children += [int(child) for child in text.read().split()]
    return children


def _model_process(pid: int) -> int:
    """The process that runs the model: the worker itself, or, in a sandbox, the worker inside bubblewrap.

    (The OOM killer picks the process with the memory, not the sandbox around it.)
    """
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().split(b"\0")
    if b"neuropod.worker" in argv and not os.path.basename(argv[0]).startswith(b"bwrap"):
        return pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in _children(pid):
            try:
                return _model_process(child)
            except (OSError, LookupError):
                continue
        time.sleep(0.01)
    raise LookupError(f"no worker under pid {pid}")


@pytest.mark.parametrize(
    "options",
    [
        {"share_weights": None},  # forked from a zygote
        {"share_weights": False},  # each worker loads the model
        {"isolation": "sandbox"},  # each worker in a bubblewrap sandbox
    ],
    ids=["forked", "loaded", "sandbox"],
)
def test_every_worker_killed_between_calls_then_the_next_call_succeeds(tool_path, options):
    if options.get("isolation") == "sandbox":
        require_command("bwrap")
    else:
        options = dict(options, use_ope=True)
    with load_neuropod(tool_path, workers=2, **options) as model:
        for round in range(3):
            for _ in range(4):
                assert model.infer({"x": np.array([1.0])})["y"][0] == 2.0
            # The last round's replacements may still be starting (on a busy machine): kill both once they run.
            deadline = time.monotonic() + 60
            while not model.executor.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            killed = _pids(model)
            assert len(killed) == 2
            for pid in killed:
                os.kill(_model_process(pid), signal.SIGKILL)
            # At once, with nothing waited for: the call meets the dead workers or their replacements.
            for value in (1.0, 2.0, 3.0, 4.0):
                assert model.infer({"x": np.array([value])})["y"][0] == value + 1, round
            assert not killed & _pids(model)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_a_stopped_zygote_costs_neither_the_healthy_workers_nor_a_reload(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2, timeout=0.5, start_timeout=10) as model:
        executor = model.executor
        zygote = executor.zygote.pid
        assert zygote is not None
        for _ in range(4):
            model.infer({"x": np.ones(1)})
        before = _pids(model)
        os.kill(zygote, signal.SIGSTOP)
        try:
            # A hung call times out; its worker is killed without the zygote's help.
            with pytest.raises(WorkerTimeoutError):
                model.infer({"x": np.ones(1), "cmd": np.array(["hang"])})
            # A worker killed from outside while the zygote cannot reap it.
            survivor = executor.worker_pids[1] if executor.worker_pids[1] in before else executor.worker_pids[0]
            assert survivor in before
            # The other worker keeps serving while the zygote is stopped.
            for _ in range(4):
                assert model.infer({"x": np.array([5.0])})["y"][0] == 6.0
            assert survivor in _pids(model)
            assert _state(zygote) == "T"  # still stopped, and not killed
            time.sleep(0.5)  # longer than a worker's kill report ever waited before the zygote was killed
            assert _state(zygote) == "T"
        finally:
            os.kill(zygote, signal.SIGCONT)
        executor.restart()  # the replacement is forked once the zygote runs again
        assert executor.ready()
        assert executor.zygote.pid == zygote  # no reload: the same zygote
        assert survivor in _pids(model)
        for value in (1.0, 2.0, 3.0):
            assert model.infer({"x": np.array([value])})["y"][0] == value + 1


def test_a_worker_killed_while_its_zygote_is_stopped_is_reported_with_its_signal(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2) as model:
        executor = model.executor
        zygote = executor.zygote.pid
        os.kill(zygote, signal.SIGSTOP)
        try:
            pid = executor.worker_pids[0]
            os.kill(pid, signal.SIGKILL)
            for value in (1.0, 2.0, 3.0):  # the other worker serves, the dead one is never handed out
                assert model.infer({"x": np.array([value])})["y"][0] == value + 1
            deadline = time.monotonic() + 10
            while executor.workers[0].last_failure is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert executor.workers[0].last_failure == "killed by signal 9 (SIGKILL)"
            assert _state(zygote) == "T"
        finally:
            os.kill(zygote, signal.SIGCONT)
        executor.restart()
        assert executor.ready() and executor.zygote.pid == zygote
        assert pid not in executor.worker_pids
