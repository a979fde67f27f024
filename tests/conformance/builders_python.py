"""Conformance builders for packaged Python code: plain numpy (``python``) and eager torch (``pytorch``).

The model code is written into a temporary source tree and packaged with
``create_python_neuropod`` / ``create_pytorch_neuropod``. The numpy model
expresses every problem; the torch one only the numeric problems (torch has
no string tensors).
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from problems import problem_specs

from neuropod.packagers import create_python_neuropod, create_pytorch_neuropod

NUMPY_MODELS = textwrap.dedent(
    """
    import numpy as np


    def addition(data_dir):
        return lambda x, y: {"out": x + y}


    def strings(data_dir):
        return lambda a, b: {"out": np.char.add(a, b)}


    def mixed(data_dir):
        return lambda x: {"total": np.array([x.sum(dtype=np.float32)]), "label": np.where(x > 0, "pos", "neg")}


    def dtypes(data_dir):
        return lambda b, h, i, u: {"nb": ~b, "h2": h * np.float16(2), "i2": i + np.int64(1), "u2": u + np.uint8(1)}


    def identity_big(data_dir):
        return lambda x: {"out": x}
    """
)

TORCH_MODELS = textwrap.dedent(
    """
    import torch


    def addition(data_dir):
        return lambda x, y: {"out": torch.from_numpy(x) + torch.from_numpy(y)}


    def dtypes(data_dir):
        def run(b, h, i, u):
            b, h, i, u = (torch.from_numpy(a) for a in (b, h, i, u))
            return {"nb": torch.logical_not(b), "h2": h * 2, "i2": i + 1, "u2": u + 1}

        return run


    def identity_big(data_dir):
        return lambda x: {"out": torch.from_numpy(x)}
    """
)


class PythonBuilder:
    platform = "python"

    def build(self, path: Path, problem: str) -> Path:
        return _package(create_python_neuropod, "numpy_models", NUMPY_MODELS, path, problem)


class PyTorchBuilder:
    platform = "pytorch"
    requires = ("torch",)

    def build(self, path: Path, problem: str) -> Path:
        if problem in ("strings", "mixed"):
            raise NotImplementedError(f"torch has no string tensors, which {problem!r} needs")
        return _package(create_pytorch_neuropod, "torch_models", TORCH_MODELS, path, problem)


def _package(packager, module: str, source: str, path: Path, problem: str) -> Path:  # type: ignore[no-untyped-def]
    input_spec, output_spec = problem_specs(problem)
    with tempfile.TemporaryDirectory() as root:
        code = Path(root) / module
        code.mkdir()
        (code / "__init__.py").write_text(source)
        return packager(
            neuropod_path=path,
            model_name=f"{module}_{problem}",
            data_paths=[],
            code_path_spec=[{"python_root": root, "dirs_to_package": [module]}],
            entrypoint_package=module,
            entrypoint=problem,
            input_spec=input_spec,
            output_spec=output_spec,
        )


BUILDERS = {"python": PythonBuilder(), "pytorch": PyTorchBuilder()}
