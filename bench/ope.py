"""Round-trip latency of out-of-process execution (OPE) against in-process and plain IPC baselines.

    .venv/bin/python bench/ope.py [--quick] [--stages] [--only-small] [--spin-us 100] [--backends python,onnx]

Every ratio is against a baseline measured in the same run, in batches that
alternate with the case they scale (so other load on the machine hits both):

* **Pipe**: a raw 8-byte ``multiprocessing.Pipe`` round trip to an echo
  process, the price of any hand-over between two processes.
* **Small calls, per backend** (Python code, TorchScript, ONNX, TensorFlow;
  a 1-element float32 addition built with the real packager; and
  TensorFlow again with ``inter_op_threads=1`` in the worker): OPE p50/p99
  with ``spin_mode="adaptive"`` (the default; it also says how many of its
  waits spun), ``"fixed"`` (always spins) and ``spin_us=0``, each timed in
  batches taking turns with the pipe and the in-process model, and what OPE
  adds over in-process as a multiple of the pipe round trip:
  ``x pipe = (OPE p50 - in-process p50) / pipe p50`` (target <= 1.0 while
  spinning, <= 1.5 with ``spin_us=0``) and ``p99 x = (OPE p99 - in-process
  p99) / pipe p50`` (target <= 2.0).
* **Hand-over floor**: the same pipe, against an echo at the other end of an
  OPE control channel (it answers each message with itself: no model, no
  decoding, no encoding), sleeping on one CPU as ``spin_us=0`` does and
  apart: what a sleeping call's two hand-overs cost before any of OPE's
  work, and so what ``spin_us=0``'s 1.5 pipe round trips leave for it.
* ``--stages``: where a call's time goes, per backend and for the first
  backend without spinning (parent encode/send, wake, worker
  decode/convert/call/encode, return, parent decode; see
  ``neuropod.ope.stages``), next to the in-process call.
* **Under load**: one CPU-bound process per core, then the pipe round trip
  and the Python-code addition through OPE with ``spin_mode="adaptive"``
  (default) and ``"fixed"`` (always spin), and the bare channel echo,
  interleaved.
* **Tensor sizes**: one uint8 tensor through an identity model (a
  Python-code package that returns its input), by size: in-process, ``ope``
  (ordinary numpy input: one copy in, the output views that copy),
  ``ope+alloc`` (input from ``model.allocate``: no copy), ``mp.Queue``
  (pickled), ``mp.Pipe`` (raw bytes, two copies each way) and one
  ``memcpy``; then the 64 MiB ratios: ``(ope - ope+alloc) / memcpy``
  (target <= 1.2; timed again in batches that take turns) and
  ``ope+alloc`` at 64 MiB over 8 B (flat: ~1).
* ``seal``: a 64 MiB input whose copy into shared memory overlaps 30 ms of
  the caller's other work; last, the cost of isolation (docs/isolation.md):
  start-up and the addition's round trip for ``process``, ``sandbox``
  (bubblewrap) and ``container`` (podman) workers (missing tools: skipped).
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from neuropod import load_neuropod
from neuropod.errors import ChannelClosed, ChannelTimeout, NeuropodError
from neuropod.ope import wire
from neuropod.ope.channel import MAILBOX_BYTES, Channel
from neuropod.ope.waiting import CALLER, Waiting
from neuropod.packagers import create_python_neuropod
from ope_shared_weights import shared_weights_rows

IDENTITY_CODE = """
def get_model(data_root):
    def identity(**inputs):
        return dict(inputs)

    return identity
"""
ADD_CODE = """
def get_model(data_root):
    def add(x, y):
        return {"out": x + y}

    return add
