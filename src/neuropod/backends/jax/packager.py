"""``create_jax_neuropod``: a JAX function serialised with ``jax.export``.

The package holds StableHLO (``0/data/model.jax_exported``), not Python
source, so it runs without the user's code. Parameters are stored separately
in ``0/data/params.npz`` (flattened pytree leaves, in order) and passed as
arguments, so large weights are not baked into the program as constants.

Shapes: every spec symbol becomes one JAX dimension variable shared by the
tensors that use it, and every ``None`` its own variable. JAX assumes a
dimension variable is at least 1; a dimension is declared as ``v - 1`` so
that empty tensors (size 0) are accepted too. Where the function needs two
``None`` dimensions to be equal (``x + y`` with ``x: [batch, None]`` and
``y: [batch, None]``), name them with ``polymorphic_shapes=``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ...errors import PackageError, SpecError
from ...package import layout
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgsAfterSpecs, packager, specs_of
from ...spec import TensorSpec, as_specs, numpy_dtype

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_jax_neuropod", "EXPORTED_FILE", "PARAMS_FILE"]

EXPORTED_FILE = layout.JAX_EXPORTED
PARAMS_FILE = layout.JAX_PARAMS
_WIDE_DTYPES = ("int64", "uint64", "float64")


def _export_shapes(
    inputs: Sequence[TensorSpec], overrides: Optional[Mapping[str, Sequence[Any]]]
) -> Dict[str, Tuple[Any, ...]]:
    """Per input, its shape with every symbol and None replaced by a JAX dimension variable name or an int."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {s.name for s in inputs})
    if unknown:
        raise SpecError(f"polymorphic_shapes: {unknown} are not inputs of the spec")
    variables: Dict[str, str] = {}  # spec symbol -> JAX variable name
    shapes: Dict[str, Tuple[Any, ...]] = {}
    free = 0
    for spec in inputs:
        shape = list(overrides.get(spec.name, spec.shape))
        if len(shape) != len(spec.shape):
            raise SpecError(
                f"polymorphic_shapes[{spec.name!r}]: rank {len(shape)}, "
                f"but the spec's shape {list(spec.shape)} has rank {len(spec.shape)}"
            )
        resolved: List[Any] = []
        for index, (dim, declared) in enumerate(zip(shape, spec.shape)):
            if isinstance(declared, int):
                resolved.append(declared)
            elif isinstance(dim, str):
                if dim not in variables:
                    variables[dim] = f"s{len(variables)}_{re.sub(r'[^0-9a-zA-Z]', '_', dim)}"
                resolved.append(variables[dim])
            elif dim is None:
                resolved.append(f"free{free}")
                free += 1
            else:
                raise SpecError(f"polymorphic_shapes[{spec.name!r}][{index}]: expected a symbol or None, got {dim!r}")
        shapes[spec.name] = tuple(resolved)
    return shapes


def _argument_specs(inputs: Sequence[TensorSpec], shapes: Dict[str, Tuple[Any, ...]]) -> Dict[str, Any]:
    import jax
    from jax import export

    names = sorted({d for shape in shapes.values() for d in shape if isinstance(d, str)})
    variables = dict(zip(names, export.symbolic_shape(", ".join(names)))) if names else {}
    specs = {}
    for spec in inputs:
        # "v - 1": JAX dimension variables are >= 1, so the size v - 1 may be 0.
        dims = tuple(d if isinstance(d, int) else variables[d] - 1 for d in shapes[spec.name])
        specs[spec.name] = jax.ShapeDtypeStruct(dims, numpy_dtype(spec.dtype))
    return specs


