"""The torch.export backend: ``0/data/model.pt2`` loaded with ``torch.export.load``.

Tensors cross as in the TorchScript backend: ``torch.from_numpy`` in and
``.numpy()`` out, so CPU tensors are never copied.
"""

from __future__ import annotations

from typing import Any, List

import torch

from ...errors import PackageError
from ...package import Package, layout
from .._torch_tensors import TorchBackend, freeze_parameters, outputs_to_numpy
from ..base import BackendOptions, TensorDict, model_failure

__all__ = ["TorchExportBackend", "MODEL_FILE"]

MODEL_FILE = layout.TORCH_EXPORT_PROGRAM


class TorchExportBackend(TorchBackend):
    """Calls the exported program with keyword tensors; it returns a dict, a tuple or one tensor."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        path = package.data_dir / MODEL_FILE
        if not path.is_file():
            raise PackageError(f"{path}: torch.export program file is missing")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises RuntimeError, SerializeError, ...
            raise PackageError(f"{path}: torch {torch.__version__} cannot load this exported program: {exc}") from exc
        self._positional = _positional_names(program)
        self.module = program.module()
        if self.device.type != "cpu":
            self.module = self.module.to(self.device)
        freeze_parameters(self.module)
        self._input_names = [spec.name for spec in package.config.input_spec]

    def infer(self, inputs: TensorDict) -> TensorDict:
        tensors = self.to_tensors(inputs)
        try:
            if self._positional:
                args = [tensors.pop(name) for name in self._positional]
                result = self.module(*args, **tensors)
            else:
                result = self.module(**tensors)
        except Exception as exc:  # the model's own failure, or a shape guard of the exported program
            raise model_failure("torch.export", self.package.config.name, exc, inputs=inputs) from exc
        return outputs_to_numpy(result, self._output_names)


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
