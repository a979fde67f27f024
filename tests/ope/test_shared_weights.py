"""Issue 16 item 4: ``workers=N`` of one model hold its weights once, not N times.

Memory is the proportional set size (PSS, ``/proc/PID/smaps_rollup``) summed
over every process of the model: a page shared by k processes counts 1/k in
each, so the sum is what the model really costs. Four workers forked from
one zygote must cost at most 1.3x one worker that loaded the model itself,
for a ~200 MB TorchScript model and a Python model holding a ~200 MB numpy
array (both read all of their weights on every call).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ope_models import make_tool_model

from conftest import require, require_command
from neuropod import load_neuropod
from neuropod.errors import WireFormatError, WorkerTimeoutError
from neuropod.ope.zygote import sharing_refusal
from neuropod.packagers import create_python_neuropod

SIDE = 7200  # a SIDE x SIDE float32 matrix: 207 MB
WORKERS = 4
LIMIT = 1.3


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss line in /proc/{pid}/smaps_rollup")


def model_pss(model) -> int:
    """PSS of the model's workers and of the zygote they were forked from."""
    executor = model.executor
    pids = [worker.pid for worker in executor.workers]
    if executor.zygote is not None:
        pids.append(executor.zygote.pid)
    assert None not in pids
    return sum(pss_bytes(pid) for pid in pids)


def serve_once_in_each_worker(model, inputs) -> None:
    executor = model.executor
    for worker in executor.workers:  # every worker, not whichever the executor picks
        outputs = worker.call(inputs, executor._find_lease, None)
        assert outputs["y"].shape == (SIDE,)


def torchscript_model(root: Path) -> Path:
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class MatrixVector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(SIDE, SIDE))

        def forward(self, x):
            return {"y": torch.mv(self.weight, x)}

    return create_torchscript_neuropod(
        neuropod_path=root / "mv_torchscript",
        model_name="mv_torchscript",
        module=torch.jit.script(MatrixVector()),
        input_spec=[{"name": "x", "dtype": "float32", "shape": [SIDE]}],
        output_spec=[{"name": "y", "dtype": "float32", "shape": [SIDE]}],
    )


PYTHON_MODEL = """
import os

import numpy as np


def get_model(data_root):
    # A plain load (private memory, as most models hold their weights): shared only by the fork.
    weight = np.load(os.path.join(data_root, "weight.npy"))

    def run(x):
        return {"y": weight @ x}

    return run
"""


def python_model(root: Path) -> Path:
    weights = root / "weight.npy"
    np.save(weights, np.random.default_rng(0).standard_normal((SIDE, SIDE), dtype=np.float32))
    code = root / "mv_code" / "mv_pkg"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text(textwrap.dedent(PYTHON_MODEL))
    path = create_python_neuropod(
        root / "mv_python",
        "mv_python",
        data_paths=[{"path": str(weights), "packaged_name": "weight.npy"}],
        code_path_spec=[{"python_root": str(root / "mv_code"), "dirs_to_package": ["mv_pkg"]}],
        entrypoint_package="mv_pkg",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [SIDE]}],
        output_spec=[{"name": "y", "dtype": "float32", "shape": [SIDE]}],
    )
    weights.unlink()
    return path


@pytest.mark.parametrize("build", [torchscript_model, python_model], ids=["torchscript", "python"])
def test_four_workers_hold_the_weights_once(build, tmp_path):
    path = build(tmp_path)
    inputs = {"x": np.ones(SIDE, np.float32)}
    with load_neuropod(path, use_ope=True, share_weights=False) as alone:
        assert alone.executor.zygote is None
        serve_once_in_each_worker(alone, inputs)
        one_worker = model_pss(alone)
    assert one_worker > SIDE * SIDE * 4  # the weights are in it: the measurement can see them
    with load_neuropod(path, use_ope=True, workers=WORKERS) as shared:
        assert shared.executor.zygote is not None
        serve_once_in_each_worker(shared, inputs)
        four_workers = model_pss(shared)
    ratio = four_workers / one_worker
    print(f"{build.__name__}: 1 worker {one_worker / 2**20:.0f} MiB, {WORKERS} forked {four_workers / 2**20:.0f} MiB")
    assert ratio <= LIMIT, f"{WORKERS} workers cost {ratio:.2f}x one worker's memory (limit {LIMIT}x)"


