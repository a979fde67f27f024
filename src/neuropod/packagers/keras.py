"""``create_keras_neuropod``: a Keras 3 model in ``0/data/model.keras``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..errors import PackageError, SpecError
from ..spec import as_specs
from ._pipeline import PathLike, create_neuropod

__all__ = ["create_keras_neuropod"]

_MODEL_FILE = "model.keras"  # neuropod.backends.keras.MODEL_FILE (that module imports keras)


def create_keras_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    sess: Any = None,
    model: Any = None,
    node_name_mapping: Optional[Mapping[str, str]] = None,
    **options: Any,
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
        **options: the shared packaging options (``input_spec``,
            ``output_spec``, ``test_input_data``, ``test_expected_out``,
            ``persist_test_data``, ``package_as_zip``, ``custom_ops``,
            ``platform_version_semver``, ``input_tensor_device``,
            ``default_input_tensor_device``).

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
    mapping: Dict[str, str] = dict(node_name_mapping or {})
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value:
            raise SpecError(f"node_name_mapping: expected spec name -> model name strings, got {key!r}: {value!r}")
    _check_inputs(model, mapping, options.get("input_spec", ()))

    def write_model(model_dir: Path) -> Dict[str, Any]:
        import keras

        model.save(str(model_dir / "data" / _MODEL_FILE))
        return {"node_name_mapping": mapping, "keras_backend": keras.backend.backend()}

    return create_neuropod(
        neuropod_path=neuropod_path, model_name=model_name, platform="keras", write_model=write_model, **options
    )


def _check_inputs(model: Any, mapping: Mapping[str, str], input_spec: Any) -> None:
    """Refuse, at packaging time, spec inputs that name none of the model's inputs."""
    try:
        known = [str(tensor.name) for tensor in model.inputs]
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
