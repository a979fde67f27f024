"""Soak: ``neuropod serve`` at saturation over gRPC and REST for a long run; errors and memory growth.

Starts ``neuropod serve`` on the adder (as bench/serve.py does), then runs
closed-loop tritonclient clients, half over gRPC and half over REST (binary
tensors), for --duration seconds. Every response is checked against x + y.
The server's RSS is sampled every --sample seconds; growth is measured from
the end of the warm-up (the first --warmup seconds: caches, arenas and
thread stacks settle there) to the end.

    python bench/soak.py                          # 10 minutes, 8 clients
    python bench/soak.py --duration 60 --clients 4

Exit status 1 when any request failed or RSS grew by --max-growth or more.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))
from serving_models import make_adder, stop_process  # noqa: E402

from serve import start_neuropod  # noqa: E402

SHAPE = (4, 64)
X = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
EXPECTED = X + X


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _caller(protocol: str, port: int) -> Tuple[Callable[[], None], Callable[[], None]]:
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        outputs = None
    else:
        import tritonclient.http as module  # type: ignore[no-redef]

        client = module.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        outputs = [module.InferRequestedOutput("out", binary_data=True)]
    inputs = [module.InferInput(name, list(SHAPE), "FP32") for name in ("x", "y")]
    for tensor in inputs:
        tensor.set_data_from_numpy(X)

    def call() -> None:
        out = client.infer("adder", inputs, outputs=outputs).as_numpy("out")
        if out is None or not np.array_equal(out, EXPECTED):
            raise AssertionError("wrong answer")

    return call, client.close


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients, half gRPC, half REST")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline is taken")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--max-growth", type=float, default=0.01, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    counts: Dict[str, int] = {"grpc": 0, "rest": 0}
    errors: List[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        package = make_adder(Path(tmp) / "adder")
        process, grpc_port, http_port = start_neuropod(package)
        try:

            def client(protocol: str) -> None:
                call, close = _caller(protocol, grpc_port if protocol == "grpc" else http_port)
                done = 0
                try:
                    while not stop.is_set():
                        try:
                            call()
                            done += 1
                        except Exception as exc:  # every failure is counted, and the client goes on
                            with lock:
                                errors.append(f"{protocol}: {exc!r}"[:300])
                finally:
                    close()
                    with lock:
                        counts[protocol] += done

            threads = [
                threading.Thread(target=client, args=("grpc" if i % 2 == 0 else "rest",), daemon=True)
                for i in range(args.clients)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            samples: List[Tuple[float, int]] = []
            baseline = None
            while (elapsed := time.monotonic() - started) < args.duration:
                time.sleep(min(args.sample, max(0.0, args.duration - elapsed)))
                elapsed = time.monotonic() - started
                rss = rss_bytes(process.pid)
                samples.append((elapsed, rss))
                if baseline is None and elapsed >= args.warmup:
                    baseline = rss
                line = f"  {elapsed:6.0f} s  RSS {rss / 2**20:7.1f} MiB  errors {len(errors)}"
                print(line, file=sys.stderr, flush=True)
            stop.set()
            for thread in threads:
                thread.join(60)
            final = rss_bytes(process.pid)
        finally:
            stop.set()
            stop_process(process)  # type: ignore[arg-type]

    baseline = baseline or samples[0][1]
    growth = (final - baseline) / baseline
    total = counts["grpc"] + counts["rest"]
    figures = {
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": total,
        "grpc_requests": counts["grpc"],
        "rest_requests": counts["rest"],
        "requests_per_s": total / args.duration,
        "errors": len(errors),
        "rss_after_warmup_mib": baseline / 2**20,
        "rss_final_mib": final / 2**20,
        "rss_peak_mib": max(rss for _, rss in samples) / 2**20,
        "rss_growth_pct": growth * 100,
    }
    print(json.dumps(figures, indent=2))
    if errors:
        print(f"first errors: {errors[:3]}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if errors or growth >= args.max_growth else 0


if __name__ == "__main__":
    raise SystemExit(main())
