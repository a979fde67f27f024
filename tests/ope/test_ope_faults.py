"""OPE faults, with real processes killed for real: crashes, hangs, orphans, leaks, full shm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ope_models import fd_targets, make_tool_model

from neuropod import load_neuropod
from neuropod.errors import (
    InferenceError,
    InputValidationError,
    OutputValidationError,
    SharedMemoryError,
    WorkerCrashedError,
    WorkerError,
    WorkerTimeoutError,
)
from neuropod.ope.client import remote_error

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS_OPE = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def tool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tool_model(tmp_path_factory.mktemp("tool"))


def command(cmd: str, x: float = 1.0):
    return {"x": np.array([x]), "cmd": np.array([cmd])}


def pid_of(model) -> int:
    return int(model.infer({"x": np.ones(1)})["pid"][0])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    "cmd, returncode",
    [("exit", 7), ("segv", -signal.SIGSEGV), ("kill", -signal.SIGKILL)],
)
def test_worker_death_fails_the_call_and_the_next_call_gets_a_fresh_worker(tool_path, cmd, returncode):
    with load_neuropod(tool_path, use_ope=True) as model:
        first_pid = pid_of(model)
        started = time.monotonic()
        with pytest.raises(WorkerCrashedError, match=f"pid {first_pid}") as info:
            model.infer(command(cmd))
        assert time.monotonic() - started < 1.0
        assert info.value.returncode == returncode
        assert isinstance(info.value, InferenceError)
        assert gone(first_pid)
        out = model.infer({"x": np.array([41.0])})
        assert out["y"][0] == 42.0
        assert int(out["pid"][0]) != first_pid


def test_kill_from_outside_during_a_call(tool_path):
    with load_neuropod(tool_path, use_ope=True) as model:
        pid = pid_of(model)
        timer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
        timer.start()
        started = time.monotonic()
        with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
            model.infer(command("hang"))
        assert time.monotonic() - started < 1.2  # 0.2 s before the kill, then under a second
        assert info.value.returncode == -signal.SIGKILL
        assert pid_of(model) != pid


def test_restart_policy_never_keeps_the_model_failed(tool_path):
    with load_neuropod(tool_path, use_ope=True, restart_policy="never") as model:
        with pytest.raises(WorkerCrashedError):
            model.infer(command("exit"))
        with pytest.raises(WorkerCrashedError, match="restart_policy='never'"):
            model.infer({"x": np.ones(1)})


def wait_until(condition, within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_supervisor_replaces_a_worker_that_died_idle_and_restart_waits_for_it(tool_path):
    with load_neuropod(tool_path, use_ope=True, workers=2) as model:
        executor = model.executor
        assert executor.ready()
        pid = executor.worker_pids[0]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), within=5.0)
        executor.restart()  # the supervisor may be replacing it already: restart() waits for that too
        assert executor.ready()
        assert pid not in executor.worker_pids and None not in executor.worker_pids
        assert executor.workers[0].last_failure == "killed by signal 9 (SIGKILL)"
        assert model.infer({"x": np.array([1.0])})["y"][0] == 2.0

        # Nobody calls restart(): the supervisor replaces a dead idle worker by itself.
        pid = executor.worker_pids[1]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: executor.ready() and pid not in executor.worker_pids, within=10.0)

        # A worker that dies during a call fails that call alone, and is replaced once the call gave it back.
        with pytest.raises(WorkerCrashedError, match="during the call"):
            model.infer(command("exit"))
        executor.restart()
        assert executor.ready()
        executor.restart()  # nothing to do: harmless
        assert executor.ready()
    assert not executor.ready()  # closed


def test_restart_policy_never_keeps_a_dead_worker_not_ready(tool_path):
    with load_neuropod(tool_path, use_ope=True, restart_policy="never") as model:
        executor = model.executor
        (pid,) = executor.worker_pids
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not executor.ready(), within=5.0)
        executor.restart()
        assert not executor.ready() and executor.worker_pids == [None]
        with pytest.raises(WorkerCrashedError):
            model.infer({"x": np.ones(1)})
        assert not executor.ready()


def test_model_exception_comes_back_with_type_message_and_traceback(tool_path):
    with load_neuropod(tool_path, use_ope=True) as remote, load_neuropod(tool_path) as local:
        with pytest.raises(InferenceError) as local_info:
            local.infer(command("raise"))
        with pytest.raises(InferenceError) as remote_info:
            remote.infer(command("raise"))
        assert type(remote_info.value) is type(local_info.value)
        assert str(remote_info.value) == str(local_info.value)
        trace = remote_info.value.remote_traceback  # type: ignore[attr-defined]
        assert "KeyError" in trace and "boom from the model" in trace and "tool_pkg" in trace
        assert "traceback in the worker" in str(remote_info.value.__cause__)
        assert remote.infer({"x": np.ones(1)})["y"][0] == 2.0  # the worker survived


def test_foreign_exceptions_become_worker_errors():
    error = remote_error(["ZeroDivisionError", "division by zero", "Traceback ...\nZeroDivisionError", "builtins"], "w")
    assert isinstance(error, WorkerError) and isinstance(error, InferenceError)
    assert error.remote_type == "ZeroDivisionError"
    assert "division by zero" in str(error) and "ZeroDivisionError" in error.remote_traceback
    # A neuropod name from a foreign module is not trusted to be ours.
    assert isinstance(remote_error(["PackageError", "x", "", "evil"], "w"), WorkerError)


def test_timeout_kills_a_hung_worker_and_replaces_it(tool_path):
    with load_neuropod(tool_path, use_ope=True, timeout=0.5) as model:
        pid = pid_of(model)
        started = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match="timeout=0.5"):
            model.infer(command("hang"))
        assert 0.4 < time.monotonic() - started < 1.5
        assert gone(pid)
        assert pid_of(model) != pid


def test_worker_exits_when_its_parent_dies(tool_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = [{SRC!r}]
        from neuropod import load_neuropod
        model = load_neuropod({str(tool_path)!r}, use_ope=True, workers=2)
        print(" ".join(str(pid) for pid in model.executor.worker_pids), flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(not gone(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
        time.sleep(0.02)
    assert all(gone(pid) for pid in pids)


def _shm_names():
    # Only ours: other programs on the machine may come and go in /dev/shm meanwhile.
    return {name for name in os.listdir("/dev/shm") if name.startswith("neuropod-")}


def test_no_shared_memory_or_descriptor_outlives_100_killed_workers(tool_path):
    shm_before = _shm_names()
    fds_before = len(os.listdir("/proc/self/fd"))
    x = np.ones(50_000)  # big enough for real segments both ways
    crashes = []

    def kill_many(count):
        with load_neuropod(tool_path, use_ope=True) as model:
            for _ in range(count):
                kept = model.infer({"x": x})  # outputs still viewing the worker's memory when it dies
                try:
                    model.infer(command("kill"))
                except WorkerCrashedError:
                    crashes.append(1)
                assert kept["y"][0] == 2.0  # arrays from a dead worker stay valid
                del kept

    threads = [threading.Thread(target=kill_many, args=(50,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(crashes) == 100
    assert _shm_names() == shm_before
    # Waited for, not read once: a thread left by an earlier test of this process may hold a descriptor for a
    # moment; one of these models' would stay (and is named).
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds_before, fd_targets()


RLIMIT_SCRIPT = """
import json, resource, signal, sys
sys.path[:0] = [{src!r}, {tests!r}]
import numpy as np
from neuropod import load_neuropod
from neuropod.errors import SharedMemoryError
# A file-size limit makes posix_fallocate fail like a full tmpfs would (EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
result = {{}}
with load_neuropod({path!r}, use_ope=True) as model:
    try:
        model.infer({{"x": np.ones(1 << 20)}})
    except SharedMemoryError as exc:
        result["error"] = str(exc)
    result["small"] = model.infer({{"x": np.ones(4)}})["y"].tolist()
    # The first input fills a segment, the second cannot get one: the first goes back
    # to the pool unannounced, and the calls that reuse it must still work.
    medium = np.ones(10_000)
    try:
        model.infer({{"x": medium, "words": np.array([["w" * 1000] * 2000])}})
    except SharedMemoryError as exc:
        result["second_input_error"] = str(exc)
    result["after"] = [float(model.infer({{"x": medium}})["y"].sum()) for _ in range(3)]
