"""Container workers through podman, and the ``launcher`` command prefix.

No image registry is reachable from these machines, so the container runs
from a root filesystem directory (``rootfs=``) holding only mount points,
with the host's ``/usr`` and this Python bound read-only into it; podman,
crun, the fd passing (``--preserve-fds``) and the worker are all real. The
engine arguments these VMs need (``--cgroups=disabled``) are explained in
docs/isolation.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuropod.errors import WorkerCrashedError, WorkerTimeoutError
from neuropod.loader import load_neuropod

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ope"))
from hostile import attack, make_hostile_model  # noqa: E402
from ope_models import make_identity_model  # noqa: E402

from conftest import missing, require_command  # noqa: E402

PYTHON_PREFIX = str(Path(os.path.realpath(sys.executable)).parent.parent)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rootfs")
    for name in ("usr", "tmp", "proc", "dev", "sys", "etc", "run"):
        (root / name).mkdir()
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), root / link)
    return root


def engine_args() -> list:
    return ["--cgroups=disabled", "-v", "/usr:/usr:ro", "-v", f"{PYTHON_PREFIX}:{PYTHON_PREFIX}:ro"] + (
        ["-v", f"{sys.prefix}:{sys.prefix}:ro"] if sys.prefix != PYTHON_PREFIX else []
    )


@pytest.fixture(scope="module")
def podman(rootfs: Path) -> str:
    engine = require_command("podman")
    probe = subprocess.run(
        [
            engine,
            "run",
            "--rm",
            *engine_args(),
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=256:256",
            "--rootfs",
            str(rootfs),
            sys.executable,
            "-c",
            "print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0 or "ok" not in probe.stdout:
        missing(f"podman cannot run a container here: {probe.stderr.strip()[-300:]}")
    return engine


def test_a_container_worker_gives_the_same_results_over_shared_memory(podman, rootfs, tmp_path):
    package = make_identity_model(tmp_path, dtype="float32")
    options = dict(rootfs=str(rootfs), container_args=engine_args(), container_python=sys.executable)
    x = np.linspace(0, 1, 1 << 16, dtype=np.float32)
    with load_neuropod(package, isolation="container", **options) as model:
        np.testing.assert_array_equal(model.infer({"x": x})["x"], x)
        shared = model.allocate("x", x.shape)
        shared[:] = x
        out = model.infer({"x": shared})["x"]
        assert np.shares_memory(out, shared)  # the container mapped the caller's segment
        worker = model.executor.workers[0]
        assert worker.python_version  # it said HELLO from inside the container


def test_a_container_worker_has_no_network_and_no_host_files(podman, rootfs, tmp_path):
    package = make_hostile_model(tmp_path)
    options = dict(rootfs=str(rootfs), container_args=engine_args(), container_python=sys.executable)
    with load_neuropod(package, isolation="container", **options) as model:
        assert attack(model, "read", "/etc/shadow").startswith("BLOCKED FileNotFoundError")
        assert attack(model, "connect", 22).startswith("BLOCKED")
        assert attack(model, "whoami").startswith("DONE pid 1 ppid 0")


def test_a_launcher_prefix_runs_the_worker(tmp_path):
    """``launcher``: any command that runs the worker command as pid 1 of a PID namespace, fds 3 and 4 inherited."""
    unshare = require_command("unshare")
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root (or a user namespace) here")
    package = make_hostile_model(tmp_path)
    launcher = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc"]
    with load_neuropod(package, isolation="container", launcher=launcher, container_python=sys.executable) as model:
        assert attack(model, "whoami").startswith("DONE pid 1 ppid 0")
        assert attack(model, "proc", os.getpid()).startswith("BLOCKED FileNotFoundError")


def test_a_container_worker_from_an_image(podman, rootfs, tmp_path):
    """``image=``: an image imported from the mount-point rootfs (no registry here), the host's /usr bound in."""
    image = f"localhost/neuropod-test-rootfs:{os.getpid()}"
    archive = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
    subprocess.run([podman, "import", str(archive), image], check=True, capture_output=True, timeout=120)
    try:
        package = make_identity_model(tmp_path, dtype="float32")
        options = dict(image=image, container_args=engine_args(), container_python=sys.executable)
        with load_neuropod(package, isolation="container", **options) as model:
            x = np.arange(10, dtype=np.float32)
            np.testing.assert_array_equal(model.infer({"x": x})["x"], x)
    finally:
        subprocess.run([podman, "rmi", "-f", image], capture_output=True, timeout=120)


def test_a_container_worker_is_held_to_its_limits(podman, rootfs, tmp_path):
    package = make_hostile_model(tmp_path)
    options = dict(rootfs=str(rootfs), container_args=engine_args(), container_python=sys.executable)
    limits = dict(memory_limit="768MiB", max_processes=32, timeout=3.0, cpus=1)
    with load_neuropod(package, isolation="container", **options, **limits) as model:
        assert attack(model, "cpus") == "DONE cpus 1 threads 1"
        result = attack(model, "fork_bomb", 100)
        assert result.startswith("BLOCKED OSError: fork failed after"), result
        with pytest.raises(WorkerCrashedError, match="memory_limit of 768 MiB"):
            attack(model, "memory", 2 << 30)
        with pytest.raises(WorkerTimeoutError):
            attack(model, "hang", 60)
        assert attack(model, "whoami").startswith("DONE pid 1")  # replaced each time
