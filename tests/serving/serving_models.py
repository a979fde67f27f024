"""Models, servers and peers shared by the serving tests and bench/serve.py.

The Python models are real packages made with ``create_python_neuropod``;
their code is written to a temp dir here. ``settings.json`` in a package's
data dir tunes them: ``sleep_s`` (a slow model) and ``batch_log`` (a file that
gets one line per call with the batch size the model saw).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
MLSERVER_MODEL_DIR = Path(__file__).resolve().parent / "mlserver_adder"
MLSERVER_VENV = Path(os.environ.get("NEUROPOD_MLSERVER_VENV", REPO / ".cache" / "mlserver-venv"))

ADDER_CODE = """
import json
import os
import time

import numpy as np


def get_model(data_dir):
    settings = {}
    path = os.path.join(data_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            settings = json.load(f)
    sleep_s = settings.get("sleep_s", 0)
    batch_log = settings.get("batch_log")
    fail_on_negative = settings.get("fail_on_negative", False)
    time.sleep(settings.get("load_sleep_s", 0))  # a model that takes a while to load
    gate = settings.get("wait_for_file")  # each call waits until this file exists (a test lets it go)

    def add(x, y):
        if fail_on_negative and (x < 0).any():
            raise ValueError("the adder refuses negative numbers")
        if batch_log:
            with open(batch_log, "a") as f:
                f.write(f"{x.shape[0]}\\n")
        if sleep_s:
            time.sleep(sleep_s)
        deadline = time.monotonic() + 60
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"out": x + y}

    return add
"""

STRINGS_CODE = """
import numpy as np


def get_model(data_dir):
    def run(s):
        return {"upper": np.char.upper(s), "length": np.char.str_len(s).astype(np.int64)}

    return run
"""

HALVES_CODE = """
import numpy as np


def get_model(data_dir):
    def run(h, b=None):
        out = {"h2": (h * 2).astype(h.dtype)}
        if b is not None:
            out["b2"] = (b.astype(np.float32) * 2).astype(b.dtype)
        return out

    return run
"""

ADDER_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["batch", None]},
    {"name": "y", "dtype": "float32", "shape": ["batch", None]},
]
ADDER_OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", None]}]


def _python_package(
    target: Path,
    name: str,
    code: str,
    module: str,
    inputs: Any,
    outputs: Any,
    settings: Optional[Dict[str, Any]] = None,
) -> Path:
    from neuropod.packagers import create_python_neuropod

    work = target.parent / f".{target.name}-src"
    code_root = work / "code"
    (code_root / module).mkdir(parents=True, exist_ok=True)
    (code_root / module / "__init__.py").write_text(textwrap.dedent(code))
    data = work / "data"
    data.mkdir(exist_ok=True)
    (data / "settings.json").write_text(json.dumps(settings or {}))
    create_python_neuropod(
        neuropod_path=target,
        model_name=name,
        data_paths=[{"path": str(data / "settings.json"), "packaged_name": "settings.json"}],
        code_path_spec=[{"python_root": str(code_root), "dirs_to_package": [module]}],
        entrypoint_package=module,
        entrypoint="get_model",
        input_spec=inputs,
        output_spec=outputs,
        package_as_zip=False,
        default_input_tensor_device="CPU",
    )
    shutil.rmtree(work)
    return target


def make_adder(target: Path, name: str = "adder", **settings: Any) -> Path:
    """out = x + y over float32 [batch, None].

    Tuned by sleep_s, load_sleep_s, batch_log, fail_on_negative and wait_for_file.
    """
    return _python_package(target, name, ADDER_CODE, f"{name}_code", ADDER_INPUTS, ADDER_OUTPUTS, settings)


def make_strings(target: Path, name: str = "strings") -> Path:
    """upper = s.upper(), length = len(s) over string [batch]."""
    return _python_package(
        target,
        name,
        STRINGS_CODE,
        f"{name}_code",
        [{"name": "s", "dtype": "string", "shape": ["batch"]}],
        [
            {"name": "upper", "dtype": "string", "shape": ["batch"]},
            {"name": "length", "dtype": "int64", "shape": ["batch"]},
        ],
    )


def make_halves(target: Path, name: str = "halves") -> Path:
    """h2 = 2 * h (float16), b2 = 2 * b (bfloat16, optional input)."""
    return _python_package(
        target,
        name,
        HALVES_CODE,
        f"{name}_code",
        [{"name": "h", "dtype": "float16", "shape": [None]}, {"name": "b", "dtype": "bfloat16", "shape": [None]}],
        [{"name": "h2", "dtype": "float16", "shape": [None]}, {"name": "b2", "dtype": "bfloat16", "shape": [None]}],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mlserver_available() -> bool:
    return (MLSERVER_VENV / "bin" / "mlserver").exists()


def start_mlserver(
    workdir: Path, timeout_s: float = 90.0, parallel_workers: Optional[int] = None, cpu: Optional[int] = None
) -> Tuple[subprocess.Popen[bytes], int, int]:
    """Start MLServer from its own venv serving the adder; return (process, http port, grpc port).

    ``parallel_workers`` None keeps MLServer's default (a pool of inference worker
    processes); 0 runs inference in the server process, its fastest setting here.
    ``cpu`` pins it to that CPU (``taskset``), as ``neuropod serve --pin-cpus`` pins itself.
    """
    model_dir = workdir / "adder"
    shutil.copytree(MLSERVER_MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("__pycache__"))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (workdir / "settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{MLSERVER_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = open(workdir / "mlserver.log", "wb")  # noqa: SIM115 - closed with the process by the caller's stop
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    process = subprocess.Popen(
        [*pin, str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(workdir)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{http_port}/v2/models/adder/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlserver exited with {process.returncode}: {(workdir / 'mlserver.log').read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return process, http_port, grpc_port
        except OSError:
            pass
        time.sleep(0.25)
    stop_process(process)
    raise RuntimeError(
        f"mlserver did not become ready in {timeout_s}s: {(workdir / 'mlserver.log').read_text()[-2000:]}"
    )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL if it lingers."""
    import signal

    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def grpc_infer_frame(model: str, inputs: Dict[str, Any]) -> bytes:
    """A ``ModelInfer`` request of float32 arrays, framed as on the wire (flag byte, big-endian length).

    What a raw HTTP/2 client (nghttp, h2load) sends as the body of a gRPC call.
    """
    from neuropod.kserve import proto

    request = proto.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.astype("<f4").tobytes())
    body = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(body)) + body


def neuropod_cli() -> list:
    return [sys.executable, "-m", "neuropod.cli"]


@contextlib.contextmanager
def serve_cli(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``neuropod serve ARGS`` with its JSON log on ``stderr``; killed on the way out if still running."""
    process = subprocess.Popen(neuropod_cli() + ["serve", *args], stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_stops_cleanly(process: subprocess.Popen[str]) -> None:
    """SIGTERM drains and exits 0."""
    import signal

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
