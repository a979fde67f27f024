import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS
from neuropod import InputValidationError, ModelClosedError, ModelNotReadyError, OptionError, SpecError, load_neuropod
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
    with pytest.raises(ModelClosedError, match="'addition' is closed") as closed:
        model.infer({})
    # A closed model is unavailable (503 / UNAVAILABLE from a server), not a bad request (400).
    assert isinstance(closed.value, ModelNotReadyError) and not isinstance(closed.value, InputValidationError)


def test_validation_can_be_turned_off(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "m", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)
    with load_neuropod(path, validate=False) as model:
        wrong = np.zeros((2, 2), np.float64)
        model.infer({"x": wrong, "y": wrong})  # wrong dtypes pass through unchecked
    with load_neuropod(path) as model, pytest.raises(InputValidationError, match="expected dtype float32, got float64"):
        model.infer({"x": np.zeros((2, 2), np.float64)})


def test_inputs_must_be_a_dict(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "m", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)
    with load_neuropod(path) as model, pytest.raises(InputValidationError, match="expected a dict"):
        model.infer([np.zeros((2, 2), np.float32)])


@pytest.fixture
def addition(tmp_path):
    return create_placeholder_neuropod(tmp_path / "m.zip", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS)


def test_an_unknown_option_is_refused_by_name_with_the_valid_ones(addition):
    with pytest.raises(OptionError, match="unknown option 'definitely_not_an_option'; valid options: environment, "):
        load_neuropod(addition, definitely_not_an_option=1)


@pytest.mark.parametrize("option", [{"workers": 2}, {"timeout": 5}, {"python_executable": "/usr/bin/python3"}])
def test_out_of_process_options_without_use_ope_are_refused_with_the_reason(addition, option):
    with pytest.raises(OptionError, match=f"option {next(iter(option))!r} does not apply here: .*use_ope=True"):
        load_neuropod(addition, **option)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"visible_gpu": -1}, "option 'visible_gpu': expected None or a non-negative int, got -1"),
        ({"use_ope": "yes"}, "option 'use_ope': expected None, True or False, got 'yes'"),
        ({"verify_manifest": 0}, "option 'verify_manifest': expected True or False, got 0"),
        ({"intra_op_threads": 0}, "option 'intra_op_threads': expected None or a positive int, got 0"),
        ({"isolation": "vm"}, "option 'isolation': expected one of None, 'process', 'sandbox', 'container'"),
        ({"environment": 3}, "option 'environment': expected None or a path"),
    ],
)
def test_option_values_are_checked(addition, option, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_neuropod(addition, **option)


def test_environment_and_isolation_are_accepted(addition):
    with load_neuropod(addition, environment="current", isolation=None) as model:
        assert model.infer({"x": np.zeros((1, 2), np.float32), "y": np.zeros((1, 2), np.float32)})["out"].shape[0] == 1


def test_the_executor_interface_declares_every_hook_with_a_default(addition):
    from neuropod.executors.base import Executor
    from neuropod.loader import Neuropod

    class Doubling(Executor):  # only infer: every other hook has its default
        def infer(self, inputs):
            return {"out": inputs["x"] * 2}

    for hook in ("allocate", "seal", "ready", "restart", "close"):
        assert hook in vars(Executor), hook
    with load_neuropod(addition) as loaded:
        model = Neuropod(Doubling(), "doubling", "test", loaded.problem)
    x = model.allocate("x", (2, 3))
    assert x.shape == (2, 3) and x.dtype == np.float32
    x[:] = 1
    y = np.ones((2, 3), np.float32)
    assert model.seal("y", y) is y
    assert model.executor.ready() and model.executor.restart() is None
    np.testing.assert_array_equal(model.infer({"x": x, "y": y})["out"], 2 * x)
