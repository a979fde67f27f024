"""Running a package's test data and comparing outputs (packagers and ``neuropod test``)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .errors import TestMismatchError

__all__ = ["compare_outputs", "check_outputs", "run_self_test"]

# (rtol, atol) by dtype: low-precision floats get room for a different kernel's rounding.
_TOLERANCE = {
    "float16": (1e-2, 1e-3),
    "bfloat16": (2e-2, 1e-2),
    "float32": (1e-5, 1e-6),
    "float64": (1e-7, 1e-9),
}


def _preview(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array), threshold=20, edgeitems=3)


def compare_outputs(expected: Mapping[str, Any], actual: Mapping[str, np.ndarray]) -> List[str]:
    """Return one message per output that differs (empty when all match)."""
    problems = []
    for name, want in expected.items():
        want = np.asarray(want)
        if name not in actual:
            problems.append(f"output {name!r}: expected {_preview(want)}, but the model did not return it")
            continue
        got = np.asarray(actual[name])
        if want.shape != got.shape:
            problems.append(f"output {name!r}: expected shape {list(want.shape)}, got {list(got.shape)}")
            continue
        if want.dtype.kind in "USO" or got.dtype.kind in "USO":
            same = np.array_equal(want.astype(str), got.astype(str))
        elif got.dtype.kind == "f" or got.dtype.name == "bfloat16":
            rtol, atol = _TOLERANCE.get(got.dtype.name, (1e-5, 1e-6))
            same = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        else:
            same = np.array_equal(want, got)
        if not same:
            problems.append(f"output {name!r}: expected {_preview(want)}, got {_preview(got)}")
    return problems


def check_outputs(expected: Mapping[str, Any], actual: Mapping[str, np.ndarray], model_name: str) -> None:
    """Raise :class:`TestMismatchError` listing every differing output."""
    problems = compare_outputs(expected, actual)
    if problems:
        raise TestMismatchError(f"self-test of {model_name!r} failed:\n  " + "\n  ".join(problems))


def run_self_test(
    neuropod_path: Any,
    test_input: Mapping[str, Any],
    expected: Optional[Mapping[str, Any]],
    **load_options: Any,
) -> Dict[str, np.ndarray]:
    """Load the finished package, run the test inputs, compare with ``expected``."""
    from .loader import load_neuropod

    with load_neuropod(neuropod_path, **load_options) as model:
        actual = model.infer({k: np.asarray(v) for k, v in test_input.items()})
        if expected is not None:
            check_outputs(expected, actual, model.name)
        return actual
