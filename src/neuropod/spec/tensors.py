"""Tensor specs: dtypes, shapes, symbols and their validation.

A :class:`TensorSpec` names a tensor, its dtype and its shape. Shape entries
are positive ints (a fixed size), ``None`` (any size) or a symbol string: every
use of one symbol must resolve to the same size within one call, across
inputs and outputs. A symbol may carry bounds, written in the shape as
``("seq", 1, 512)`` (``["seq", 1, 512]`` in JSON; ``None`` for no upper
bound): every tensor sharing the symbol is held to them, ``infer`` refuses a
size outside them, and ``torch.export`` gets them as its ``Dim``'s range.

Validation work (dtype objects, per-dimension rules) is compiled once into a
:class:`SpecValidator` at load time, so ``infer`` pays only a few comparisons.
Pure numpy; no framework is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputValidationError, OutputValidationError, SpecError

__all__ = [
    "DTYPES",
    "Dim",
    "TensorSpec",
    "SpecValidator",
    "canonical_dtype",
    "numpy_dtype",
    "dtype_of_array",
    "as_specs",
    "symbol_bounds",
    "SymbolBound",
]

#: Every dtype a spec may name, in canonical form.
DTYPES: Tuple[str, ...] = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
)

Dim = Union[int, str, None]

_STRING_ALIASES = {"string", "str", "bytes", "unicode", "object"}


def canonical_dtype(dtype: Any) -> str:
    """Return the canonical dtype name for ``dtype``.

    Accepts canonical names, numpy-style aliases (``"double"``, ``"float"``,
    ``"half"``), numpy dtype objects and scalar types, and ``str``/``bytes``
    for strings.

    Raises:
        SpecError: if the dtype is not one neuropod supports.
    """
    if dtype is str or dtype is bytes:
        return "string"
    if isinstance(dtype, str):
        lowered = dtype.lower()
        if lowered in _STRING_ALIASES:
            return "string"
        if lowered == "bfloat16":
            return "bfloat16"
    if getattr(dtype, "__name__", None) == "bfloat16" or getattr(dtype, "name", None) == "bfloat16":
        return "bfloat16"
    if dtype is None:  # np.dtype(None) is float64: a missing dtype must not become one
        raise SpecError(f"dtype: None is not a dtype; expected one of {', '.join(DTYPES)}")
    try:
        np_dtype = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError, OverflowError, RecursionError):
        # numpy parses some strings as literals ('01' raises SyntaxError) and many more as type codes
        raise SpecError(f"dtype: {dtype!r} is not a dtype; expected one of {', '.join(DTYPES)}") from None
    if np_dtype.kind in "USO":
        return "string"
    name = np_dtype.name
    if name not in DTYPES:
        raise SpecError(f"dtype: {dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    return name


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds tensors of canonical ``dtype``.

    Strings are held as numpy unicode arrays; bfloat16 uses ``ml_dtypes``.
    """
    if dtype == "string":
        return np.dtype("U")
    if dtype == "bfloat16":
        import ml_dtypes  # imported on first use: only bfloat16 specs need it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def dtype_of_array(array: np.ndarray) -> str:
    """The canonical dtype name of a numpy array (``"string"`` for U/S arrays)."""
    kind = array.dtype.kind
    if kind in "US":
        return "string"
    if array.dtype.name == "bfloat16":
        return "bfloat16"
    return array.dtype.name


#: A symbol's bounds: ``(symbol, lowest size, highest size or None)``.
SymbolBound = Tuple[str, int, Optional[int]]


def _bounded_symbol(name: str, index: int, dim: Any) -> SymbolBound:
    """``("seq", 1, 512)`` (or a JSON list) -> the symbol and its bounds, checked."""
    where = f"tensor {name!r}: shape[{index}]"
    if len(dim) != 3 or not isinstance(dim[0], str) or not dim[0]:
        raise SpecError(f"{where}: a bounded symbol is (name, lowest, highest), e.g. ('seq', 1, 512); got {dim!r}")
    symbol, low, high = dim
    for label, value in (("lowest", low), ("highest", high)):
        if value is None and label == "highest":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SpecError(f"{where}: the {label} size of symbol {symbol!r} must be an int >= 0; got {value!r}")
    if high is not None and high < low:
        raise SpecError(f"{where}: symbol {symbol!r} has bounds [{low}, {high}]: the highest is below the lowest")
    return symbol, int(low), None if high is None else int(high)


