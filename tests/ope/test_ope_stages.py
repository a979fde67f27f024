"""Per-stage timing of OPE calls (neuropod.ope.stages): off by default, and when on, every stage of every call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from ope_models import make_identity_model, make_tool_model

from conftest import require
from neuropod import load_neuropod
from neuropod.ope import stages


@pytest.fixture()
def recorder() -> Iterator[stages.StageRecorder]:
    assert stages.recorder is None and os.environ.get(stages.ENV) is None  # no test left it on
    try:
        yield stages.enable()
    finally:
        stages.disable()


def check_call(call: tuple) -> dict:
    durations = stages.StageRecorder.stages_of(call)
    assert durations is not None, "the worker left no timestamps"
    assert set(durations) == set(stages.STAGES)
    assert all(value >= 0 for value in durations.values()), durations  # one clock for both processes
    began, done = call[0], call[4]
    assert sum(durations.values()) == done - began  # the stages tile the call, with nothing left over
    return durations


def test_off_by_default_and_the_worker_leaves_no_timestamps(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != stages.ENV}
    code = "import neuropod.ope.stages as s, neuropod.worker; print(s.recorder is None)"
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "True"
    )
    assert stages.recorder is None
    with load_neuropod(make_identity_model(tmp_path, dtype="float32"), use_ope=True) as model:
        model.infer({"x": np.ones(3, np.float32)})
        worker = model.executor.workers[0]
        assert worker.channel.peer_stamps() == (0,) * len(worker.channel.peer_stamps())


def test_every_call_is_timed_in_both_processes_and_the_stages_add_up(tmp_path: Path, recorder) -> None:
    with load_neuropod(make_tool_model(tmp_path), use_ope=True) as model:
        small = {"x": np.arange(3.0), "cmd": np.array([""]), "words": np.array([["a"]])}
        for _ in range(20):
            model.infer(small)
        model.infer({"x": np.zeros(1 << 17), "cmd": np.array([""]), "words": np.array([["a"]])})  # via segments
        busy = model.infer({"x": np.array([0.02]), "cmd": np.array(["busy"]), "words": np.array([["a"]])})
    assert len(recorder.calls) == 22
    for call in recorder.calls:
        check_call(call)
    # The model's own 20 ms land in its stage, not in the hand-overs around it.
    last = check_call(recorder.calls[-1])
    assert last["worker call"] >= 0.02e9 and last["worker call"] > 10 * (last["wake"] + last["return"])
    assert busy["span"][1] - busy["span"][0] >= 0.02
    summary = recorder.summary()
    assert set(summary) == set(stages.STAGES) | {"total"} and summary["total"] > 0
    recorder.clear()
    assert recorder.summary() == {}


def test_a_workers_own_conversion_step_is_its_own_stage(tmp_path: Path, recorder) -> None:
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor):
            return {"out": x + y}

    spec = [{"name": n, "dtype": "float32", "shape": [None]} for n in ("x", "y")]
    path = create_torchscript_neuropod(
        tmp_path / "ts",
        "ts",
        module=torch.jit.script(Addition()),
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": [None]}],
        default_input_tensor_device="CPU",
    )
    with load_neuropod(path, use_ope=True) as model:
        for _ in range(5):
            assert model.infer({"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)})["out"].tolist() == [2, 2]
    durations = [check_call(call) for call in recorder.calls]
    assert len(durations) == 5 and all(d["worker convert"] > 0 for d in durations)


def test_workers_started_before_enabling_do_not_time(tmp_path: Path) -> None:
    with load_neuropod(make_identity_model(tmp_path, dtype="float32"), use_ope=True) as model:
        recorder = stages.enable()
        try:
            model.infer({"x": np.ones(3, np.float32)})
        finally:
            stages.disable()
    assert len(recorder.calls) == 1 and stages.StageRecorder.stages_of(recorder.calls[0]) is None
    assert recorder.summary() == {}


def test_workers_forked_after_enabling_time_though_their_zygote_started_before(tmp_path: Path) -> None:
    import signal
    import time

    with load_neuropod(make_tool_model(tmp_path), use_ope=True) as model:
        executor = model.executor
        zygote, first = executor.zygote.pid, executor.worker_pids[0]
        recorder = stages.enable()
        try:
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while executor.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            executor.restart()
            assert executor.zygote.pid == zygote and executor.worker_pids[0] != first  # forked by the old zygote
            model.infer({"x": np.ones(2), "cmd": np.array([""]), "words": np.array([["a"]])})
        finally:
            stages.disable()
    assert len(recorder.calls) == 1
    check_call(recorder.calls[0])


def test_the_recorder_keeps_only_the_latest_calls() -> None:
    assert stages.StageRecorder().calls.maxlen == stages.KEPT_CALLS
    recorder = stages.StageRecorder(kept=3)
    for began in range(5):
        parent = (began, began + 1, began + 2, began + 8, began + 9)
        recorder.add(parent, (began + 3, began + 4, began + 5, began + 6, 0))
    assert len(recorder.calls) == 3 and recorder.recorded == 5
    assert [call[0] for call in recorder.calls] == [2, 3, 4]  # the oldest went first
    assert recorder.summary()["total"] == 9e-3
    recorder.clear()
    assert recorder.recorded == 0 and recorder.summary() == {}
