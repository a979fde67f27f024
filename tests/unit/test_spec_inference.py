"""``neuropod.infer_spec``: specs read off example tensors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from neuropod import ProblemDefinition, SpecError, infer_spec


def test_names_dtypes_and_a_batch_symbol_from_one_example() -> None:
    spec = infer_spec({"x": np.zeros((4, 3), np.float32), "ids": np.zeros((4,), np.int64), "s": np.array(["a"] * 4)})
    assert spec == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
        {"name": "ids", "dtype": "int64", "shape": ["batch"]},
        {"name": "s", "dtype": "string", "shape": ["batch"]},
    ]
    ProblemDefinition(spec, spec)  # usable as it is


def test_sizes_that_differ_between_examples_become_none() -> None:
    spec = infer_spec([{"x": np.zeros((2, 3, 5))}, {"x": np.zeros((7, 4, 5))}])
    assert spec == [{"name": "x", "dtype": "float64", "shape": ["batch", None, 5]}]


def test_custom_and_no_symbols() -> None:
    x = np.zeros((2, 3), np.float32)
    assert infer_spec({"x": x}, symbols={}) == [{"name": "x", "dtype": "float32", "shape": [2, 3]}]
    assert infer_spec({"x": x}, symbols={"n": 0, "d": 1})[0]["shape"] == ["n", "d"]
    assert infer_spec({"s": np.float32(1.0)})[0]["shape"] == []  # a scalar has no batch axis


def test_torch_tensors_are_read_without_importing_torch_here() -> None:
    torch = require("torch")
    assert infer_spec({"x": torch.zeros(2, 3, dtype=torch.float16)}) == [
        {"name": "x", "dtype": "float16", "shape": ["batch", 3]}
    ]


@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "non-empty list"),
        ({"x": [1, 2]}, "example 'x': expected an array"),
        ([{"x": np.zeros(2)}, {"y": np.zeros(2)}], "example 1 has names"),
        ([{"x": np.zeros(2)}, {"x": np.zeros(2, np.int32)}], "'x' has dtypes"),
    ],
)
def test_bad_examples_name_the_problem(examples, message) -> None:
    with pytest.raises(SpecError, match=message):
        infer_spec(examples)
