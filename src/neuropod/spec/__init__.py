"""Problem definitions: tensor specs, dtypes, shapes and their validation, and problem files.

- :mod:`.tensors`: :class:`TensorSpec` (a name, a dtype, a shape of sizes, ``None`` and symbols, which may
  carry bounds), dtypes, and the :class:`SpecValidator` that ``infer`` runs.
- :mod:`.inference`: :func:`infer_spec`, specs read off example arrays.
- :mod:`.problem`: :class:`ProblemDefinition` (the input and output specs together: the contract any
  implementing model fulfils) and problem files (``problem.json`` or a Python module) with metrics,
  tolerances and labels for the tools.

Pure numpy; no framework is imported here.
"""

from __future__ import annotations

from .inference import infer_spec
from .problem import Problem, ProblemDefinition, batch_symbol_of, load_problem, problem_specs
from .tensors import (
    DTYPES,
    Dim,
    SpecValidator,
    SymbolBound,
    TensorSpec,
    as_specs,
    canonical_dtype,
    dtype_of_array,
    numpy_dtype,
    symbol_bounds,
)

__all__ = [
    "DTYPES",
    "Dim",
    "TensorSpec",
    "ProblemDefinition",
    "SpecValidator",
    "canonical_dtype",
    "numpy_dtype",
    "dtype_of_array",
    "as_specs",
    "problem_specs",
    "symbol_bounds",
    "SymbolBound",
    "infer_spec",
    "Problem",
    "load_problem",
    "batch_symbol_of",
]
