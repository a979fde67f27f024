"""The ONNX backend and packager: every model form, dynamic dims, threads, GPU fallback, copies, strings."""

import tracemalloc
import warnings

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require

onnx = require("onnx")
ort = require("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from neuropod import (  # noqa: E402
    InferenceError,
    InputValidationError,
    PackageError,
    SpecError,
    TestMismatchError,
    load_neuropod,
)
from neuropod.packagers import create_onnx_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)


def graph_model(nodes, inputs, outputs, opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def addition_model():
    return graph_model(
        [helper.make_node("Add", ["x", "y"], ["out"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "n"])],
    )


def identity_model():
    return graph_model(
        [helper.make_node("Identity", ["x"], ["out"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None])],
    )


IDENTITY_IN = [{"name": "x", "dtype": "float32", "shape": [None]}]
IDENTITY_OUT = [{"name": "out", "dtype": "float32", "shape": [None]}]


@pytest.fixture(scope="module")
def addition_package(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "add.zip"
    return create_onnx_neuropod(
        neuropod_path=path,
        model_name="add",
        model=addition_model(),
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )


def test_model_proto_packages_and_runs_with_dynamic_sizes(addition_package):
    with load_neuropod(addition_package) as model:
        assert model.platform == "onnx"
        for shape in [(1, 1), (4, 7), (0, 3)]:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)


def test_onnx_file_path_packages(tmp_path):
    source = tmp_path / "add.onnx"
    onnx.save_model(addition_model(), str(source))
    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "pkg",
        model_name="add",
        model=source,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        package_as_zip=False,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )
    stored = onnx.load(str(path / "0" / "data" / "model.onnx"))
    given = onnx.load(str(source))
    # Byte for byte, unless the installed onnxruntime reads only older IR versions: then only that stamp differs.
    assert stored.ir_version <= given.ir_version
    stored.ir_version = given.ir_version
    assert stored.SerializeToString() == given.SerializeToString()


def test_missing_file_and_wrong_model_type_are_refused(tmp_path):
    with pytest.raises(PackageError, match="no such ONNX file"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=tmp_path / "nope.onnx",
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    with pytest.raises(PackageError, match="got int"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=3,
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )


def test_self_test_mismatch_raises(tmp_path):
    with pytest.raises(TestMismatchError):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=addition_model(),
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
            test_input_data={"x": X, "y": Y},
            test_expected_out={"out": X},
        )


def test_spec_names_missing_from_the_graph_are_refused_at_load(tmp_path):
    spec_in = [{"name": "a", "dtype": "float32", "shape": [None]}]
    with pytest.raises(PackageError, match=r"lacks.*graph inputs \['x'\]"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=identity_model(),
            input_spec=spec_in,
            output_spec=IDENTITY_OUT,
            test_input_data={"a": np.ones(2, np.float32)},
        )


def test_torch_module_is_exported_with_dynamic_dims(tmp_path):
    torch = require("torch")
    require("onnxscript")

    class Scaled(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x * 2 + y}

    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "scaled.zip",
        model_name="scaled",
        model=Scaled(),
        example_inputs={"x": X, "y": Y},
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X * 2 + Y},
    )
    with load_neuropod(path) as model:
        for shape in [(5, 7), (1, 1), (0, 4)]:
            x = np.ones(shape, np.float32)
            np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x * 3)


def test_torch_module_example_sizes_below_two_are_refused(tmp_path):
    torch = require("torch")

    class Add(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    one = np.ones((1, 3), np.float32)
    with pytest.raises(PackageError, match="size 2 or more"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=Add(),
            example_inputs={"x": one, "y": one},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )


def test_strings_run_through_onnxruntime(tmp_path):
    model = graph_model(
        [helper.make_node("StringConcat", ["a", "b"], ["out"])],
        [
            helper.make_tensor_value_info("a", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("b", TensorProto.STRING, ["n"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["n"])],
    )
    spec_in = [{"name": "a", "dtype": "string", "shape": ["n"]}, {"name": "b", "dtype": "string", "shape": ["n"]}]
    spec_out = [{"name": "out", "dtype": "string", "shape": ["n"]}]
    a = np.array(["héllo", "x"])
    b = np.array([" wörld", "y"])
    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "s.zip",
        model_name="s",
        model=model,
        input_spec=spec_in,
        output_spec=spec_out,
        test_input_data={"a": a, "b": b},
        test_expected_out={"out": np.array(["héllo wörld", "xy"])},
    )
    with load_neuropod(path) as loaded:
        out = loaded.infer({"a": np.array([b"p", b"q"]), "b": np.array(["1", "2"])})["out"]
        assert out.dtype.kind == "U"
        assert out.tolist() == ["p1", "q2"]
        empty = loaded.infer({"a": np.array([], dtype="U1"), "b": np.array([], dtype="U1")})["out"]
        assert empty.shape == (0,) and empty.dtype.kind == "U"


def test_thread_options_are_accepted(addition_package):
    with load_neuropod(addition_package, intra_op_threads=1, inter_op_threads=2) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_gpu_requested_without_a_gpu_runs_on_cpu_with_a_warning(addition_package):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.warns(RuntimeWarning, match="visible_gpu=0"):
        model = load_neuropod(addition_package, visible_gpu=0)
    with model:
        assert model.executor.backend.providers == ["CPUExecutionProvider"]
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_cpu_only_load_does_not_warn(addition_package):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        load_neuropod(addition_package).close()


def test_model_failure_is_an_inference_error(addition_package):
    with load_neuropod(addition_package) as model:
        # Both inputs pass the spec (["batch", None] each) but the graph needs equal columns.
        with pytest.raises(InferenceError, match="'add' failed"):
            model.infer({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 4), np.float32)})


