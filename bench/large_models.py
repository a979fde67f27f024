"""Packaging and loading a large TorchScript model, against ``torch.jit.save`` of the same model, in one run.

Usage::

    .venv/bin/python bench/large_models.py            # a 500 MB model
    .venv/bin/python bench/large_models.py --mb 100   # smaller, quicker

Each measurement runs in a fresh process that first builds the model, so
memory is the peak resident size the step adds on top of the model already
in memory (Linux: ``/proc/self/clear_refs`` resets the peak, ``VmHWM`` reads
it). Printed: seconds and ratio to ``torch.jit.save`` for
``create_torchscript_neuropod`` as a zip (with and without the self-test,
and with every file deflated for comparison), peak memory as a multiple of
the model size, how each file was stored, and the first ``load_neuropod`` of
the zip (extraction into the cache) with its progress lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

CHILD = "--child"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _model(megabytes: int) -> Any:
    import torch

    torch.manual_seed(0)
    width = 4096
    layers = max(1, round(megabytes * 2**20 / (4 * width * width)))

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(layers))

        def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return {"y": x}

    with torch.no_grad():
        return torch.jit.script(Stack().eval()), width, layers * width * width * 4


def child(step: str, megabytes: int, work: Path) -> Dict[str, Any]:
    import numpy as np
    import torch

    import neuropod
    from neuropod.packagers import create_torchscript_neuropod

    module, width, model_bytes = _model(megabytes)
    x = np.ones((1, width), np.float32)
    spec = dict(
        input_spec=[{"name": "x", "dtype": "float32", "shape": [None, width]}],
        output_spec=[{"name": "y", "dtype": "float32", "shape": [None, width]}],
    )
    before = _rss_kib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    extra: Dict[str, Any] = {}
    if step == "jit_save":
        torch.jit.save(module, str(work / "plain.pt"))
    elif step in ("package", "package_no_selftest", "package_deflated"):
        options: Dict[str, Any] = {} if step == "package_no_selftest" else {"test_input_data": {"x": x}}
        if step == "package_deflated":
            import zipfile

            options["zip_compression"] = zipfile.ZIP_DEFLATED
        path = create_torchscript_neuropod(work / f"{step}.zip", "large", module=module, **spec, **options)
        import zipfile

        with zipfile.ZipFile(path) as zf:
            extra["entries"] = {
                info.filename: ("stored" if info.compress_type == zipfile.ZIP_STORED else "deflated")
                for info in zf.infolist()
            }
        extra["zip_bytes"] = path.stat().st_size
    elif step == "load":
        with neuropod.load_neuropod(work / "package_no_selftest.zip") as model:
            model.infer({"x": x})
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    return {"seconds": seconds, "peak_growth_bytes": (peak - before) * 1024, "model_bytes": model_bytes, **extra}


def run(step: str, megabytes: int, work: Path, env: Dict[str, str]) -> Dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, CHILD, step, str(megabytes), str(work)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{step} failed:\n{result.stderr}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    data["progress_lines"] = [line for line in result.stderr.splitlines() if ": " in line and "B" in line]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=500, help="model size in MiB (default 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        env = {**os.environ, "NEUROPOD_CACHE_DIR": str(work / "cache"), "NEUROPOD_PROGRESS": "log"}
        results = {}
        for step in ("jit_save", "package_no_selftest", "package", "package_deflated", "load"):
            results[step] = run(step, args.mb, work, env)
            print(f"  ran {step}: {results[step]['seconds']:.2f} s", file=sys.stderr)
        base = results["jit_save"]["seconds"]
        model_mb = results["jit_save"]["model_bytes"] / 2**20
        print(f"model: {model_mb:.0f} MiB of float32 weights (TorchScript)")
        print(f"{'step':<36}{'seconds':>9}{'x jit.save':>12}{'peak memory':>14}")
        labels = {
            "jit_save": "torch.jit.save (baseline)",
            "package_no_selftest": "package as zip, no self-test",
            "package": "package as zip, with self-test",
            "package_deflated": "  the same, every file deflated",
            "load": "first load_neuropod (extracts)",
        }
        for step, label in labels.items():
            r = results[step]
            growth = r["peak_growth_bytes"] / r["model_bytes"]
            print(f"{label:<36}{r['seconds']:>9.2f}{r['seconds'] / base:>11.1f}x{growth:>13.2f}x")
        print("entries of the package:", json.dumps(results["package"]["entries"]))
        print("progress lines of the packaging (log mode):")
        for line in results["package"]["progress_lines"]:
            print("   ", line)
        print("progress lines of the first load:")
        for line in results["load"]["progress_lines"]:
            print("   ", line)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main()
