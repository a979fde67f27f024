"""The canonical conformance problems: specs, a numpy reference, input generators, bad inputs.

Every builder (``builders_*.py``) packages these problems in its framework;
``test_conformance.py`` checks each package against the numpy reference here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

Spec = List[Dict[str, Any]]
Tensors = Dict[str, np.ndarray]

#: Words with non-ASCII characters and an empty string, so string handling is exercised.
WORDS = np.array(["alpha", "héllo", "wörld", "日本語", "", "z"])
#: Size of the big tensor: 64 MB of float32.
BIG_ELEMENTS = 64 * 1024 * 1024 // 4


def _spec(name: str, dtype: str, shape: List[Any]) -> Dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


@dataclass(frozen=True)
class Problem:
    """One problem definition with its reference semantics.

    Attributes:
        name: the problem's name (the builders' key).
        input_spec: input specs in the original's dict form.
        output_spec: output specs in the original's dict form.
        reference: the numpy implementation every framework must match.
        make_inputs: ``make_inputs(size, rng)``: inputs whose dynamic dimensions have ``size`` elements.
    """

    name: str
    input_spec: Spec
    output_spec: Spec
    reference: Callable[[Tensors], Tensors]
    make_inputs: Callable[[int, np.random.Generator], Tensors]


def _addition_inputs(size: int, rng: np.random.Generator) -> Tensors:
    cols = 3 if size else 2
    return {
        "x": rng.standard_normal((size, cols)).astype(np.float32),
        "y": rng.standard_normal((size, cols)).astype(np.float32),
    }


def _strings_inputs(size: int, rng: np.random.Generator) -> Tensors:
    return {"a": rng.choice(WORDS, size), "b": rng.choice(WORDS, size)}


def _mixed_inputs(size: int, rng: np.random.Generator) -> Tensors:
    x = rng.standard_normal(size).astype(np.float32)
    if size >= 3:
        x[0], x[1] = 0.0, -0.0  # zero is "neg": the label is "pos" only when x > 0
    return {"x": x}


def _dtypes_inputs(size: int, rng: np.random.Generator) -> Tensors:
    u = rng.integers(0, 256, size, dtype=np.uint8)
    i = rng.integers(-(2**40), 2**40, size, dtype=np.int64)
    if size:
        u[0] = 255  # wraps to 0
        i[-1] = 2**62  # needs all 64 bits
    return {
        "b": rng.random(size) < 0.5,
        "h": rng.standard_normal(size).astype(np.float16),
        "i": i,
        "u": u,
    }


def _identity_inputs(size: int, rng: np.random.Generator) -> Tensors:
    return {"x": rng.standard_normal(size).astype(np.float32)}


PROBLEMS: Dict[str, Problem] = {
    "addition": Problem(
        "addition",
        [_spec("x", "float32", ["batch", None]), _spec("y", "float32", ["batch", None])],
        [_spec("out", "float32", ["batch", None])],
        lambda t: {"out": t["x"] + t["y"]},
        _addition_inputs,
    ),
    "strings": Problem(
        "strings",
        [_spec("a", "string", ["n"]), _spec("b", "string", ["n"])],
        [_spec("out", "string", ["n"])],
        lambda t: {"out": np.char.add(t["a"], t["b"]).astype("U")},
        _strings_inputs,
    ),
    "mixed": Problem(
        "mixed",
        [_spec("x", "float32", ["n"])],
        [_spec("total", "float32", [1]), _spec("label", "string", ["n"])],
        lambda t: {
            "total": np.array([t["x"].sum(dtype=np.float32)], np.float32),
            "label": np.where(t["x"] > 0, "pos", "neg").astype("U3"),
        },
        _mixed_inputs,
    ),
    "dtypes": Problem(
        "dtypes",
        [
            _spec("b", "bool", ["n"]),
            _spec("h", "float16", ["n"]),
            _spec("i", "int64", ["n"]),
            _spec("u", "uint8", ["n"]),
        ],
        [
            _spec("nb", "bool", ["n"]),
            _spec("h2", "float16", ["n"]),
            _spec("i2", "int64", ["n"]),
            _spec("u2", "uint8", ["n"]),
        ],
        lambda t: {
            "nb": ~t["b"],
            "h2": t["h"] * np.float16(2),
            "i2": t["i"] + np.int64(1),
            "u2": t["u"] + np.uint8(1),  # numpy wraps uint8 like every framework
        },
        _dtypes_inputs,
    ),
    "identity_big": Problem(
        "identity_big",
        [_spec("x", "float32", [None])],
        [_spec("out", "float32", [None])],
        lambda t: {"out": t["x"]},
        _identity_inputs,
    ),
}


def problem_specs(name: str) -> Tuple[Spec, Spec]:
    """``(input_spec, output_spec)`` of a problem (fresh lists: builders may not share them)."""
    problem = PROBLEMS[name]
    return [dict(s) for s in problem.input_spec], [dict(s) for s in problem.output_spec]


def _wrong_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "U":
        return np.zeros(array.shape, np.int32)
    if array.dtype == np.float32:
        return array.astype(np.float64)
    return array.astype(np.float32)


def bad_inputs(name: str, rng: np.random.Generator) -> Dict[str, Tensors]:
    """Inputs the spec refuses, by kind.

    Unknown name, wrong dtype, wrong rank, a missing input (every problem's
    models need all their inputs) and, where two inputs share a symbol, symbol mismatch.
    """
    problem = PROBLEMS[name]
    good = problem.make_inputs(4, rng)
    first = problem.input_spec[0]["name"]
    last = problem.input_spec[-1]["name"]
    cases = {
        "unknown_name": {**good, "no_such_input": good[first]},
        "missing_input": {key: value for key, value in good.items() if key != last},
        "wrong_dtype": {**good, first: _wrong_dtype(good[first])},
        "wrong_rank": {**good, first: good[first][np.newaxis]},
    }
    symbols: Dict[str, str] = {}
    for spec in problem.input_spec:
        for dim in spec["shape"]:
            if isinstance(dim, str) and dim in symbols and symbols[dim] != spec["name"]:
                cases["symbol_mismatch"] = {**good, spec["name"]: good[spec["name"]][:3]}
            elif isinstance(dim, str):
                symbols.setdefault(dim, spec["name"])
    return cases
