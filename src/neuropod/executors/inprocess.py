"""Run the model in this process through its backend."""

from __future__ import annotations

from ..backends import BackendOptions, get_backend_class
from ..package import Package
from .base import Executor, TensorDict

__all__ = ["InProcessExecutor"]


class InProcessExecutor(Executor):
    def __init__(self, package: Package, options: BackendOptions) -> None:
        backend_class = get_backend_class(package.config.platform)
        self.backend = backend_class(package, options)
        self.infer = self.backend.infer  # type: ignore[method-assign]  # skip one call frame per inference

    def infer(self, inputs: TensorDict) -> TensorDict:
        return self.backend.infer(inputs)

    def close(self) -> None:
        self.backend.close()
