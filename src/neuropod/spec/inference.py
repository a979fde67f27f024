"""Specs from example tensors: the way most users start.

``infer_spec({"x": x, "y": y})`` reads names, dtypes and shapes off example
arrays and names the batch dimension (axis 0 by default) as the symbol
``"batch"``, so the result is a spec every batch size satisfies. Given several
examples, a dimension whose size differs between them becomes ``None``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import SpecError
from .tensors import Dim, TensorSpec, dtype_of_array

__all__ = ["infer_spec", "spec_from_shape"]

Examples = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    # Framework tensors (torch, TF, JAX) all convert through numpy without importing them here.
    to_numpy = getattr(value, "numpy", None)
    if callable(to_numpy):
        try:
            return np.asarray(to_numpy())
        except Exception as exc:  # noqa: BLE001 - any framework's refusal becomes one clear error
            raise SpecError(f"example {name!r}: cannot be read as an array: {exc}") from None
    if hasattr(value, "__array__") or hasattr(value, "__dlpack__"):
        return np.asarray(value)
    raise SpecError(f"example {name!r}: expected an array (numpy or a framework tensor), got {type(value).__name__}")


def spec_from_shape(
    name: str, dtype: Any, shape: Sequence[Optional[int]], symbols: Mapping[int, str]
) -> Dict[str, Any]:
    """One spec entry from a known shape: the axes in ``symbols`` (axis -> symbol) named, ``None`` kept free.

    Shared by :func:`infer_spec` (shapes of example arrays) and the Keras helpers
    (shapes of a model's symbolic tensors, whose unknown sizes are ``None``).
    """
    dims: List[Dim] = [symbols.get(axis, size) for axis, size in enumerate(shape)]
    return TensorSpec(name, dtype, tuple(dims)).to_dict()


def infer_spec(
    examples: Examples,
    symbols: Optional[Mapping[str, int]] = None,
) -> List[Dict[str, Any]]:
    """An input or output spec read off example tensors.

    Args:
        examples: a dict of name -> array (numpy, or a torch/TF/JAX tensor), or a
            list of such dicts with the same names (dimensions that differ between
            them become ``None``).
        symbols: symbol name -> axis: that axis of every tensor of higher rank is
            named by the symbol. Default ``{"batch": 0}``; pass ``{}`` for fixed
            sizes only.

    Returns:
        The spec as the original's list of ``{"name", "dtype", "shape"}`` dicts,
        ready for a packager's ``input_spec=`` / ``output_spec=``.

    Raises:
        SpecError: no examples, examples with different names, dtypes or ranks,
            or a value that is not an array.
    """
    batches = [examples] if isinstance(examples, Mapping) else list(examples)
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise SpecError("infer_spec: expected a dict of name -> array, or a non-empty list of such dicts")
    symbol_of_axis = {}
    for symbol, axis in ({"batch": 0} if symbols is None else symbols).items():
        if not isinstance(symbol, str) or not symbol or isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
            raise SpecError(f"infer_spec: symbols must map a symbol name to an axis >= 0, got {symbol!r}: {axis!r}")
        symbol_of_axis[axis] = symbol
    names = list(batches[0])
    specs = []
    for name in names:
        arrays = []
        for index, batch in enumerate(batches):
            if name not in batch or set(batch) != set(names):
                raise SpecError(f"infer_spec: example {index} has names {sorted(batch)}; example 0 has {sorted(names)}")
            arrays.append(_as_array(name, batch[name]))
        dtypes = {dtype_of_array(a) for a in arrays}
        ranks = {a.ndim for a in arrays}
        if len(dtypes) > 1 or len(ranks) > 1:
            raise SpecError(
                f"infer_spec: {name!r} has dtypes {sorted(dtypes)} and ranks {sorted(ranks)} across examples"
            )
        shape: List[Optional[int]] = []
        for axis in range(arrays[0].ndim):
            sizes = {a.shape[axis] for a in arrays}
            # A size that varies (or is empty) stays free: a fixed size would refuse real inputs.
            shape.append(None if len(sizes) > 1 or 0 in sizes else sizes.pop())
        specs.append(spec_from_shape(name, dtypes.pop(), shape, symbol_of_axis))
    return specs
