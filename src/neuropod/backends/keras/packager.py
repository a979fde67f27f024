"""``create_keras_neuropod``: a Keras 3 model in ``0/data/model.keras``."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional

from ..._original_options import log_once
from ...errors import PackageError, SpecError
from ...package import layout
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgs, packager, specs_of
from ...spec import as_specs
from ...spec.inference import spec_from_shape

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_keras_neuropod", "infer_keras_input_spec", "infer_keras_output_spec"]


@packager()
def create_keras_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    sess: Any = None,
    model: Any = None,
    node_name_mapping: Optional[Mapping[str, str]] = None,
    *,
    init_op_names: Optional[Iterable[str]] = None,
    **shared: Unpack[PackagingArgs],
) -> Path:
    """Package a Keras 3 model; it runs on whichever Keras backend the loading side has.

    Args:
        neuropod_path: where to write the package (a zip unless
            ``package_as_zip=False``).
        model_name: the model's name.
        sess: accepted for compatibility with the original (a TF1 session);
            Keras 3 has no sessions, so it is ignored with a warning.
        model: a Keras 3 model (functional, sequential, or a registered
            subclass), saved with ``model.save(...model.keras)``.
        node_name_mapping: spec name -> the model's input or output name
            (``keras.Input(name=...)``, the output dict key or the output
            layer's name). Spec names missing here are used as they are.
        init_op_names: the original forwarded these TF1 graph ops to its
            TensorFlow packager; a Keras 3 model initialises itself, so they
            are not run (said once in the log).
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Returns:
        The package path.

    Raises:
        PackageError: no model, or spec inputs the model does not have.
        TestMismatchError: the self-test's outputs differ from
            ``test_expected_out`` (a ``ValueError``).
    """
    if sess is not None:
        warnings.warn(
            "create_keras_neuropod: sess= is ignored; Keras 3 models carry their own weights and need no session",
            DeprecationWarning,
            stacklevel=2,
        )
    if model is None:
        raise PackageError("create_keras_neuropod: model= is required (a Keras 3 model)")
    if init_op_names:
        # The original forwarded these to its TF1 graph packager; a Keras 3 model restores its own state.
        log_once(
            ("create_keras_neuropod", "init_op_names"),
            f"create_keras_neuropod: init_op_names={list(init_op_names)!r} are not run: they named TF1 graph ops "
            "the original's TensorFlow packager ran after loading, and a Keras 3 model initialises itself when loaded",
        )
    mapping: Dict[str, str] = dict(node_name_mapping or {})
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value:
            raise SpecError(f"node_name_mapping: expected spec name -> model name strings, got {key!r}: {value!r}")
    # As in the original, specs left out are read from the model.
    input_spec, output_spec = specs_of(shared, shared["input_spec"], shared["output_spec"], from_test_data=False)
    if input_spec is None:
        input_spec = infer_keras_input_spec(model, node_name_mapping)
        if not node_name_mapping:
            mapping.update(_renamed(_input_layers(model)))
    if output_spec is None:
        output_spec = infer_keras_output_spec(model, node_name_mapping)
        if not node_name_mapping and _output_keys(model) is None:
            mapping.update(_renamed(_output_layers(model)))
    _check_inputs(model, mapping, input_spec)
    shared["input_spec"], shared["output_spec"] = input_spec, output_spec

    def write_model(root: Path) -> Dict[str, Any]:
        import keras

        model.save(str(root / layout.DATA_DIR / layout.KERAS_MODEL))
        return {"node_name_mapping": mapping, "keras_backend": keras.backend.backend()}

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="keras",
        write_model=write_model,
        **shared,
    )


def _check_inputs(model: Any, mapping: Mapping[str, str], input_spec: Any) -> None:
    """Refuse, at packaging time, spec inputs that name none of the model's inputs."""
    try:
        known = [layer.name for layer in _input_layers(model)]
    except (AttributeError, TypeError, ValueError):
        return  # a subclassed model that was never built: the self-test will tell
    specs = as_specs(input_spec, "input_spec")
    if len(known) == 1 and len(specs) == 1:
        return  # one input each: matched whatever their names
    for spec in specs:
        name = mapping.get(spec.name, spec.name)
        if name not in known:
            raise PackageError(
                f"input {spec.name!r} maps to {name!r}, which is not among the Keras model's inputs {known} "
                "(set node_name_mapping)"
            )


def _layer_of(tensor: Any) -> Any:
    """The layer that made a symbolic Keras tensor (an ``InputLayer`` for a model input)."""
    return tensor._keras_history.operation


def _input_layers(model: Any) -> List[Any]:
    return [_layer_of(tensor) for tensor in model.inputs]


def _output_layers(model: Any) -> List[Any]:
    return [_layer_of(tensor) for tensor in model.outputs]


def _snake_case(name: str) -> str:
    """A class name as Keras turns it into a layer's default name (``InputLayer`` -> ``input_layer``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def stable_names(layers: List[Any]) -> List[str]:
    """The layers' names, with the names Keras made up numbered by their place among ``layers``.

    A layer nobody named is called after its class plus a counter of the
    layers of that class the process built before (``input_layer_3``), so
    the same model built after another gets other names. Such a name (the
    class's name, alone or with ``_N``) becomes the class's name for the
    first such layer here, ``_1`` for the second, and so on: what a fresh
    process that builds only this model calls them.
    """
    names = []
    seen: Dict[str, int] = {}
    for layer in layers:
        name = str(layer.name)
        prefix = _snake_case(type(layer).__name__)
        if re.fullmatch(re.escape(prefix) + r"(_\d+)?", name):
            count = seen[prefix] = seen.get(prefix, -1) + 1
            name = prefix if count == 0 else f"{prefix}_{count}"
        names.append(name)
    return names


def _renamed(layers: List[Any]) -> Dict[str, str]:
    """Stable name -> the layer's own name, where the two differ (the backend finds the layer by the latter)."""
    return {name: str(layer.name) for name, layer in zip(stable_names(layers), layers) if name != layer.name}


def infer_keras_input_spec(model: Any, node_name_mapping: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """The input spec of a built Keras model: one entry per model input, its first dimension ``"batch_size"``.

    Args:
        model: a built Keras model (functional or sequential).
        node_name_mapping: spec name -> Keras input name; when given it must
            cover every input. Without it the spec names are the input
            layers' names (``keras.Input(name=...)``), the ones Keras made up
            numbered as a fresh process would (:func:`stable_names`), so they
            do not depend on what the process built before.

    Raises:
        SpecError: the model has no known inputs, or the mapping leaves one out.
    """
    try:
        tensors = list(model.inputs)
        layers = _input_layers(model)
    except (AttributeError, TypeError, ValueError):
        raise SpecError("infer_keras_input_spec: the Keras model is not built, so its inputs are unknown") from None
    return _infer_spec(layers, tensors, node_name_mapping, "input")


def infer_keras_output_spec(model: Any, node_name_mapping: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """The output spec of a built Keras model, named after its output layers (see :func:`infer_keras_input_spec`)."""
    try:
        tensors = list(model.outputs)
        layers = _output_layers(model)
    except (AttributeError, TypeError, ValueError):
        raise SpecError("infer_keras_output_spec: the Keras model is not built, so its outputs are unknown") from None
    keys = _output_keys(model)
    return _infer_spec(layers, tensors, node_name_mapping, "output", keys)


def _output_keys(model: Any) -> Optional[List[str]]:
    """A dict output's keys in the order of ``model.outputs`` (the model returns them, not layer names)."""
    structure = getattr(model, "_outputs_struct", None)
    return sorted(str(key) for key in structure) if isinstance(structure, dict) else None


def _infer_spec(
    layers: List[Any],
    tensors: List[Any],
    node_name_mapping: Optional[Mapping[str, str]],
    kind: str,
    keys: Optional[List[str]] = None,
) -> List[Dict[str, Any]]:
    spec_names = {keras_name: name for name, keras_name in (node_name_mapping or {}).items()}
    keras_names = keys or [str(layer.name) for layer in layers]
    spec = []
    for keras_name, stable_name, tensor in zip(keras_names, keys or stable_names(layers), tensors):
        name = spec_names.get(keras_name, None if spec_names else stable_name)
        if name is None:
            raise SpecError(f"node_name_mapping: the Keras {kind} {keras_name!r} is not mapped to a spec name")
        dims = [None if dim is None else int(dim) for dim in tuple(tensor.shape)]
        # As the original: the first dimension is the batch, named "batch_size", and the shape is a tuple.
        entry = spec_from_shape(name, str(getattr(tensor.dtype, "name", tensor.dtype)), dims, {0: "batch_size"})
        entry["shape"] = tuple(entry["shape"])
        spec.append(entry)
    return spec
