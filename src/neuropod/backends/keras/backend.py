"""The Keras 3 backend: ``0/data/model.keras`` run on whichever Keras backend is installed.

Keras picks its backend (tensorflow, jax or torch) from ``KERAS_BACKEND`` or
its config file; a ``.keras`` file runs on any of them as long as the model
uses Keras layers and ``keras.ops`` only. ``0/config.json`` may hold a
``node_name_mapping`` (spec name -> model input/output name).

The model runs compiled, as ``model.predict`` would, decided once at load:
a ``tf.function`` traced at load from the input spec on TensorFlow (a
MobileNetV2 call costs what its SavedModel costs, against 3-6x eagerly), a
``jax.jit`` of ``stateless_call`` on JAX. Keras on torch runs eagerly (its
compiled path is ``torch.compile``, whose compile time would be every
load's). A model that cannot be compiled runs eagerly, and the log says why
once (``call_path`` holds what was chosen).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ...errors import FrameworkNotInstalledError, InferenceError, PackageError
from ...package import Package, layout
from ..base import (
    Backend,
    BackendOptions,
    TensorDict,
    as_string_array,
    cause_line,
    feeds_by_model_name,
    model_failure,
)
from ..devices import pick_gpu

try:
    import keras
except (
    ImportError,
    ValueError,
) as exc:  # keras itself is there (the registry checked), but not the backend it is set to use
    raise FrameworkNotInstalledError(
        f"keras cannot start its backend: {exc}; install one of tensorflow, jax or torch "
        "(e.g. pip install 'neuropod-python[tensorflow]') and select it with KERAS_BACKEND"
    ) from exc

__all__ = ["KerasBackend", "MODEL_FILE", "model_input_names", "model_output_names"]

MODEL_FILE = layout.KERAS_MODEL

logger = logging.getLogger(__name__)


def model_input_names(model: Any) -> List[str]:
    """The names of a built model's input layers (``keras.Input(name=...)``), in call order; empty if unknown.

    The layer's name, not its tensor's: an unnamed ``keras.Input``'s tensor is
    ``keras_tensor_N`` with N counting every tensor the process built before,
    while the layer's name is stored in the ``.keras`` file.
    """
    try:
        tensors = list(model.inputs)
    except (AttributeError, TypeError, ValueError):
        return []
    return [_layer_name(tensor) for tensor in tensors]


def _layer_name(tensor: Any) -> str:
    operation = getattr(getattr(tensor, "_keras_history", None), "operation", None)
    return str(getattr(operation, "name", None) or tensor.name)


def _takes_a_list(model: Any) -> bool:
    """Whether a functional model was built with its inputs in a list: it is called with a list, in that order."""
    return isinstance(getattr(model, "_inputs_struct", None), (list, tuple))


def model_output_names(model: Any) -> List[str]:
    """The names of a model's outputs, in the order a list output comes back."""
    names = getattr(model, "output_names", None)
    return [str(name) for name in names] if names else []


def _gpu_count(backend_name: str) -> int:
    if backend_name == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend_name == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend_name == "jax":
        import jax

        return len([d for d in jax.devices() if d.platform == "gpu"])
    return 0


def _apply_thread_options(backend_name: str, options: BackendOptions) -> None:
    if not (options.intra_op_threads or options.inter_op_threads):
        return
    if backend_name == "tensorflow":
        from ..tensorflow.backend import apply_thread_options

        apply_thread_options(options.intra_op_threads, options.inter_op_threads)
    elif backend_name == "torch":
        from .._torch_tensors import apply_thread_options as apply_torch_threads

        apply_torch_threads(options.intra_op_threads, options.inter_op_threads)
    else:
        warnings.warn(
            f"intra_op_threads/inter_op_threads are not supported with the Keras {backend_name} backend; ignored",
            RuntimeWarning,
            stacklevel=3,
        )


