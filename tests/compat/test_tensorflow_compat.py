"""TensorFlow 2 and Keras packaging as the original's users called it (issue 8 items 4, 5, 6)."""

import zipfile

import numpy as np
import pytest

from conftest import require

tf = require("tensorflow")

from neuropod import FrameworkVersionError, VersionRangeError, load_neuropod  # noqa: E402
from neuropod.backends.tensorflow.packager import create_tensorflow_neuropod  # noqa: E402

SPEC = dict(
    input_spec=[
        {"name": "x", "dtype": "float32", "shape": ("batch_size",)},
        {"name": "y", "dtype": "float32", "shape": ("batch_size",)},
    ],
    output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch_size",)}],
    test_input_data={"x": np.arange(5, dtype=np.float32), "y": np.arange(5, dtype=np.float32)},
    test_expected_out={"out": np.arange(5) + np.arange(5)},
)


class Adder(tf.Module):
    # The original's TF2 example: a signature with shape=None (any rank).
    @tf.function(
        input_signature=[
            tf.TensorSpec(shape=None, dtype=tf.float32, name="x"),
            tf.TensorSpec(shape=None, dtype=tf.float32, name="y"),
        ]
    )
    def __call__(self, x, y):
        return {"out": x + y}


class NamedMethodAdder(tf.Module):
    @tf.function(
        input_signature=[
            tf.TensorSpec(shape=None, dtype=tf.float32, name="x"),
            tf.TensorSpec(shape=None, dtype=tf.float32, name="y"),
        ]
    )
    def add(self, x, y):
        return {"out": x + y}


@pytest.mark.parametrize("module", [Adder, NamedMethodAdder])
def test_trackable_obj_packages_a_tf_module(tmp_path, module):
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "tf2.zip",
        model_name="addition_model",
        trackable_obj=module(),
        zip_compression=zipfile.ZIP_STORED,
        **SPEC,
    )
    with zipfile.ZipFile(path) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    with load_neuropod(path) as model:
        out = model.infer({"x": np.ones(3, np.float32), "y": np.full(3, 2, np.float32)})["out"]
    np.testing.assert_array_equal(out, [3, 3, 3])


def test_trackable_obj_and_model_are_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "x.zip", model_name="m", trackable_obj=Adder(), model=Adder(), **SPEC
        )


def test_a_range_the_installed_tensorflow_satisfies(tmp_path):
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "ok.zip",
        model_name="addition_model",
        model=Adder(),
        platform_version_semver="2.0.0 - 3.0.0",
        **SPEC,
    )
    with load_neuropod(path) as model:
        assert model.infer({"x": np.ones(1, np.float32), "y": np.ones(1, np.float32)})["out"].tolist() == [2]


@pytest.mark.parametrize(
    ("semver", "error"), [("a.b.c", VersionRangeError), ("0.0.1", FrameworkVersionError)], ids=["invalid", "unmet"]
)
def test_ranges_that_cannot_be_packaged_here(tmp_path, semver, error):
    with pytest.raises(RuntimeError, match=repr(semver)) as info:
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "bad.zip",
            model_name="addition_model",
            model=Adder(),
            platform_version_semver=semver,
            **SPEC,
        )
    assert isinstance(info.value, error)
    if error is FrameworkVersionError:
        assert "tensorflow" in str(info.value) and tf.__version__ in str(info.value)
    assert not (tmp_path / "bad.zip").exists()


def test_keras_specs_are_inferred_as_the_original_did(tmp_path):
    keras = require("keras")
    from neuropod.backends.keras.packager import (
        create_keras_neuropod,
        infer_keras_input_spec,
        infer_keras_output_spec,
    )

    x = keras.Input((3,), name="x")
    y = keras.Input((3,), name="y")
    model = keras.Model([x, y], keras.layers.Add(name="out")([x, y]))
    # Shapes are tuples, as the original returned them: its own test compares them with tuple specs.
    assert infer_keras_input_spec(model) == [
        {"name": "x", "dtype": "float32", "shape": ("batch_size", 3)},
        {"name": "y", "dtype": "float32", "shape": ("batch_size", 3)},
    ]
    assert infer_keras_output_spec(model) == [{"name": "out", "dtype": "float32", "shape": ("batch_size", 3)}]
    assert infer_keras_input_spec(model, {"a": "x", "b": "y", "sum": "out"})[0]["name"] == "a"
    with pytest.raises(ValueError, match="'y' is not mapped"):
        infer_keras_input_spec(model, {"a": "x"})
    ones = np.ones((2, 3), np.float32)
    path = create_keras_neuropod(  # no specs: read from the model, as the original did
        neuropod_path=tmp_path / "k.zip",
        model_name="adder",
        sess=None,
        model=model,
        test_input_data={"x": ones, "y": ones},
        test_expected_out={"out": ones * 2},
    )
    with load_neuropod(path) as loaded:
        assert [s["name"] for s in loaded.inputs] == ["x", "y"] and loaded.outputs[0]["shape"] == ["batch_size", 3]


def _accumulator_graph():
    """A TF1 graph that adds its scalar input to a variable and returns the sum so far."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        with v1.name_scope("some_namespace"):
            total = v1.get_variable("total", initializer=v1.zeros_initializer(), shape=(), dtype=tf.float32)
            x = v1.placeholder(tf.float32, name="in_x")
            with tf.control_dependencies([v1.assign_add(total, x)]):
                tf.identity(total, name="out")
        init = v1.global_variables_initializer()
    return graph.as_graph_def(), init.name


@pytest.mark.parametrize("as_list", [False, True])
def test_init_op_names_is_a_name_or_a_list_and_scalar_outputs_come_back(tmp_path, as_list):
    # The original took init_op_names as one name or a list of names; a scalar output of a graph
    # is a 0-d array (it once failed inside the backend: a numpy scalar has no flags to set).
    graph_def, init = _accumulator_graph()
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "acc.zip",
        model_name="accumulator",
        graph_def=graph_def,
        node_name_mapping={"x": "some_namespace/in_x:0", "out": "some_namespace/out:0"},
        input_spec=[{"name": "x", "dtype": "float32", "shape": ()}],
        output_spec=[{"name": "out", "dtype": "float32", "shape": ()}],
        init_op_names=[init] if as_list else init,
        test_input_data={"x": np.float32(5.0)},
        test_expected_out={"out": np.float32(5.0)},
    )
    with load_neuropod(path) as model:
        first = model.infer({"x": np.float32(2.0)})["out"]
        assert isinstance(first, np.ndarray) and first.shape == () and first == 2.0
        assert model.infer({"x": np.float32(4.0)})["out"] == 6.0  # the variable was initialised once