@packager()
def create_jax_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    function: Callable[..., Any],
    params: Any = None,
    input_spec: Any = None,
    output_spec: Any = None,
    polymorphic_shapes: Optional[Mapping[str, Sequence[Any]]] = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
    **shared: Unpack[PackagingArgsAfterSpecs],
) -> Path:
    """Package a JAX function.

    Args:
        neuropod_path: where to write the package.
        model_name: the model's name.
        function: ``function(**inputs)`` or, when ``params`` is given,
            ``function(params, **inputs)``; returns a dict of output name to
            array (or a tuple in output-spec order, or one array). It is
            traced with ``jax.jit``, so it must be jittable.
        params: a pytree of arrays (weights), stored in ``0/data/params.npz``.
        input_spec: the input specs (no strings: JAX has no string dtype).
        output_spec: the output specs.
        polymorphic_shapes: per input name, a shape list overriding the
            spec's for export only, to name ``None`` dimensions that must be
            equal: ``{"x": ["batch", "n"], "y": ["batch", "n"]}``.
        platforms: the platforms to lower for (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``).
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Raises:
        SpecError: the spec declares string tensors.
        PackageError: ``jax.export`` cannot trace the function with these shapes.
    """
    input_spec, output_spec = specs_of(shared, input_spec, output_spec, required_by="create_jax_neuropod")
    inputs = as_specs(input_spec, "input_spec")
    outputs = as_specs(output_spec, "output_spec")
    strings = [s.name for s in (*inputs, *outputs) if s.dtype == "string"]
    if strings:
        raise SpecError(f"create_jax_neuropod: JAX has no string dtype; the spec declares string tensors {strings}")
    shapes = _export_shapes(inputs, polymorphic_shapes)
    wide = any(s.dtype in _WIDE_DTYPES for s in (*inputs, *outputs))
    output_names = [s.name for s in outputs]

    def write_model(root: Path) -> Dict[str, Any]:
        import jax
        import numpy as np
        from jax import export

        from .backend import x64_scope

        leaves, treedef = jax.tree_util.tree_flatten(params)

        def program(param_leaves: List[Any], tensors: Dict[str, Any]) -> Dict[str, Any]:
            if params is None:
                result = function(**tensors)
            else:
                result = function(jax.tree_util.tree_unflatten(treedef, param_leaves), **tensors)
            if isinstance(result, dict):
                return result
            values = result if isinstance(result, (tuple, list)) else (result,)
            if len(values) != len(output_names):
                raise PackageError(
                    f"the function returns {len(values)} values, but the output spec names {output_names}"
                )
            return dict(zip(output_names, values))

        # 64-bit dtypes exist in JAX only with x64 on; the backend calls under the same setting.
        with x64_scope(wide):
            param_specs = [jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype) for leaf in leaves]
            try:
                exported = export.export(jax.jit(program), platforms=tuple(platforms))(
                    param_specs, _argument_specs(inputs, shapes)
                )
            except PackageError:
                raise
            except Exception as exc:  # shape-polymorphism and tracing errors come as several types
                hint = ""
                if "incompatible shapes" in str(exc) or "broadcast" in str(exc):
                    hint = " (if two None dimensions must be equal, name them with polymorphic_shapes=)"
                what = getattr(function, "__name__", "the function")
                raise PackageError(f"jax.export could not export {what}: {exc}{hint}") from exc
        data_dir = root / layout.DATA_DIR
        (data_dir / EXPORTED_FILE).write_bytes(bytes(exported.serialize()))
        arrays: Dict[str, Any] = {}
        bfloat16_leaves = []
        for index, leaf in enumerate(leaves):
            array = np.asarray(leaf)
            if array.dtype.name == "bfloat16":  # .npz has no bfloat16: store the bits, note the index
                array = array.view(np.uint16)
                bfloat16_leaves.append(index)
            arrays[f"p{index}"] = array
        np.savez(data_dir / PARAMS_FILE, **arrays)
        return {"enable_x64": wide, "param_count": len(leaves), "bfloat16_params": bfloat16_leaves}

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="jax",
        write_model=write_model,
        input_spec=input_spec,
        output_spec=output_spec,
        **shared,
    )
