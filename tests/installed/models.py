"""Small packages the installed-package tests build with the installed neuropod."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from neuropod.packagers import create_python_neuropod

# A Python model that reports where it runs: its answer, the worker's numpy version and sys.prefix.
_MODEL = """
import sys

import numpy as np


def get_model(data_dir):
    def addition(x, y):
        return {
            "out": x + y,
            "numpy_version": np.array([np.__version__]),
            "prefix": np.array([sys.prefix]),
        }

    return addition
"""

SPEC_IN = [{"name": "x", "dtype": "float32", "shape": (None, 2)}, {"name": "y", "dtype": "float32", "shape": (None, 2)}]
SPEC_OUT = [
    {"name": "out", "dtype": "float32", "shape": (None, 2)},
    {"name": "numpy_version", "dtype": "string", "shape": (1,)},
    {"name": "prefix", "dtype": "string", "shape": (1,)},
]
X = np.arange(4, dtype=np.float32).reshape(2, 2)
Y = np.full((2, 2), 0.5, dtype=np.float32)


def where_am_i_package(directory: Path, requirements: Sequence[str] = (), zip_name: str = "where.zip") -> Path:
    """A Python-code package answering x + y and the numpy / sys.prefix of the process running it."""
    code = directory / "code" / "where_model"
    code.mkdir(parents=True, exist_ok=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(_MODEL)
    return create_python_neuropod(
        neuropod_path=directory / zip_name,
        model_name="where",
        data_paths=[],
        code_path_spec=[{"python_root": str(directory / "code"), "dirs_to_package": ["where_model"]}],
        entrypoint_package="where_model.main",
        entrypoint="get_model",
        requirements=list(requirements) or None,
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        # No test data: the answer's numpy version depends on where it runs.
    )