class KerasBackend(Backend):
    """Calls the model on its named inputs; maps its outputs (dict, list or one tensor) to the spec."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        self.keras_backend = keras.backend.backend()
        _apply_thread_options(self.keras_backend, options)
        op_paths = package.custom_op_paths()
        if op_paths:
            if self.keras_backend != "tensorflow":
                raise PackageError(
                    f"{package.source}: custom ops are TensorFlow libraries, but Keras runs on {self.keras_backend}"
                )
            from ..tensorflow.backend import load_custom_ops

            load_custom_ops(op_paths)
        self.device = self._choose_device(options.visible_gpu)
        path = package.data_dir / MODEL_FILE
        if not path.is_file():
            raise PackageError(f"{path}: Keras model file is missing")
        try:
            with keras.device(self.device):
                self.model = keras.saving.load_model(str(path), compile=False)
        except (OSError, ValueError, TypeError) as exc:
            raise PackageError(f"{path}: Keras {keras.__version__} cannot load this model: {exc}") from exc
        settings = package.backend_config()
        mapping = settings.get("node_name_mapping") or {}
        if not isinstance(mapping, dict):
            raise PackageError(f"{package.root / layout.BACKEND_CONFIG}: node_name_mapping must be an object")
        self._input_names = self._map_inputs(package, mapping)
        known = model_input_names(self.model)
        self._single_input = len(known) == 1
        # A list-input model is called with a list in its own order (an unnamed input has no usable dict key).
        self._input_order = known if len(known) > 1 and _takes_a_list(self.model) else []
        self._spec_outputs = [spec.name for spec in package.config.output_spec]
        # model output name -> spec name
        self._output_names: Dict[str, str] = {mapping.get(name, name): name for name in self._spec_outputs}
        self._list_outputs = self._name_list_outputs(model_output_names(self.model))
        self._to_numpy = self._numpy_converter()
        self._call, self.call_path = self._compiled_call()

    def _compiled_call(self) -> Tuple[Callable[[Any], Any], str]:
        """The model's call through its Keras backend's compiler, and its name; the eager call where there is none."""
        if self.keras_backend == "tensorflow":
            return self._tf_function()
        if self.keras_backend == "jax":
            return self._jax_jit()
        return self._eager, "eager"

    def _eager(self, inputs: Any) -> Any:
        return self.model(inputs, training=False)

    def _fall_back(self, reason: str, exc: BaseException) -> Tuple[Callable[[Any], Any], str]:
        logger.warning(
            "Keras model %r runs eagerly (slower): %s: %s", self.package.config.name, reason, cause_line(str(exc))
        )
        return self._eager, "eager"

    def _tf_function(self) -> Tuple[Callable[[Any], Any], str]:
        import tensorflow as tf

        from ..tensorflow.backend import tf_dtype

        specs = {
            spec.name: tf.TensorSpec(
                [dim if isinstance(dim, int) else None for dim in spec.shape], tf_dtype(spec.dtype)
            )
            for spec in self.package.config.input_spec
        }
        signature = self._arrange({self._input_names[name]: spec for name, spec in specs.items()})
        function = tf.function(self._eager, input_signature=[signature])
        try:
            with keras.device(self.device):
                function.get_concrete_function()  # traced now, once: the first call costs what the others do
        except Exception as exc:  # whatever the model raises while traced: it still runs eagerly
            return self._fall_back("tracing it with tf.function from the input spec failed", exc)
        return function, "tf.function"

    def _jax_jit(self) -> Tuple[Callable[[Any], Any], str]:
        import jax

        model = self.model
        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]

        @jax.jit
        def run(trainable: Any, non_trainable: Any, inputs: Any) -> Any:
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
            return outputs

        tracer_errors = tuple(
            getattr(jax.errors, name)
            for name in ("ConcretizationTypeError", "TracerBoolConversionError", "TracerArrayConversionError")
            if hasattr(jax.errors, name)
        )

        def call(inputs: Any) -> Any:
            try:
                return run(trainable, non_trainable, inputs)
            except tracer_errors as exc:  # Python control flow on values: jit cannot trace it, eager runs it
                self._call, self.call_path = self._fall_back("jax.jit cannot trace it", exc)
                return self._call(inputs)

        return call, "jax.jit"

    def _arrange(self, feeds: Dict[str, Any]) -> Any:
        """Inputs by model name -> what the model is called with: one tensor, a list in its order, or a dict."""
        if self._single_input:
            return next(iter(feeds.values()))
        if self._input_order:
            return [feeds[name] for name in self._input_order]
        return feeds

    def _choose_device(self, visible_gpu: Optional[int]) -> str:
        gpu_count = _gpu_count(self.keras_backend) if visible_gpu is not None else 0
        gpu = pick_gpu(visible_gpu, gpu_count, f"keras ({self.keras_backend})")
        return "cpu:0" if gpu is None else f"gpu:{gpu}"

    def _map_inputs(self, package: Package, mapping: Mapping[str, str]) -> Dict[str, str]:
        names = {spec.name: mapping.get(spec.name, spec.name) for spec in package.config.input_spec}
        known = model_input_names(self.model)
        if len(known) == 1 and len(names) == 1:
            return {spec_name: known[0] for spec_name in names}  # one input each: matched whatever their names
        if known:
            missing = [f"{spec!r} -> {name!r}" for spec, name in names.items() if name not in known]
            if missing:
                raise PackageError(
                    f"{package.source}: inputs {', '.join(missing)} are not among the Keras model's inputs {known} "
                    "(set node_name_mapping)"
                )
        return names

    def _name_list_outputs(self, model_names: List[str]) -> List[str]:
        """Spec names for a list output: by the output layers' names when they cover the spec, else by position."""
        renamed = self._output_names
        if model_names and all(name in model_names for name in renamed):
            return [renamed.get(name, name) for name in model_names]
        return list(self._spec_outputs)

    def _numpy_converter(self) -> Any:
        if self.keras_backend == "tensorflow":
            from ..tensorflow.backend import to_numpy as tf_to_numpy

            return tf_to_numpy

        def convert(value: Any, name: str) -> np.ndarray:
            array = np.asarray(keras.ops.convert_to_numpy(value))
            return as_string_array(array) if array.dtype.kind in "SO" else array

        return convert

    def infer(self, inputs: TensorDict) -> TensorDict:
        call_with = self._arrange(feeds_by_model_name(inputs, self._input_names, "Keras model"))
        try:
            with keras.device(self.device):
                result = self._call(call_with)
        except Exception as exc:  # the model's own failure, whatever the Keras backend raised
            raise model_failure("Keras", self.package.config.name, exc, inputs=inputs) from exc
        return self._outputs_to_numpy(result)

    def _outputs_to_numpy(self, result: Any) -> TensorDict:
        convert = self._to_numpy
        if isinstance(result, dict):
            renamed = self._output_names
            return {renamed.get(str(key), str(key)): convert(value, str(key)) for key, value in result.items()}
        if isinstance(result, (list, tuple)):
            names = self._list_outputs
            if len(result) != len(names):
                raise InferenceError(
                    f"Keras model returned {len(result)} outputs, but the output spec names {len(names)}: {names}"
                )
            return {name: convert(value, name) for name, value in zip(names, result)}
        if len(self._spec_outputs) != 1:
            raise InferenceError(
                f"Keras model returned one tensor, but the output spec names {len(self._spec_outputs)} outputs: "
                f"{self._spec_outputs}"
            )
        return {self._spec_outputs[0]: convert(result, self._spec_outputs[0])}

    def close(self) -> None:
        self.model = None
