"""What ``neuropod.tools.evaluate`` costs beyond the model: time outside ``infer`` and memory over a dataset.

    .venv/bin/python bench/tools.py [--examples 100000] [--batch-size 64]

A placeholder model (no framework: its ``infer`` is validation plus random
outputs) runs over ``--examples`` small examples (8 float32 features, an
8-float label) read from disk, with an MAE metric. Printed per data format:

- the share of ``evaluate``'s wall time spent outside ``infer`` (the claim: <= 10 %),
  and its wall time against a baseline measured in the same run: a bare loop
  calling ``infer`` on the same batches already in memory;
- the time numpy or pyarrow alone takes to read the fields evaluate reads (a
  second baseline: reading and decoding the data is the format's cost), and
  what is left: the tools' own share;
- how much the process's peak memory (RSS, which sees numpy and Arrow buffers
  alike) grows during ``evaluate`` over a tenth of the dataset and over all
  of it, each in a fresh process: streamed data keeps the two alike, where
  loading it whole would grow tenfold.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from neuropod import load_neuropod
from neuropod.packagers import create_placeholder_neuropod
from neuropod.tools import evaluate

FEATURES = 8
SPEC_IN = [{"name": "x", "dtype": "float32", "shape": ["batch", FEATURES]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": ["batch", FEATURES]}]


def write_data(root: Path, examples: int) -> Dict[str, Path]:
    """The same examples as .npy fields and as one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.standard_normal((examples, FEATURES)).astype(np.float32)
    label = rng.standard_normal((examples, FEATURES)).astype(np.float32)
    npy = root / f"npy-{examples}"
    npy.mkdir()
    np.save(npy / "x.npy", x)
    np.save(npy / "label.npy", label)
    parquet = root / f"table-{examples}.parquet"
    columns = {
        name: pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), FEATURES)
        for name, values in (("x", x), ("label", label))
    }
    pq.write_table(pa.table(columns), parquet, row_group_size=16384)  # a reader decodes a row group at once
    return {"npy": npy, "parquet": parquet}


def bare_loop(model: Any, data: Path, batch_size: int) -> float:
    """The baseline: infer alone over the same batches, sliced from arrays already in memory."""
    x = np.load(data / "x.npy")
    batches = [{"x": x[i : i + batch_size]} for i in range(0, len(x), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        model.infer(batch)
    return time.perf_counter() - start


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def memory_child(package: str, data: str, batch_size: int, metrics: List[str]) -> None:
    """In a fresh process: how far RSS rises above its level before ``evaluate``, sampled every millisecond."""
    with load_neuropod(package) as model:
        evaluate(model, data, metrics=metrics, batch_size=4, progress=False)  # imports and first-call costs
        before = rss_bytes()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.001):
                peak[0] = max(peak[0], rss_bytes())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            evaluate(model, data, metrics=metrics, batch_size=batch_size, progress=False)
        finally:
            done.set()
            sampler.join()
        peak[0] = max(peak[0], rss_bytes())
    print(peak[0] - before)


def peak_growth(package: Path, data: Path, batch_size: int, metrics: List[str]) -> int:
    command = [sys.executable, __file__, "--memory-child", str(package), str(data), str(batch_size), *metrics]
    # Arrow's own allocators keep freed memory for reuse; the system allocator shows what is in use.
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    return int(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


def read_alone(name: str, path: Path, fields: List[str]) -> float:
    """The second baseline: reading the fields evaluate needs, with numpy or pyarrow alone."""
    start = time.perf_counter()
    if name == "npy":
        for field in fields:
            np.load(path / f"{field}.npy")
    else:
        import pyarrow.parquet as pq

        for _ in pq.ParquetFile(str(path)).iter_batches(batch_size=65536, columns=fields):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per case; the best is reported")
    parser.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        package, data, batch_size, *metrics = args.memory_child
        memory_child(package, data, int(batch_size), metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = write_data(root, args.examples)
        tenth = write_data(root, args.examples // 10)
        package = create_placeholder_neuropod(root / "model.zip", "placeholder", SPEC_IN, SPEC_OUT)
        with load_neuropod(package) as model:
            baseline = min(bare_loop(model, full["npy"], args.batch_size) for _ in range(args.repeats))
            print(f"{args.examples} examples, batches of {args.batch_size}; bare infer loop: {baseline:.4f} s")
            print(
                f"{'format':<9}{'metrics':<9}{'evaluate s':>11}{'in infer s':>11}{'outside':>9}{'vs bare':>9}"
                f"{'read s':>8}{'tools own':>10}{'RSS+ MiB 1/10':>15}{'RSS+ MiB all':>14}"
            )
            for name in ("npy", "parquet"):
                for metrics in ([], ["mae"]):
                    runs = [
                        evaluate(model, full[name], metrics=metrics, batch_size=args.batch_size, progress=False)
                        for _ in range(args.repeats)
                    ]
                    best = min(runs, key=lambda report: report.seconds_total)
                    outside = 1 - best.seconds_in_infer / best.seconds_total
                    fields = ["x", "label"] if metrics else ["x"]
                    read = min(read_alone(name, full[name], fields) for _ in range(args.repeats))
                    own = (best.seconds_total - best.seconds_in_infer - read) / best.seconds_total
                    small, large = (
                        peak_growth(package, data[name], args.batch_size, metrics) for data in (tenth, full)
                    )
                    print(
                        f"{name:<9}{','.join(metrics) or '-':<9}{best.seconds_total:>11.4f}"
                        f"{best.seconds_in_infer:>11.4f}{outside:>9.1%}{best.seconds_total / baseline:>8.2f}x"
                        f"{read:>8.4f}{own:>10.1%}{small / 2**20:>15.2f}{large / 2**20:>14.2f}"
                    )
            whole = 2 * args.examples * FEATURES * 4 / 2**20
            print(f"(the dataset itself is {whole:.1f} MiB: loading it whole would show in 'RSS+ MiB all')")


if __name__ == "__main__":
    main()