def _check_dim(name: str, index: int, dim: Any) -> Dim:
    if dim is None:
        return None
    if isinstance(dim, bool):
        raise SpecError(f"tensor {name!r}: shape[{index}] must be a positive int, None or a symbol string; got {dim!r}")
    if isinstance(dim, (int, np.integer)):
        if dim <= 0:
            raise SpecError(f"tensor {name!r}: shape[{index}] must be a positive int; got {dim}")
        return int(dim)
    if isinstance(dim, str):
        if not dim:
            raise SpecError(f"tensor {name!r}: shape[{index}] is an empty symbol name")
        return dim
    raise SpecError(
        f"tensor {name!r}: shape[{index}] must be a positive int, None or a symbol string; "
        f"got {type(dim).__name__} {dim!r}"
    )


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a problem definition.

    Attributes:
        name: the tensor's name, unique within its inputs or outputs.
        dtype: a canonical dtype name (aliases are canonicalised on build).
        shape: a tuple of positive ints, ``None`` and symbol strings (a
            bounded symbol given as ``("seq", 1, 512)`` is its name here).
        bounds: the bounds of its symbols, ``(symbol, lowest, highest or
            None)``, sorted; filled from bounded symbols in the shape.
    """

    name: str
    dtype: str
    shape: Tuple[Dim, ...] = field(default=())
    bounds: Tuple[SymbolBound, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"name: expected a non-empty string, got {self.name!r}")
        # Names become file names (CLI outputs, test data entries): no paths.
        if self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            raise SpecError(f"name: {self.name!r} may not contain '/', '\\' or NUL, nor be '.' or '..'")
        try:
            dtype = canonical_dtype(self.dtype)
        except SpecError as exc:
            raise SpecError(f"tensor {self.name!r}: {exc}") from None
        object.__setattr__(self, "dtype", dtype)
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, Iterable):
            raise SpecError(
                f"tensor {self.name!r}: shape must be a list, got {type(self.shape).__name__} {self.shape!r}"
            )
        bounds: Dict[str, SymbolBound] = {}
        for given in self.bounds:  # a spec rebuilt from another's fields: its bounds, checked again
            bound = _bounded_symbol(self.name, -1, given)
            bounds[bound[0]] = bound
        shape: List[Dim] = []
        for index, dim in enumerate(self.shape):
            if isinstance(dim, (tuple, list)):
                bound = _bounded_symbol(self.name, index, dim)
                if bounds.setdefault(bound[0], bound) != bound:
                    raise SpecError(
                        f"tensor {self.name!r}: symbol {bound[0]!r} has two bounds, "
                        f"{list(bounds[bound[0]][1:])} and {list(bound[1:])}"
                    )
                dim = bound[0]
            shape.append(_check_dim(self.name, index, dim))
        unused = sorted(set(bounds) - {d for d in shape if isinstance(d, str)})
        if unused:
            raise SpecError(f"tensor {self.name!r}: bounds for {unused}, which its shape does not use")
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "bounds", tuple(sorted(bounds.values())))

    @property
    def symbol_bounds(self) -> Dict[str, Tuple[int, Optional[int]]]:
        """symbol -> (lowest, highest or None), for the bounded symbols of this tensor."""
        return {symbol: (low, high) for symbol, low, high in self.bounds}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TensorSpec:
        """Build from the original's ``{"name", "dtype", "shape"}`` dict form."""
        if isinstance(spec, TensorSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise SpecError(f"tensor spec: expected a dict with name, dtype and shape, got {type(spec).__name__}")
        missing = [key for key in ("name", "dtype", "shape") if key not in spec]
        if missing:
            raise SpecError(f"tensor spec {spec.get('name', '?')!r}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(spec) - {"name", "dtype", "shape"})
        if unknown:
            raise SpecError(f"tensor spec {spec['name']!r}: unknown field(s) {', '.join(unknown)}")
        return cls(spec["name"], spec["dtype"], spec["shape"])

    def to_dict(self) -> Dict[str, Any]:
        """The original's dict form, shape as a list (a bounded symbol as ``["seq", 1, 512]``)."""
        bounds = self.symbol_bounds
        shape = [[d, *bounds[d]] if isinstance(d, str) and d in bounds else d for d in self.shape]
        return {"name": self.name, "dtype": self.dtype, "shape": shape}

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)


def as_specs(specs: Any, what: str = "spec") -> Tuple[TensorSpec, ...]:
    """Canonicalise a list of dicts or TensorSpecs, checking names are unique."""
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
        raise SpecError(f"{what}: expected a list of tensor specs, got {type(specs).__name__}")
    result = tuple(TensorSpec.from_dict(s) for s in specs)
    seen = set()
    for spec in result:
        if spec.name in seen:
            raise SpecError(f"{what}: tensor name {spec.name!r} appears more than once")
        seen.add(spec.name)
    symbol_bounds(result, what)
    return result


def symbol_bounds(specs: Iterable[TensorSpec], what: str = "spec") -> Dict[str, Tuple[int, Optional[int]]]:
    """symbol -> (lowest, highest or None) over ``specs``; a bound on one use holds for every use.

    Raises:
        SpecError: two tensors give one symbol different bounds.
    """
    found: Dict[str, Tuple[int, Optional[int]]] = {}
    owner: Dict[str, str] = {}
    for spec in specs:
        for symbol, bound in spec.symbol_bounds.items():
            if found.setdefault(symbol, bound) != bound:
                raise SpecError(
                    f"{what}: symbol {symbol!r} is bounded {list(found[symbol])} by {owner[symbol]!r} "
                    f"but {list(bound)} by {spec.name!r}"
                )
            owner.setdefault(symbol, spec.name)
    return found


class _CompiledSpec:
    """One tensor's checks, resolved once: dtype object, rank, fixed sizes, symbols."""

    __slots__ = ("name", "dtype", "np_dtype", "is_string", "rank", "fixed", "symbols", "shape")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.dtype = spec.dtype
        self.is_string = spec.dtype == "string"
        self.np_dtype = None if self.is_string else numpy_dtype(spec.dtype)
        self.rank = len(spec.shape)
        self.shape = spec.shape
        self.fixed = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, int))
        self.symbols = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, str))