def test_no_numpy_copy_of_inputs_or_outputs(tmp_path):
    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "id.zip",
        model_name="id",
        model=identity_model(),
        input_spec=IDENTITY_IN,
        output_spec=IDENTITY_OUT,
    )
    big = np.arange(16 * 1024 * 1024 // 4, dtype=np.float32)
    with load_neuropod(path) as model:
        model.infer({"x": big[:10]})  # warm up: first-call allocations are not per-call copies
        tracemalloc.start()
        try:
            out = model.infer({"x": big})["out"]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(out, big)
        # numpy allocations are traced: a copy of the 16 MB input or output would show here.
        assert peak < big.nbytes // 4
        # The output is a view of onnxruntime's buffer, not an array numpy owns.
        assert not out.flags.owndata


def test_non_contiguous_input_is_accepted(addition_package):
    wide = np.arange(24, dtype=np.float32).reshape(2, 12)
    x = wide[:, ::4]
    with load_neuropod(addition_package) as model:
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)


def test_string_spec_with_a_torch_module_is_a_spec_error(tmp_path):
    torch = require("torch")
    spec_in = [{"name": "a", "dtype": "string", "shape": ["n"]}]
    with pytest.raises(SpecError, match="string"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=torch.nn.Identity(),
            input_spec=spec_in,
            output_spec=spec_in,
        )


def test_bfloat16_tensors_travel_with_their_onnx_type(tmp_path):
    ml_dtypes = require("ml_dtypes")
    model = graph_model(
        [
            # onnxruntime's CPU kernels have no bfloat16 Add: compute in float32.
            helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x32", "x32"], ["sum32"]),
            helper.make_node("Cast", ["sum32"], ["out"], to=TensorProto.BFLOAT16),
        ],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.BFLOAT16, ["n"])],
    )
    spec_in = [{"name": "x", "dtype": "bfloat16", "shape": ["n"]}]
    spec_out = [{"name": "out", "dtype": "bfloat16", "shape": ["n"]}]
    x = np.array([1.5, -2, 3], dtype=ml_dtypes.bfloat16)
    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "bf.zip", model_name="bf", model=model, input_spec=spec_in, output_spec=spec_out
    )
    if not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):  # an older onnxruntime (Python 3.9)
        with pytest.raises(PackageError, match=f"onnxruntime {ort.__version__} cannot pass bfloat16"):
            load_neuropod(path)
        return
    with load_neuropod(path) as loaded:
        out = loaded.infer({"x": x})["out"]
    assert out.dtype == ml_dtypes.bfloat16
    assert out.astype(np.float32).tolist() == [3.0, -4.0, 6.0]


def test_missing_input_and_undeclared_graph_input(addition_package, tmp_path):
    with load_neuropod(addition_package) as model:
        with pytest.raises(InputValidationError, match="input 'y' was not given; this model cannot run without it"):
            model.infer({"x": X})
    with pytest.raises(PackageError, match=r"needs inputs \['y'\], which the input spec does not declare"):
        create_onnx_neuropod(
            neuropod_path=tmp_path / "p",
            model_name="m",
            model=addition_model(),
            input_spec=ADDITION_INPUTS[:1],
            output_spec=ADDITION_OUTPUTS,
            test_input_data={"x": X},
        )


def test_graph_outputs_outside_the_spec_are_not_fetched(tmp_path):
    model = graph_model(
        [helper.make_node("Add", ["x", "y"], ["out"]), helper.make_node("Sub", ["x", "y"], ["debug"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("debug", TensorProto.FLOAT, ["batch", "n"]),
        ],
    )
    path = create_onnx_neuropod(
        neuropod_path=tmp_path / "p.zip",
        model_name="m",
        model=model,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )
    with load_neuropod(path) as loaded:
        assert sorted(loaded.infer({"x": X, "y": Y})) == ["out"]
