"""``create_tensorflow_neuropod``: a TF1 GraphDef or a TF2 SavedModel in ``0/data/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Union

from ...errors import NeuropodError, PackageError, SpecError
from ...package import layout
from ...packagers._failures import framework_failure, is_keras_model
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgs, packager, specs_of
from ...spec import TensorSpec, as_specs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_tensorflow_neuropod"]


@packager()
def create_tensorflow_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    graph_def: Any = None,
    frozen_graph_path: Optional[PathLike] = None,
    node_name_mapping: Optional[Mapping[str, str]] = None,
    init_op_names: Union[str, Iterable[str], None] = None,
    saved_model_dir: Optional[PathLike] = None,
    model: Any = None,
    trackable_obj: Any = None,
    signature_name: str = layout.TF_DEFAULT_SIGNATURE,
    **shared: Unpack[PackagingArgs],
) -> Path:
    """Package a TensorFlow model: a TF1 graph or a TF2 SavedModel.

    Pass exactly one of ``graph_def``, ``frozen_graph_path``,
    ``saved_model_dir`` or ``model``.

    Args:
        neuropod_path: where to write the package (a zip unless
            ``package_as_zip=False``).
        model_name: the model's name.
        graph_def: a TF1 ``GraphDef`` (usually frozen: variables folded into
            constants). Stored as ``0/data/model.pb``.
        frozen_graph_path: or the path of a serialized ``GraphDef``.
        node_name_mapping: spec name -> tensor name. For a graph, the graph
            tensor (``"some_namespace/in_x:0"``; ``"some_namespace/in_x"``
            means its output 0, and a spec name missing here ``"<name>:0"``).
            For a SavedModel, the signature's input or output name (a missing
            spec name means the same name).
        init_op_names: graph ops run once after loading (e.g. table
            initialisers): a list of names, or one name. Graphs only.
        saved_model_dir: a TF2 SavedModel directory, copied to
            ``0/data/savedmodel/``.
        model: or something to save as a SavedModel: a concrete function, a
            ``tf.function`` (traced with TensorSpecs built from
            ``input_spec``; its parameters must be named like the inputs, or
            like their ``node_name_mapping`` targets), or a trackable object
            (``tf.Module``) whose ``__call__`` is used the same way, or that
            has one ``tf.function`` method with an input signature (which
            TensorFlow makes the default signature).
        trackable_obj: the original's name for ``model=`` (a trackable
            object to save with ``tf.saved_model.save``).
        signature_name: the SavedModel signature to serve
            (``serving_default`` by default).
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Returns:
        The package path.

    Raises:
        PackageError: not exactly one model source, a missing file, or a
            mapping naming a tensor the graph lacks.
        TestMismatchError: the self-test's outputs differ from
            ``test_expected_out`` (a ``ValueError``).
    """
    sources = {
        "graph_def": graph_def,
        "frozen_graph_path": frozen_graph_path,
        "saved_model_dir": saved_model_dir,
        "model": model,
        "trackable_obj": trackable_obj,
    }
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise PackageError(
            "create_tensorflow_neuropod: pass exactly one of graph_def=, frozen_graph_path=, saved_model_dir= "
            f"or model= (or trackable_obj=); got {given or 'none'}"
        )
    mapping = _check_mapping(node_name_mapping)
    # One name alone is one op, as in the original (not a list of its characters).
    init_ops = [init_op_names] if isinstance(init_op_names, str) else list(init_op_names or [])
    shared["input_spec"], shared["output_spec"] = specs_of(shared, shared["input_spec"], shared["output_spec"])
    input_specs = as_specs(shared["input_spec"] or (), "input_spec")
    output_specs = as_specs(shared["output_spec"] or (), "output_spec")
    model = model if model is not None else trackable_obj  # the original's name for the same thing
    if init_ops and (saved_model_dir is not None or model is not None):
        raise PackageError("init_op_names applies to TF1 graphs only; a SavedModel initialises itself")

    if graph_def is not None or frozen_graph_path is not None:
        graph_bytes = _graph_bytes(graph_def, frozen_graph_path)
        _check_graph_names(graph_bytes, mapping, init_ops, input_specs, output_specs)

        def write_graph(root: Path) -> Dict[str, Any]:
            (root / layout.DATA_DIR / layout.TF_GRAPH).write_bytes(graph_bytes)
            # The mapping as the user gave it (as the original wrote it), then "<name>:0" for names it leaves out.
            full_mapping = dict(mapping)
            for spec in input_specs + output_specs:
                full_mapping.setdefault(spec.name, f"{spec.name}:0")
            return {"node_name_mapping": full_mapping, "init_op_names": init_ops}

        write_model = write_graph
    else:
        if saved_model_dir is not None and not (Path(saved_model_dir) / "saved_model.pb").is_file():
            raise PackageError(f"saved_model_dir {str(saved_model_dir)!r}: no saved_model.pb there")

        def write_saved_model(root: Path) -> Dict[str, Any]:
            target = root / layout.DATA_DIR / layout.TF_SAVED_MODEL
            if saved_model_dir is not None:
                shutil.copytree(saved_model_dir, target)
            else:
                try:
                    _save_model(model, target, signature_name, input_specs, mapping)
                except NeuropodError:
                    raise
                except Exception as exc:  # a trace's TypeError, TensorFlow's own errors
                    raise framework_failure(
                        f"create_tensorflow_neuropod: TensorFlow could not trace and save {type(model).__name__}",
                        exc,
                        _save_hint(model),
                    ) from exc
            _check_signature(target, signature_name, mapping, input_specs, output_specs)
            # The original's keys (it wrote null for no mapping); the signature only when it is not the default.
            settings: Dict[str, Any] = {"node_name_mapping": mapping or None, "init_op_names": []}
            if signature_name != layout.TF_DEFAULT_SIGNATURE:
                settings["signature_name"] = signature_name
            return settings

        write_model = write_saved_model

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="tensorflow",
        write_model=write_model,
        **shared,
    )


def _check_mapping(node_name_mapping: Optional[Mapping[str, str]]) -> Dict[str, str]:
    mapping = dict(node_name_mapping or {})
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value:
            raise SpecError(f"node_name_mapping: expected spec name -> tensor name strings, got {key!r}: {value!r}")
    return mapping


def _graph_bytes(graph_def: Any, frozen_graph_path: Optional[PathLike]) -> bytes:
    if frozen_graph_path is not None:
        path = Path(frozen_graph_path)
        if not path.is_file():
            raise PackageError(f"frozen_graph_path {str(frozen_graph_path)!r}: no such file")
        return path.read_bytes()
    if isinstance(graph_def, bytes):
        return graph_def
    serialize = getattr(graph_def, "SerializeToString", None)
    if serialize is None:
        raise PackageError(f"graph_def: expected a tf.compat.v1.GraphDef, got {type(graph_def).__name__}")
    return serialize()  # type: ignore[no-any-return]


def _check_graph_names(
    graph_bytes: bytes,
    mapping: Mapping[str, str],
    init_ops: List[str],
    input_specs: Iterable[TensorSpec],
    output_specs: Iterable[TensorSpec],
) -> None:
    """Refuse, at packaging time, a mapping or init op naming a node the graph lacks."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(graph_bytes)
    except Exception as exc:  # protobuf's DecodeError
        raise PackageError(f"graph_def: not a serialized TensorFlow GraphDef: {exc}") from exc
    nodes = {node.name for node in graph_def.node}
    spec_names = {spec.name for spec in input_specs} | {spec.name for spec in output_specs}
    for name in sorted(set(mapping) - spec_names):
        raise SpecError(f"node_name_mapping: {name!r} is not an input or output in the spec")
    for name in sorted(spec_names):
        tensor_name = mapping.get(name, f"{name}:0")
        if tensor_name.split(":", 1)[0] not in nodes:
            raise PackageError(
                f"node_name_mapping: {name!r} maps to {tensor_name!r}, but the graph has no node "
                f"{tensor_name.split(':', 1)[0]!r}"
            )
    for op in init_ops:
        if op not in nodes:
            raise PackageError(f"init_op_names: the graph has no op {op!r}")


