"""Memory of N workers of one ~200 MB model: one copy of the weights when they fork from a zygote.

    .venv/bin/python bench/ope_shared_weights.py [--quick]

Also the last rows of ``bench/ope.py``. For a TorchScript model and a Python
model (``np.load`` of its data file), each multiplying a 207 MB float32
matrix by a vector on every call, after one call in every worker: the
proportional set size (PSS, ``/proc/PID/smaps_rollup``) summed over every
process of the model (workers, and the zygote they were forked from), for
one worker that loaded the model itself (``share_weights=False``: the
baseline), four such workers, and four workers forked from one zygote (the
default). Ratios are against the baseline; the target is <= 1.3 for four
forked workers. Last, replacing a killed worker (kill, ``restart()``, first
call answered): forked from the zygote vs loading the model again.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from neuropod import load_neuropod
from neuropod.packagers import create_python_neuropod

SIDE = 7200  # a SIDE x SIDE float32 matrix: 207 MB
WORKERS = 4

PYTHON_CODE = """
import os

import numpy as np


def get_model(data_root):
    weight = np.load(os.path.join(data_root, "weight.npy"))

    def run(x):
        return {"y": weight @ x}

    return run
"""

SPEC = [{"name": "x", "dtype": "float32", "shape": [SIDE]}]
OUT = [{"name": "y", "dtype": "float32", "shape": [SIDE]}]


def python_model(root: Path) -> Path:
    weights = root / "weight.npy"
    np.save(weights, np.random.default_rng(0).standard_normal((SIDE, SIDE), dtype=np.float32))
    code = root / "mv_code" / "mv_pkg"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text(textwrap.dedent(PYTHON_CODE))
    path = create_python_neuropod(
        root / "mv_python",
        "mv_python",
        data_paths=[{"path": str(weights), "packaged_name": "weight.npy"}],
        code_path_spec=[{"python_root": str(root / "mv_code"), "dirs_to_package": ["mv_pkg"]}],
        entrypoint_package="mv_pkg",
        entrypoint="get_model",
        input_spec=SPEC,
        output_spec=OUT,
    )
    weights.unlink()
    return path


def torchscript_model(root: Path) -> Path:
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    class MatrixVector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(SIDE, SIDE))

        def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"y": torch.mv(self.weight, x)}

    return create_torchscript_neuropod(
        neuropod_path=root / "mv_torchscript",
        model_name="mv_torchscript",
        module=torch.jit.script(MatrixVector()),
        input_spec=SPEC,
        output_spec=OUT,
    )


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def model_pss(model: Any) -> int:
    executor = model.executor
    pids = [worker.pid for worker in executor.workers]
    if executor.zygote is not None:
        pids.append(executor.zygote.pid)
    return sum(pss_bytes(pid) for pid in pids)


def measured_pss(path: Path, **options: Any) -> int:
    """PSS of a loaded model after one call in each of its workers."""
    x = {"x": np.ones(SIDE, np.float32)}
    with load_neuropod(path, use_ope=True, **options) as model:
        executor = model.executor
        for worker in executor.workers:  # every worker, not whichever the executor picks
            worker.call(x, executor._find_lease, None)
        return model_pss(model)


def replacement_ms(path: Path, repeats: int, **options: Any) -> float:
    """Median time from killing the worker to its replacement's first answer."""
    x = {"x": np.ones(SIDE, np.float32)}
    times: List[float] = []
    with load_neuropod(path, use_ope=True, **options) as model:
        executor = model.executor
        model.infer(x)
        for _ in range(repeats):
            pid = executor.worker_pids[0]
            assert pid is not None
            started = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while executor.ready():
                time.sleep(0.0005)
            executor.restart()
            model.infer(x)
            times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def shared_weights_rows(quick: bool = False) -> None:
    """Print the memory of 1 and 4 workers of a ~200 MB model, with and without a zygote."""
    builders: Dict[str, Callable[[Path], Path]] = {"python": python_model}
    try:
        import torch  # noqa: F401

        builders = {"torchscript": torchscript_model, **builders}
    except ImportError:
        print("torch is not installed: TorchScript rows skipped")
    print(f"one copy of the weights: PSS of every process of a {SIDE * SIDE * 4 / 1e6:.0f} MB model, MiB")
    print(f"{'model':>12} | {'1 worker':>9} | {WORKERS} loading | {WORKERS} forked | ratio loading | ratio forked")
    replace: Dict[str, Tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builders.items():
            folder = Path(tmp) / name
            folder.mkdir()
            path = build(folder)
            one = measured_pss(path, share_weights=False)
            loading = measured_pss(path, workers=WORKERS, share_weights=False)
            forked = measured_pss(path, workers=WORKERS)
            mib = 1 << 20
            print(
                f"{name:>12} | {one / mib:9.0f} | {loading / mib:9.0f} | {forked / mib:8.0f} | "
                f"{loading / one:13.2f} | {forked / one:12.2f}"
            )
            repeats = 3 if quick else 5
            replace[name] = (replacement_ms(path, repeats), replacement_ms(path, repeats, share_weights=False))
    print("replacing a killed worker (kill, restart(), first answer), median ms")
    for name, (fork_ms, load_ms) in replace.items():
        print(f"{name:>12} | forked {fork_ms:8.1f} | loaded {load_ms:8.1f} | {load_ms / fork_ms:6.0f}x faster forked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    shared_weights_rows(quick=args.quick)


if __name__ == "__main__":
    main()
