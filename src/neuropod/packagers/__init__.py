"""Packagers: turn a model into a neuropod package and self-test it.

Each framework's packager lives beside its backend, in
``neuropod.backends.<framework>.packager`` (the original's import path too);
this module re-exports them, each imported on first use, so
``import neuropod.packagers`` imports no framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:  # what type checkers and IDEs see; at runtime each is imported on first use (_PACKAGERS)
    from ..backends.jax.packager import create_jax_neuropod
    from ..backends.keras.packager import create_keras_neuropod
    from ..backends.onnx.packager import create_onnx_neuropod
    from ..backends.placeholder.packager import create_placeholder_neuropod
    from ..backends.python.packager import create_python_neuropod
    from ..backends.pytorch.packager import create_pytorch_neuropod
    from ..backends.tensorflow.packager import create_tensorflow_neuropod
    from ..backends.torch_export.packager import create_torch_export_neuropod
    from ..backends.torchscript.packager import create_torchscript_neuropod

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

# public name -> the module that defines it
_PACKAGERS: Dict[str, str] = {
    "create_placeholder_neuropod": "neuropod.backends.placeholder.packager",
    "create_python_neuropod": "neuropod.backends.python.packager",
    "create_pytorch_neuropod": "neuropod.backends.pytorch.packager",
    "create_torchscript_neuropod": "neuropod.backends.torchscript.packager",
    "create_tensorflow_neuropod": "neuropod.backends.tensorflow.packager",
    "create_keras_neuropod": "neuropod.backends.keras.packager",
    "create_torch_export_neuropod": "neuropod.backends.torch_export.packager",
    "create_onnx_neuropod": "neuropod.backends.onnx.packager",
    "create_jax_neuropod": "neuropod.backends.jax.packager",
}


def __getattr__(name: str) -> Any:
    module = _PACKAGERS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuropod.packagers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> Any:
    return sorted(list(globals()) + list(_PACKAGERS))
