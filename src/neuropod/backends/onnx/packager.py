"""``create_onnx_neuropod``: an ONNX model in ``0/data/model.onnx``.

The model may be a ``.onnx`` file, an ``onnx.ModelProto``, or a
``torch.nn.Module`` exported here with ``torch.onnx.export``'s torch.export
based exporter (it needs ``onnxscript``, part of the ``onnx`` extra). The
spec's symbols and ``None`` dimensions become dynamic dimensions exactly as
in :func:`~neuropod.packagers.create_torch_export_neuropod`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ...errors import FrameworkNotInstalledError, PackageError, SpecError
from ...package import layout
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgsAfterSpecs, packager, specs_of
from ...spec import TensorSpec, as_specs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_onnx_neuropod"]

MODEL_FILE = layout.ONNX_MODEL

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _runtime_max_ir_version() -> Optional[int]:
    """The newest ONNX IR version the installed onnxruntime loads (None: no onnxruntime, or it says nothing).

    onnx writes its own newest IR version, and an onnx release newer than the onnxruntime beside it (as pip
    resolves them on Python 3.9: onnx 1.19 writes IR 12, onnxruntime 1.19 reads up to IR 10) makes models
    that this runtime refuses. onnxruntime names its limit only in its refusal, so one is asked for with
    a one-node model stamped with onnx's own IR version.
    """
    try:
        import onnx
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return None
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=onnx.IR_VERSION)
    try:
        onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # the runtime's own refusal, whatever class it raised
        found = re.search(r"max supported IR version: (\d+)", str(exc))
        return int(found.group(1)) if found else None
    return None


def _restamp_file_for_the_installed_runtime(path: Path) -> None:
    """Lower a copied .onnx file's IR version to what the installed onnxruntime reads (not with external data)."""
    limit = _runtime_max_ir_version()
    if limit is None:
        return
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if model.ir_version > limit and not external:
        onnx.save_model(_runnable_by_the_installed_runtime(model), str(path))


def _runnable_by_the_installed_runtime(model: Any) -> Any:
    """``model``, or a copy stamped with the newest IR version the installed onnxruntime reads."""
    limit = _runtime_max_ir_version()
    if limit is None or model.ir_version <= limit:
        return model
    _log.warning(
        "create_onnx_neuropod: the model says ONNX IR version %d, the installed onnxruntime reads up to %d: "
        "stored as IR version %d (the operators' opsets are unchanged)",
        model.ir_version,
        limit,
        limit,
    )
    lowered = type(model)()
    lowered.CopyFrom(model)
    lowered.ir_version = limit
    return lowered


def _output_names(module: Any, examples: Dict[str, Any], output_spec: List[TensorSpec]) -> List[str]:
    """The graph's output names: the dict keys the module returns, else the output spec's names in order."""
    import torch

    with torch.no_grad():
        result = module(**examples)
    if isinstance(result, dict):
        return [str(k) for k in result]
    count = len(result) if isinstance(result, (tuple, list)) else 1
    if count != len(output_spec):
        raise PackageError(f"the module returns {count} values, but the output spec names {len(output_spec)}")
    return [spec.name for spec in output_spec]


def _export_torch(
    module: Any,
    example_inputs: Any,
    inputs: List[TensorSpec],
    outputs: List[TensorSpec],
    target: Path,
    opset: Optional[int],
) -> None:
    import importlib.util

    import torch

    from ..torch_export.packager import torch_dynamic_shapes, torch_example_inputs

    if importlib.util.find_spec("onnxscript") is None:
        raise FrameworkNotInstalledError(
            "exporting a torch module to ONNX needs onnxscript; install it with: pip install 'neuropod-python[onnx]'"
        )
    examples = torch_example_inputs(example_inputs, inputs, "torch.onnx.export")
    names = list(examples)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about every optional converter it skips
            program = torch.onnx.export(
                module,
                (),
                kwargs=examples,
                input_names=names,
                output_names=_output_names(module, examples, outputs),
                dynamic_shapes=torch_dynamic_shapes(inputs, names),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # torch raises export and conversion errors of many types
        raise PackageError(f"torch.onnx.export could not export {type(module).__name__}: {exc}") from exc
    if program is None:
        raise PackageError("torch.onnx.export returned no program")
    program.save(str(target))


@packager()
def create_onnx_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    model: Any,
    example_inputs: Any = None,
    opset_version: Optional[int] = None,
    input_spec: Any = None,
    output_spec: Any = None,
    **shared: Unpack[PackagingArgsAfterSpecs],
) -> Path:
    """Package an ONNX model.

    The graph's input and output names must be the spec's tensor names.

    Args:
        neuropod_path: where to write the package.
        model_name: the model's name.
        model: the path of a ``.onnx`` file, an ``onnx.ModelProto``, or a
            ``torch.nn.Module`` taking the spec's inputs as keyword tensors
            (returning a dict, a tuple in output-spec order, or one tensor).
        example_inputs: for a torch module: a dict of name -> array/tensor
            to trace with (defaults to ``test_input_data``); dynamic
            dimensions need size 2 or more.
        opset_version: for a torch module: the ONNX opset to target.
        input_spec: the input specs.
        output_spec: the output specs.
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Raises:
        PackageError: the file is missing, or the module cannot be exported.
        SpecError: a torch module with string tensors in its spec.
    """
    input_spec, output_spec = specs_of(shared, input_spec, output_spec, required_by="create_onnx_neuropod")
    inputs = list(as_specs(input_spec, "input_spec"))
    outputs = list(as_specs(output_spec, "output_spec"))
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise PackageError(f"model {str(model)!r}: no such ONNX file")
        kind = "file"
    elif type(model).__name__ == "ModelProto":
        kind = "proto"
    elif hasattr(model, "forward") and callable(model):
        kind = "torch"
        strings = [s.name for s in (*inputs, *outputs) if s.dtype == "string"]
        if strings:
            raise SpecError(f"create_onnx_neuropod: a torch module has no string tensors; the spec declares {strings}")
    else:
        raise PackageError(
            f"create_onnx_neuropod: model must be an .onnx path, an onnx.ModelProto or a torch module, "
            f"got {type(model).__name__}"
        )

    def write_model(root: Path) -> None:
        target = root / layout.DATA_DIR / MODEL_FILE
        if kind == "file":
            shutil.copyfile(model, target)
            _restamp_file_for_the_installed_runtime(target)
        elif kind == "proto":
            import onnx

            onnx.save_model(_runnable_by_the_installed_runtime(model), str(target))
        else:
            examples = example_inputs if example_inputs is not None else shared["test_input_data"]
            _export_torch(model, examples, inputs, outputs, target, opset_version)

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="onnx",
        write_model=write_model,
        input_spec=input_spec,
        output_spec=output_spec,
        **shared,
    )
