"""Throughput and latency of ``neuropod serve`` against MLServer and Triton, same model, same client, same run.

Every server serves out = x + y over float32 [4, 64] tensors. neuropod: a
Python package, with its defaults, ``--pin-cpus``, ``--workers 2
--pin-cpus``, and out of process: ``--use-ope``, ``--use-ope --workers 2
--pin-cpus`` (a server process per CPU, each with its worker) and ``--use-ope
--max-batch-size 256 --max-queue-delay-ms 0`` (one worker round trip per
batch). MLServer 1.7.1: the equivalent custom ``MLModel`` from
tests/serving/mlserver_adder, with its default settings, with
``parallel_workers: 0`` (its fastest setting here), and with
``parallel_workers: 0`` pinned to one CPU by ``taskset``, as ``--pin-cpus``
pins neuropod. NVIDIA Triton Inference Server 2.51 (the ``tritonserver`` of
the nvidia-pytriton 0.7.0 wheel): the adder as a Python-backend ``model.py``,
which Triton runs in a stub process as ``--use-ope`` runs ours in a worker,
with Triton's defaults and with its dynamic batcher. Each runs in its own
process group; one client drives them all (gRPC, and HTTP: binary tensors
for neuropod and Triton, JSON for MLServer, which has no binary extension)
with N = 1, 4, 16, 64 requests in flight: tritonclient (``--client
tritonclient``, the default: N threads each holding its own client) or
h2load (``--client h2load``: nghttp2's C load generator, N connections, the
same request bytes every time). Every answer's sum is checked (h2load: once
per server, then every answer's size). The server's CPU per request is the
CPU time (user + system) of its whole process group (a Triton stub or an
OPE worker included) over a cell's measured window, divided by the
requests answered in it; the client's is the same for the client (this
process's threads, or h2load), which shares the machine.

    python bench/serve.py                      # about 12 minutes (2 rounds x 2 s per cell)
    python bench/serve.py --client h2load      # about 6 minutes; apt-get install nghttp2-client
    python bench/serve.py --client h2load --protocols grpc --concurrency 1 16 64 --rounds 3 --duration 3 \
        --skip-mlserver                        # issue 30's runs, about 5 minutes

MLServer runs from the venv made by scripts/mlserver-venv.sh, Triton from the
one made by scripts/triton-venv.sh; without them their rows are skipped.
Every cell runs --rounds times, the servers taking turns, and keeps the best
value of each metric over its rounds (this machine is noisy; the same rule
applies to every server). Prints a table, the ratios of each neuropod row to
MLServer's fastest row of the same protocol and concurrency (by throughput;
its p99 and CPU are that row's too), and to Triton's (its dynamic batcher's
row for a batched neuropod row).
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
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "serving"))
from serving_models import (  # noqa: E402
    free_port,
    grpc_infer_frame,
    make_adder,
    mlserver_available,
    neuropod_cli,
    start_mlserver,
    stop_process,
)

SHAPE = (4, 64)
#: The neuropod rows: extra ``neuropod serve`` arguments of each.
NEUROPOD_ROWS = (
    "",
    "--pin-cpus",
    "--workers 2 --pin-cpus",
    "--use-ope",
    "--use-ope --workers 2 --pin-cpus",
    "--use-ope --max-batch-size 256 --max-queue-delay-ms 0",
)
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
    """``neuropod serve`` with ``extra`` arguments; leading ``NAME=VALUE`` ones set its environment.

    ``PYTHONPATH=/elsewhere/src`` serves from another source tree (a before/after row).
    """
    env = dict(os.environ)
    arguments = list(extra)
    while arguments and re.match(r"^[A-Z_][A-Z0-9_]*=", arguments[0]):
        name, value = arguments.pop(0).split("=", 1)
        env[name] = value
    command = neuropod_cli() + ["serve", str(package), "--grpc-port", "0", "--http-port", "0", *arguments]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    assert process.stderr is not None
    record = None
    for line in process.stderr:
        if '"serving"' in line:
            record = json.loads(line)  # the ports are bound; the models load next
        elif '"all models loaded"' in line and record is not None:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep draining the pipe
            return process, int(record["grpc_port"]), int(record["http_port"])
    raise RuntimeError(f"neuropod serve exited with {process.wait()}")


# -- NVIDIA Triton Inference Server 2.51 (from the nvidia-pytriton wheel; scripts/triton-venv.sh) ----------

TRITON_VENV = Path(os.environ.get("NEUROPOD_TRITON_VENV", REPO / ".cache" / "triton-venv"))
TRITON_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = pb_utils.get_input_tensor_by_name(request, "y").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("out", x + y)]))
        return responses
"""
# The adder's spec ([batch, None] float32, x + y -> out) in Triton's words; no instance_group:
# Triton's default for a CPU model, one stub process.
TRITON_CONFIG = """\
name: "adder"
backend: "python"
max_batch_size: 0
input [
  { name: "x", data_type: TYPE_FP32, dims: [ -1, -1 ] },
  { name: "y", data_type: TYPE_FP32, dims: [ -1, -1 ] }
]
output [ { name: "out", data_type: TYPE_FP32, dims: [ -1, -1 ] } ]
"""
# With Triton's dynamic batcher: the first dimension is the batch (up to 256 rows, as the batched
# neuropod row), and the stub's execute() gets every request queued meanwhile in one call.
TRITON_BATCHING_CONFIG = """\
name: "adder"
backend: "python"
max_batch_size: 256
input [
  { name: "x", data_type: TYPE_FP32, dims: [ -1 ] },
  { name: "y", data_type: TYPE_FP32, dims: [ -1 ] }
]
output [ { name: "out", data_type: TYPE_FP32, dims: [ -1 ] } ]
dynamic_batching { }
"""


