"""The ONNX backend: ``0/data/model.onnx`` run with ONNX Runtime.

Numeric tensors go through IO binding: each input is wrapped in an
``OrtValue`` that shares the numpy array's memory, and each output is bound to
the CPU and handed back as a numpy view of the buffer ONNX Runtime allocated
(the view keeps that buffer alive). So on the CPU no tensor is copied on the
way in or out. ONNX Runtime cannot bind string tensors, so a model with a
string input or output runs through ``InferenceSession.run`` instead, which
converts the unicode arrays to and from its own string tensors.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import onnxruntime as ort

from ..errors import InferenceError, PackageError
from ..package import Package
from .base import Backend, BackendOptions, TensorDict, as_string_array, gpu_unavailable_warning

__all__ = ["OnnxBackend", "MODEL_FILE", "choose_providers"]

MODEL_FILE = "model.onnx"
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def choose_providers(visible_gpu: Any) -> List[Any]:
    """CUDA on ``visible_gpu`` when ONNX Runtime has it, else the CPU (warning if a GPU was asked for)."""
    if visible_gpu is None:
        return [_CPU]
    if _CUDA in ort.get_available_providers():
        return [(_CUDA, {"device_id": int(visible_gpu)}), _CPU]
    gpu_unavailable_warning("onnxruntime", visible_gpu)
    return [_CPU]


def _session_options(options: BackendOptions) -> ort.SessionOptions:
    settings = ort.SessionOptions()
    if options.intra_op_threads:
        settings.intra_op_num_threads = int(options.intra_op_threads)
    if options.inter_op_threads:
        settings.inter_op_num_threads = int(options.inter_op_threads)
        # ONNX Runtime uses the inter-op pool only when the graph runs in parallel mode.
        settings.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return settings


class OnnxBackend(Backend):
    """Runs an ONNX model whose graph inputs and outputs carry the spec's names."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        path = package.data_dir / MODEL_FILE
        if not path.is_file():
            raise PackageError(f"{path}: ONNX model file is missing")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=_session_options(options), providers=choose_providers(options.visible_gpu)
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PackageError(f"{path}: onnxruntime {ort.__version__} cannot load this model: {exc}") from exc
        graph_inputs = {node.name for node in self.session.get_inputs()}
        graph_outputs = [node.name for node in self.session.get_outputs()]
        config = package.config
        missing = [s.name for s in config.input_spec if s.name not in graph_inputs]
        missing += [s.name for s in config.output_spec if s.name not in graph_outputs]
        if missing:
            raise PackageError(
                f"{path}: the spec names {missing}, which the ONNX graph lacks; "
                f"graph inputs {sorted(graph_inputs)}, graph outputs {graph_outputs}"
            )
        self.providers = self.session.get_providers()
        self._output_names = graph_outputs
        self._uses_strings = any(s.dtype == "string" for s in (*config.input_spec, *config.output_spec))
        self._bfloat16_outputs = {s.name for s in config.output_spec if s.dtype == "bfloat16"}

    def infer(self, inputs: TensorDict) -> TensorDict:
        try:
            if self._uses_strings:
                return self._run_with_conversion(inputs)
            return self._run_bound(inputs)
        except InferenceError:
            raise
        except Exception as exc:  # the model's own failure, whatever onnxruntime raised
            raise InferenceError(f"ONNX model {self.package.config.name!r} failed: {exc}") from exc

    def _run_bound(self, inputs: TensorDict) -> TensorDict:
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_ortvalue_input(name, _to_ortvalue(array))
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        outputs: Dict[str, np.ndarray] = {}
        for name, value in zip(self._output_names, values):
            # OrtValue.numpy() is a view of ONNX Runtime's buffer that keeps it alive.
            array = value.numpy()
            if name in self._bfloat16_outputs and array.dtype == np.uint16:
                import ml_dtypes

                array = array.view(ml_dtypes.bfloat16)
            outputs[name] = array
        return outputs

    def _run_with_conversion(self, inputs: TensorDict) -> TensorDict:
        feed = {name: (array.astype(object) if array.dtype.kind == "U" else array) for name, array in inputs.items()}
        values = self.session.run(self._output_names, feed)
        return {
            name: (as_string_array(value) if value.dtype.kind in "OSU" else value)
            for name, value in zip(self._output_names, values)
        }

    def close(self) -> None:
        self.session = None


def _to_ortvalue(array: np.ndarray) -> Any:
    # OrtValues need C-contiguous memory; a contiguous array is shared, anything else copied once.
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        from onnx import TensorProto

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(array)
