"""Per-call overhead of ``Neuropod.infer`` over calling the TorchScript module directly.

    .venv/bin/python bench/inprocess.py [--repeats N]

Both sides go numpy -> torch -> model -> numpy; the baseline does it by hand
(``torch.from_numpy`` + ``module(...)`` + ``.numpy()`` under ``no_grad``).
The two are timed in alternating batches in the same run, and medians of the
batch means are compared, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

from neuropod import load_neuropod
from neuropod.packagers import create_torchscript_neuropod

SPEC_IN = [{"name": "x", "dtype": "float32", "shape": [None]}, {"name": "y", "dtype": "float32", "shape": [None]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": [None]}]


class Addition(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"out": x + y}


def batch_means(call: Callable[[], object], batch: int, batches: int, other: Callable[[], object]) -> List[List[float]]:
    """Alternate batches of ``call`` and ``other``; return per-call means of each batch, for both."""
    ours: List[float] = []
    theirs: List[float] = []
    for _ in range(batches):
        for fn, sink in ((call, ours), (other, theirs)):
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            sink.append((time.perf_counter() - start) / batch)
    return [ours, theirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100, help="alternating batches per case")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a stable baseline; the overhead we measure is per call, not per element
    with tempfile.TemporaryDirectory() as tmp:
        path = create_torchscript_neuropod(
            neuropod_path=Path(tmp) / "add.zip",
            model_name="addition",
            module=torch.jit.script(Addition()),
            input_spec=SPEC_IN,
            output_spec=SPEC_OUT,
        )
        model = load_neuropod(path)
        module = model.executor.backend.module  # the very module the backend runs

        print(f"torch {torch.__version__}, 1 intra-op thread; medians of {args.repeats} alternating batches")
        print(f"{'case':<18}{'raw module':>14}{'Neuropod.infer':>16}{'added':>12}{'ratio':>8}")
        for label, elements, batch in (("1 element", 1, 2000), ("16 MB inputs", 4 * 1024 * 1024, 5)):
            x = np.random.default_rng(0).random(elements, dtype=np.float32)
            y = np.random.default_rng(1).random(elements, dtype=np.float32)
            inputs = {"x": x, "y": y}

            def raw(x: np.ndarray = x, y: np.ndarray = y) -> np.ndarray:
                with torch.no_grad():
                    return module(x=torch.from_numpy(x), y=torch.from_numpy(y))["out"].numpy()

            def ours(inputs: Dict[str, np.ndarray] = inputs) -> np.ndarray:
                return model.infer(inputs)["out"]

            np.testing.assert_array_equal(raw(), ours())
            ours_t, raw_t = batch_means(ours, batch, args.repeats, raw)
            ours_med, raw_med = statistics.median(ours_t), statistics.median(raw_t)
            added = ours_med - raw_med
            unit, scale = ("µs", 1e6) if elements == 1 else ("ms", 1e3)
            print(
                f"{label:<18}{raw_med * scale:>11.2f} {unit}{ours_med * scale:>13.2f} {unit}"
                f"{added * 1e6:>9.2f} µs{ours_med / raw_med:>8.3f}"
            )
        model.close()


if __name__ == "__main__":
    main()
