"""The TorchScript backend: ``0/data/model.pt`` loaded with ``torch.jit.load``."""

from __future__ import annotations

import warnings
from typing import Any, List

import torch

from ..errors import InferenceError, PackageError
from ..package import Package
from ._torch_tensors import (
    apply_thread_options,
    choose_device,
    freeze_parameters,
    input_devices,
    load_custom_ops,
    to_numpy,
    to_torch,
)
from .base import Backend, BackendOptions, TensorDict

__all__ = ["TorchScriptBackend", "MODEL_FILE"]

MODEL_FILE = "model.pt"


class TorchScriptBackend(Backend):
    """Calls ``forward`` with keyword tensors, or with one dict when ``forward`` takes a single dict."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        apply_thread_options(options.intra_op_threads, options.inter_op_threads)
        load_custom_ops(package.custom_op_paths())
        self.device = choose_device(options.visible_gpu)
        self._input_devices = input_devices(self.device, package.config.input_tensor_device)
        self._cpu = torch.device("cpu")
        path = package.data_dir / MODEL_FILE
        if not path.exists():
            raise PackageError(f"{path}: TorchScript model file is missing")
        try:
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated; the package format still is TorchScript.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location=self.device)
        except RuntimeError as exc:
            raise PackageError(f"{path}: torch {torch.__version__} cannot load this TorchScript file: {exc}") from exc
        self.module.eval()
        freeze_parameters(self.module)
        self._takes_dict = _forward_takes_one_dict(self.module)
        self._output_names = [spec.name for spec in package.config.output_spec]

    def infer(self, inputs: TensorDict) -> TensorDict:
        devices = self._input_devices
        cpu = self._cpu
        tensors = {name: to_torch(array, devices.get(name, cpu)) for name, array in inputs.items()}
        try:
            result = self.module(tensors) if self._takes_dict else self.module(**tensors)
        except Exception as exc:  # the model's own failure, whatever the framework raised
            raise InferenceError(f"TorchScript model {self.package.config.name!r} failed: {exc}") from exc
        return self._outputs_to_numpy(result)

    def _outputs_to_numpy(self, result: Any) -> TensorDict:
        names = self._output_names
        if isinstance(result, dict):
            return {str(k): to_numpy(v, str(k)) for k, v in result.items()}
        if hasattr(result, "_fields"):  # a named tuple
            return {k: to_numpy(getattr(result, k), k) for k in result._fields}
        if isinstance(result, (tuple, list)) and not _is_string_list(result):
            if len(result) != len(names):
                raise InferenceError(
                    f"model returned {len(result)} values, but the output spec names {len(names)}: {names}"
                )
            return {name: to_numpy(value, name) for name, value in zip(names, result)}
        if len(names) != 1:
            raise InferenceError(
                f"model returned a single {type(result).__name__}, "
                f"but the output spec names {len(names)} outputs: {names}"
            )
        return {names[0]: to_numpy(result, names[0])}

    def close(self) -> None:
        self.module = None


def _is_string_list(value: Any) -> bool:
    return len(value) > 0 and isinstance(value[0], (str, list)) and not isinstance(value[0], torch.Tensor)


def _forward_takes_one_dict(module: Any) -> bool:
    try:
        arguments: List[Any] = list(module.forward.schema.arguments)[1:]  # drop self
    except AttributeError:
        return False
    return len(arguments) == 1 and arguments[0].type.kind() == "DictType"