# -- the zygote's life ------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tool_model(tmp_path_factory.mktemp("tool"))


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_workers_are_forked_from_the_zygote_and_a_dead_one_is_forked_again(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2) as model:
        executor = model.executor
        zygote = executor.zygote.pid
        assert all(parent_of(pid) == zygote for pid in executor.worker_pids)
        first = executor.worker_pids[0]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while executor.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        executor.restart()
        assert executor.workers[0].last_failure == "killed by signal 9 (SIGKILL)"  # reported by the zygote
        replacement = executor.worker_pids[0]
        assert replacement != first and parent_of(replacement) == zygote
        assert executor.zygote.pid == zygote  # the model was not loaded again
        assert model.infer({"x": np.ones(2)})["y"].tolist() == [2.0, 2.0]


def test_a_dead_zygote_takes_its_workers_and_the_next_call_starts_a_new_one(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2) as model:
        executor = model.executor
        zygote, workers = executor.zygote.pid, executor.worker_pids
        os.kill(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(pid is not None for pid in executor.worker_pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert executor.worker_pids == [None, None]  # their death signal followed the zygote's
        executor.restart()
        assert executor.ready()
        assert executor.zygote.pid not in (None, zygote)
        assert not set(executor.worker_pids) & set(workers)
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


THREAD_MODEL = """
import threading

import numpy as np


def get_model(data_root):
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="model-background", daemon=True).start()

    def run(x):
        return {"y": x + 1}

    return run
"""


def test_a_model_that_starts_threads_while_loading_gets_one_load_per_worker(tmp_path):
    path = python_package(tmp_path, "threaded", THREAD_MODEL)
    with load_neuropod(path, use_ope=True, workers=2) as model:
        executor = model.executor
        assert "model-background" in executor.zygote.refusal
        assert executor.sharing_refusal == executor.zygote.refusal  # the run-time reason, where users look
        assert executor.zygote.pid is None  # stopped: its copy of the weights would be wasted
        assert all(parent_of(pid) == os.getpid() for pid in executor.worker_pids)
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


WARM_UP_MODEL = """
import numpy as np
import torch


def get_model(data_root):
    weight = torch.randn(1500, 1500)
    weight @ weight  # a warm-up call: it starts torch's thread pool in the zygote

    def run(x):
        return {"y": x + 1}

    return run
"""


def test_a_model_that_runs_torch_while_loading_gets_one_load_per_worker(tmp_path):
    # A forked child of a process whose OpenMP pool has started waits forever on its first parallel op.
    require("torch")
    path = python_package(tmp_path, "warm", WARM_UP_MODEL)
    with load_neuropod(path, use_ope=True, workers=2, timeout=60) as model:
        executor = model.executor
        assert "native thread" in executor.zygote.refusal
        assert all(parent_of(pid) == os.getpid() for pid in executor.worker_pids)
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


def python_package(root: Path, name: str, code: str) -> Path:
    folder = root / f"{name}_code" / f"{name}_pkg"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(code))
    spec = [{"name": "x", "dtype": "float64", "shape": [None]}]
    return create_python_neuropod(
        root / name,
        name,
        data_paths=[],
        code_path_spec=[{"python_root": str(root / f"{name}_code"), "dirs_to_package": [f"{name}_pkg"]}],
        entrypoint_package=f"{name}_pkg",
        entrypoint="get_model",
        input_spec=spec,
        output_spec=[{"name": "y", "dtype": "float64", "shape": [None]}],
    )


def test_share_weights_asked_for_where_it_cannot_apply_says_why_once(tool_path, caplog):
    require_command("bwrap")
    with caplog.at_level(logging.WARNING, logger="neuropod.executors.ope"):
        with load_neuropod(tool_path, use_ope=True, isolation="sandbox", workers=2, share_weights=True) as model:
            assert "sandbox" in model.executor.sharing_refusal and model.executor.zygote is None
    warnings = [record.getMessage() for record in caplog.records if "share_weights=True" in record.getMessage()]
    assert len(warnings) == 1 and "sandbox" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neuropod.executors.ope"):
        with load_neuropod(tool_path, use_ope=True, isolation="sandbox"):  # the default: no one asked
            pass
    assert not [record for record in caplog.records if "share_weights" in record.getMessage()]


def test_where_each_worker_loads_its_own_copy():
    assert sharing_refusal(True, "torchscript", "process", None) == ""
    assert sharing_refusal(True, "python", "process", None) == ""
    assert sharing_refusal(None, "python", "process", None) == ""  # the default: where it applies
    assert "share_weights=False" in sharing_refusal(False, "python", "process", None)
    assert "sandbox" in sharing_refusal(True, "python", "sandbox", None)
    assert "native threads" in sharing_refusal(True, "tensorflow", "process", None)
    assert "GPU" in sharing_refusal(True, "torchscript", "process", 0)


def test_calls_from_threads_spread_over_forked_workers(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2) as model:
        pids = set()
        barrier = threading.Barrier(2)

        def busy() -> None:
            barrier.wait()
            pids.add(int(model.infer({"x": np.array([0.3]), "cmd": np.array(["busy"])})["pid"][0]))

        threads = [threading.Thread(target=busy) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert pids == set(model.executor.worker_pids)


SLOW_MODEL = """
import time


def get_model(data_root):
    time.sleep(30)
"""


def test_a_zygote_slower_than_start_timeout_is_killed_and_leaves_nothing(tmp_path):
    path = python_package(tmp_path, "slow", SLOW_MODEL)
    before = children()
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match="start_timeout=0.5"):
        load_neuropod(path, use_ope=True, workers=2, start_timeout=0.5)
    assert time.monotonic() - started < 10
    assert children() <= before


def children() -> set:
    found = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found.update(int(pid) for pid in listing.read().split())
    return found


PARENT_SCRIPT = """
import sys, time
sys.path[:0] = [{src!r}]
from neuropod import load_neuropod
model = load_neuropod({path!r}, use_ope=True, workers=2)
print(model.executor.zygote.pid, *model.executor.worker_pids, flush=True)
time.sleep(60)
"""


def test_the_zygote_and_its_workers_die_with_the_parent(tool_path):
    src = str(Path(__file__).resolve().parents[2] / "src")
    script = PARENT_SCRIPT.format(src=src, path=str(tool_path))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in (parent.stdout.readline() if parent.stdout else "").split()]
        assert len(pids) == 3
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
        time.sleep(0.02)
    assert all(gone(pid) for pid in pids)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_zygote_messages_are_checked():
    from neuropod.ope import zygote

    assert zygote.decode(zygote.encode(zygote.Kind.EXITED, 3, -9)) == (zygote.Kind.EXITED, 3, -9, "")
    assert zygote.decode(zygote.encode(zygote.Kind.FORK, 1, text="0,1"))[3] == "0,1"
    for bad in (b"", b"NPZG", b"XXXX" + bytes(20), zygote.HEADER.pack(b"NPZG", 99, 0, 0)):
        with pytest.raises(WireFormatError):
            zygote.decode(bad)


