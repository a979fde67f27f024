"""The torch.export backend: ``0/data/model.pt2`` loaded with ``torch.export.load``.

Tensors cross as in the TorchScript backend: ``torch.from_numpy`` in and
``.numpy()`` out, so CPU tensors are never copied.
"""

from __future__ import annotations

from typing import Any, List

import torch

from ..errors import InferenceError, InputValidationError, PackageError
from ..package import Package
from ._torch_tensors import apply_thread_options, choose_device, input_devices, load_custom_ops, to_numpy, to_torch
from .base import Backend, BackendOptions, TensorDict

__all__ = ["TorchExportBackend", "MODEL_FILE"]

MODEL_FILE = "model.pt2"


class TorchExportBackend(Backend):
    """Calls the exported program with keyword tensors; it returns a dict, a tuple or one tensor."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        apply_thread_options(options.intra_op_threads, options.inter_op_threads)
        load_custom_ops(package.custom_op_paths())
        self.device = choose_device(options.visible_gpu)
        self._input_devices = input_devices(self.device, package.config.input_tensor_device)
        self._cpu = torch.device("cpu")
        path = package.data_dir / MODEL_FILE
        if not path.is_file():
            raise PackageError(f"{path}: torch.export program file is missing")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises RuntimeError, SerializeError, ...
            raise PackageError(f"{path}: torch {torch.__version__} cannot load this exported program: {exc}") from exc
        self._positional = _positional_names(program)
        self.module: Any = program.module()
        if self.device.type != "cpu":
            self.module = self.module.to(self.device)
        self._output_names = [spec.name for spec in package.config.output_spec]
        self._input_names = [spec.name for spec in package.config.input_spec]

    def infer(self, inputs: TensorDict) -> TensorDict:
        if len(inputs) != len(self._input_names):
            missing = [name for name in self._input_names if name not in inputs]
            raise InputValidationError(f"input {missing[0]!r} is required by the exported program but was not given")
        devices = self._input_devices
        cpu = self._cpu
        tensors = {name: to_torch(array, devices.get(name, cpu)) for name, array in inputs.items()}
        try:
            with torch.no_grad():
                if self._positional:
                    args = [tensors.pop(name) for name in self._positional]
                    result = self.module(*args, **tensors)
                else:
                    result = self.module(**tensors)
        except Exception as exc:  # the model's own failure, or a shape guard of the exported program
            raise InferenceError(f"torch.export model {self.package.config.name!r} failed: {exc}") from exc
        return self._outputs_to_numpy(result)

    def _outputs_to_numpy(self, result: Any) -> TensorDict:
        names = self._output_names
        if isinstance(result, dict):
            return {str(k): to_numpy(v, str(k)) for k, v in result.items()}
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, (tuple, list)):
            if len(result) != len(names):
                raise InferenceError(
                    f"model returned {len(result)} values, but the output spec names {len(names)}: {names}"
                )
            return {name: to_numpy(value, name) for name, value in zip(names, result)}
        raise InferenceError(f"model returned {type(result).__name__}, expected a dict, a tuple or a tensor")

    def close(self) -> None:
        self.module = None


def _positional_names(program: Any) -> List[str]:
    """Names of the inputs a program exported with positional arguments takes by position.

    Our packager exports with keyword arguments only; a ready ExportedProgram
    may have positional ones, named by its graph's user inputs.
    """
    try:
        count = program.call_spec.in_spec.child(0).num_children
        names = list(program.graph_signature.user_inputs)
    except (AttributeError, IndexError, TypeError):
        return []
    return [str(name) for name in names[:count]]
