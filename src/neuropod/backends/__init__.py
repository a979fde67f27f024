"""The backend registry: platform name -> backend, imported on first use.

Built-in backends are listed by import string, so ``import neuropod`` never
imports a framework. Third-party backends register through the
``neuropod.backends`` entry-point group (name = platform, value =
``module:Class``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type

from ..errors import BackendNotFoundError, FrameworkNotInstalledError
from ..options import OptionTable
from .base import Backend, BackendOptions

__all__ = [
    "Backend",
    "BackendOptions",
    "BackendInfo",
    "BUILTIN_BACKENDS",
    "backend_option_table",
    "get_backend_class",
    "known_platforms",
]

ENTRY_POINT_GROUP = "neuropod.backends"


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend lives and what it needs.

    Attributes:
        target: ``module:Class`` of the backend.
        requires: top-level modules that must be importable (the framework).
        extra: the pip extra that installs them.
        options: the backend's own ``load_neuropod`` options (declared here,
            so they are checked without importing the framework).
    """

    target: str
    requires: Tuple[str, ...] = ()
    extra: Optional[str] = None
    options: OptionTable = ()


BUILTIN_BACKENDS: Dict[str, BackendInfo] = {
    "placeholder": BackendInfo("neuropod.backends.placeholder.backend:PlaceholderBackend"),
    "python": BackendInfo("neuropod.backends.python.backend:PythonBackend"),
    "pytorch": BackendInfo("neuropod.backends.python.backend:PythonBackend"),
    "torchscript": BackendInfo("neuropod.backends.torchscript.backend:TorchScriptBackend", ("torch",), "torch"),
    "torch_export": BackendInfo("neuropod.backends.torch_export.backend:TorchExportBackend", ("torch",), "torch"),
    "onnx": BackendInfo("neuropod.backends.onnx.backend:OnnxBackend", ("onnxruntime",), "onnx"),
    "jax": BackendInfo("neuropod.backends.jax.backend:JaxBackend", ("jax",), "jax"),
    "tensorflow": BackendInfo("neuropod.backends.tensorflow.backend:TensorFlowBackend", ("tensorflow",), "tensorflow"),
    "keras": BackendInfo("neuropod.backends.keras.backend:KerasBackend", ("keras",), "keras"),
}


def _entry_point_backends() -> Dict[str, str]:
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") else eps.get(ENTRY_POINT_GROUP, [])  # type: ignore[arg-type]  # Python 3.9 dict API
    return {ep.name: ep.value for ep in group}


def known_platforms() -> Tuple[str, ...]:
    return tuple(sorted(set(BUILTIN_BACKENDS) | set(_entry_point_backends())))


def _import_target(target: str) -> Type[Backend]:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)  # type: ignore[no-any-return]


def get_backend_class(platform: str) -> Type[Backend]:
    """The backend class for ``platform``, imported now.

    Raises:
        BackendNotFoundError: unknown platform (the message lists known ones).
        FrameworkNotInstalledError: the platform's framework is missing (the
            message names the extra to install).
    """
    info = BUILTIN_BACKENDS.get(platform)
    if info is None:
        target = _entry_point_backends().get(platform)
        if target is None:
            raise BackendNotFoundError(
                f"no backend for platform {platform!r}; known platforms: {', '.join(known_platforms())}"
            )
        return _import_target(target)
    for module in info.requires:
        if importlib.util.find_spec(module) is None:
            raise FrameworkNotInstalledError(
                f"platform {platform!r} needs {module}, which is not installed; "
                f"install it with: pip install 'neuropod-python[{info.extra}]'"
            )
    return _import_target(info.target)


def backend_option_table(platform: str) -> OptionTable:
    """The ``load_neuropod`` options of ``platform``'s backend.

    A built-in backend declares them in :data:`BUILTIN_BACKENDS` (no import);
    a third-party backend in its class attribute ``OPTIONS``, read by importing it.
    """
    info = BUILTIN_BACKENDS.get(platform)
    if info is not None:
        return info.options
    return tuple(getattr(get_backend_class(platform), "OPTIONS", ()))
