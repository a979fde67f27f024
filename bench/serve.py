"""Throughput and latency of ``neuropod serve`` against MLServer, same model, same client, same run.

Every server serves out = x + y over float32 [4, 64] tensors (neuropod: a
Python package, with its defaults, with ``--pin-cpus`` and with ``--workers 2
--pin-cpus``; MLServer 1.7.1: the equivalent custom ``MLModel`` from
tests/serving/mlserver_adder, with its default settings, with
``parallel_workers: 0`` (its fastest setting here), and with
``parallel_workers: 0`` pinned to one CPU by ``taskset``, as ``--pin-cpus``
pins neuropod). Each runs in its own process group; one client drives them
all (gRPC, and HTTP: binary tensors for neuropod, JSON for MLServer, which
has no binary extension) with N = 1, 4, 16, 64 requests in flight:
tritonclient (``--client tritonclient``, the default: N threads each holding
its own client) or h2load (``--client h2load``: nghttp2's C load generator,
N connections, the same request bytes every time). The server's CPU per
request is the CPU time (user + system) of its whole process group over a
cell's measured window, divided by the requests answered in it; the
client's is the same for the client (this process's threads, or h2load),
which shares the machine.

    python bench/serve.py                      # about 8 minutes (2 rounds x 2 s per cell)
    python bench/serve.py --client h2load      # about 4 minutes; apt-get install nghttp2-client
    python bench/serve.py --duration 1 --concurrency 16 64 --protocols grpc

MLServer runs from the venv made by scripts/mlserver-venv.sh; without it the
MLServer rows are skipped. Every cell runs --rounds times, the servers taking
turns, and keeps the best value of each metric over its rounds (this machine
is noisy; the same rule applies to every server). Prints a table and the
ratios of each neuropod row to MLServer's fastest row of the same protocol
and concurrency (by throughput; its p99 and CPU are that row's too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))
from serving_models import (  # noqa: E402
    grpc_infer_frame,
    make_adder,
    mlserver_available,
    neuropod_cli,
    start_mlserver,
    stop_process,
)

SHAPE = (4, 64)
PROTOCOL_NAMES = {"grpc": "gRPC", "rest": "REST"}
X = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def _grpc_caller(port: int) -> Tuple[Callable[[], None], Callable[[], None]]:
    import tritonclient.grpc as client_module

    client = client_module.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [client_module.InferInput(name, list(SHAPE), "FP32") for name in ("x", "y")]
    for tensor in inputs:
        tensor.set_data_from_numpy(X)

    def call() -> None:
        out = client.infer("adder", inputs).as_numpy("out")
        assert out is not None and out.shape == SHAPE

    return call, client.close


def _http_caller(port: int, binary: bool) -> Tuple[Callable[[], None], Callable[[], None]]:
    import tritonclient.http as client_module

    client = client_module.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
    inputs = [client_module.InferInput(name, list(SHAPE), "FP32") for name in ("x", "y")]
    for tensor in inputs:
        tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [client_module.InferRequestedOutput("out", binary_data=binary)]

    def call() -> None:
        out = client.infer("adder", inputs, outputs=outputs).as_numpy("out")
        assert out is not None and out.shape == SHAPE

    return call, client.close


def _rest_infer_body(binary: bool) -> Tuple[bytes, List[str]]:
    """The REST request of the tritonclient rows (binary tensors or JSON) and its headers."""
    inputs: List[Dict[str, Any]] = [{"name": n, "shape": list(SHAPE), "datatype": "FP32"} for n in "xy"]
    if not binary:
        for tensor in inputs:
            tensor["data"] = X.ravel().tolist()
        return json.dumps({"inputs": inputs}).encode(), ["content-type: application/json"]
    for tensor in inputs:
        tensor["parameters"] = {"binary_data_size": X.nbytes}
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "out", "parameters": {"binary_data": True}}]}).encode()
    return header + X.tobytes() * 2, [
        "content-type: application/octet-stream",
        f"inference-header-content-length: {len(header)}",
    ]


def _check_h2load_request(url: str, body: bytes, headers: List[str], grpc: bool) -> int:
    """Send h2load's request once and check the sum; return the size of the answer's body.

    h2load counts any 2xx or 3xx as a success (and a gRPC error is an HTTP 200), so
    :func:`measure_h2load` checks that every answer was this size. gRPC goes through
    grpcio here: the same message, framed by grpcio instead of taken from ``body``.
    """
    if grpc:
        import grpc as grpc_module

        from neuropod.kserve import proto

        host, path = url.split("//", 1)[1].split("/", 1)
        with grpc_module.insecure_channel(host) as channel:
            answer = channel.unary_unary(f"/{path}")(body[5:], timeout=30)
        out = proto.ModelInferResponse.FromString(answer).raw_output_contents[0]
        total = np.frombuffer(out, np.float32).reshape(SHAPE)
        size = 5 + len(answer)  # on the wire: the flag byte and the length, then the message
    else:
        import urllib.request

        request = urllib.request.Request(url, data=body, headers=dict(h.split(": ", 1) for h in headers))
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
            binary_size = response.headers.get("inference-header-content-length")
        if binary_size is not None:
            total = np.frombuffer(answer[int(binary_size) :], np.float32).reshape(SHAPE)
        else:
            total = np.array(json.loads(answer)["outputs"][0]["data"], np.float32).reshape(SHAPE)
        size = len(answer)
    np.testing.assert_allclose(total, X + X, rtol=1e-6)
    return size


def measure_h2load(
    url: str,
    body: bytes,
    headers: List[str],
    answer_size: int,
    concurrency: int,
    duration: float,
    server_pgid: int,
    grpc: bool,
) -> Dict[str, float]:
    """One cell with h2load: ``concurrency`` connections, one request in flight on each (a closed loop).

    h2load (nghttp2's C load generator) keeps the client's CPU per request low, so the
    server gets most of the machine. It runs a warm-up and then ``duration`` s; the
    requests counted are those its per-request log says started between the two CPU
    readings, and every answer of the run must be ``answer_size`` bytes.
    """
    warm_up = min(0.5, duration / 4)
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "requests.tsv"
        body_file.write_bytes(body)
        command = ["h2load", "-D", f"{(warm_up + duration + 0.1) * 1000:.0f}ms", "-c", str(concurrency), "-m", "1"]
        command += ["-d", str(body_file), f"--log-file={log_file}"] + ([] if grpc else ["--h1"])
        for header in headers:
            command += ["-H", header]
        started = time.perf_counter()
        client = subprocess.Popen(
            [*command, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            time.sleep(max(0.0, started + warm_up - time.perf_counter()))
            window = [time.time()]
            cpu = [group_cpu_s(server_pgid), group_cpu_s(client.pid)]
            time.sleep(max(0.0, started + warm_up + duration - time.perf_counter()))
            window.append(time.time())
            cpu = [group_cpu_s(server_pgid) - cpu[0], group_cpu_s(client.pid) - cpu[1]]
            output, _ = client.communicate(timeout=duration + 60)
        finally:
            if client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", output)
        received = re.search(r"\((\d+)\) data", output)
        if client.returncode != 0 or done is None or received is None or " 0 failed, 0 errored" not in output:
            raise RuntimeError(f"h2load failed ({client.returncode}): {output[-800:]}")
        if int(received.group(1)) < int(done.group(1)) * answer_size:
            raise RuntimeError(
                f"h2load: {done.group(1)} answers of {answer_size} bytes expected, {received.group(1)} bytes "
                f"came: some requests failed ({url})"
            )
        rows = [row.split("\t") for row in log_file.read_text().splitlines()]
        start_us, end_us = window[0] * 1e6, window[1] * 1e6
        latencies = np.array([int(row[2]) for row in rows if start_us <= int(row[0]) < end_us]) / 1e3
    count = len(latencies)
    seconds = window[1] - window[0]
    return {
        "throughput": count / seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if count else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if count else float("nan"),
        "requests": float(count),
        "cpu_us": cpu[0] / count * 1e6 if count else float("nan"),
        "client_cpu_us": cpu[1] / count * 1e6 if count else float("nan"),
    }


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the command name: state, ppid, pgrp, ..., utime [11], stime [12]
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _own_cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: the client threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    make_caller: Callable[[], Tuple[Callable[[], None], Callable[[], None]]],
    concurrency: int,
    duration: float,
    server_pgid: int = 0,
) -> Dict[str, float]:
    """Run ``concurrency`` closed-loop clients for ``duration`` s after a short warm-up.

    With ``server_pgid``, also the server's CPU time per request over the measured window.
    """
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors: List[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)
    window: Dict[str, float] = {}

    def worker(index: int) -> None:
        try:
            call, close = make_caller()  # each thread its own client (tritonclient's HTTP one is per-thread)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        try:
            for _ in range(3):
                call()
            barrier.wait()
            mine = latencies[index]
            while True:
                start = time.perf_counter()
                if start >= window["end"]:
                    break
                call()
                end = time.perf_counter()
                if start >= window["start"]:
                    mine.append(end - start)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    window["start"] = float("inf")
    window["end"] = float("inf")
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a client failed to start: {errors[:1]}") from None
    now = time.perf_counter()
    window["start"] = now + min(0.5, duration / 4)  # warm-up under load is not counted
    window["end"] = window["start"] + duration
    cpu = [0.0, 0.0]
    client_cpu = [0.0, 0.0]
    time.sleep(max(0.0, window["start"] - time.perf_counter()))
    cpu[0] = group_cpu_s(server_pgid) if server_pgid else 0.0
    client_cpu[0] = _own_cpu_s()
    time.sleep(max(0.0, window["end"] - time.perf_counter()))
    cpu[1] = group_cpu_s(server_pgid) if server_pgid else 0.0
    client_cpu[1] = _own_cpu_s()
    for thread in threads:
        thread.join(duration + 60)
    if errors:
        raise RuntimeError(f"{len(errors)} client error(s), first: {errors[0]!r}")
    flat = np.array([x for per in latencies for x in per])
    return {
        "throughput": len(flat) / duration,
        "p50_ms": float(np.percentile(flat, 50) * 1000) if len(flat) else float("nan"),
        "p99_ms": float(np.percentile(flat, 99) * 1000) if len(flat) else float("nan"),
        "requests": float(len(flat)),
        "cpu_us": (cpu[1] - cpu[0]) / len(flat) * 1e6 if server_pgid and len(flat) else float("nan"),
        "client_cpu_us": (client_cpu[1] - client_cpu[0]) / len(flat) * 1e6 if len(flat) else float("nan"),
    }


def start_neuropod(package: Path, *extra: str) -> Tuple[subprocess.Popen[str], int, int]:
    command = neuropod_cli() + ["serve", str(package), "--grpc-port", "0", "--http-port", "0", *extra]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stderr is not None
    record = None
    for line in process.stderr:
        if '"serving"' in line:
            record = json.loads(line)  # the ports are bound; the models load next
        elif '"all models loaded"' in line and record is not None:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep draining the pipe
            return process, int(record["grpc_port"]), int(record["http_port"])
    raise RuntimeError(f"neuropod serve exited with {process.wait()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per cell; the best is kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocols", nargs="+", choices=["grpc", "rest"], default=["grpc", "rest"])
    parser.add_argument(
        "--neuropod",
        nargs="+",
        default=["", "--pin-cpus", "--workers 2 --pin-cpus"],
        metavar="ARGS",
        help="one neuropod row per entry: extra `neuropod serve` arguments ('' for the defaults)",
    )
    parser.add_argument(
        "--client",
        choices=["tritonclient", "h2load"],
        default="tritonclient",
        help="tritonclient: N Python threads, each with its own client; h2load: nghttp2's C load "
        "generator with N connections (apt-get install nghttp2-client)",
    )
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.client == "h2load" and shutil.which("h2load") is None:
        parser.error("h2load not found: install it with apt-get install nghttp2-client")

    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = make_adder(work / "adder")
        # (row name, run one cell: (concurrency, duration) -> metrics)
        targets: List[Tuple[str, Callable[[int, float], Dict[str, float]]]] = []
        processes: List[Any] = []

        def add(label: str, process: Any, grpc_port: int, http_port: int, binary: bool) -> None:
            processes.append(process)
            pgid = process.pid
            if args.client == "h2load":
                grpc_headers = ["content-type: application/grpc", "te: trailers"]
                requests = {
                    "grpc": (f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer",
                             grpc_infer_frame("adder", {"x": X, "y": X}), grpc_headers),
                    "rest": (f"http://127.0.0.1:{http_port}/v2/models/adder/infer", *_rest_infer_body(binary)),
                }  # fmt: skip
                for protocol in args.protocols:
                    url, body, headers = requests[protocol]
                    grpc = protocol == "grpc"
                    size = _check_h2load_request(url, body, headers, grpc=grpc)
                    run = functools.partial(measure_h2load, url, body, headers, size, server_pgid=pgid, grpc=grpc)
                    targets.append((f"{label} {PROTOCOL_NAMES[protocol]}", run))
                return
            callers = {"grpc": lambda: _grpc_caller(grpc_port), "rest": lambda: _http_caller(http_port, binary)}
            for protocol in args.protocols:
                run = functools.partial(measure, callers[protocol], server_pgid=pgid)
                targets.append((f"{label} {PROTOCOL_NAMES[protocol]}", run))

        try:
            for extra in args.neuropod:
                process, grpc_port, http_port = start_neuropod(package, *shlex.split(extra))
                add(f"neuropod {extra}".strip(), process, grpc_port, http_port, binary=True)
            if not args.skip_mlserver and mlserver_available():
                # MLServer's default (a pool of inference processes), its fastest setting here
                # (parallel_workers: 0, inference in the server process), and that pinned to one CPU.
                for label, parallel_workers, cpu in (
                    ("MLServer", None, None),
                    ("MLServer pw0", 0, None),
                    ("MLServer pw0 pinned", 0, 0),
                ):
                    workdir = work / label.replace(" ", "-")
                    workdir.mkdir()
                    ml_process, ml_http, ml_grpc = start_mlserver(workdir, parallel_workers=parallel_workers, cpu=cpu)
                    add(label, ml_process, ml_grpc, ml_http, binary=False)
            elif not args.skip_mlserver:
                print("MLServer venv missing (scripts/mlserver-venv.sh): MLServer rows skipped", file=sys.stderr)
            # Rounds interleave the servers, so a burst of background load hits all; each cell
            # keeps the best of its rounds per metric (highest req/s, lowest p50, p99 and CPU).
            for round_index in range(args.rounds):
                for concurrency in args.concurrency:
                    for name, run_cell in targets:
                        cell = run_cell(concurrency, args.duration)
                        best = results.setdefault(name, {}).setdefault(concurrency, dict(cell))
                        best["throughput"] = max(best["throughput"], cell["throughput"])
                        for key in ("p50_ms", "p99_ms", "cpu_us", "client_cpu_us"):
                            best[key] = min(best[key], cell[key])
                        print(
                            f"  round {round_index + 1} {name:<38} c={concurrency:<3} {cell['throughput']:8.0f} req/s  "
                            f"p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms  "
                            f"cpu {cell['cpu_us']:6.0f} us/req  client {cell['client_cpu_us']:6.0f} us/req  "
                            f"load {os.getloadavg()[0]:.1f}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for process in processes:
                stop_process(process)

    load = os.getloadavg()
    print(
        f"\nadder, float32 {list(SHAPE)} x2, {args.client}, best of {args.rounds} x {args.duration:g} s per cell; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)\n"
    )
    print(f"| {'server':<38} | conc | req/s   | p50 ms | p99 ms | server CPU us/req | client CPU us/req |")
    print(f"|{'-' * 40}|------|---------|--------|--------|-------------------|-------------------|")
    for name, by_concurrency in results.items():
        for concurrency, cell in by_concurrency.items():
            numbers = (
                f"{cell['throughput']:7.0f} | {cell['p50_ms']:6.2f} | {cell['p99_ms']:6.2f} | "
                f"{cell['cpu_us']:17.0f} | {cell['client_cpu_us']:17.0f}"
            )
            print(f"| {name:<38} | {concurrency:>4} | {numbers} |")
    baselines = [name for name in results if name.startswith("MLServer pw0")]
    if baselines:
        print(
            "\nneuropod / MLServer's fastest row (pw0 or pw0 pinned, by throughput) of the same protocol and "
            "concurrency\n(targets at 16 and 64: throughput >= 3, p99 <= 0.5, CPU per request <= 0.33)\n"
        )
        print(f"| {'neuropod row':<38} | conc | MLServer row        | throughput x | p99 x | CPU/req x |")
        print(f"|{'-' * 40}|------|---------------------|--------------|-------|-----------|")
        for name in results:
            if not name.startswith("neuropod"):
                continue
            protocol = name.rsplit(" ", 1)[1]
            for concurrency in args.concurrency:
                rows = [n for n in baselines if n.endswith(protocol)]
                fastest = max(rows, key=lambda n: results[n][concurrency]["throughput"])
                theirs, ours = results[fastest][concurrency], results[name][concurrency]
                speed = ours["throughput"] / theirs["throughput"]
                tail = ours["p99_ms"] / theirs["p99_ms"]
                cpu_ratio = ours["cpu_us"] / theirs["cpu_us"]
                label = fastest[: -len(protocol) - 1]
                print(
                    f"| {name:<38} | {concurrency:>4} | {label:<19} | {speed:12.2f} | {tail:5.2f} | {cpu_ratio:9.2f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