print(json.dumps(result))
"""


def test_shared_memory_that_cannot_be_reserved_is_an_error_not_a_bus_error(tool_path):
    script = RLIMIT_SCRIPT.format(src=SRC, tests=TESTS_OPE, path=str(tool_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cannot reserve" in result["error"] and "shm_dir" in result["error"]
    assert result["small"] == [2.0] * 4
    assert "cannot reserve" in result["second_input_error"]
    assert result["after"] == [20_000.0] * 3


def test_a_small_tmpfs_as_shm_dir_gives_a_clear_error(tool_path, tmp_path):
    mount_point = tmp_path / "tiny_shm"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with load_neuropod(tool_path, use_ope=True, shm_dir=str(mount_point)) as model:
            with pytest.raises(SharedMemoryError, match=str(mount_point)):
                model.infer({"x": np.ones(1 << 20)})  # 8 MiB into a 1 MiB tmpfs
            assert model.infer({"x": np.ones(4)})["y"].tolist() == [2.0] * 4
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_workers_outlive_the_thread_that_loaded_the_model(tool_path):
    # PR_SET_PDEATHSIG fires when the *thread* that forked a child exits: workers
    # are forked from a long-lived thread so a short-lived loader thread is harmless.
    loaded = []
    loader = threading.Thread(target=lambda: loaded.append(load_neuropod(tool_path, use_ope=True)))
    loader.start()
    loader.join()
    with loaded[0] as model:
        pid = model.executor.worker_pids[0]
        time.sleep(0.2)
        assert pid is not None and not gone(pid)
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


def test_an_input_that_fails_to_encode_does_not_poison_the_segments_it_used(tool_path):
    # x fills a segment before words fails to encode; that segment goes back to the
    # pool, and the next call that reuses it must still announce it to the worker.
    big = np.ones(50_000)
    with load_neuropod(tool_path, use_ope=True) as model:
        with pytest.raises(InputValidationError, match="'words'.*UTF-8"):
            model.infer({"x": big, "words": np.array([["a\udc80"]])})
        for _ in range(3):
            assert model.infer({"x": big})["y"][0] == 2.0
        assert model.infer({"x": big, "words": np.array([["ok"]])})["shout"].tolist() == [["OK"]]


def test_an_output_not_in_the_spec_fails_as_in_process_and_poisons_nothing(tool_path):
    big = np.ones(50_000)  # y and same fill segments before dbg fails to cross
    with load_neuropod(tool_path) as model:
        with pytest.raises(OutputValidationError) as in_process:
            model.infer(command("extra", 1.0))
    assert "'dbg' is not in the spec" in str(in_process.value)
    with load_neuropod(tool_path, use_ope=True) as model:
        for _ in range(2):
            with pytest.raises(OutputValidationError) as out_of_process:
                model.infer({"x": big, "cmd": np.array(["extra"])})
            assert str(out_of_process.value) == str(in_process.value)
        pid = pid_of(model)
        for _ in range(3):
            assert model.infer({"x": big})["y"][0] == 2.0
        assert pid_of(model) == pid  # the worker was never replaced


def _live_workers():
    """Our OPE worker processes that have not exited: children, and children of our zygotes."""
    workers = {}  # pid -> parent pid
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[-1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if state != "Z" and "neuropod.worker" in argv:
            workers[int(entry)] = ppid
    ours = {pid for pid, ppid in workers.items() if ppid == os.getpid()}
    return sorted(pid for pid, ppid in workers.items() if ppid == os.getpid() or ppid in ours)


def test_closing_during_a_call_leaves_no_worker_behind(tool_path):
    model = load_neuropod(tool_path, use_ope=True)
    pid = pid_of(model)
    others = set(_live_workers()) - {pid}  # workers of models other tests may still hold
    assert pid in _live_workers()
    failures = []

    def hang():
        try:
            model.infer(command("hang"))
        except Exception as exc:
            failures.append(exc)

    caller = threading.Thread(target=hang)
    caller.start()
    time.sleep(0.3)  # let the call reach the worker
    model.executor.close(grace=0.5)  # type: ignore[call-arg]
    caller.join(10)
    assert not caller.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], WorkerCrashedError)
    assert "closed during the call" in str(failures[0])
    assert gone(pid)
    assert set(_live_workers()) <= others  # no replacement was started


@pytest.mark.parametrize("size", [1, 20_000])  # answers inline, and in the worker's segments
def test_a_call_interrupted_by_ctrl_c_leaves_the_worker_in_step(tool_path, size):
    with load_neuropod(tool_path, use_ope=True) as model:
        pid = pid_of(model)
        x = np.full(size, 0.3)  # busy for 0.3 s
        interrupter = threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGINT))
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            model.infer({"x": x, "cmd": np.array(["busy"])})
        interrupter.join()
        # The abandoned call's answer is dropped, not taken for the next call's.
        for value in (1.0, 2.0):
            out = model.infer({"x": np.full(size, value)})
            assert out["y"].tolist() == [value + 1] * size
        assert int(out["pid"][0]) == pid  # the same worker: nothing was killed
