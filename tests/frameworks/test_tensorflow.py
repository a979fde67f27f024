"""The TensorFlow backend and packager: TF1 GraphDefs, TF2 SavedModels, strings, custom ops, the legacy package."""

import gc
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require, require_command

tf = require("tensorflow")

from neuropod import InputValidationError, PackageError, TestMismatchError, load_neuropod  # noqa: E402
from neuropod.package import open_package  # noqa: E402
from neuropod.packagers import create_tensorflow_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)
GRAPH_MAPPING = {"x": "some_namespace/in_x:0", "y": "some_namespace/in_y:0", "out": "some_namespace/out:0"}
STRING_INPUTS = [{"name": "a", "dtype": "string", "shape": ["n"]}, {"name": "b", "dtype": "string", "shape": ["n"]}]
STRING_OUTPUTS = [{"name": "out", "dtype": "string", "shape": ["n"]}]


def addition_graph_def():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None], name="some_namespace/in_x")
        y = tf.compat.v1.placeholder(tf.float32, [None, None], name="some_namespace/in_y")
        tf.add(x, y, name="some_namespace/out")
    return graph.as_graph_def()


def lookup_graph_def():
    """A graph with a hash table that only works once its init op has run, and string tensors both ways."""
    graph = tf.Graph()
    with graph.as_default():
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        initializer = tf.lookup.KeyValueTensorInitializer(["né", "b"], [1, 2], tf.string, tf.int64)
        table = tf.lookup.StaticHashTable(initializer, -1, name="table")
        tf.identity(table.lookup(words), name="ids")
        tf.strings.join([words, tf.constant("!")], name="shout")
        tf.compat.v1.tables_initializer(name="init_tables")
    return graph.as_graph_def()


class Adder(tf.Module):
    """A module with a variable, so saving it must carry weights."""

    def __init__(self):
        super().__init__()
        self.bias = tf.Variable(0.5)

    @tf.function
    def __call__(self, x, y):
        return {"out": x + y + self.bias}


@pytest.fixture(scope="module")
def graph_package(tmp_path_factory):
    path = tmp_path_factory.mktemp("tf") / "graph.zip"
    return create_tensorflow_neuropod(
        neuropod_path=path,
        model_name="graph_addition",
        graph_def=addition_graph_def(),
        node_name_mapping=GRAPH_MAPPING,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )


@pytest.fixture(scope="module")
def strings_package(tmp_path_factory):
    @tf.function
    def concat(a, b):
        return {"out": tf.strings.join([a, b])}

    return create_tensorflow_neuropod(
        neuropod_path=tmp_path_factory.mktemp("tf") / "strings",
        model_name="concat",
        model=concat,
        input_spec=STRING_INPUTS,
        output_spec=STRING_OUTPUTS,
        package_as_zip=False,
    )


def test_legacy_tf_addition_package_loads_and_runs(legacy_fixtures):
    with load_neuropod(legacy_fixtures / "tf_addition_model") as model:
        assert model.platform == "tensorflow"
        assert [spec["name"] for spec in model.inputs] == ["x", "y"]
        out = model.infer({"x": X, "y": Y})["out"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, X + Y)


def test_graph_def_package_layout_and_inference(graph_package):
    package = open_package(graph_package)
    assert (package.data_dir / "model.pb").is_file()
    assert package.backend_config() == {"node_name_mapping": GRAPH_MAPPING, "init_op_names": []}
    with load_neuropod(graph_package) as model:
        assert model.platform == "tensorflow"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)
        # another batch size reuses the pruned function
        np.testing.assert_array_equal(model.infer({"x": X[:1], "y": Y[:1]})["out"], X[:1] + Y[:1])