def _save_model(
    model: Any, target: Path, signature_name: str, input_specs: Iterable[TensorSpec], mapping: Mapping[str, str]
) -> None:
    import tensorflow as tf

    from .backend import tf_dtype

    def tensor_specs() -> Dict[str, Any]:
        specs = {}
        for spec in input_specs:
            name = mapping.get(spec.name, spec.name)
            shape = [dim if isinstance(dim, int) else None for dim in spec.shape]
            specs[name] = tf.TensorSpec(shape, tf_dtype(spec.dtype), name=name)
        return specs

    def concrete(function: Any) -> Any:
        if getattr(function, "input_signature", None) is not None:
            return function.get_concrete_function()
        return function.get_concrete_function(**tensor_specs())

    generic_function = getattr(tf.types.experimental, "PolymorphicFunction", tf.types.experimental.GenericFunction)
    if isinstance(model, tf.types.experimental.ConcreteFunction):
        signature, holder = model, tf.Module()
    elif isinstance(model, generic_function):
        signature, holder = concrete(model), tf.Module()
    elif callable(model):
        # A tf.Module whose __call__ is a tf.function, or any callable object (traced here).
        bound_call = model.__call__
        call = bound_call if isinstance(bound_call, generic_function) else tf.function(model)
        trackable = isinstance(model, tf.__internal__.tracking.Trackable)
        signature, holder = concrete(call), (model if trackable else tf.Module())
    elif isinstance(model, tf.__internal__.tracking.Trackable):
        # A tf.Module with a tf.function method that has an input signature:
        # TensorFlow makes that method the default signature, as the original relied on.
        tf.saved_model.save(model, str(target))
        return
    else:
        raise PackageError(
            f"model: expected a tf.Module, a tf.function or a concrete function, got {type(model).__name__}"
        )
    if holder is not model:
        # A bare function's variables must be reachable from the saved object to be saved with it.
        holder.captured_variables = list(getattr(signature, "variables", ()))
    tf.saved_model.save(holder, str(target), signatures={signature_name: signature})


def _save_hint(model: Any) -> str:
    if is_keras_model(model):
        return (
            "this is a Keras model: package it with create_keras_neuropod(model=...), or export it with "
            "model.export(<dir>) and pass saved_model_dir=<dir> here"
        )
    return (
        "give the tf.function an input_signature, or name its parameters like the spec's inputs (or their "
        "node_name_mapping targets); or save a SavedModel yourself and pass saved_model_dir="
    )


def _check_signature(
    saved_model: Path,
    signature_name: str,
    mapping: Mapping[str, str],
    input_specs: Iterable[TensorSpec],
    output_specs: Iterable[TensorSpec],
) -> None:
    """Refuse, at packaging time, a signature whose names do not match the spec (as the backend would)."""
    import tensorflow as tf

    from .backend import match_signature

    try:
        signatures = tf.saved_model.load(str(saved_model)).signatures
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise PackageError(f"saved model: TensorFlow cannot load it back: {exc}") from exc
    if signature_name not in signatures:
        raise PackageError(f"signature_name {signature_name!r}: the SavedModel has {sorted(signatures.keys())}")
    match_signature(
        signatures[signature_name],
        list(input_specs),
        list(output_specs),
        mapping,
        f"signature {signature_name!r}",
    )
