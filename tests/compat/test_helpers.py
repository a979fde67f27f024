"""The original's helper modules and import paths, called with its names and arguments (issue 8 item 6)."""

from __future__ import annotations

import importlib
import json
import pickle

import numpy as np
import pytest

from conftest import require
from neuropod import TestMismatchError, UnsafePackageError
from neuropod.loader import load_neuropod
from neuropod.packagers import create_placeholder_neuropod
from neuropod.utils import config_utils, eval_utils
from neuropod.utils.randomify import randomify_neuropod

INPUTS = [{"name": "x", "dtype": "double", "shape": ("batch_size", 2)}]
OUTPUTS = [{"name": "out", "dtype": "float", "shape": ("batch_size",)}]


def test_canonicalize_tensor_spec():
    assert config_utils.canonicalize_tensor_spec([{"shape": (None,), "dtype": "double", "name": "x"}]) == [
        {"name": "x", "dtype": "float64", "shape": (None,)}
    ]
    with pytest.raises(ValueError, match="'x'"):
        config_utils.canonicalize_tensor_spec([{"name": "x", "dtype": "complex128", "shape": ()}])


def test_write_read_and_validate_config(tmp_path):
    config_utils.write_neuropod_config(
        tmp_path, "m", "python", INPUTS, OUTPUTS, input_tensor_device={"x": "CPU"}, some_packager_option=1
    )
    config = config_utils.read_neuropod_config(tmp_path)
    assert config["input_spec"] == [{"name": "x", "dtype": "float64", "shape": ["batch_size", 2]}]
    assert config["output_spec"][0]["dtype"] == "float64" and config["input_tensor_device"] == {"x": "CPU"}
    config_utils.validate_neuropod_config(config)
    for broken, field in (
        ({**config, "name": 3}, "'name'"),
        ({**config, "input_tensor_device": {}}, "without a device"),
        ({**config, "input_tensor_device": {"x": "TPU"}}, "'GPU' or 'CPU'"),
        ({**config, "custom_ops": "op.so"}, "custom_ops"),
        ({**config, "input_spec": [{"name": "x", "dtype": "complex64", "shape": []}]}, "complex64"),
    ):
        with pytest.raises(ValueError, match=field):
            config_utils.validate_neuropod_config(broken)


def test_read_config_of_the_originals_packages(legacy_fixtures):
    config = config_utils.read_neuropod_config(legacy_fixtures / "tf_addition_model")
    assert config["name"] == "addition_model" and config["input_tensor_device"] == {"x": "GPU", "y": "GPU"}


def test_test_data_saved_loaded_and_run(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "p", "m", INPUTS, OUTPUTS, package_as_zip=False)
    x = np.ones((3, 2))
    expected = load_neuropod(path).infer({"x": x})
    (tmp_path / "data").mkdir()
    eval_utils.save_test_data(tmp_path / "data", {"x": x}, expected)
    loaded = eval_utils.load_test_data(tmp_path / "data")
    assert sorted(loaded) == ["test_input", "test_output"]
    np.testing.assert_array_equal(loaded["test_input"]["x"], x)
    out = eval_utils.load_and_test_neuropod(path, loaded["test_input"], loaded["test_output"])
    np.testing.assert_array_equal(out["out"], expected["out"])
    with pytest.raises(ValueError) as info:
        eval_utils.load_and_test_neuropod(path, {"x": x}, {"out": expected["out"] + 1}, neuropod_load_args={})
    assert isinstance(info.value, TestMismatchError)
    assert eval_utils.load_test_data(tmp_path) is None


def test_legacy_pickled_test_data_only_when_trusted(tmp_path):
    with open(tmp_path / "test_data.pkl", "wb") as f:
        pickle.dump({"test_input": {"x": np.ones(2)}, "test_output": {"out": np.ones(2)}}, f)
    with pytest.raises(UnsafePackageError):
        eval_utils.load_test_data(tmp_path)
    assert eval_utils.load_test_data(tmp_path, trusted=True)["test_output"]["out"].tolist() == [1, 1]


def test_randomify_neuropod(tmp_path):
    spec_in = [
        {"name": "in_string_vector", "dtype": "string", "shape": ("N",)},
        {"name": "in_int_matrix", "dtype": "int32", "shape": ("N", "M")},
    ]
    spec_out = [
        {"name": "out_string_vector", "dtype": "string", "shape": ("N",)},
        {"name": "out_int_matrix", "dtype": "int32", "shape": ("N", "M")},
        {"name": "out_float_scalar", "dtype": "float32", "shape": ()},
    ]
    path = randomify_neuropod(str(tmp_path / "stub"), spec_in, spec_out)
    assert path == str(tmp_path / "stub")
    with load_neuropod(path) as model:
        assert model.name == "random_model"
        result = model.infer({})
        assert result["out_string_vector"].shape[0] == result["out_int_matrix"].shape[0] > 0
        result = model.infer({"in_int_matrix": np.zeros((4, 7), np.int32)})
        assert result["out_int_matrix"].shape == (4, 7) and result["out_float_scalar"].shape == ()
        with pytest.raises(ValueError, match="bogus"):
            model.infer({"bogus": np.zeros(1)})


@pytest.mark.parametrize(
    ("module", "names", "framework"),
    [
        ("neuropod.backends.python.packager", ["create_python_neuropod"], None),
        ("neuropod.backends.pytorch.packager", ["create_pytorch_neuropod"], None),
        ("neuropod.backends.torchscript.packager", ["create_torchscript_neuropod"], "torch"),
        ("neuropod.backends.tensorflow.packager", ["create_tensorflow_neuropod"], "tensorflow"),
        (
            "neuropod.backends.keras.packager",
            ["create_keras_neuropod", "infer_keras_input_spec", "infer_keras_output_spec"],
            "keras",
        ),
    ],
)
def test_the_originals_packager_import_paths(module, names, framework):
    if framework:
        require(framework)
    imported = importlib.import_module(module)
    packagers = importlib.import_module("neuropod.packagers")
    for name in names:
        assert callable(getattr(imported, name))
        if name.startswith("create_"):
            assert getattr(imported, name) is getattr(packagers, name)


def test_utils_import_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, json, neuropod.utils.config_utils, neuropod.utils.eval_utils, neuropod.utils.randomify; "
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules)))"
    )
    assert json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)) == []
