"""Round-trip latency of out-of-process execution (OPE) against in-process and plain IPC baselines.

    .venv/bin/python bench/ope.py [--quick] [--spin-us 100] [--cpus 0,1]

Every row times one round trip of a tensor of that size through an identity
model (a Python-code package that returns its input), so no framework cost
hides the transport:

* ``inproc``    — ``load_neuropod(path).infer``: the floor.
* ``ope``       — ``use_ope=True`` with an ordinary numpy input (one copy in;
  the output is a view of that copy, so none back).
* ``ope+alloc`` — the input was made by ``model.allocate`` (no copy at all).
* ``mp.Queue``  — the array pickled through ``multiprocessing.Queue`` to a
  process that puts it back on a second queue.
* ``mp.Pipe``   — the array's raw bytes through a ``multiprocessing.Pipe`` to a
  process that sends them back (no pickle, two copies each way).
* ``memcpy``    — one ``np.copyto`` of that size, for scale.

Then a 1-element addition model (the smallest real call), in-process and OPE
with and without spinning, and ``seal``: a 64 MiB input whose copy into shared
memory overlaps 30 ms of the caller's other work. Last, the cost of isolation
(docs/isolation.md): start-up (``load_neuropod`` until the first answer) and
the 1-element addition's round trip for ``process``, ``sandbox`` (bubblewrap)
and ``container`` (podman, from a root filesystem of the host's ``/usr`` and
this Python, or ``--image``) workers; levels whose tool is missing are skipped.
All cases run in the same process, one after another, so compare within a run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from neuropod import load_neuropod
from neuropod.errors import NeuropodError
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--spin-us", type=float, default=100.0, help="OPE spin before blocking")
    parser.add_argument("--cpus", default="", help="pin the OPE worker to these CPUs, e.g. 1")
    parser.add_argument("--image", default=None, help="OCI image for the container rows (default: a host rootfs)")
    parser.add_argument("--only-isolation", action="store_true", help="run only the isolation rows")
    args = parser.parse_args()
    ope_options: Dict[str, Any] = {"spin_us": args.spin_us}
    if args.cpus:
        ope_options["cpu_affinity"] = [int(c) for c in args.cpus.split(",")]

    add_spec = [{"name": n, "dtype": "float32", "shape": [None]} for n in ("x", "y")]
    add_out = [{"name": "out", "dtype": "float32", "shape": [None]}]
    if args.only_isolation:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"python {sys.version.split()[0]}, numpy {np.__version__}, OPE options {ope_options}")
            isolation_rows(make_package(Path(tmp), "add", ADD_CODE, add_spec, add_out), Path(tmp), ope_options, args)
        return

    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    queue_peer = ctx.Process(target=_queue_echo, args=(inbox, outbox), daemon=True)
    here, there = ctx.Pipe()
    pipe_peer = ctx.Process(target=_pipe_echo, args=(there,), daemon=True)
    queue_peer.start()
    pipe_peer.start()

    with tempfile.TemporaryDirectory() as tmp:
        spec = [{"name": "x", "dtype": "uint8", "shape": [None]}]
        identity = make_package(Path(tmp), "identity", IDENTITY_CODE, spec, spec)
        add = make_package(Path(tmp), "add", ADD_CODE, add_spec, add_out)
        print(f"python {sys.version.split()[0]}, numpy {np.__version__}, OPE options {ope_options}")
        print("round trip of one uint8 tensor through an identity model; microseconds, p50 and p99")
        header = f"{'size':>8} |" + "|".join(
            f"{name:^19}" for name in ("inproc", "ope", "ope+alloc", "mp.Queue", "mp.Pipe", "memcpy")
        )
        print(header)
        print("-" * len(header))
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
                    here.send_bytes(x)
                    np.frombuffer(here.recv_bytes(), np.uint8)

                row = [
                    percentiles(lambda x=x: local.infer({"x": x}), repeats),
                    percentiles(lambda x=x: remote.infer({"x": x}), repeats),
                    percentiles(lambda shared=shared: remote.infer({"x": shared}), repeats),
                    percentiles(queue_trip, repeats),
                    percentiles(pipe_trip, repeats),
                    percentiles(lambda x=x, target=target: np.copyto(target, x), repeats),
                ]
                print(f"{size_name(size):>8} |" + "|".join(fmt(cell) for cell in row))
                del shared

        print()
        print("1-element float32 addition; microseconds, p50 and p99 (added = OPE p50 - in-process p50)")
        one = {"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)}
        with load_neuropod(add) as local:
            base = percentiles(lambda: local.infer(one), 5000 if not args.quick else 1000)
        print(f"{'in-process':>24}: {fmt(base)}")
        for spin in sorted({args.spin_us, 0.0, 200.0}):
            options = dict(ope_options, spin_us=spin)
            with load_neuropod(add, use_ope=True, **options) as remote:
                result = percentiles(lambda remote=remote: remote.infer(one), 5000 if not args.quick else 1000)
            print(f"{f'OPE spin_us={spin:g}':>24}: {fmt(result)}   added {result[0] - base[0]:.1f}")

        print()
        size = 64 << 20
        work_s = 0.03
        print(
            f"seal: {size_name(size)} input, the caller does {work_s * 1e3:.0f} ms of other work (sleep) before infer"
        )
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
                print(
                    f"{name:>24}: {p50 / 1e3:8.2f} ms p50 {p99 / 1e3:8.2f} ms p99 (work alone: {work_s * 1e3:.0f} ms)"
                )
        print()
        isolation_rows(add, Path(tmp), ope_options, args)

    inbox.put(None)
    here.send_bytes(b"")
    queue_peer.join(5)
    pipe_peer.join(5)
    print()
    shared_weights_rows(quick=args.quick)  # bench/ope_shared_weights.py: one copy of the weights for N workers


if __name__ == "__main__":
    main()