"""
SIZES = [8, 1024, 64 * 1024, 1 << 20, 16 << 20, 64 << 20]


def make_package(root: Path, name: str, code: str, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> Path:
    code_dir = root / f"{name}_code" / f"{name}_pkg"
    code_dir.mkdir(parents=True)
    (code_dir / "__init__.py").write_text(textwrap.dedent(code))
    return create_python_neuropod(
        root / name,
        name,
        data_paths=[],
        code_path_spec=[{"python_root": str(code_dir.parent), "dirs_to_package": [f"{name}_pkg"]}],
        entrypoint_package=f"{name}_pkg",
        entrypoint="get_model",
        input_spec=inputs,
        output_spec=outputs,
    )


def percentiles(call: Callable[[], object], repeats: int) -> Tuple[float, float]:
    """p50 and p99 of ``call`` in microseconds (after a short warm-up)."""
    for _ in range(min(20, repeats)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6


def _queue_echo(inbox: Any, outbox: Any) -> None:
    while True:
        item = inbox.get()
        if item is None:
            return
        outbox.put(item)


def _pipe_echo(conn: Any) -> None:
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        conn.send_bytes(data)


def repeats_for(size: int, quick: bool) -> int:
    base = 2000 if size <= 64 * 1024 else 200 if size <= 1 << 20 else 20
    return max(5, base // 4) if quick else base


def fmt(pair: Tuple[float, float]) -> str:
    return f"{pair[0]:>9.1f} {pair[1]:>9.1f}"


def size_name(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def container_options(root: Path, image: Any) -> Dict[str, Any]:
    """podman options for the container rows: ``image``, or a rootfs of mount points with the host's /usr bound in."""
    prefix = str(Path(os.path.realpath(sys.executable)).parent.parent)
    binds = ["-v", "/usr:/usr:ro", "-v", f"{prefix}:{prefix}:ro", "-v", f"{sys.prefix}:{sys.prefix}:ro"]
    options: Dict[str, Any] = {"container_args": ["--cgroups=disabled", *binds], "container_python": sys.executable}
    if image:
        return {"image": image}
    rootfs = root / "rootfs"
    for name in ("usr", "tmp", "proc", "dev", "sys", "etc", "run"):
        (rootfs / name).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), rootfs / link)
    return {**options, "rootfs": str(rootfs)}


def isolation_rows(add: Path, root: Path, ope_options: Dict[str, Any], args: argparse.Namespace) -> None:
    print("isolation: start-up (load until the first answer, ms, median of 5) and 1-element addition (us)")
    print(f"{'level':>10} | {'start-up ms':>11} | {'x process':>9} | {'p50 us':>8} | {'p99 us':>8} | {'x process':>9}")
    levels: List[Tuple[str, Dict[str, Any]]] = [("process", {"use_ope": True})]
    if shutil.which("bwrap"):
        levels.append(("sandbox", {"isolation": "sandbox"}))
    if shutil.which("podman") or args.image:
        levels.append(("container", {"isolation": "container", **container_options(root, args.image)}))
    one = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}
    baseline: Tuple[float, float] = (0.0, 0.0)
    for level, options in levels:
        starts = []
        try:
            for _ in range(5):
                begin = time.perf_counter()
                with load_neuropod(add, **ope_options, **options) as model:
                    model.infer(one)
                    starts.append((time.perf_counter() - begin) * 1e3)
            with load_neuropod(add, **ope_options, **options) as model:
                trip = percentiles(lambda model=model: model.infer(one), 5000 if not args.quick else 1000)
        except NeuropodError as exc:
            print(f"{level:>10} | cannot run here: {exc}")
            continue
        start = sorted(starts)[len(starts) // 2]
        if level == "process":
            baseline = (start, trip[0])
        print(
            f"{level:>10} | {start:>11.1f} | {start / baseline[0]:>9.2f} | {trip[0]:>8.1f} | {trip[1]:>8.1f} | "
            f"{trip[0] / baseline[1]:>9.2f}"
        )


ADD_SPEC = [{"name": n, "dtype": "float32", "shape": [None]} for n in ("x", "y")]
ADD_OUT = [{"name": "out", "dtype": "float32", "shape": [None]}]
ONE = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}


def python_addition(root: Path) -> Path:
    return make_package(root, "add", ADD_CODE, ADD_SPEC, ADD_OUT)


def torchscript_addition(root: Path) -> Path:
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x + y}

    return create_torchscript_neuropod(
        root / "add_ts",
        "add_ts",
        module=torch.jit.script(Addition()),
        input_spec=ADD_SPEC,
        output_spec=ADD_OUT,
        default_input_tensor_device="CPU",
        package_as_zip=False,
    )


