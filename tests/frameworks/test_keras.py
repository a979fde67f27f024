"""The Keras 3 backend and packager: name mapping, output shapes of every kind, other Keras backends."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require

keras = require("keras")

from neuropod import InputValidationError, PackageError, TestMismatchError, load_neuropod  # noqa: E402
from neuropod.package import open_package  # noqa: E402
from neuropod.packagers import create_keras_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)
TWO_OUTPUTS = [
    {"name": "total", "dtype": "float32", "shape": ["batch", None]},
    {"name": "diff", "dtype": "float32", "shape": ["batch", None]},
]
MAPPING = {"x": "in_x", "y": "in_y", "out": "sum_out"}


def renamed_addition_model():
    """Inputs and the output named differently from the spec: a mapping is needed."""
    x = keras.Input(shape=(None,), name="in_x")
    y = keras.Input(shape=(None,), name="in_y")
    return keras.Model([x, y], {"sum_out": keras.layers.Add()([x, y])})


def list_output_model():
    """A list output: the output layers' names identify the outputs."""
    x = keras.Input(shape=(None,), name="x")
    y = keras.Input(shape=(None,), name="y")
    diff = keras.layers.Subtract(name="diff")([x, y])
    total = keras.layers.Add(name="total")([x, y])
    return keras.Model([x, y], [diff, total])


@pytest.fixture(scope="module")
def mapped_package(tmp_path_factory):
    return create_keras_neuropod(
        neuropod_path=tmp_path_factory.mktemp("keras") / "mapped.zip",
        model_name="mapped",
        model=renamed_addition_model(),
        node_name_mapping=MAPPING,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )


def test_keras_model_with_name_mapping_packages_and_runs(mapped_package):
    package = open_package(mapped_package)
    assert (package.data_dir / "model.keras").is_file()
    assert package.backend_config()["node_name_mapping"] == MAPPING
    with load_neuropod(mapped_package) as model:
        assert model.platform == "keras"
        out = model.infer({"x": X, "y": Y})
    assert list(out) == ["out"]
    np.testing.assert_array_equal(out["out"], X + Y)


def test_list_outputs_are_named_by_their_layers(tmp_path):
    path = create_keras_neuropod(
        neuropod_path=tmp_path / "list",
        model_name="list",
        model=list_output_model(),
        input_spec=ADDITION_INPUTS,
        output_spec=TWO_OUTPUTS,  # spec order differs from the model's output order
        package_as_zip=False,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"total": X + Y, "diff": X - Y},
    )
    with load_neuropod(path) as model:
        out = model.infer({"x": Y, "y": X})
    np.testing.assert_array_equal(out["diff"], Y - X)
    np.testing.assert_array_equal(out["total"], X + Y)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras, on save
def test_single_input_sequential_model_matches_whatever_its_input_is_called(tmp_path):
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2, kernel_initializer="ones")])
    path = create_keras_neuropod(
        neuropod_path=tmp_path / "seq",
        model_name="seq",
        model=model,
        input_spec=[{"name": "features", "dtype": "float32", "shape": [None, 3]}],
        output_spec=[{"name": "scores", "dtype": "float32", "shape": [None, 2]}],
        test_input_data={"features": X},
        test_expected_out={"scores": np.repeat(X.sum(axis=1, keepdims=True), 2, axis=1)},
    )
    assert path.is_file()


def test_sess_argument_is_accepted_and_ignored_with_a_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match="sess="):
        path = create_keras_neuropod(
            neuropod_path=tmp_path / "sess",
            model_name="sess",
            sess=object(),
            model=renamed_addition_model(),
            node_name_mapping=MAPPING,
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": X})["out"], X * 2)


def test_self_test_mismatch_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="'out'") as info:
        create_keras_neuropod(
            neuropod_path=tmp_path / "mismatch",
            model_name="mismatch",
            model=renamed_addition_model(),
            node_name_mapping=MAPPING,
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
            test_input_data={"x": X, "y": Y},
            test_expected_out={"out": X},
        )
    assert isinstance(info.value, TestMismatchError)


def test_spec_input_the_model_lacks_is_refused_naming_it(tmp_path):
    with pytest.raises(PackageError, match="'y' maps to 'y'.*in_x"):
        create_keras_neuropod(
            neuropod_path=tmp_path / "unmapped",
            model_name="unmapped",
            model=renamed_addition_model(),
            node_name_mapping={"x": "in_x"},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    assert not (tmp_path / "unmapped").exists()


def test_bad_and_missing_inputs_name_the_tensor(mapped_package):
    with load_neuropod(mapped_package) as model:
        with pytest.raises(InputValidationError, match="'x'"):
            model.infer({"x": X.astype(np.int32), "y": Y})
        with pytest.raises(InputValidationError, match="'y'"):
            model.infer({"x": X})


def test_dtypes_and_empty_tensors(tmp_path):
    from conformance.builders_tensorflow import BUILDERS  # tests/ is on sys.path through its conftest

    with load_neuropod(BUILDERS["keras"].build(tmp_path / "dtypes.zip", "dtypes")) as model:
        out = model.infer(
            {
                "b": np.array([True, False]),
                "h": np.array([1.5, -2], np.float16),
                "i": np.array([1, 2**40]),
                "u": np.array([0, 255], np.uint8),
            }
        )
    assert {name: a.dtype.name for name, a in out.items()} == {
        "nb": "bool",
        "h2": "float16",
        "i2": "int64",
        "u2": "uint8",
    }
    np.testing.assert_array_equal(out["nb"], [False, True])
    np.testing.assert_array_equal(out["h2"], np.array([3, -4], np.float16))
    np.testing.assert_array_equal(out["i2"], [2, 2**40 + 1])
    np.testing.assert_array_equal(out["u2"], [1, 0])
    with load_neuropod(BUILDERS["keras"].build(tmp_path / "identity.zip", "identity_big")) as model:
        assert model.infer({"x": np.zeros(0, np.float32)})["out"].shape == (0,)
    with pytest.raises(NotImplementedError):
        BUILDERS["keras"].build(tmp_path / "strings.zip", "strings")


def test_gpu_request_without_a_gpu_warns_and_runs_on_cpu(mapped_package):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_neuropod(mapped_package, visible_gpu=0)
    with model:
        backend = model.executor.backend
        if backend.device == "cpu:0":
            assert any("visible_gpu=0" in str(w.message) for w in caught)
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_package_made_on_one_keras_backend_runs_on_another(mapped_package, keras_backend):
    require(keras_backend)
    code = textwrap.dedent(
        f"""
        import json, numpy as np, keras
        from neuropod import load_neuropod
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        with load_neuropod({str(mapped_package)!r}) as model:
            out = model.infer({{"x": x, "y": x}})["out"]
        print(json.dumps({{"backend": keras.backend.backend(), "out": out.tolist(), "dtype": out.dtype.name}}))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == keras_backend
    assert report["dtype"] == "float32"
    assert report["out"] == (X * 2).tolist()


def test_keras_without_a_usable_backend_raises_framework_not_installed():
    code = (
        "from neuropod.backends import get_backend_class\n"
        "from neuropod.errors import FrameworkNotInstalledError\n"
        "try:\n    get_backend_class('keras')\n"
        "except FrameworkNotInstalledError as exc:\n    print('refused:', exc)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "no_such_backend"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: keras cannot start its backend" in result.stdout
    assert "KERAS_BACKEND" in result.stdout
