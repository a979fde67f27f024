"""Small real packages for the Ray tests (a Python adder that reports its batch size; a TorchScript adder)."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from typing import Optional

INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["batch", None]},
    {"name": "y", "dtype": "float32", "shape": ["batch", None]},
]

COUNTING_ADDER_CODE = """
import numpy as np


def get_model(data_dir):
    def add(x, y):
        if (x < 0).any():
            raise ValueError("the adder refuses negative numbers")
        # rows: how many rows the model saw in this call, once per row (shows batching).
        return {"out": x + y, "rows": np.full(x.shape[0], x.shape[0], dtype=np.int64)}

    return add
"""


def make_counting_adder(target: Path, name: str = "adder", requirements: Optional[str] = None) -> Path:
    """out = x + y; rows = the row count of the call that computed each row; a negative x fails the call.

    ``requirements`` (pinned ``name==version`` lines) makes a package that only another environment satisfies.
    """
    from neuropod.packagers import create_python_neuropod

    code_root = target.parent / f".{target.name}-code"
    (code_root / "counting_adder").mkdir(parents=True)
    (code_root / "counting_adder" / "__init__.py").write_text(textwrap.dedent(COUNTING_ADDER_CODE))
    create_python_neuropod(
        neuropod_path=str(target),
        model_name=name,
        data_paths=[],
        code_path_spec=[{"python_root": str(code_root), "dirs_to_package": ["counting_adder"]}],
        entrypoint_package="counting_adder",
        entrypoint="get_model",
        input_spec=INPUTS,
        output_spec=[
            {"name": "out", "dtype": "float32", "shape": ["batch", None]},
            {"name": "rows", "dtype": "int64", "shape": ["batch"]},
        ],
        requirements=requirements,
        package_as_zip=False,
        default_input_tensor_device="CPU",
    )
    return target


def make_torchscript_adder(target: Path, name: str = "ts_adder") -> Path:
    """out = x + y as a TorchScript package (a directory)."""
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    create_torchscript_neuropod(
        neuropod_path=str(target),
        model_name=name,
        module=torch.jit.script(Addition()),
        input_spec=INPUTS,
        output_spec=[{"name": "out", "dtype": "float32", "shape": ["batch", None]}],
        package_as_zip=False,
        default_input_tensor_device="CPU",
    )
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_init_options() -> dict:
    """One small local Ray per test module: 2 CPUs, a 256 MiB object store, no dashboard, quiet workers."""
    return {"num_cpus": 2, "object_store_memory": 256 * 2**20, "include_dashboard": False, "log_to_driver": False}