def onnx_addition(root: Path) -> Path:
    from onnx import TensorProto, helper

    from neuropod.packagers import create_onnx_neuropod

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["out"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return create_onnx_neuropod(
        root / "add_onnx", "add_onnx", model=proto, input_spec=ADD_SPEC, output_spec=ADD_OUT, package_as_zip=False
    )


def tensorflow_addition(root: Path) -> Path:
    import tensorflow as tf

    from neuropod.packagers import create_tensorflow_neuropod

    return create_tensorflow_neuropod(
        root / "add_tf",
        "add_tf",
        model=tf.function(lambda x, y: {"out": x + y}),
        input_spec=ADD_SPEC,
        output_spec=ADD_OUT,
        package_as_zip=False,
    )


#: backend -> (module it needs, package builder)
BACKENDS: Dict[str, Tuple[str, Callable[[Path], Path]]] = {
    "python": ("numpy", python_addition),
    "torchscript": ("torch", torchscript_addition),
    "onnx": ("onnxruntime", onnx_addition),
    "tensorflow": ("tensorflow", tensorflow_addition),
}

#: More small-call rows: (row name, backend, options of its OPE workers only; in-process keeps the defaults).
#: TensorFlow's inter-op pool competes with the spinning caller for the cores (docs/ope.md, "TensorFlow").
EXTRA_ROWS: List[Tuple[str, str, Dict[str, Any]]] = [("tf interop=1", "tensorflow", {"inter_op_threads": 1})]
#: row name -> (package, options of its OPE workers)
Rows = Dict[str, Tuple[Path, Dict[str, Any]]]


def interleaved(calls: Dict[str, Callable[[], object]], rounds: int, batch: int) -> Dict[str, Tuple[float, float]]:
    """p50 and p99 (us) of each call, timed in batches that take turns, so load hits every call alike."""
    for call in calls.values():
        for _ in range(min(50, batch)):
            call()
    samples: Dict[str, List[int]] = {name: [] for name in calls}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, call in calls.items():
            times = samples[name]
            for _ in range(batch):
                began = clock()
                call()
                times.append(clock() - began)
    result = {}
    for name, times in samples.items():
        times.sort()
        result[name] = (times[len(times) // 2] / 1e3, times[min(len(times) - 1, int(len(times) * 0.99))] / 1e3)
    return result


class PipePeer:
    """An echo process at the other end of a ``multiprocessing.Pipe``: the baseline round trip."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.here, there = ctx.Pipe()
        self.process = ctx.Process(target=_pipe_echo, args=(there,), daemon=True)
        self.process.start()
        self.message = b"12345678"

    def trip(self) -> None:
        self.here.send_bytes(self.message)
        self.here.recv_bytes()

    def close(self) -> None:
        self.here.send_bytes(b"")
        self.process.join(5)


CHANNEL_ECHO = """
import mmap, socket, sys
from neuropod.errors import ChannelClosed
from neuropod.ope.channel import MAILBOX_BYTES, Channel
from neuropod.ope.waiting import WORKER, Waiting

channel = Channel(socket.socket(fileno=int(sys.argv[1])), mmap.mmap(int(sys.argv[2]), MAILBOX_BYTES), side=1)
waiting = Waiting(0, WORKER)  # on the caller's CPU while it sleeps there, as a worker waits
while True:
    try:
        data, _ = channel.receive_bytes(waiting)
    except ChannelClosed:
        break
    channel.send_bytes(data)
"""


class ChannelPeer:
    """An echo process at the other end of an OPE control channel: a call's two hand-overs without OPE's work.

    It answers every message with itself at once: no decoding, no model, no encoding.
    """

    def __init__(self) -> None:
        mailbox_fd = os.memfd_create("bench-mailbox")
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.ftruncate(mailbox_fd, MAILBOX_BYTES)
            self.mailbox = mmap.mmap(mailbox_fd, MAILBOX_BYTES)
            command = [sys.executable, "-c", CHANNEL_ECHO, str(there.fileno()), str(mailbox_fd)]
            self.process = subprocess.Popen(command, pass_fds=(there.fileno(), mailbox_fd))
        except BaseException:
            here.close()
            raise
        finally:
            there.close()
            os.close(mailbox_fd)
        self.channel = Channel(here, self.mailbox, side=0)
        self.meeting, self.apart = Waiting(0, CALLER), Waiting(0)
        message = wire.encode_inline(wire.Kind.INFER, 1, ONE)  # a 1-element addition's call, as sent
        assert message is not None
        self.message = message
        try:  # the first answer also says the echo started (it imports neuropod from this interpreter)
            self.channel.send_bytes(self.message)
            self.channel.receive_bytes(0, timeout=60)
        except (ChannelClosed, ChannelTimeout):
            self.close()
            raise RuntimeError(f"the channel echo did not answer (exit status {self.process.poll()})") from None

    def trip(self, meet: bool = True) -> None:
        """One sleeping round trip; ``meet``: both ends wait on this thread's CPU (the spin_us=0 default)."""
        self.channel.send_bytes(self.message)
        self.channel.receive_bytes(self.meeting if meet else self.apart)

    def close(self) -> None:
        self.channel.close()  # the echo sees the hang-up and exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.mailbox.close()


def available_backends(wanted: List[str]) -> List[str]:
    import importlib.util

    return [name for name in wanted if importlib.util.find_spec(BACKENDS[name][0]) is not None]


def small_call_rows(
    rows: Rows, pipe: PipePeer, echo: ChannelPeer, ope_options: Dict[str, Any], args: argparse.Namespace
) -> None:
    rounds, batch = (10, 100) if args.quick else (20, 200)
    variants = {
        "adaptive": {},
        "fixed": {"spin_mode": "fixed"},
        "spin0": {"spin_us": 0},
        "apart": {"spin_us": 0, "colocate": False},
    }
    print("1-element float32 addition per backend, us; pipe = raw 8-byte mp.Pipe round trip, measured alongside")
    print("each OPE variant is timed in batches taking turns with the pipe and the in-process model (its own")
    print("ratios use those); x pipe = (OPE p50 - in-process p50) / pipe p50,")
    print("p99 x = (OPE p99 - in-process p99) / pipe p50; spun = share of the adaptive parent's waits that spun")
    print("(it does not while the machine has no idle core); spin0: spin_us=0, caller and worker waiting on one")
    print("CPU (colocate, the default); apart: spin_us=0, colocate=False (each wakes wherever the kernel puts it)")
    print(
        f"{'backend':>12} | {'pipe':>5} {'inproc':>6} | {'adaptive':>8} {'p99':>6} {'x pipe':>6} {'p99 x':>5}"
        f" {'spun':>5} | {'fixed':>6} {'p99':>6} {'x pipe':>6} {'p99 x':>5} | {'spin0':>6} {'x pipe':>6}"
        f" | {'apart':>6} {'x pipe':>6}"
    )
    added: Dict[str, Dict[str, float]] = {}  # row -> variant -> OPE p50 - in-process p50, us
    own_pipes: Dict[str, List[float]] = {}  # row -> the pipe p50 of each variant's batches, us
    for name, (path, worker_options) in rows.items():
        cells: Dict[str, Tuple[float, float, float, float]] = {}  # variant -> p50, p99, x pipe, p99 x
        trips = own_pipes[name] = []
        bases: List[float] = []
        spun = 0.0
        with load_neuropod(path) as local:
            for variant, extra in variants.items():
                with load_neuropod(path, use_ope=True, **dict(ope_options, **worker_options, **extra)) as remote:
                    policy = remote.executor.workers[0].spin_policy  # type: ignore[attr-defined]
                    result = interleaved(
                        {"pipe": pipe.trip, "inproc": lambda: local.infer(ONE), "ope": lambda: remote.infer(ONE)},
                        rounds,
                        batch,
                    )
                    if variant == "adaptive":
                        spun = min(1.0, policy.spins / (rounds * batch + min(50, batch)))  # with the warm-up
                trip, base, ope = result["pipe"][0], result["inproc"], result["ope"]
                trips.append(trip)
                bases.append(base[0])
                cells[variant] = (ope[0], ope[1], (ope[0] - base[0]) / trip, (ope[1] - base[1]) / trip)
                added.setdefault(name, {})[variant] = ope[0] - base[0]
        a, f, z, w = cells["adaptive"], cells["fixed"], cells["spin0"], cells["apart"]
        print(
            f"{name:>12} | {statistics.median(trips):>5.1f} {statistics.median(bases):>6.1f} | {a[0]:>8.1f}"
            f" {a[1]:>6.1f} {a[2]:>6.2f} {a[3]:>5.2f} {spun:>5.0%} | {f[0]:>6.1f} {f[1]:>6.1f} {f[2]:>6.2f}"
            f" {f[3]:>5.2f} | {z[0]:>6.1f} {z[2]:>6.2f} | {w[0]:>6.1f} {w[2]:>6.2f}"
        )
    print("targets: x pipe <= 1.0 while spinning, p99 x <= 2.0, spin0 x pipe <= 1.5 (pipe, inproc: medians of the 4)")
    print(
        "each variant's own pipe p50, us (adaptive / fixed / spin0 / apart): "
        + ", ".join(f"{name} {' / '.join(f'{trip:.1f}' for trip in trips)}" for name, trips in own_pipes.items())
    )
    floor = interleaved({"pipe": pipe.trip, "meet": echo.trip, "apart": lambda: echo.trip(False)}, rounds, batch)
    floor_pipe, meet, apart = floor["pipe"][0], floor["meet"][0], floor["apart"][0]
    print(
        f"hand-over floor: an echo at the other end of an OPE channel (no model, no decoding), sleeping: {meet:.1f} us"
        f" on one CPU, {apart:.1f} us apart; the pipe alongside {floor_pipe:.1f} us;"
        f" spin0's 1.5 pipe leaves {1.5 * floor_pipe - meet:.1f} us of it"
    )
    one_cpu = one_cpu_pipe_trip(pipe, rounds, batch)
    if one_cpu is None:
        return
    free, fastest = one_cpu
    print(
        f"pipe round trip with both ends held on one CPU: {fastest:.1f} us against {free:.1f} us left to the"
        f" scheduler ({fastest / free:.2f}x): the pipe at its fastest, no idle CPU woken; against it, spin0's 1.5 pipe"
        f" leaves {1.5 * fastest - meet:.1f} us after the floor"
    )
    print(
        "  (that is for OPE's encoding, decoding and bookkeeping on both sides and the model's slow-down on the"
        " caller's CPU)"
    )
    print(
        "x pipe at its fastest, adaptive / spin0: "
        + ", ".join(
            f"{name} {row['adaptive'] / fastest:.2f} / {row['spin0'] / fastest:.2f}" for name, row in added.items()
        )
    )


def one_cpu_pipe_trip(pipe: PipePeer, rounds: int, batch: int) -> Optional[Tuple[float, float]]:
    """p50 of the pipe round trip left to the scheduler, and with this thread and the echo on one CPU."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        return None
    cpu = min(cpus)
    free = interleaved({"pipe": pipe.trip}, rounds, batch)["pipe"][0]
    os.sched_setaffinity(pipe.process.pid, {cpu})  # type: ignore[arg-type]
    os.sched_setaffinity(0, {cpu})
    try:
        held = interleaved({"pipe": pipe.trip}, rounds, batch)["pipe"][0]
    finally:
        os.sched_setaffinity(0, cpus)
        os.sched_setaffinity(pipe.process.pid, cpus)  # type: ignore[arg-type]
    return free, held


def stage_rows(rows: Rows, ope_options: Dict[str, Any], args: argparse.Namespace) -> None:
    from neuropod.ope import stages

    repeats = 1000 if args.quick else 5000
    recorder = stages.enable()
    try:
        print("where a 1-element addition's time goes: median us per stage (see neuropod.ope.stages)")
        columns = ["in-process"] + list(stages.STAGES) + ["total"]
        # The last column: the first backend again, without spinning (every message a wake-up).
        runs = [(name, path, dict(ope_options, **worker_options)) for name, (path, worker_options) in rows.items()]
        first, first_path, _ = runs[0]
        runs.append((f"{first} spin0", first_path, dict(ope_options, spin_us=0)))
        runs.append((f"{first} apart", first_path, dict(ope_options, spin_us=0, colocate=False)))
        print(f"{'stage':>15} | " + " | ".join(f"{name:>12}" for name, _, _ in runs))
        table: Dict[str, List[float]] = {column: [] for column in columns}
        for _, path, options in runs:
            with load_neuropod(path) as local:
                table["in-process"].append(percentiles(lambda local=local: local.infer(ONE), repeats)[0])
            with load_neuropod(path, use_ope=True, **options) as remote:
                for _ in range(200):
                    remote.infer(ONE)
                recorder.clear()
                for _ in range(repeats):
                    remote.infer(ONE)
                summary = recorder.summary()
            for column in columns[1:]:
                table[column].append(summary.get(column, float("nan")))
        for column, values in table.items():
            print(f"{column:>15} | " + " | ".join(f"{value:>12.1f}" for value in values))
        print("in-process: the whole Neuropod.infer in this process; total: the OPE call from Connection.call")
    finally:
        stages.disable()


def load_rows(
    add: Path, pipe: PipePeer, echo: ChannelPeer, ope_options: Dict[str, Any], args: argparse.Namespace
) -> None:
    cpus = os.cpu_count() or 1
    rounds, batch = (10, 50) if args.quick else (20, 100)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        time.sleep(0.5)
        print(f"under load: {cpus} CPU-bound processes (one per core); us, p50 and p99")
        with load_neuropod(add) as local, load_neuropod(add, use_ope=True, **ope_options) as adaptive:
            fixed_options, apart_options = dict(ope_options, spin_mode="fixed"), dict(ope_options, colocate=False)
            with (
                load_neuropod(add, use_ope=True, **fixed_options) as fixed,
                load_neuropod(add, use_ope=True, **apart_options) as apart,
            ):
                result = interleaved(
                    {
                        "pipe": pipe.trip,
                        "inproc": lambda: local.infer(ONE),
                        "adaptive": lambda: adaptive.infer(ONE),
                        "fixed": lambda: fixed.infer(ONE),
                        "adaptive apart": lambda: apart.infer(ONE),
                        "channel": lambda: echo.trip(False),  # what OPE does while the machine is busy
                    },
                    rounds,
                    batch,
                )
                policy = adaptive.executor.workers[0].spin_policy  # type: ignore[attr-defined]
                spins = f"{policy.spins} spins, {policy.wins} won"
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    trip, base = result["pipe"], result["inproc"]
    print(f"{'mp.Pipe round trip':>50}: {fmt(trip)}")
    print(f"{'in-process':>50}: {fmt(base)}")
    for name in ("adaptive", "fixed", "adaptive apart"):
        p50, p99 = result[name]
        # While busy, adaptive does not wait on one CPU either: this row is a control, its gap to adaptive noise.
        label = "OPE spin_mode=" + name.replace(" apart", ", colocate=False (control)")
        print(
            f"{label:>50}: {fmt(result[name])}   call / pipe {p50 / trip[0]:.2f}"
            f" (p99 {p99 / trip[1]:.2f}), added / pipe {(p50 - base[0]) / trip[0]:.2f}"
        )
    print(f"{'':>50}  (the adaptive parent side: {spins})")
    channel = result["channel"]
    print(
        f"{'bare OPE channel echo, sleeping (no model, no work)':>50}: {fmt(channel)}   call / pipe"
        f" {channel[0] / trip[0]:.2f}: a sleeping call's two hand-overs alone"
    )


def size_rows(identity: Path, pipe: PipePeer, ope_options: Dict[str, Any], args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    queue_peer = ctx.Process(target=_queue_echo, args=(inbox, outbox), daemon=True)
    queue_peer.start()
    print("round trip of one uint8 tensor through an identity model; microseconds, p50 and p99")
    header = f"{'size':>8} |" + "|".join(
        f"{name:^19}" for name in ("inproc", "ope", "ope+alloc", "mp.Queue", "mp.Pipe", "memcpy")
    )
    print(header)
    print("-" * len(header))
    p50s: Dict[int, List[float]] = {}
    turns: Dict[str, Tuple[float, float]] = {}
    with load_neuropod(identity) as local, load_neuropod(identity, use_ope=True, **ope_options) as remote:
        for size in SIZES:
            repeats = repeats_for(size, args.quick)
            x = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
            shared = remote.allocate("x", (size,))
            shared[:] = x
            target = np.empty_like(x)

            def queue_trip(x: np.ndarray = x) -> None:
                inbox.put(x)
                outbox.get()

            def pipe_trip(x: np.ndarray = x) -> None:
                pipe.here.send_bytes(x)
                np.frombuffer(pipe.here.recv_bytes(), np.uint8)

            row = [
                percentiles(lambda x=x: local.infer({"x": x}), repeats),
                percentiles(lambda x=x: remote.infer({"x": x}), repeats),
                percentiles(lambda shared=shared: remote.infer({"x": shared}), repeats_for(0, args.quick)),
                percentiles(queue_trip, repeats),
                percentiles(pipe_trip, repeats),
                percentiles(lambda x=x, target=target: np.copyto(target, x), repeats),
            ]
            p50s[size] = [cell[0] for cell in row]
            print(f"{size_name(size):>8} |" + "|".join(fmt(cell) for cell in row))
            if size == SIZES[-1]:
                # The copy's ratio below, again in batches that take turns: memory bandwidth here drifts
                # by a third from minute to minute, more than the gap it measures.
                calls: Dict[str, Callable[[], object]] = {
                    "ope": partial(remote.infer, {"x": x}),
                    "ope+alloc": partial(remote.infer, {"x": shared}),
                    "memcpy": partial(np.copyto, target, x),
                }
                turns = interleaved(calls, 5 if args.quick else 10, 2)
                del calls  # it holds the shared array
            del shared
    inbox.put(None)
    queue_peer.join(5)
    copy = (turns["ope"][0] - turns["ope+alloc"][0]) / turns["memcpy"][0]
    # From the table: taking turns, each ope+alloc call follows a 64 MiB copy that flushed the caches.
    flat = p50s[SIZES[-1]][2] / p50s[SIZES[0]][2]
    print(
        f"{size_name(SIZES[-1])}: (ope - ope+alloc) / memcpy = {copy:.2f}, timed taking turns (target <= 1.2); "
        f"ope+alloc {size_name(SIZES[-1])} / {size_name(SIZES[0])} = {flat:.2f} (flat: ~1)"
    )


def seal_rows(identity: Path, ope_options: Dict[str, Any], args: argparse.Namespace) -> None:
    size = 64 << 20
    work_s = 0.03
    print(f"seal: {size_name(size)} input, the caller does {work_s * 1e3:.0f} ms of other work (sleep) before infer")
    x = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8)
    with load_neuropod(identity, use_ope=True, **ope_options) as remote:

        def plain() -> None:
            time.sleep(work_s)
            remote.infer({"x": x})

        def sealed() -> None:
            handle = remote.seal("x", x)
            time.sleep(work_s)
            remote.infer({"x": handle})

        repeats = 10 if args.quick else 30
        for name, call in (("infer after the work", plain), ("seal, work, infer", sealed)):
            p50, p99 = percentiles(call, repeats)
            print(f"{name:>24}: {p50 / 1e3:8.2f} ms p50 {p99 / 1e3:8.2f} ms p99 (work alone: {work_s * 1e3:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--spin-us", type=float, default=100.0, help="OPE spin before blocking")
    parser.add_argument("--cpus", default="", help="pin the OPE worker to these CPUs, e.g. 1")
    parser.add_argument("--image", default=None, help="OCI image for the container rows (default: a host rootfs)")
    parser.add_argument("--only-isolation", action="store_true", help="run only the isolation rows")
    parser.add_argument("--stages", action="store_true", help="also print the per-stage breakdown per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="backends of the small-call rows")
    parser.add_argument("--only-small", action="store_true", help="only the pipe baseline and the small-call rows")
    args = parser.parse_args()
    ope_options: Dict[str, Any] = {"spin_us": args.spin_us}
    if args.cpus:
        ope_options["cpu_affinity"] = [int(c) for c in args.cpus.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        add = python_addition(root)
        print(f"python {sys.version.split()[0]}, numpy {np.__version__}, OPE options {ope_options}")
        print(f"load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        if args.only_isolation:
            isolation_rows(add, root, ope_options, args)
            return
        spec = [{"name": "x", "dtype": "uint8", "shape": [None]}]
        identity = make_package(root, "identity", IDENTITY_CODE, spec, spec)
        names = available_backends([name for name in args.backends.split(",") if name])
        packages = {name: (add if name == "python" else BACKENDS[name][1](root)) for name in names}
        rows: Rows = {name: (path, {}) for name, path in packages.items()}
        rows.update((label, (packages[backend], extra)) for label, backend, extra in EXTRA_ROWS if backend in packages)
        pipe, echo = PipePeer(), ChannelPeer()
        try:
            print()
            small_call_rows(rows, pipe, echo, ope_options, args)
            if args.stages:
                print()
                stage_rows(rows, ope_options, args)
            if args.only_small:
                return
            print()
            load_rows(add, pipe, echo, ope_options, args)
            print()
            size_rows(identity, pipe, ope_options, args)
        finally:
            try:
                pipe.close()
            finally:
                echo.close()
        print()
        seal_rows(identity, ope_options, args)
        print()
        isolation_rows(add, root, ope_options, args)
    print()
    shared_weights_rows(quick=args.quick)  # bench/ope_shared_weights.py: one copy of the weights for N workers


if __name__ == "__main__":
    main()