def test_frozen_graph_file_with_init_ops_and_strings(tmp_path):
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(lookup_graph_def().SerializeToString())
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "lookup",
        model_name="lookup",
        frozen_graph_path=frozen,
        node_name_mapping={"words": "words:0", "ids": "ids:0", "shout": "shout:0"},
        init_op_names=["init_tables"],
        input_spec=[{"name": "words", "dtype": "string", "shape": ["n"]}],
        output_spec=[
            {"name": "ids", "dtype": "int64", "shape": ["n"]},
            {"name": "shout", "dtype": "string", "shape": ["n"]},
        ],
        package_as_zip=False,
        test_input_data={"words": np.array(["né", "b", "zz"])},
        test_expected_out={"ids": np.array([1, 2, -1]), "shout": np.array(["né!", "b!", "zz!"])},
    )
    assert (path / "0" / "data" / "model.pb").read_bytes() == frozen.read_bytes()
    with load_neuropod(path) as model:
        out = model.infer({"words": np.array([b"b", "né".encode()])})  # bytes in, unicode out
    np.testing.assert_array_equal(out["ids"], [2, 1])
    assert out["shout"].dtype.kind == "U"
    assert out["shout"].tolist() == ["b!", "né!"]


def test_graph_mapping_to_a_missing_node_is_refused_when_packaging(tmp_path):
    with pytest.raises(PackageError, match="some_namespace/nope"):
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "bad",
            model_name="bad",
            graph_def=addition_graph_def(),
            node_name_mapping={**GRAPH_MAPPING, "out": "some_namespace/nope:0"},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    assert not (tmp_path / "bad").exists()


def test_graph_feeding_one_of_two_needed_inputs_fails_cleanly(graph_package):
    with load_neuropod(graph_package) as model:
        with pytest.raises(InputValidationError, match="missing one of \\['y'\\]"):
            model.infer({"x": X})


def test_saved_model_from_module_carries_its_variables(tmp_path):
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "module.zip",
        model_name="module",
        model=Adder(),
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y + 0.5},
    )
    package = open_package(path)
    assert (package.data_dir / "savedmodel" / "saved_model.pb").is_file()
    # The original's keys; the default signature is not written (fields we add only when not the default).
    assert package.backend_config() == {"node_name_mapping": None, "init_op_names": []}


def test_saved_model_from_concrete_function_with_a_bare_tensor_output(tmp_path):
    bias = tf.Variable(1.0)

    @tf.function
    def add(x, y):
        return x + y + bias

    spec = tf.TensorSpec([None, None], tf.float32)
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "concrete",
        model_name="concrete",
        model=add.get_concrete_function(x=spec, y=spec),
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y + 1},  # the single output_0 matches the single spec output
    )
    assert path.is_file()


def test_saved_model_dir_with_renamed_signature_names_and_custom_signature(tmp_path):
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def scaled_sum(in_a, in_b):
        return {"result": (in_a + in_b) * module.scale}

    module.scaled_sum = scaled_sum
    saved = tmp_path / "saved"
    tf.saved_model.save(module, str(saved), signatures={"scaled": scaled_sum})
    mapping = {"x": "in_a", "y": "in_b", "out": "result"}
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "renamed",
        model_name="renamed",
        saved_model_dir=saved,
        signature_name="scaled",
        node_name_mapping=mapping,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": (X + Y) * 2},
    )
    assert open_package(path).backend_config() == {
        "node_name_mapping": mapping,
        "init_op_names": [],
        "signature_name": "scaled",
    }
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": X})["out"], X * 4)
        with pytest.raises(InputValidationError, match="'y'"):
            model.infer({"x": X})


def test_saved_model_without_mapping_for_renamed_names_is_refused(tmp_path):
    @tf.function
    def add(in_a, in_b):
        return {"result": in_a + in_b}

    with pytest.raises(PackageError, match="'out' -> 'out'"):
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "unmapped",
            model_name="unmapped",
            model=add,
            node_name_mapping={"x": "in_a", "y": "in_b"},  # "out" is left unmapped: refused at load
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    assert not (tmp_path / "unmapped").exists()


def test_strings_both_ways_including_non_ascii_and_empty(strings_package):
    with load_neuropod(strings_package) as model:
        out = model.infer({"a": np.array(["grüß", "a"]), "b": np.array([" gott", "日本"])})["out"]
        assert out.dtype.kind == "U"
        assert out.tolist() == ["grüß gott", "a日本"]
        empty = model.infer({"a": np.array([], dtype="U1"), "b": np.array([], dtype="U1")})["out"]
        assert empty.shape == (0,) and empty.dtype.kind == "U"