def _triton_paths() -> Dict[str, Path]:
    """Where the wheel put the server, its Python backend and the stub for the venv's Python."""
    lib = next((TRITON_VENV / "lib").glob("python3.*"), TRITON_VENV / "lib" / "python3")
    site = lib / "site-packages"
    root = site / "pytriton" / "tritonserver"
    return {
        "site": site,
        "server": root / "bin" / "tritonserver",
        "backend": root / "backends" / "python",
        "stub": root / "python_backend_stubs" / lib.name[len("python") :] / "triton_python_backend_stub",
        "libs": site / "nvidia_pytriton.libs",
    }


def triton_available() -> bool:
    return all(path.exists() for path in _triton_paths().values())


def start_triton(
    workdir: Path, batching: bool = False, timeout_s: float = 90.0
) -> Tuple[subprocess.Popen[bytes], int, int]:
    """Start tritonserver on a repository holding the adder as a Python-backend model; (process, grpc, http port).

    Set up as pytriton sets it up, without pytriton: the Python backend is copied next to
    the stub built for the venv's Python version; the stub runs the venv's interpreter
    (its libpython, its site-packages with numpy < 2) and finds the wheel's bundled libraries.
    """
    paths = _triton_paths()
    backends = workdir / "backends"
    shutil.copytree(paths["backend"], backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(paths["stub"], backends / "python" / "triton_python_backend_stub")
    model = workdir / "repository" / "adder"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(TRITON_MODEL)
    (model / "config.pbtxt").write_text(TRITON_BATCHING_CONFIG if batching else TRITON_CONFIG)
    base = Path(
        subprocess.run(
            [str(TRITON_VENV / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(base / "lib"), str(paths["libs"])] + [p for p in [os.environ.get("LD_LIBRARY_PATH", "")] if p]
    )
    env["PYTHONPATH"] = str(paths["site"])
    env["PATH"] = f"{TRITON_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    grpc_port, http_port = free_port(), free_port()
    command = [
        str(paths["server"]),
        f"--model-repository={model.parent}",
        f"--backend-directory={backends}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--allow-metrics=false",
    ]  # fmt: skip
    log = open(workdir / "triton.log", "wb")  # noqa: SIM115 - closed with the process by the caller's stop
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{http_port}/v2/models/adder/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return process, grpc_port, http_port
        except OSError:
            pass
        time.sleep(0.25)
    stop_process(process)
    raise RuntimeError(f"tritonserver did not become ready: {(workdir / 'triton.log').read_text()[-2000:]}")


def print_ratios(
    results: Dict[str, Dict[int, Dict[str, float]]],
    concurrencies: List[int],
    baselines: List[str],
    what: str,
    targets: str,
    pair: Callable[[str, str], bool] = lambda ours, theirs: True,
) -> None:
    """Each neuropod row over the fastest of ``baselines`` (by throughput) of its protocol and concurrency.

    ``pair(our row, their row)`` says which baselines a row is compared with.
    """
    if not baselines:
        return
    print(f"\nneuropod / {what} of the same protocol and concurrency\n({targets})\n")
    print(f"| {'neuropod row':<38} | conc | baseline row        | throughput x | p50 x | p99 x | CPU/req x |")
    print(f"|{'-' * 40}|------|---------------------|--------------|-------|-------|-----------|")
    for name in results:
        if not name.startswith("neuropod"):
            continue
        protocol = name.rsplit(" ", 1)[1]
        rows = [n for n in baselines if n.endswith(protocol) and pair(name, n)]
        if not rows:
            continue
        for concurrency in concurrencies:
            fastest = max(rows, key=lambda n: results[n][concurrency]["throughput"])
            theirs, ours = results[fastest][concurrency], results[name][concurrency]
            speed, median, tail, cpu_ratio = (
                ours[key] / theirs[key] if theirs[key] else float("nan")
                for key in ("throughput", "p50_ms", "p99_ms", "cpu_us")
            )
            label = fastest[: -len(protocol) - 1]
            print(
                f"| {name:<38} | {concurrency:>4} | {label:<19} | {speed:12.2f} | {median:5.2f} | {tail:5.2f} "
                f"| {cpu_ratio:9.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per cell; the best is kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocols", nargs="+", choices=["grpc", "rest"], default=["grpc", "rest"])
    parser.add_argument(
        "--neuropod",
        action="append",
        metavar="ARGS",
        help="one neuropod row per use, written --neuropod='ARGS': extra `neuropod serve` arguments ('' for the "
        "defaults; leading NAME=VALUE words set its environment, PYTHONPATH=OTHER/src serves another source "
        f"tree); default: {' | '.join(repr(a) for a in NEUROPOD_ROWS)}",
    )
    parser.add_argument(
        "--client",
        choices=["tritonclient", "h2load"],
        default="tritonclient",
        help="tritonclient: N Python threads, each with its own client; h2load: nghttp2's C load "
        "generator with N connections (apt-get install nghttp2-client)",
    )
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--skip-triton", action="store_true")
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
            for extra in args.neuropod or NEUROPOD_ROWS:
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
            if not args.skip_triton and triton_available():
                for label, batching in (("Triton", False), ("Triton batching", True)):
                    workdir = work / label.replace(" ", "-")
                    workdir.mkdir()
                    triton_process, triton_grpc, triton_http = start_triton(workdir, batching)
                    add(label, triton_process, triton_grpc, triton_http, binary=True)
            elif not args.skip_triton:
                print("Triton venv missing (scripts/triton-venv.sh): Triton rows skipped", file=sys.stderr)
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
    print_ratios(
        results,
        args.concurrency,
        [name for name in results if name.startswith("MLServer pw0")],
        "MLServer's fastest row (pw0 or pw0 pinned, by throughput)",
        "targets at 16 and 64: throughput >= 3, p99 <= 0.5, CPU per request <= 0.33",
    )
    print_ratios(
        results,
        args.concurrency,
        [name for name in results if name.startswith("Triton")],
        "Triton's Python backend (a batched neuropod row: Triton with its dynamic batcher)",
        "targets of --use-ope at 1, 16 and 64: throughput >= 1.0 (>= 1.3 at 16 and 64), p99 <= 1.0, "
        "CPU per request <= 1.0",
        pair=lambda ours, theirs: ("--max-batch-size" in ours) == ("batching" in theirs),
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
