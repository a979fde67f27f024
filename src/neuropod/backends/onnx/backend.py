"""The ONNX backend: ``0/data/model.onnx`` run with ONNX Runtime.

Copies: ``InferenceSession.run`` runs contiguous numpy inputs in place and
returns each output as a numpy view of the buffer ONNX Runtime allocated (the
view keeps it alive), so on the CPU no tensor is copied either way. IO
binding would give the same on the CPU at 5-40 µs more per call (measured
with onnxruntime 1.32, see docs/frameworks.md), so it is not used. Strings:
numpy unicode arrays go in as they are; string outputs come back as object
arrays and are converted to unicode (a copy, as for every string tensor).
bfloat16 tensors travel as OrtValues carrying the ONNX type.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Dict, List

import numpy as np
import onnxruntime as ort

from ...errors import PackageError
from ...package import Package, layout
from ..base import Backend, BackendOptions, TensorDict, as_string_array, model_failure
from ..devices import pick_gpu

__all__ = ["OnnxBackend", "MODEL_FILE", "choose_providers"]

MODEL_FILE = layout.ONNX_MODEL
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16; the onnx package itself is not needed to run models


def choose_providers(visible_gpu: Any) -> List[Any]:
    """CUDA on ``visible_gpu`` when ONNX Runtime has it, else the CPU (warning if a GPU was asked for)."""
    # ONNX Runtime reports no device count: with its CUDA provider any index is
    # tried, and a wrong one fails when the session is created.
    gpu_count = sys.maxsize if visible_gpu is not None and _CUDA in ort.get_available_providers() else 0
    gpu = pick_gpu(visible_gpu, gpu_count, "onnxruntime")
    return [_CPU] if gpu is None else [(_CUDA, {"device_id": int(gpu)}), _CPU]


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
        unfed = sorted(graph_inputs - {s.name for s in config.input_spec})
        if unfed:
            raise PackageError(f"{path}: the ONNX graph needs inputs {unfed}, which the input spec does not declare")
        self.providers = self.session.get_providers()
        self._input_names = [node.name for node in self.session.get_inputs()]
        # Fetch only what the spec declares: extra graph outputs (debug tensors) are not computed for nothing.
        self._output_names = [s.name for s in config.output_spec]
        self._bfloat16_outputs = {s.name for s in config.output_spec if s.dtype == "bfloat16"}
        self._bfloat16 = bool(self._bfloat16_outputs) or any(s.dtype == "bfloat16" for s in config.input_spec)
        if self._bfloat16 and not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
            raise PackageError(
                f"{package.source}: onnxruntime {ort.__version__} cannot pass bfloat16 tensors from Python "
                "(it has no OrtValue.ortvalue_from_numpy_with_onnx_type); a newer onnxruntime can"
            )

    def infer(self, inputs: TensorDict) -> TensorDict:
        try:
            if self._bfloat16:
                values = self._run_with_ortvalues(inputs)
            else:
                values = self.session.run(self._output_names, inputs)
        except Exception as exc:  # the model's own failure, whatever onnxruntime raised
            raise model_failure("ONNX", self.package.config.name, exc, inputs=inputs) from exc
        outputs: Dict[str, np.ndarray] = {}
        for name, value in zip(self._output_names, values):
            if value.dtype.kind == "O":  # onnxruntime's string tensors
                value = as_string_array(value)
            outputs[name] = value
        return outputs

    def _run_with_ortvalues(self, inputs: TensorDict) -> List[np.ndarray]:
        # numpy has no bfloat16 onnxruntime knows of: pass the bits with the ONNX type attached.
        import ml_dtypes

        feed = {}
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            if array.dtype == ml_dtypes.bfloat16:
                feed[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), _ONNX_BFLOAT16)
            else:
                feed[name] = ort.OrtValue.ortvalue_from_numpy(array)
        values = self.session.run_with_ort_values(self._output_names, feed)
        arrays = []
        for name, value in zip(self._output_names, values):
            if name in self._bfloat16_outputs:
                # OrtValue.numpy() refuses bfloat16: copy the bits out of onnxruntime's buffer.
                count = int(np.prod(value.shape()))
                bits: Any = (ctypes.c_uint16 * count).from_address(value.data_ptr()) if count else []
                array = np.array(bits, dtype=np.uint16).reshape(value.shape()).view(ml_dtypes.bfloat16)
            else:
                array = value.numpy()
            arrays.append(array)
        return arrays

    def close(self) -> None:
        self.session = None