def test_self_test_mismatch_raises_value_error_naming_the_output(tmp_path):
    with pytest.raises(ValueError, match="'out'") as info:
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "mismatch",
            model_name="mismatch",
            graph_def=addition_graph_def(),
            node_name_mapping=GRAPH_MAPPING,
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
            test_input_data={"x": X, "y": Y},
            test_expected_out={"out": X},
        )
    assert isinstance(info.value, TestMismatchError)


def test_bad_inputs_name_the_tensor(graph_package):
    with load_neuropod(graph_package) as model:
        with pytest.raises(InputValidationError, match="'y'"):
            model.infer({"x": X, "y": Y.astype(np.float64)})
        with pytest.raises(InputValidationError, match="'x'"):
            model.infer({"x": X.reshape(-1), "y": Y})


def test_exactly_one_model_source_is_required(tmp_path):
    with pytest.raises(PackageError, match="exactly one"):
        create_tensorflow_neuropod(
            tmp_path / "two", "two", graph_def=addition_graph_def(), saved_model_dir=tmp_path,
            input_spec=ADDITION_INPUTS, output_spec=ADDITION_OUTPUTS,
        )  # fmt: skip


def test_dtypes_round_trip_through_a_saved_model(tmp_path):
    from conformance.builders_tensorflow import BUILDERS  # tests/ is on sys.path through its conftest

    path = BUILDERS["tensorflow"].build(tmp_path / "dtypes.zip", "dtypes")
    inputs = {
        "b": np.array([True, False]),
        "h": np.array([1.5, -2], np.float16),
        "i": np.array([1, 2**40]),
        "u": np.array([0, 255], np.uint8),
    }
    with load_neuropod(path) as model:
        out = model.infer(inputs)
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


def test_gpu_request_without_a_gpu_warns_and_runs_on_cpu(graph_package):
    if tf.config.list_physical_devices("GPU"):
        with load_neuropod(graph_package, visible_gpu=0) as model:
            assert model.executor.backend.device == "/GPU:0"
        return
    with pytest.warns(RuntimeWarning, match="visible_gpu=0"):
        model = load_neuropod(graph_package, visible_gpu=0)
    with model:
        assert model.executor.backend.device == "/CPU:0"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_thread_settings_after_tf_started_warn_instead_of_failing(graph_package):
    tf.constant(1.0) + 1  # make sure the runtime is up in this process
    current = tf.config.threading.get_intra_op_parallelism_threads()
    with pytest.warns(RuntimeWarning, match="intra_op_threads"):
        model = load_neuropod(graph_package, intra_op_threads=current + 3)
    with model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


ADD_ONE_OP = r"""
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

using namespace tensorflow;

REGISTER_OP("NeuropodTestAddOne")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

class NeuropodTestAddOneOp : public OpKernel {
 public:
  explicit NeuropodTestAddOneOp(OpKernelConstruction* context) : OpKernel(context) {}
  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, input.shape(), &output));
    auto in = input.flat<float>();
    auto out = output->flat<float>();
    for (int64_t i = 0; i < in.size(); ++i) out(i) = in(i) + 1.0f;
  }
};

REGISTER_KERNEL_BUILDER(Name("NeuropodTestAddOne").Device(DEVICE_CPU), NeuropodTestAddOneOp);
"""


@pytest.fixture(scope="module")
def add_one_library(tmp_path_factory):
    """A tiny custom op compiled against the installed TensorFlow (about 10 s)."""
    compiler = require_command("g++")  # the custom-op test compiles a TensorFlow op
    folder = tmp_path_factory.mktemp("custom_op")
    source = folder / "add_one.cc"
    source.write_text(ADD_ONE_OP)
    library = folder / "libneuropod_add_one.so"
    command = [compiler, "-shared", "-fPIC", "-O0", "-w", str(source), "-o", str(library)]
    command += tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return library


