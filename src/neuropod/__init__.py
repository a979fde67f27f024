"""Neuropod: one API to package and run deep-learning models from any framework.

``import neuropod`` imports numpy and the standard library only; each
framework is imported by its backend on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    InferenceError,
    InputValidationError,
    ManifestError,
    NeuropodError,
    OutputValidationError,
    PackageError,
    SpecError,
    TestMismatchError,
    UnsafePackageError,
    WorkerCrashedError,
)
from .loader import Neuropod, load_neuropod
from .spec import DTYPES, ProblemDefinition, TensorSpec
from .spec_inference import infer_spec

__version__ = "0.1.0"

__all__ = [
    "DTYPES",
    "InferenceError",
    "InputValidationError",
    "ManifestError",
    "Neuropod",
    "NeuropodError",
    "OutputValidationError",
    "PackageError",
    "ProblemDefinition",
    "SpecError",
    "TensorSpec",
    "TestMismatchError",
    "UnsafePackageError",
    "WorkerCrashedError",
    "create_placeholder_neuropod",
    "infer_spec",
    "load_neuropod",
]


def __getattr__(name: str) -> Any:
    if name == "create_placeholder_neuropod":
        from .packagers.placeholder import create_placeholder_neuropod

        return create_placeholder_neuropod
    raise AttributeError(f"module 'neuropod' has no attribute {name!r}")
