"""Where ``neuropod serve --use-ope`` spends its time and CPU, per request (docs/ope.md, "Serving out of process").

Serves the adder of bench/serve.py (float32 [4, 64] x 2) in this process
with its model in a worker process, drives it with h2load (gRPC, the same
request bytes as bench/serve.py) at each concurrency, and prints per request:

* the CPU of each thread of the server process (by thread name) and of the
  worker process, over the measured window;
* the median of each stage of the out-of-process call (``NEUROPOD_OPE_STAGES``,
  :mod:`neuropod.ope.stages`), and the server's own timeline of a request
  (the statistics extension: queue, compute);
* the waits and wake-ups per request (voluntary and involuntary context switches).

    python bench/serve_stages.py                       # c = 1 and 16, 3 s each
    python bench/serve_stages.py --concurrency 1 16 64 --duration 5 --setting max_batch_size=16
    python bench/serve_stages.py --load-option workers=2

``--setting`` and ``--load-option`` set the model's ``ModelSettings`` fields and
``load_neuropod`` options (JSON values).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ["NEUROPOD_OPE_STAGES"] = "1"  # before neuropod is imported: the recorder is made at import

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))
from serving_models import grpc_infer_frame, make_adder  # noqa: E402

from neuropod.ope import stages  # noqa: E402
from neuropod.serving import dataplane  # noqa: E402
from neuropod.serving.repository import ModelSettings  # noqa: E402
from neuropod.serving.server import ModelServer, ServerConfig  # noqa: E402
from serve import SHAPE, X, _check_h2load_request  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


_PYTHON_THREADS: Dict[int, str] = {}


def _task_stats(pid: int) -> Dict[str, Tuple[float, int, int]]:
    """CPU seconds and (voluntary, involuntary) context switches of each thread of ``pid``, summed by thread name."""
    totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0, 0])
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if pid == os.getpid():  # Python's thread names are not the kernel's: look them up by native id
            name = _PYTHON_THREADS.get(int(task.name), name if int(task.name) != pid else "main")
        name = re.sub(r"[-_]?\d+$", "", name) or name  # neuropod-infer_0, grpc_global_tim → one row per kind
        fields = stat.rsplit(")", 1)[1].split()
        row = totals[name]
        row[0] += (int(fields[11]) + int(fields[12])) / TICK
        row[1] += int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        row[2] += int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return {name: (row[0], int(row[1]), int(row[2])) for name, row in totals.items()}


def _difference(after: Dict[str, Tuple[float, int, int]], before: Dict[str, Tuple[float, int, int]]) -> Dict:
    zero = (0.0, 0, 0)
    return {name: tuple(a - b for a, b in zip(after[name], before.get(name, zero))) for name in after}


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--load-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--threads", type=int, default=4, help="the server's --threads")
    parser.add_argument("--never-inline", action="store_true", help="every call goes to the server's threads")
    parser.add_argument("--always-inline", action="store_true", help="every call runs where it arrives")
    parser.add_argument("--no-feeder", action="store_true", help="models in workers take the in-process paths")
    parser.add_argument("--in-process", action="store_true", help="serve the model in the server process")
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)
    load_options = {name: _value(value) for name, value in (o.split("=", 1) for o in args.load_option)}
    fields = {name: _value(value) for name, value in settings.items()}
    fields.setdefault("use_ope", not args.in_process)
    model_settings = ModelSettings(load_options=load_options, **fields)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory() as tmp:
        package = make_adder(Path(tmp) / "adder")
        config = ServerConfig(grpc_port=0, http_port=None, threads=args.threads)
        if args.never_inline:
            dataplane.INLINE_CALL_MAX_S = dataplane.INLINE_WORKER_CALL_MAX_S = 0.0
        if args.always_inline:
            dataplane.INLINE_CALL_MAX_S = dataplane.INLINE_WORKER_CALL_MAX_S = 1.0
        if args.no_feeder:  # the paths before the feeder: inline or the thread pool, batches on the loop
            dataplane._runs_in_workers = lambda model: False
        with ModelServer.from_path(package, config, default_settings=model_settings) as server:
            model = next(iter(server.repository))
            executor = model.neuropod.executor
            pids = getattr(executor, "worker_pids", [])
            worker_pids = [p for p in (pids() if callable(pids) else pids) if p]
            url = f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
            body = grpc_infer_frame("adder", {"x": X, "y": X})
            _check_h2load_request(url, body, [], grpc=True)
            body_file = Path(tmp) / "body"
            body_file.write_bytes(body)
            for concurrency in args.concurrency:
                command = ["h2load", "-D", f"{(args.duration + 0.5) * 1000:.0f}ms", "-c", str(concurrency), "-m", "1"]
                command += ["-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers", url]
                client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                time.sleep(0.5)  # warm-up, not counted
                if stages.recorder is not None:
                    stages.recorder.clear()
                statistics_before = model.statistics.as_dict(model.name, model.version)["inference_stats"]
                _PYTHON_THREADS.update({t.native_id: t.name for t in threading.enumerate() if t.native_id})
                before = {"server": _task_stats(os.getpid())}
                before.update({f"worker {pid}": _task_stats(pid) for pid in worker_pids})
                started = time.perf_counter()
                output, _ = client.communicate()
                elapsed = time.perf_counter() - started
                after = {"server": _task_stats(os.getpid())}
                after.update({f"worker {pid}": _task_stats(pid) for pid in worker_pids})
                statistics_after = model.statistics.as_dict(model.name, model.version)["inference_stats"]
                done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", output)
                if done is None or " 0 failed, 0 errored" not in output:
                    raise RuntimeError(output[-800:])
                count = statistics_after["success"]["count"] - statistics_before["success"]["count"]
                print(f"\nc={concurrency}: {count / elapsed:.0f} req/s over {elapsed:.1f} s ({count} requests)")
                print(f"| {'process / thread':<28} | CPU us/req | waits/req | preempted/req |")
                print(f"|{'-' * 30}|------------|-----------|---------------|")
                total_cpu = 0.0
                for process, threads in after.items():
                    for name, (cpu, voluntary, involuntary) in sorted(
                        _difference(threads, before[process]).items(), key=lambda item: -item[1][0]
                    ):
                        if cpu == 0 and voluntary == 0:
                            continue
                        total_cpu += cpu
                        print(
                            f"| {process.split()[0] + ': ' + name:<28} | {cpu / count * 1e6:10.0f} | "
                            f"{voluntary / count:9.2f} | {involuntary / count:13.2f} |"
                        )
                print(f"| {'all':<28} | {total_cpu / count * 1e6:10.0f} |")
                for key in ("queue", "compute_infer"):
                    spent = statistics_after[key]["ns"] - statistics_before[key]["ns"]
                    calls = statistics_after[key]["count"] - statistics_before[key]["count"]
                    if calls:
                        print(f"server {key}: {spent / calls / 1e3:.0f} us per request (mean)")
                if stages.recorder is not None:
                    time.sleep(0.2)  # the last answers still in flight are recorded first
                    summary = stages.recorder.summary()
                    print("OPE call stages, median us: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.items()))
    print(f"\nadder float32 {list(SHAPE)} x2; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
