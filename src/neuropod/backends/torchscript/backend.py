"""The TorchScript backend: ``0/data/model.pt`` loaded with ``torch.jit.load``."""

from __future__ import annotations

import warnings
from typing import Any, List, Sequence

import torch

from ...errors import PackageError
from ...package import Package, layout
from .._torch_tensors import TorchBackend, freeze_parameters, outputs_to_numpy
from ..base import BackendOptions, TensorDict, model_failure

__all__ = ["TorchScriptBackend", "MODEL_FILE"]

MODEL_FILE = layout.TORCHSCRIPT_MODEL


class TorchScriptBackend(TorchBackend):
    """Calls ``forward`` with keyword tensors, or with one dict when ``forward`` takes a single dict."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        path = package.data_dir / MODEL_FILE
        if not path.exists():
            raise PackageError(f"{path}: TorchScript model file is missing")
        try:
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated; the package format still is TorchScript.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # a corrupt file raises RuntimeError, IndexError, UnicodeDecodeError, ...
            raise PackageError(f"{path}: torch {torch.__version__} cannot load this TorchScript file: {exc}") from exc
        self.module.eval()
        freeze_parameters(self.module)
        self._takes_dict = _forward_takes_one_dict(self.module)

    def required_inputs(self) -> Sequence[str]:
        """Arguments of ``forward`` without a default (none when it takes one dict: the model decides)."""
        if self._takes_dict:
            return []
        try:
            arguments: List[Any] = list(self.module.forward.schema.arguments)[1:]  # drop self
        except AttributeError:
            return super().required_inputs()
        optional = {argument.name for argument in arguments if _has_default(argument)}
        return [spec.name for spec in self.package.config.input_spec if spec.name not in optional]

    def infer(self, inputs: TensorDict) -> TensorDict:
        tensors = self.to_tensors(inputs)
        try:
            result = self.module(tensors) if self._takes_dict else self.module(**tensors)
        except Exception as exc:  # the model's own failure, whatever the framework raised
            raise model_failure("TorchScript", self.package.config.name, exc, inputs=inputs) from exc
        return outputs_to_numpy(result, self._output_names)


def _has_default(argument: Any) -> bool:
    if hasattr(argument, "has_default_value"):
        return bool(argument.has_default_value())
    return argument.default_value is not None  # torch < 1.12 has no has_default_value(); a None default reads as none


def _forward_takes_one_dict(module: Any) -> bool:
    try:
        arguments: List[Any] = list(module.forward.schema.arguments)[1:]  # drop self
    except AttributeError:
        return False
    return len(arguments) == 1 and arguments[0].type.kind() == "DictType"
