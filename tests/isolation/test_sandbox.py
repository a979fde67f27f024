"""Hostile packages in a bubblewrap sandbox: each attack is tried by real package code and fails.

Every test also calls a bystander model (a plain worker of another package)
after the attack: the caller keeps serving other models throughout. Where a
plain worker lets the same attack through, the test shows that too, so each
assertion can fail.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from neuropod.errors import IsolationError, OptionError, WorkerCrashedError, WorkerTimeoutError
from neuropod.loader import load_neuropod

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ope"))
from hostile import attack, make_hostile_model  # noqa: E402
from ope_models import make_identity_model, make_tool_model  # noqa: E402

from conftest import require_command  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="namespaces are Linux's")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("isolation-packages")
    return {
        "hostile": make_hostile_model(root, package_as_zip=False),
        "tool": make_tool_model(root, package_as_zip=False),
        "identity": make_identity_model(root, dtype="float32", name="identity"),
    }


@pytest.fixture(scope="module")
def bystander(packages: dict) -> Iterator:
    with load_neuropod(packages["tool"], use_ope=True) as model:
        yield model


def still_serving(bystander) -> None:
    x = np.arange(5, dtype=np.float64)
    np.testing.assert_array_equal(bystander.infer({"x": x})["y"], x + 1)


@pytest.fixture(scope="module")
def sandboxed(packages: dict) -> Iterator:
    require_command("bwrap")
    with load_neuropod(packages["hostile"], isolation="sandbox", max_processes=32) as model:
        yield model


def test_same_results_and_shared_memory_as_a_process_worker(packages, bystander):
    require_command("bwrap")
    x = np.linspace(0, 1, 1 << 16, dtype=np.float32)  # 256 KiB: travels in a shared segment, not inline
    with load_neuropod(packages["identity"], isolation="sandbox") as boxed:
        with load_neuropod(packages["identity"], isolation="process") as plain:
            assert type(plain.executor).__name__ == "OutOfProcessExecutor"
            np.testing.assert_array_equal(boxed.infer({"x": x})["x"], plain.infer({"x": x})["x"])
        shared = boxed.allocate("x", x.shape)
        shared[:] = x
        out = boxed.infer({"x": shared})["x"]
        np.testing.assert_array_equal(out, x)
        # The sandboxed worker handed back a view of the caller's own segment: the memory is shared.
        assert np.shares_memory(out, shared)
    still_serving(bystander)


def test_reading_shadow_or_a_file_in_the_callers_home_fails(packages, sandboxed, bystander):
    secret = Path.home() / f".neuropod-test-secret-{secrets.token_hex(4)}"
    secret.write_text("the caller's secret")
    try:
        assert attack(sandboxed, "read", "/etc/shadow").startswith("BLOCKED FileNotFoundError")
        assert attack(sandboxed, "read", secret).startswith("BLOCKED FileNotFoundError")
        with load_neuropod(packages["hostile"], use_ope=True) as plain:  # the attack is real
            assert "the caller's secret" in attack(plain, "read", secret)
    finally:
        secret.unlink()
    still_serving(bystander)


def test_the_callers_working_directory_is_not_visible(sandboxed, bystander, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("private notes")
    monkeypatch.chdir(tmp_path)
    with load_neuropod(sandboxed.package.root, isolation="sandbox") as model:
        assert attack(model, "read", tmp_path / "notes.txt").startswith("BLOCKED FileNotFoundError")
        repo_file = Path(__file__).resolve().parents[2] / "pyproject.toml"  # the neuropod checkout: only src/ is
        assert attack(model, "read", repo_file).startswith("BLOCKED FileNotFoundError")
    still_serving(bystander)


def test_writing_outside_its_temp_dir_fails_and_tmp_is_private(sandboxed, bystander, tmp_path):
    targets = [
        sandboxed.package.root / "planted.py",
        tmp_path / "planted",
        Path.home() / f".neuropod-planted-{secrets.token_hex(4)}",
        Path("/var/tmp") / f"neuropod-planted-{secrets.token_hex(4)}",
    ]
    result = attack(sandboxed, "write", "|".join(map(str, targets)))
    assert result.startswith("BLOCKED PermissionError"), result
    assert not any(target.exists() for target in targets)
    private = f"/tmp/neuropod-private-{secrets.token_hex(4)}"
    assert attack(sandboxed, "tmp", private).startswith("DONE")  # its own /tmp is writable ...
    assert not os.path.exists(private)  # ... and is not the host's
    still_serving(bystander)


def test_a_socket_to_localhost_reaches_nothing(sandboxed, bystander):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    connections: List[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(listener.accept())
            except socket.timeout:
                continue

    watcher = threading.Thread(target=accept)
    watcher.start()
    try:
        result = attack(sandboxed, "connect", listener.getsockname()[1])
    finally:
        stop.set()
        watcher.join()
        listener.close()
    assert result.startswith("BLOCKED ConnectionRefusedError"), result
    assert connections == []
    still_serving(bystander)


def test_the_parent_cannot_be_signalled_or_read_through_proc(sandboxed, bystander):
    received: List[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        assert attack(sandboxed, "signal", os.getpid()).startswith("BLOCKED ProcessLookupError")
        assert attack(sandboxed, "proc", os.getpid()).startswith("BLOCKED FileNotFoundError")
        worker_view = attack(sandboxed, "whoami")
        assert worker_view.startswith("DONE pid 2 ppid 1"), worker_view  # its own PID namespace
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == []
    still_serving(bystander)


def test_a_fork_bomb_stops_at_the_process_limit(sandboxed, bystander):
    result = attack(sandboxed, "fork_bomb", 1000)
    assert result.startswith("BLOCKED OSError: fork failed after"), result
    children = int(result.split("after ")[1].split()[0])
    assert children < 32
    still_serving(bystander)
    assert attack(sandboxed, "whoami").startswith("DONE")  # the model itself is fine afterwards


def test_exhausting_memory_kills_the_worker_naming_the_limit(packages, bystander):
    require_command("bwrap")
    with load_neuropod(packages["hostile"], isolation="sandbox", memory_limit="768MiB") as model:
        assert attack(model, "memory", 1 << 20).startswith("DONE allocated")
        with pytest.raises(WorkerCrashedError, match=r"memory_limit of 768 MiB"):
            attack(model, "memory", 2 << 30)
        still_serving(bystander)
        assert attack(model, "memory", 1 << 20).startswith("DONE allocated")  # a fresh worker took over


def test_another_models_shared_memory_is_out_of_reach(packages, sandboxed, bystander):
    with load_neuropod(packages["identity"], use_ope=True) as other:
        held = other.allocate("x", (1 << 16,))
        held[:] = 7.0
        other_worker = other.executor.workers[0].pid
        for pid in (other_worker, os.getpid()):
            result = attack(sandboxed, "shared_memory", pid)
            assert result.startswith("BLOCKED FileNotFoundError"), result
        listing = attack(sandboxed, "read", "/dev/shm")
        assert listing.startswith("BLOCKED IsADirectoryError")  # it exists, but is its own empty tmpfs
        np.testing.assert_array_equal(other.infer({"x": held})["x"], held)
    still_serving(bystander)


def test_isolation_options_are_checked(packages):
    with pytest.raises(OptionError, match="memory_limit.*isolated workers"):
        load_neuropod(packages["tool"], use_ope=True, memory_limit="1GiB")
    with pytest.raises(OptionError, match="memory_limit"):
        load_neuropod(packages["tool"], isolation="sandbox", memory_limit="lots")
    with pytest.raises(OptionError, match="'container' needs 'image'"):
        load_neuropod(packages["tool"], isolation="container")
    # A mistyped extra path is named at load, not found missing by the model later.
    with pytest.raises(OptionError, match=r"option 'sandbox_paths': no such file or directory: '/no/such/dir'"):
        load_neuropod(packages["tool"], isolation="sandbox", sandbox_paths=["/usr", "/no/such/dir"])
    with pytest.raises(OptionError, match=r"option 'rootfs': expected a root filesystem directory, got '/no/such/"):
        load_neuropod(packages["tool"], isolation="container", rootfs="/no/such/root")
    # use_ope=False insists on this process, which an isolation level cannot honour (None lets it choose).
    with pytest.raises(OptionError, match=r"use_ope=False runs the model in this process, but isolation='sandbox'"):
        load_neuropod(packages["tool"], isolation="sandbox", use_ope=False)
    with pytest.raises(OptionError, match=r"isolation='sandbox' is required by the trust policy"):
        load_neuropod(packages["tool"], trust="code=sandbox", use_ope=False)


def test_a_missing_bubblewrap_is_named(packages, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(IsolationError, match="bubblewrap"):
        load_neuropod(packages["tool"], isolation="sandbox")


def test_open_files_cpus_and_wall_time_per_call_are_limited(packages, bystander):
    require_command("bwrap")
    options = dict(isolation="sandbox", max_open_files=64, cpus=1, timeout=2.0)
    with load_neuropod(packages["hostile"], **options) as model:
        result = attack(model, "open_files", 1000)
        assert result.startswith("BLOCKED OSError: open failed after"), result
        assert int(result.split("after ")[1].split()[0]) < 64
        assert attack(model, "cpus") == "DONE cpus 1 threads 1"
        with pytest.raises(WorkerTimeoutError, match="timeout=2.0s"):
            attack(model, "hang", 60)
        still_serving(bystander)
        assert attack(model, "whoami").startswith("DONE")  # replaced after the kill


def test_gpus_that_do_not_exist_are_named(packages):
    require_command("bwrap")
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU: the sandbox would pass it in")
    with pytest.raises(IsolationError, match=r"option 'gpus': '0' asks for GPUs, but no /dev/nvidia0 exists"):
        load_neuropod(packages["tool"], isolation="sandbox", gpus=0)


def test_a_worker_killed_under_a_memory_limit_names_it(packages, bystander):
    """Native code that aborts when an allocation fails dies by a signal: the crash names the limit too."""
    require_command("bwrap")
    with load_neuropod(packages["tool"], isolation="sandbox", memory_limit="1GiB") as model:
        with pytest.raises(WorkerCrashedError, match=r"killed by signal 9 \(SIGKILL\).*memory_limit is 1 GiB"):
            model.infer({"cmd": np.array(["kill"])})
        np.testing.assert_array_equal(model.infer({"x": np.ones(2)})["y"], [2.0, 2.0])
    still_serving(bystander)


def test_a_worker_that_dies_at_start_under_a_low_limit_names_the_limits(packages):
    require_command("bwrap")
    # Too few descriptors for the interpreter to start: the error says what the worker ran under.
    expected = r"while loading the model; it ran under isolation sandbox .*max_open_files=3"
    with pytest.raises(WorkerCrashedError, match=expected):
        load_neuropod(packages["tool"], isolation="sandbox", max_open_files=3)
