"""Packagers: turn a model into a neuropod package and self-test it.

Each packager is imported from its own module on first use, so
``import neuropod.packagers`` imports no framework.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

__all__ = [
    "create_placeholder_neuropod",
    "create_python_neuropod",
    "create_pytorch_neuropod",
    "create_torchscript_neuropod",
    "create_tensorflow_neuropod",
    "create_keras_neuropod",
    "create_torch_export_neuropod",
    "create_onnx_neuropod",
    "create_jax_neuropod",
]

# public name -> module under neuropod.packagers
_PACKAGERS: Dict[str, str] = {
    "create_placeholder_neuropod": "placeholder",
    "create_python_neuropod": "python",
    "create_pytorch_neuropod": "python",
    "create_torchscript_neuropod": "torchscript",
    "create_tensorflow_neuropod": "tensorflow",
    "create_keras_neuropod": "keras",
    "create_torch_export_neuropod": "torch_export",
    "create_onnx_neuropod": "onnx",
    "create_jax_neuropod": "jax",
}


def __getattr__(name: str) -> Any:
    module = _PACKAGERS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuropod.packagers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> Any:
    return sorted(list(globals()) + list(_PACKAGERS))