def test_custom_op_is_stored_and_loaded_before_the_model(tmp_path, add_one_library):
    ops = tf.load_op_library(str(add_one_library))

    @tf.function
    def add_one(x):
        return {"out": ops.neuropod_test_add_one(x)}

    spec = [{"name": "x", "dtype": "float32", "shape": [None]}]
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "custom_op",
        model_name="custom_op",
        model=add_one,
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": [None]}],
        custom_ops=[add_one_library],
        package_as_zip=False,
        test_input_data={"x": np.array([1, 2], np.float32)},
        test_expected_out={"out": np.array([2, 3], np.float32)},
    )
    assert [p.name for p in open_package(path).custom_op_paths()] == [add_one_library.name]
    # A fresh process has never seen the op: only the backend's tf.load_op_library
    # of 0/ops/ can make the SavedModel loadable there. Thread settings are checked
    # there too, since TF accepts them only before its runtime starts.
    code = textwrap.dedent(
        f"""
        import json, numpy as np, tensorflow as tf
        from neuropod import load_neuropod
        with load_neuropod({str(path)!r}, intra_op_threads=2, inter_op_threads=3) as model:
            out = model.infer({{"x": np.array([41, -1], np.float32)}})["out"]
        print(json.dumps({{
            "out": out.tolist(),
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        }}))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"out": [42.0, 0.0], "intra": 2, "inter": 3}


def test_outputs_are_read_only_views_that_cannot_corrupt_the_model(tmp_path):
    weights = np.arange(4, dtype=np.float32)

    @tf.function
    def constant(x):
        return {"out": tf.constant(weights) + 0 * tf.reduce_sum(x), "raw": tf.constant(weights)}

    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "constant",
        model_name="constant",
        model=constant,
        input_spec=[{"name": "x", "dtype": "float32", "shape": [None]}],
        output_spec=[
            {"name": "out", "dtype": "float32", "shape": [4]},
            {"name": "raw", "dtype": "float32", "shape": [4]},
        ],
    )
    with load_neuropod(path) as model:
        first = model.infer({"x": np.ones(2, np.float32)})
        for array in first.values():
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[0] = 100
        again = model.infer({"x": np.ones(2, np.float32)})
    gc.collect()  # the views outlive the model and its tensors
    for outputs in (first, again):
        np.testing.assert_array_equal(outputs["raw"], weights)
        np.testing.assert_array_equal(outputs["out"], weights)


def test_signature_dtype_that_differs_from_the_spec_is_refused_when_packaging(tmp_path):
    module = tf.Module()
    spec = tf.TensorSpec([None, None], tf.float32)
    module.add = tf.function(lambda x, y: {"out": x + y}, input_signature=[spec, spec])
    saved = tmp_path / "saved"
    tf.saved_model.save(module, str(saved), signatures=module.add)
    double_inputs = [dict(s, dtype="float64") for s in ADDITION_INPUTS]
    with pytest.raises(PackageError, match="input 'x' is float64 in the spec.*float32"):
        create_tensorflow_neuropod(
            tmp_path / "f64", "f64", saved_model_dir=saved, input_spec=double_inputs, output_spec=ADDITION_OUTPUTS
        )


def test_bfloat16_round_trip(tmp_path):
    ml_dtypes = require("ml_dtypes")
    spec = [{"name": "x", "dtype": "bfloat16", "shape": [None]}]
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "bf16",
        model_name="bf16",
        model=tf.function(lambda x: {"out": x * 2}),
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "bfloat16", "shape": [None]}],
    )
    with load_neuropod(path) as model:
        out = model.infer({"x": np.array([1.5, -3], ml_dtypes.bfloat16)})["out"]
    assert out.dtype == ml_dtypes.bfloat16
    assert out.astype(np.float32).tolist() == [3.0, -6.0]


def test_unfrozen_graph_with_variables_runs_after_its_init_op(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        scale = tf.compat.v1.Variable(np.float32(3.0), name="scale", use_resource=False)
        tf.identity(x * scale, name="out")
        tf.compat.v1.global_variables_initializer()  # the op named "init"
    vector = [{"name": "x", "dtype": "float32", "shape": [None]}]
    path = create_tensorflow_neuropod(
        neuropod_path=tmp_path / "variables",
        model_name="variables",
        graph_def=graph.as_graph_def(),
        init_op_names=["init"],
        input_spec=vector,
        output_spec=[dict(vector[0], name="out")],  # unmapped names mean "<name>:0"
        test_input_data={"x": np.array([1, 2], np.float32)},
        test_expected_out={"out": np.array([3, 6], np.float32)},
    )
    assert open_package(path).backend_config()["init_op_names"] == ["init"]
