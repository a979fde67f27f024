import numpy as np
import pytest

from neuropod.errors import InputValidationError, OutputValidationError, SpecError
from neuropod.spec import DTYPES, ProblemDefinition, SpecValidator, TensorSpec, canonical_dtype


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("double", "float64"),
        ("float", "float64"),
        ("half", "float16"),
        (np.float32, "float32"),
        (np.dtype("int16"), "int16"),
        ("uint64", "uint64"),
        ("bool", "bool"),
        (str, "string"),
        ("string", "string"),
        ("bfloat16", "bfloat16"),
    ],
)
def test_dtype_aliases_are_canonicalised(alias, canonical):
    assert canonical_dtype(alias) == canonical


def test_every_listed_dtype_is_accepted():
    for dtype in DTYPES:
        assert TensorSpec("t", dtype, [1]).dtype == dtype


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "", "dtype": "float32", "shape": [1]}, "name"),
        ({"name": "x", "dtype": "complex64", "shape": [1]}, "tensor 'x': dtype"),
        ({"name": "x", "dtype": "float32", "shape": [0]}, "shape[0]"),
        ({"name": "x", "dtype": "float32", "shape": [2, -1]}, "shape[1]"),
        ({"name": "x", "dtype": "float32", "shape": [1.5]}, "shape[0]"),
        ({"name": "x", "dtype": "float32", "shape": [True]}, "shape[0]"),
        ({"name": "x", "dtype": "float32", "shape": "batch"}, "shape must be a list"),
    ],
)
def test_invalid_spec_names_the_field(kwargs, fragment):
    with pytest.raises(SpecError, match=None) as info:
        TensorSpec(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_dict_form_round_trips_and_checks_fields():
    spec = TensorSpec.from_dict({"name": "x", "dtype": "double", "shape": [None, "batch", 3]})
    assert spec.to_dict() == {"name": "x", "dtype": "float64", "shape": [None, "batch", 3]}
    with pytest.raises(SpecError, match="missing field"):
        TensorSpec.from_dict({"name": "x", "dtype": "float32"})
    with pytest.raises(SpecError, match="unknown field"):
        TensorSpec.from_dict({"name": "x", "dtype": "float32", "shape": [], "device": "GPU"})


def test_problem_definition_refuses_duplicate_names():
    with pytest.raises(SpecError, match="'x' appears more than once"):
        ProblemDefinition([TensorSpec("x", "float32", [1]), {"name": "x", "dtype": "int8", "shape": [1]}], [])


def _validator(*specs, kind="input"):
    return SpecValidator([TensorSpec.from_dict(s) for s in specs], kind)


def test_validation_binds_symbols_across_inputs_and_outputs():
    inputs = _validator(
        {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
        {"name": "y", "dtype": "float32", "shape": ["batch", None]},
    )
    outputs = _validator({"name": "out", "dtype": "float32", "shape": ["batch"]}, kind="output")
    bindings = inputs.validate({"x": np.zeros((4, 3), np.float32), "y": np.zeros((4, 7), np.float32)})
    assert bindings == {"batch": 4}
    outputs.validate({"out": np.zeros(4, np.float32)}, bindings)
    with pytest.raises(
        OutputValidationError,
        match="output 'out': symbol 'batch' in dimension 0 is 5, but another tensor bound it to 4",
    ):
        outputs.validate({"out": np.zeros(5, np.float32)}, dict(bindings))


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"z": np.zeros((1, 3), np.float32)}, "input 'z' is not in the spec; expected one of 'x', 'y'"),
        ({"x": np.zeros((1, 3), np.float64)}, "input 'x': expected dtype float32, got float64"),
        ({"x": np.zeros(3, np.float32)}, "input 'x': expected rank 2"),
        ({"x": np.zeros((1, 4), np.float32)}, "input 'x': expected size 3 in dimension 1"),
        (
            {"x": np.zeros((1, 3), np.float32), "y": np.zeros((2, 1), np.float32)},
            "input 'y': symbol 'batch' in dimension 0 is 2, but another tensor bound it to 1",
        ),
        ({"x": [[1.0, 2.0, 3.0]]}, "input 'x': expected a numpy array, got list"),
        ({"s": np.zeros(2, np.float32)}, "input 's': expected dtype string, got float32"),
    ],
)
def test_validation_errors_name_tensor_expected_and_actual(tensors, message):
    validator = _validator(
        {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
        {"name": "y", "dtype": "float32", "shape": ["batch", None]},
        {"name": "s", "dtype": "string", "shape": [None]},
    )
    with pytest.raises(InputValidationError) as info:
        validator.validate(tensors)
    assert message.replace("'x', 'y'", "'x', 'y', 's'") in str(info.value)
    assert isinstance(info.value, ValueError)


def test_inputs_are_optional_and_strings_accept_unicode_and_bytes():
    validator = _validator(
        {"name": "s", "dtype": "string", "shape": [None]}, {"name": "x", "dtype": "int8", "shape": []}
    )
    assert validator.validate({}) == {}
    validator.validate({"s": np.array(["a", "bc"])})
    validator.validate({"s": np.array([b"a", b"bc"])})
    validator.validate({"x": np.array(3, np.int8)})


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a\\b", ".", "..", "a\0b"])
def test_tensor_names_cannot_be_paths(name):
    with pytest.raises(SpecError, match="may not contain"):
        TensorSpec(name, "float32", [1])


def test_byte_swapped_input_says_so():
    validator = _validator({"name": "x", "dtype": "float32", "shape": [None]})
    with pytest.raises(InputValidationError, match=r"non-native byte order \(>f4\)"):
        validator.validate({"x": np.zeros(2, ">f4")})
