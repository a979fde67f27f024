"""Keras packages run compiled (tf.function or jax.jit, chosen at load) under names no earlier model changes."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import require

keras = require("keras")

from neuropod import load_neuropod  # noqa: E402
from neuropod.package import open_package  # noqa: E402
from neuropod.packagers import create_keras_neuropod  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras

PYTHON_CALLS = []


@keras.saving.register_keras_serializable(package="neuropod_tests")
class CountsPythonCalls(keras.layers.Layer):
    """Identity that counts how often its Python code runs: once per trace when compiled, once per call eagerly."""

    def call(self, inputs):
        PYTHON_CALLS.append(1)
        return inputs


@keras.saving.register_keras_serializable(package="neuropod_tests")
class NeedsEagerValues(keras.layers.Layer):
    """Reads its input's values in Python, which a traced graph cannot do: such a model must still run."""

    def call(self, inputs):
        return inputs * float(np.asarray(inputs).max())

    def compute_output_shape(self, input_shape):
        return input_shape


def small_cnn(counting=False):
    """A CNN with every layer left unnamed: Keras makes its names up."""
    inputs = keras.Input((16, 16, 3))
    x = CountsPythonCalls()(inputs) if counting else inputs
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


IMAGES = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the Keras backend here is not TensorFlow")
def test_model_is_traced_once_at_load_and_not_run_in_python_per_call(tmp_path):
    model = small_cnn(counting=True)
    batches = [np.resize(IMAGES, (batch, 16, 16, 3)) for batch in (1, 2, 5, 2)]
    expected = [model(images, training=False).numpy() for images in batches]  # eagerly (counted, before the load)
    path = create_keras_neuropod(neuropod_path=tmp_path / "cnn", model_name="cnn", model=model, package_as_zip=False)
    with load_neuropod(path) as loaded:
        assert loaded.executor.backend.call_path == "tf.function"
        after_load = len(PYTHON_CALLS)
        for images, want in zip(batches, expected):  # batch sizes share one trace: the spec's batch is None in it
            np.testing.assert_allclose(loaded.infer({"input_layer": images})["dense"], want, rtol=1e-5, atol=1e-6)
    assert len(PYTHON_CALLS) == after_load  # eagerly it would have grown by one per call


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the Keras backend here is not TensorFlow")
def test_model_that_cannot_be_traced_runs_eagerly_and_says_why_once(tmp_path, caplog):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, NeedsEagerValues()(inputs))
    x = np.array([[1, 2, 4]], np.float32)
    path = create_keras_neuropod(neuropod_path=tmp_path / "eager", model_name="eager", model=model)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neuropod.backends.keras"):
        with load_neuropod(path) as loaded:
            assert loaded.executor.backend.call_path == "eager"
            for _ in range(3):
                np.testing.assert_array_equal(loaded.infer({"input_layer": x})["needs_eager_values"], x * 4)
    said = [record.getMessage() for record in caplog.records if "runs eagerly" in record.getMessage()]
    assert len(said) == 1 and "'eager'" in said[0] and "tf.function" in said[0]


PACKAGE_IN_A_FRESH_PROCESS = """
import json, sys
import keras
sys.path.insert(0, {tests!r})
from frameworks.test_keras_compiled import small_cnn
from neuropod.package import open_package
from neuropod.packagers import create_keras_neuropod
if {build_others_first}:  # what the process built before must not change the names
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(1)(inputs))
    small_cnn()
path = create_keras_neuropod(neuropod_path={path!r}, model_name="cnn", model=small_cnn(), package_as_zip=False)
config = open_package(path).config
print(json.dumps([[spec.name for spec in config.input_spec], [spec.name for spec in config.output_spec]]))
"""


def test_default_names_are_the_layers_and_the_same_in_two_fresh_processes(tmp_path):
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = []
    for first in (False, True):
        path = str(tmp_path / f"cnn_{first}")
        code = PACKAGE_IN_A_FRESH_PROCESS.format(tests=tests_dir, build_others_first=first, path=path)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        names.append(json.loads(result.stdout.strip().splitlines()[-1]))
        with load_neuropod(path) as loaded:  # the package runs under the names it was given
            assert loaded.infer({"input_layer": IMAGES})["dense"].shape == (2, 3)
    assert names[0] == names[1] == [["input_layer"], ["dense"]]


def test_unnamed_inputs_of_a_list_input_model_get_stable_names_and_are_fed_in_order(tmp_path):
    taken = keras.Input((1,))  # uses up names: the model below gets input_layer_N, N > 0
    keras.Model(taken, keras.layers.Subtract()([taken, taken]))
    first, second = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([first, second], keras.layers.Subtract()([first, second]))
    a, b = np.ones((2, 3), np.float32), np.full((2, 3), 5, np.float32)
    path = create_keras_neuropod(
        neuropod_path=tmp_path / "two",
        model_name="two",
        model=model,
        test_input_data={"input_layer": a, "input_layer_1": b},
        test_expected_out={"subtract": a - b},
    )
    config = open_package(path).config
    assert [spec.name for spec in config.input_spec] == ["input_layer", "input_layer_1"]
    with load_neuropod(path) as loaded:
        np.testing.assert_array_equal(loaded.infer({"input_layer_1": a, "input_layer": b})["subtract"], b - a)


def test_jax_keras_backend_runs_the_package_through_jax_jit(tmp_path):
    require("jax")
    model = small_cnn()
    path = create_keras_neuropod(neuropod_path=tmp_path / "cnn", model_name="cnn", model=model, package_as_zip=False)
    np.save(tmp_path / "images.npy", IMAGES)
    code = textwrap.dedent(
        f"""
        import json, numpy as np
        from neuropod import load_neuropod
        images = np.load({str(tmp_path / "images.npy")!r})
        with load_neuropod({str(path)!r}) as model:
            outs = [model.infer({{"input_layer": images[:n]}})["dense"].tolist() for n in (2, 1)]
            print(json.dumps({{"call_path": model.executor.backend.call_path, "outs": outs}}))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["call_path"] == "jax.jit"
    expected = model(IMAGES, training=False)
    expected = np.asarray(expected)
    np.testing.assert_allclose(report["outs"][0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report["outs"][1], expected[:1], rtol=1e-5, atol=1e-6)