def test_a_stopped_zygote_does_not_hold_a_timed_out_call_past_its_timeout(tool_path):
    # The kill goes through the worker's pidfd, not through the zygote: a stopped zygote is not killed for it.
    with load_neuropod(tool_path, use_ope=True, timeout=2) as model:
        executor = model.executor
        zygote, worker = executor.zygote.pid, executor.worker_pids[0]
        os.kill(zygote, signal.SIGSTOP)
        os.kill(worker, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(WorkerTimeoutError):
                model.infer({"x": np.ones(1)})
            assert time.monotonic() - started < 10  # the timeout and the kill, not the zygote's reaping
            assert gone(worker)  # a zombie the stopped zygote cannot reap
            assert not gone(zygote)
        finally:
            os.kill(zygote, signal.SIGCONT)
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0
        assert executor.zygote.pid == zygote  # forked again by the same zygote: no reload


LATE_THREAD_MODEL = """
import signal
import socket
import threading


def get_model(data_root):
    # SIGUSR1 starts a thread in whichever process gets it: in the zygote, after it forked workers.
    def start_thread(signum, frame):
        threading.Thread(target=threading.Event().wait, name="late-thread", daemon=True).start()

    signal.signal(signal.SIGUSR1, start_thread)

    def run(x):
        return {"y": x + 1}

    return run
"""


def test_a_refusal_after_earlier_forks_leaves_the_forked_workers_serving(tmp_path):
    path = python_package(tmp_path, "late", LATE_THREAD_MODEL)
    with load_neuropod(path, use_ope=True, workers=2) as model:
        executor = model.executor
        zygote, (first, second) = executor.zygote.pid, executor.worker_pids
        os.kill(zygote, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{zygote}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(first, signal.SIGKILL)
        while executor.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        executor.restart()  # the zygote refuses this fork: the replacement loads the model itself
        assert "late-thread" in executor.sharing_refusal
        replacement = executor.worker_pids[0]
        assert parent_of(replacement) == os.getpid()
        assert executor.worker_pids[1] == second and parent_of(second) == zygote  # not killed by the refusal
        assert executor.zygote.pid == zygote
        for worker in executor.workers:
            assert worker.call({"x": np.ones(1)}, None, None)["y"][0] == 2.0
        # Once its last worker is gone, the zygote goes too (and the replacement loads itself as well).
        os.kill(second, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not gone(zygote) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone(zygote)
        executor.restart()
        assert parent_of(executor.worker_pids[1]) == os.getpid()


def test_a_closed_zygote_forks_nothing(tool_path):
    from neuropod.errors import ModelClosedError

    model = load_neuropod(tool_path, use_ope=True)
    zygote = model.executor.zygote
    model.close()
    assert zygote.pid is None
    with pytest.raises(ModelClosedError, match="tool"):
        zygote.fork(0, 0, ())
    assert zygote.pid is None  # no new zygote started


def test_a_child_reaped_by_someone_else_is_reported_with_an_unknown_status():
    from neuropod.ope import zygote

    child = os.fork()
    if child == 0:
        os._exit(3)
    os.waitpid(child, 0)  # reaped here, behind the zygote's back
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        children = {5: child}
        zygote._reap(children, ours)
        assert children == {}
        assert zygote.decode(theirs.recv(zygote.MAX_MESSAGE_BYTES)) == (
            zygote.Kind.EXITED,
            5,
            zygote.UNKNOWN_STATUS,
            "",
        )


REAPING_MODEL = """
import os
import signal


def get_model(data_root):
    # SIGUSR2 makes whichever process gets it reap any child of its own: in the zygote, a worker.
    signal.signal(signal.SIGUSR2, lambda signum, frame: os.waitpid(-1, 0))

    def run(x):
        return {"y": x + 1}

    return run
"""


def test_a_worker_the_zygote_could_not_reap_is_reported_with_an_unknown_status(tmp_path):
    path = python_package(tmp_path, "reaping", REAPING_MODEL)
    with load_neuropod(path, use_ope=True) as model:
        executor = model.executor
        zygote, worker = executor.zygote.pid, executor.worker_pids[0]
        os.kill(zygote, signal.SIGUSR2)  # the model's handler now waits for a child to exit
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while executor.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        executor.restart()
        # The parent reads a zombie's status through its pidfd unless the zygote reaped it first; which of
        # the two wakes first after the kill is the scheduler's choice. Either answer is the truth; what
        # must never come is "exited with code 0" (what a status reaped by someone else used to read as).
        assert executor.workers[0].last_failure in ("exit status unknown", "killed by signal 9 (SIGKILL)")
        assert executor.zygote.pid == zygote
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0
