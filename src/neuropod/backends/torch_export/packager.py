"""``create_torch_export_neuropod``: a ``torch.export`` ExportedProgram in ``0/data/model.pt2``.

Unlike TorchScript, an ExportedProgram is traced with example inputs. The
spec's shapes say which dimensions stay dynamic: every symbol becomes one
``torch.export.Dim`` shared by all tensors that use it (so the exporter
checks they agree), and every ``None`` becomes its own ``Dim.DYNAMIC`` (the
exporter may relate it to others, e.g. two ``None`` columns that are added).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Sequence, Tuple

from ...errors import PackageError, SpecError
from ...package import layout
from ...packagers._failures import framework_failure
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgsAfterSpecs, packager, specs_of
from ...spec import TensorSpec, as_specs, symbol_bounds

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_torch_export_neuropod", "torch_dynamic_shapes", "torch_example_inputs"]

MODEL_FILE = layout.TORCH_EXPORT_PROGRAM


def torch_example_inputs(example_inputs: Any, input_spec: Sequence[TensorSpec], who: str) -> Dict[str, Any]:
    """Example inputs as a dict of name -> torch tensor, checked against the spec.

    Accepts a dict (name -> numpy array or tensor) or a tuple in input-spec
    order. Dynamic dimensions must have size 2 or more: ``torch.export``
    treats sizes 0 and 1 as constants and would freeze them into the model.
    """
    import numpy as np
    import torch

    if example_inputs is None:
        raise PackageError(f"{who}: example_inputs= is needed to trace the module (or pass test_input_data=)")
    if isinstance(example_inputs, Mapping):
        named = dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != len(input_spec):
            raise PackageError(
                f"{who}: example_inputs has {len(example_inputs)} values, but the input spec names {len(input_spec)}"
            )
        named = {spec.name: value for spec, value in zip(input_spec, example_inputs)}
    else:
        raise PackageError(f"{who}: example_inputs must be a dict or a tuple, got {type(example_inputs).__name__}")
    specs = {spec.name: spec for spec in input_spec}
    tensors = {}
    for name, value in named.items():
        spec = specs.get(name)
        if spec is None:
            raise PackageError(
                f"{who}: example input {name!r} is not in the input spec; expected one of {sorted(specs)}"
            )
        if spec.dtype == "string":
            raise SpecError(f"{who}: input {name!r} is a string tensor, which {who} cannot trace")
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        if tensor.dim() != len(spec.shape):
            raise PackageError(
                f"{who}: example input {name!r} has rank {tensor.dim()}, the spec says {len(spec.shape)}"
            )
        for index, dim in enumerate(spec.shape):
            if not isinstance(dim, int) and tensor.shape[index] < 2:
                raise PackageError(
                    f"{who}: example input {name!r} has size {tensor.shape[index]} in dynamic dimension {index}; "
                    "use size 2 or more (the exporter treats sizes 0 and 1 as constants)"
                )
        tensors[name] = tensor
    return tensors


def _dim_name(symbol: str, taken: Dict[str, Any]) -> str:
    # torch.export.Dim names must be identifiers and unique.
    base = re.sub(r"\W", "_", symbol)
    if not base or base[0].isdigit():
        base = "d_" + base
    name, suffix = base, 1
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name


def torch_dynamic_shapes(input_spec: Sequence[TensorSpec], names: Sequence[str]) -> Dict[str, Dict[int, Any]]:
    """``dynamic_shapes`` for ``torch.export``: a shared ``Dim`` per symbol, ``Dim.DYNAMIC`` per ``None``.

    A bounded symbol (``("seq", 1, 512)``) becomes ``Dim("seq", min=1, max=512)``; an unbounded one may be empty.
    """
    from torch.export import Dim

    by_symbol: Dict[str, Any] = {}
    used_names: Dict[str, Any] = {}
    specs = {spec.name: spec for spec in input_spec}
    bounds = symbol_bounds(input_spec, "input_spec")
    shapes: Dict[str, Dict[int, Any]] = {}
    for name in names:
        dims: Dict[int, Any] = {}
        for index, dim in enumerate(specs[name].shape):
            if isinstance(dim, str):
                if dim not in by_symbol:
                    dim_name = _dim_name(dim, used_names)
                    low, high = bounds.get(dim, (0, None))
                    limits = {"min": low} if high is None else {"min": low, "max": high}
                    by_symbol[dim] = used_names[dim_name] = Dim(dim_name, **limits)
                dims[index] = by_symbol[dim]
            elif dim is None:
                dims[index] = Dim.DYNAMIC
        shapes[name] = dims
    return shapes


def _string_specs(input_spec: Any, output_spec: Any) -> Tuple[str, ...]:
    specs = (*as_specs(input_spec, "input_spec"), *as_specs(output_spec, "output_spec"))
    return tuple(s.name for s in specs if s.dtype == "string")


@packager()
def create_torch_export_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    module: Any,
    example_inputs: Any = None,
    input_spec: Any = None,
    output_spec: Any = None,
    strict: bool = False,
    *,
    dynamic_shapes: Any = None,
    **shared: Unpack[PackagingArgsAfterSpecs],
) -> Path:
    """Package a ``torch.nn.Module`` (or an ``ExportedProgram``) with ``torch.export``.

    Args:
        neuropod_path: where to write the package.
        model_name: the model's name.
        module: a ``torch.nn.Module`` whose ``forward`` takes the spec's
            inputs as keyword tensors and returns a dict, a tuple (in
            output-spec order) or a single tensor; or a ready
            ``torch.export.ExportedProgram``.
        example_inputs: a dict of name -> array/tensor (or a tuple in input
            spec order) to trace with; defaults to ``test_input_data``.
            Dynamic dimensions need size 2 or more.
        input_spec: the input specs; symbols and ``None`` become dynamic dims
            (a bounded symbol, ``("seq", 1, 512)``, a ``Dim`` with that range).
        output_spec: the output specs.
        strict: passed to ``torch.export.export`` (non-strict tracing by default).
        dynamic_shapes: passed to ``torch.export.export`` as it is, instead of
            the ``Dim`` s built from the spec (keyed by input name).
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Raises:
        SpecError: the spec holds string tensors (torch.export has none).
        PackageError: the module cannot be exported with these dynamic shapes.
    """
    input_spec, output_spec = specs_of(shared, input_spec, output_spec, required_by="create_torch_export_neuropod")
    strings = _string_specs(input_spec, output_spec)
    if strings:
        raise SpecError(
            f"create_torch_export_neuropod: torch.export has no string tensors; the spec declares {list(strings)}"
        )
    inputs = as_specs(input_spec, "input_spec")

    def write_model(root: Path) -> None:
        import torch

        if isinstance(module, torch.export.ExportedProgram):
            program = module
        else:
            examples = torch_example_inputs(
                example_inputs if example_inputs is not None else shared["test_input_data"], inputs, "torch.export"
            )
            shapes = dynamic_shapes if dynamic_shapes is not None else torch_dynamic_shapes(inputs, list(examples))
            try:
                program = torch.export.export(module, (), kwargs=examples, dynamic_shapes=shapes, strict=strict)
            except Exception as exc:  # torch raises UserError, GuardOnDataDependentSymNode, ...
                raise _export_failure(module, exc) from exc
        torch.export.save(program, str(root / layout.DATA_DIR / MODEL_FILE))

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="torch_export",
        write_model=write_model,
        input_spec=input_spec,
        output_spec=output_spec,
        **shared,
    )


def _export_failure(module: Any, exc: BaseException) -> PackageError:
    """torch.export's failure, with its suggested fixes (if any) and the three ways out."""
    fixes = [line for line in str(exc).partition("Suggested fixes:")[2].splitlines() if "Dim(" in line]
    failure = framework_failure(
        f"create_torch_export_neuropod: torch.export could not export {type(module).__name__}",
        exc,
        "bound the symbols in the spec (a shape entry such as ('seq', 1, 512) becomes Dim('seq', min=1, max=512)), "
        "or pass dynamic_shapes= (handed to torch.export as it is), "
        "or export it yourself (torch.export.export(...)) and pass the ExportedProgram as module=",
    )
    if fixes:
        first, _, rest = str(failure).partition("\n")
        suggested = "\n".join("  " + line.strip() for line in fixes if line.strip())
        return PackageError(f"{first}\ntorch suggests:\n{suggested}\n{rest}")
    return failure
