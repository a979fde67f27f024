"""Run the model in this process through its backend.

This is also how a worker process runs its model, so the checks here hold
for out-of-process models as well.
"""

from __future__ import annotations

from ..backends import BackendOptions, get_backend_class
from ..backends.base import missing_input_error
from ..errors import NeuropodError, PackageError
from ..package import Package
from .base import Executor, TensorDict

__all__ = ["InProcessExecutor"]


class InProcessExecutor(Executor):
    def __init__(self, package: Package, options: BackendOptions) -> None:
        backend_class = get_backend_class(package.config.platform)
        try:
            self.backend = backend_class(package, options)
        except NeuropodError:
            raise
        except Exception as exc:  # noqa: BLE001 - a framework's loader fails on corrupt files in its own ways
            # A corrupt artifact makes frameworks raise IndexError, UnicodeDecodeError, ... from deep inside.
            raise PackageError(
                f"{package.data_dir}: the {package.config.platform} backend cannot load the model: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._required_order = list(self.backend.required_inputs())
        self._required = frozenset(self._required_order)
        if not self._required:
            self.infer = self.backend.infer  # type: ignore[method-assign]  # nothing to check: skip one call frame

    def infer(self, inputs: TensorDict) -> TensorDict:
        # The one place the missing-input rule is applied (Backend.required_inputs says what is needed).
        if not inputs.keys() >= self._required:
            missing = next(name for name in self._required_order if name not in inputs)
            raise missing_input_error(missing, self._required_order)
        return self.backend.infer(inputs)

    def close(self) -> None:
        self.backend.close()