class SpecValidator:
    """Checks tensors against specs; built once per model.

    Args:
        specs: the tensor specs to check against.
        kind: ``"input"`` or ``"output"``: names the tensors in messages and
            picks the exception class.
    """

    def __init__(self, specs: Sequence[TensorSpec], kind: str) -> None:
        self.kind = kind
        self._error = InputValidationError if kind == "input" else OutputValidationError
        self._specs = {s.name: _CompiledSpec(s) for s in specs}
        self._names = ", ".join(repr(n) for n in self._specs) or "none"
        self._bounds = symbol_bounds(specs, f"{kind} spec")

    def validate(self, tensors: Mapping[str, Any], bindings: Optional[Dict[str, int]] = None) -> Dict[str, int]:
        """Check ``tensors``; return the symbol sizes they bind.

        Tensors are optional (as in the original); unknown names are refused.
        ``bindings`` carries symbol sizes from an earlier check (the inputs,
        when checking outputs) and is updated in place.

        Raises:
            InputValidationError / OutputValidationError: naming the tensor,
            the expected and the actual.
        """
        if bindings is None:
            bindings = {}
        kind = self.kind
        specs = self._specs
        for name, array in tensors.items():
            spec = specs.get(name)
            if spec is None:
                raise self._error(f"{kind} {name!r} is not in the spec; expected one of {self._names}")
            dtype = getattr(array, "dtype", None)
            if dtype is None or not hasattr(array, "shape"):
                raise self._error(f"{kind} {name!r}: expected a numpy array, got {type(array).__name__}")
            if spec.is_string:
                if dtype.kind not in "US":
                    raise self._error(f"{kind} {name!r}: expected dtype string, got {dtype_of_array(array)}")
            elif dtype != spec.np_dtype:
                got = dtype_of_array(array)
                if not dtype.isnative:  # same name, other byte order: say which
                    got += f" in non-native byte order ({dtype.str}); convert it with .astype('{dtype.name}')"
                raise self._error(f"{kind} {name!r}: expected dtype {spec.dtype}, got {got}")
            shape = array.shape
            if len(shape) != spec.rank:
                raise self._error(
                    f"{kind} {name!r}: expected rank {spec.rank} (shape {_fmt_shape(spec.shape)}), "
                    f"got rank {len(shape)} (shape {list(shape)})"
                )
            for index, size in spec.fixed:
                if shape[index] != size:
                    raise self._error(
                        f"{kind} {name!r}: expected size {size} in dimension {index} "
                        f"(shape {_fmt_shape(spec.shape)}), got shape {list(shape)}"
                    )
            for index, symbol in spec.symbols:
                bound = bindings.setdefault(symbol, shape[index])
                if bound != shape[index]:
                    raise self._error(
                        f"{kind} {name!r}: symbol {symbol!r} in dimension {index} is {shape[index]}, "
                        f"but another tensor bound it to {bound}"
                    )
                limits = self._bounds.get(symbol)
                if limits is not None:
                    low, high = limits
                    if shape[index] < low or (high is not None and shape[index] > high):
                        raise self._error(
                            f"{kind} {name!r}: symbol {symbol!r} in dimension {index} is {shape[index]}, "
                            f"outside its bounds [{low}, {'any' if high is None else high}]"
                        )
        return bindings


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("None" if d is None else repr(d) if isinstance(d, str) else str(d) for d in shape) + "]"
