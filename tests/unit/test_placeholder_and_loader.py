import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS
from neuropod import InputValidationError, SpecError, load_neuropod
from neuropod.loader import load_neuropod as legacy_import_path
from neuropod.packagers import create_placeholder_neuropod

ALL_DTYPES_OUT = [
    {"name": f"o_{dtype}", "dtype": dtype, "shape": ["batch", 2]}
    for dtype in ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool", "string")
]


def test_placeholder_outputs_follow_declared_dtypes_and_symbols(tmp_path):
    spec_in = [{"name": "x", "dtype": "float32", "shape": ["batch", "features"]}]
    spec_out = ALL_DTYPES_OUT + [{"name": "free", "dtype": "float32", "shape": ["other", None, 3]}]
    path = create_placeholder_neuropod(tmp_path / "m.zip", "all", spec_in, spec_out, seed=7)
    with load_neuropod(path) as model:
        out = model.infer({"x": np.zeros((5, 4), np.float32)})
    for spec in ALL_DTYPES_OUT:
        array = out[spec["name"]]
        assert array.shape == (5, 2)
        expected_kind = "U" if spec["dtype"] == "string" else np.dtype(spec["dtype"]).kind
        assert array.dtype.kind == expected_kind
        if spec["dtype"] != "string":
            assert array.dtype == np.dtype(spec["dtype"])
    assert out["free"].shape == (2, 2, 3)  # free symbol and None get the small default size


def test_same_seed_same_outputs_other_seed_differs(tmp_path):
    x = {"x": np.zeros((3, 2), np.float32), "y": np.zeros((3, 2), np.float32)}
    outputs = []
    for i, seed in enumerate((11, 11, 12)):
        path = create_placeholder_neuropod(tmp_path / f"m{i}", "a", ADDITION_INPUTS, ADDITION_OUTPUTS, seed=seed)
        with load_neuropod(path) as model:
            outputs.append(model.infer(x)["out"])
            assert np.array_equal(model.infer(x)["out"], outputs[-1])  # repeatable call to call
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_placeholder_rejects_bad_seed(tmp_path):
    with pytest.raises(SpecError, match="seed"):
        create_placeholder_neuropod(tmp_path / "m", "a", ADDITION_INPUTS, ADDITION_OUTPUTS, seed=-1)


def test_neuropod_api_surface(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "m", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)
    assert legacy_import_path is load_neuropod
    with load_neuropod(path) as model:
        assert model.name == "addition"
        assert model.platform == "placeholder"
        assert model.inputs == ADDITION_INPUTS
        assert model.outputs == ADDITION_OUTPUTS
        assert isinstance(model.inputs[0]["shape"], list)
    with pytest.raises(InputValidationError, match="closed"):
        model.infer({})


def test_validation_can_be_turned_off(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "m", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)
    with load_neuropod(path, validate=False) as model:
        model.infer({"x": np.zeros((2, 2), np.float64)})  # wrong dtype passes through unchecked
    with load_neuropod(path) as model, pytest.raises(InputValidationError, match="expected dtype float32, got float64"):
        model.infer({"x": np.zeros((2, 2), np.float64)})


def test_inputs_must_be_a_dict(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "m", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)
    with load_neuropod(path) as model, pytest.raises(InputValidationError, match="expected a dict"):
        model.infer([np.zeros((2, 2), np.float32)])
