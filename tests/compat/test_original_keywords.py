"""The original's own keywords (issue 28 items 1 and 2).

``load_neuropod(_always_use_native=..., load_custom_ops=...)``,
``neuropod_load_args=`` on every packager, ``init_op_names=`` on the Keras
packager, and TensorFlow node names without ``:0``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import require
from neuropod import OptionError, TestMismatchError, load_neuropod
from neuropod.packagers import create_placeholder_neuropod, create_python_neuropod

SPEC = dict(
    input_spec=[
        {"name": "x", "dtype": "float32", "shape": ("batch_size",)},
        {"name": "y", "dtype": "float32", "shape": ("batch_size",)},
    ],
    output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch_size",)}],
)
TEST_DATA = dict(
    test_input_data={"x": np.arange(5, dtype=np.float32), "y": np.arange(5, dtype=np.float32)},
    test_expected_out={"out": np.arange(5) * 2.0},
)
ADDITION_SOURCE = "def get_model(_):\n    return lambda x, y: {'out': x + y}\n"


def _python_package(tmp_path, **kwargs):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "addition_model.py").write_text(ADDITION_SOURCE)
    return create_python_neuropod(
        neuropod_path=tmp_path / "addition",
        model_name="addition_model",
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
        entrypoint_package="addition_model",
        entrypoint="get_model",
        package_as_zip=False,
        **SPEC,
        **kwargs,
    )


# --- load_neuropod ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_always_use_native_is_accepted_and_said_once(tmp_path, caplog, value):
    path = _python_package(tmp_path)
    caplog.set_level(logging.INFO, logger="neuropod")
    from neuropod import _original_options

    _original_options._logged.discard(("_always_use_native",))
    for _ in range(2):
        with load_neuropod(path, _always_use_native=value) as model:
            out = model.infer(TEST_DATA["test_input_data"])
        np.testing.assert_array_equal(out["out"], TEST_DATA["test_expected_out"]["out"])
    said = [r.getMessage() for r in caplog.records if "_always_use_native" in r.getMessage()]
    assert len(said) == 1 and "changes nothing" in said[0]


def test_always_use_native_must_be_a_flag(tmp_path):
    with pytest.raises(OptionError, match="_always_use_native"):
        load_neuropod(_python_package(tmp_path), _always_use_native="no")


def test_unknown_keywords_still_raise(tmp_path):
    with pytest.raises(OptionError, match="unknown option 'always_use_native'"):
        load_neuropod(_python_package(tmp_path), always_use_native=False)


def test_load_custom_ops_false_skips_the_packages_ops_in_this_process(tmp_path):
    require("torch")
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    class Add(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    not_a_library = tmp_path / "libnot_an_op.so"
    not_a_library.write_bytes(b"not a shared library")
    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "ts",
        model_name="addition_model",
        module=Add(),
        custom_ops=[not_a_library],
        package_as_zip=False,
        **SPEC,
    )
    # By default the op is loaded before the model (and this one cannot be) ...
    with pytest.raises(Exception, match="libnot_an_op.so"):
        load_neuropod(path, load_custom_ops=True)
    # ... and the original's load_custom_ops=False leaves it to the caller.
    with load_neuropod(path, load_custom_ops=False) as model:
        out = model.infer(TEST_DATA["test_input_data"])
    np.testing.assert_array_equal(out["out"], TEST_DATA["test_expected_out"]["out"])


# --- packagers ----------------------------------------------------------------------------------


def test_neuropod_load_args_reach_the_self_test(tmp_path):
    # A keyword the loader refuses shows that the self-test's load received it.
    with pytest.raises(OptionError, match="unknown option 'no_such_option'"):
        _python_package(tmp_path, neuropod_load_args={"no_such_option": 1}, **TEST_DATA)


def test_neuropod_load_args_as_the_originals_self_test_passes_them(tmp_path):
    path = _python_package(tmp_path, neuropod_load_args={"_always_use_native": False}, **TEST_DATA)
    assert (path / "config.json").is_file()


def test_a_wrong_answer_still_fails_with_neuropod_load_args(tmp_path):
    wrong = dict(TEST_DATA, test_expected_out={"out": np.zeros(5)})
    with pytest.raises(TestMismatchError):
        _python_package(tmp_path, neuropod_load_args={"_always_use_native": False}, **wrong)


def test_neuropod_load_args_and_self_test_options_are_merged(tmp_path):
    with pytest.raises(ValueError, match=r"both give \['validate'\]"):
        _python_package(
            tmp_path, neuropod_load_args={"validate": True}, self_test_options={"validate": True}, **TEST_DATA
        )


@pytest.mark.parametrize(
    "packager",
    [
        "create_placeholder_neuropod",
        "create_python_neuropod",
        "create_pytorch_neuropod",
        "create_torchscript_neuropod",
        "create_tensorflow_neuropod",
        "create_keras_neuropod",
        "create_torch_export_neuropod",
        "create_onnx_neuropod",
        "create_jax_neuropod",
    ],
)
def test_every_packager_takes_neuropod_load_args(packager):
    import importlib
    import inspect

    from neuropod.packagers import _PACKAGERS

    function = getattr(importlib.import_module(_PACKAGERS[packager]), packager)
    assert "neuropod_load_args" in inspect.signature(function).parameters


def test_placeholder_packager_passes_neuropod_load_args(tmp_path):
    with pytest.raises(OptionError, match="unknown option 'bogus'"):
        create_placeholder_neuropod(
            tmp_path / "p", "p", **SPEC, test_input_data=TEST_DATA["test_input_data"], neuropod_load_args={"bogus": 1}
        )


def test_keras_packager_accepts_init_op_names(tmp_path, caplog):
    keras = require("keras")
    x = keras.Input(shape=(), name="x")
    y = keras.Input(shape=(), name="y")
    model = keras.Model({"x": x, "y": y}, {"out": keras.layers.Add(name="out")([x, y])})
    caplog.set_level(logging.INFO, logger="neuropod")
    from neuropod.packagers import create_keras_neuropod

    path = create_keras_neuropod(
        neuropod_path=tmp_path / "keras",
        model_name="addition_model",
        model=model,
        init_op_names=["init_all_tables"],
        package_as_zip=False,
        **SPEC,
        **TEST_DATA,
    )
    assert any("init_op_names" in r.getMessage() and "not run" in r.getMessage() for r in caplog.records)
    with load_neuropod(path) as loaded:
        np.testing.assert_array_equal(loaded.infer(TEST_DATA["test_input_data"])["out"], np.arange(5) * 2.0)


# --- TensorFlow node names without ":0" ----------------------------------------------------------


def _namespaced_addition_graph():
    tf = require("tensorflow")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.name_scope("some_namespace"):
        x = tf.compat.v1.placeholder(tf.float32, name="in_x", shape=(None,))
        y = tf.compat.v1.placeholder(tf.float32, name="in_y", shape=(None,))
        tf.add(x, y, name="out")
    return graph.as_graph_def()


@pytest.mark.parametrize(
    "mapping",
    [
        {"x": "some_namespace/in_x", "y": "some_namespace/in_y", "out": "some_namespace/out"},
        {"x": "some_namespace/in_x:0", "y": "some_namespace/in_y", "out": "some_namespace/out:0"},
    ],
)
def test_node_names_without_an_output_index_mean_output_0(tmp_path, mapping):
    from neuropod.packagers import create_tensorflow_neuropod

    # The self-test runs the package, so packaging succeeding is the first check.
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "tf",
        model_name="addition_model",
        graph_def=_namespaced_addition_graph(),
        node_name_mapping=mapping,
        package_as_zip=False,
        **SPEC,
        **TEST_DATA,
    )
    # The mapping is stored as given, as the original stored it.
    import json

    assert json.loads((path / "0" / "config.json").read_text())["node_name_mapping"] == mapping
    with load_neuropod(path) as model:
        out = model.infer({"x": np.ones(3, np.float32), "y": np.full(3, 2, np.float32)})
    np.testing.assert_array_equal(out["out"], [3, 3, 3])
