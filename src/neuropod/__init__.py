"""Neuropod: one API to package and run deep-learning models from any framework.

``import neuropod`` imports numpy and the standard library only; each
framework is imported by its backend on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    AuthenticationError,
    BackendNotFoundError,
    ChannelClosed,
    ChannelTimeout,
    EnvironmentBuildError,
    FrameworkNotInstalledError,
    FrameworkVersionError,
    InferenceError,
    InputValidationError,
    ManifestError,
    ModelClosedError,
    ModelNotFoundError,
    ModelNotReadyError,
    NeuropodError,
    OptionError,
    OutputValidationError,
    PackageError,
    RemoteError,
    RequestTooLargeError,
    RequirementsError,
    SharedMemoryError,
    SpecError,
    TestMismatchError,
    UnsafePackageError,
    VersionRangeError,
    WireFormatError,
    WorkerCrashedError,
    WorkerError,
    WorkerTimeoutError,
)
from .loader import Neuropod, load_neuropod
from .spec import DTYPES, ProblemDefinition, TensorSpec
from .spec_inference import infer_spec

__version__ = "0.1.0"

# Every name below, and nothing else, is the package's public surface (a test checks it
# against what the package holds and against errors.__all__).
__all__ = [
    "AuthenticationError",
    "BackendNotFoundError",
    "ChannelClosed",
    "ChannelTimeout",
    "DTYPES",
    "EnvironmentBuildError",
    "FrameworkNotInstalledError",
    "FrameworkVersionError",
    "InferenceError",
    "InputValidationError",
    "ManifestError",
    "ModelClosedError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "Neuropod",
    "NeuropodError",
    "OptionError",
    "OutputValidationError",
    "PackageError",
    "ProblemDefinition",
    "RemoteError",
    "RequestTooLargeError",
    "RequirementsError",
    "SharedMemoryError",
    "SpecError",
    "TensorSpec",
    "TestMismatchError",
    "UnsafePackageError",
    "VersionRangeError",
    "WireFormatError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerTimeoutError",
    "create_placeholder_neuropod",
    "infer_spec",
    "load_neuropod",
]


def __getattr__(name: str) -> Any:
    if name == "create_placeholder_neuropod":
        from .packagers.placeholder import create_placeholder_neuropod

        return create_placeholder_neuropod
    raise AttributeError(f"module 'neuropod' has no attribute {name!r}")
