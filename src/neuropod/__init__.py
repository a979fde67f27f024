"""Neuropod: one API to package and run deep-learning models from any framework.

``import neuropod`` imports numpy and the standard library only; each
framework is imported by its backend on first use.
"""

from __future__ import annotations

from typing import Any

from . import errors
from ._version import __version__ as __version__
from .errors import *  # noqa: F403  (every error class: errors.__all__)
from .loader import Neuropod, load_neuropod
from .spec import DTYPES, ProblemDefinition, TensorSpec, infer_spec

# The package's public surface: these names and every error class (a test checks
# that it matches what the package holds).
__all__ = [
    "DTYPES",
    "Neuropod",
    "ProblemDefinition",
    "TensorSpec",
    "create_placeholder_neuropod",  # noqa: F405  (imported on first use: __getattr__ below)
    "infer_spec",
    "load_neuropod",
]
__all__ += errors.__all__


def __getattr__(name: str) -> Any:
    if name == "create_placeholder_neuropod":
        from .packagers import create_placeholder_neuropod

        return create_placeholder_neuropod
    raise AttributeError(f"module 'neuropod' has no attribute {name!r}")
