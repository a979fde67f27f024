"""The JAX backend and packager: jax.export programs, params, dynamic dims, 64-bit types, GPU fallback, copies."""

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require

jax = require("jax")

import jax.numpy as jnp  # noqa: E402

from neuropod import InferenceError, InputValidationError, PackageError, SpecError, load_neuropod  # noqa: E402
from neuropod.packagers import create_jax_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)
SAME_COLUMNS = {"x": ["batch", "cols"], "y": ["batch", "cols"]}


def affine(params, x, y):
    return {"out": x * params["scale"] + y + params["shift"]}


PARAMS = {"scale": np.float32(2.0), "shift": np.array([1, 2, 3], np.float32)}
AFFINE_IN = [
    {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
    {"name": "y", "dtype": "float32", "shape": ["batch", 3]},
]
AFFINE_OUT = [{"name": "out", "dtype": "float32", "shape": ["batch", 3]}]


@pytest.fixture(scope="module")
def addition_package(tmp_path_factory):
    return create_jax_neuropod(
        neuropod_path=tmp_path_factory.mktemp("jax") / "add.zip",
        model_name="add",
        function=lambda x, y: {"out": x + y},
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        polymorphic_shapes=SAME_COLUMNS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )


def test_symbols_and_none_dims_accept_other_sizes_including_empty(addition_package):
    with load_neuropod(addition_package) as model:
        assert model.platform == "jax"
        for shape in [(5, 7), (1, 1), (0, 3), (3, 0)]:
            x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
            np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)


def test_params_are_stored_beside_the_program_and_jitted_functions_work(tmp_path):
    expected = X * 2 + Y + PARAMS["shift"]
    path = create_jax_neuropod(
        neuropod_path=tmp_path / "affine",
        model_name="affine",
        function=jax.jit(affine),
        params=PARAMS,
        input_spec=AFFINE_IN,
        output_spec=AFFINE_OUT,
        package_as_zip=False,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": expected},
    )
    data = path / "0" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["model.jax_exported", "params.npz"]
    with np.load(data / "params.npz") as stored:
        assert sorted(stored.files) == ["p0", "p1"]  # pytree leaves, not baked-in constants
    with load_neuropod(path) as model:
        x = np.ones((4, 3), np.float32)
        np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x * 3 + PARAMS["shift"])


def test_package_runs_without_the_source_function(tmp_path):
    import subprocess
    import sys

    path = create_jax_neuropod(
        neuropod_path=tmp_path / "affine.zip",
        model_name="affine",
        function=affine,
        params=PARAMS,
        input_spec=AFFINE_IN,
        output_spec=AFFINE_OUT,
    )
    code = (
        "import numpy as np, sys\n"
        "from neuropod import load_neuropod\n"
        "m = load_neuropod(sys.argv[1])\n"
        "print(m.infer({'x': np.ones((1, 3), np.float32), 'y': np.zeros((1, 3), np.float32)})['out'].tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[[3.0, 4.0, 5.0]]"


def test_tuple_and_single_array_results_take_the_spec_names(tmp_path):
    spec_in = [{"name": "x", "dtype": "float32", "shape": ["n"]}]
    two = [{"name": "double", "dtype": "float32", "shape": ["n"]}, {"name": "total", "dtype": "float32", "shape": [1]}]
    path = create_jax_neuropod(
        neuropod_path=tmp_path / "t.zip",
        model_name="t",
        function=lambda x: (x * 2, jnp.sum(x).reshape(1)),
        input_spec=spec_in,
        output_spec=two,
    )
    with load_neuropod(path) as model:
        out = model.infer({"x": np.array([1, 2, 3], np.float32)})
        assert out["double"].tolist() == [2, 4, 6] and out["total"].tolist() == [6]
        empty = model.infer({"x": np.zeros(0, np.float32)})
        assert empty["double"].shape == (0,) and empty["total"].tolist() == [0]


def test_64_bit_dtypes_survive(tmp_path):
    spec_in = [{"name": "i", "dtype": "int64", "shape": ["n"]}, {"name": "d", "dtype": "float64", "shape": ["n"]}]
    spec_out = [{"name": "i2", "dtype": "int64", "shape": ["n"]}, {"name": "d2", "dtype": "float64", "shape": ["n"]}]
    big = np.array([2**40, -3], np.int64)
    path = create_jax_neuropod(
        neuropod_path=tmp_path / "w.zip",
        model_name="w",
        function=lambda i, d: {"i2": i + 1, "d2": d / 3},
        input_spec=spec_in,
        output_spec=spec_out,
        test_input_data={"i": big, "d": np.array([1.0, 2.0])},
        test_expected_out={"i2": big + 1, "d2": np.array([1.0, 2.0]) / 3},
    )
    assert not jax.config.jax_enable_x64  # scoped to packaging and calls, not left on for the process
    with load_neuropod(path) as model:
        assert model.infer({"i": big, "d": np.ones(2)})["i2"].tolist() == [2**40 + 1, -2]


def test_strings_are_refused_at_packaging(tmp_path):
    spec = [{"name": "s", "dtype": "string", "shape": ["n"]}]
    with pytest.raises(SpecError, match="JAX has no string dtype.*'s'"):
        create_jax_neuropod(
            neuropod_path=tmp_path / "s", model_name="s", function=lambda s: {"s": s}, input_spec=spec, output_spec=spec
        )
    assert not (tmp_path / "s").exists()


def test_unrelated_none_dims_that_must_match_give_a_hint(tmp_path):
    with pytest.raises(PackageError, match="polymorphic_shapes="):
        create_jax_neuropod(
            neuropod_path=tmp_path / "a",
            model_name="a",
            function=lambda x, y: {"out": x + y},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    with pytest.raises(SpecError, match="rank 1"):
        create_jax_neuropod(
            neuropod_path=tmp_path / "b",
            model_name="b",
            function=lambda x, y: {"out": x + y},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
            polymorphic_shapes={"x": ["batch"]},
        )


def test_shape_assertion_at_call_is_an_inference_error(addition_package):
    with load_neuropod(addition_package) as model:
        with pytest.raises(InferenceError, match="JAX model 'add' failed"):
            model.infer({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 4), np.float32)})


def test_threads_accepted_and_gpu_falls_back_to_cpu(addition_package):
    with load_neuropod(addition_package, intra_op_threads=1, inter_op_threads=1) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is visible")
    with pytest.warns(RuntimeWarning, match="visible_gpu=0"):
        model = load_neuropod(addition_package, visible_gpu=0)
    with model:
        assert model.executor.backend.device.platform == "cpu"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_aligned_inputs_are_shared_and_outputs_are_views(tmp_path):
    spec = [{"name": "x", "dtype": "float32", "shape": [None]}]
    path = create_jax_neuropod(
        neuropod_path=tmp_path / "n.zip",
        model_name="n",
        function=lambda x: {"out": -x},
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": [None]}],
    )
    count = 1 << 20  # 4 MB: large inputs go through device_put
    raw = np.zeros(count * 4 + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    x = raw[offset : offset + count * 4].view(np.float32)  # 64-byte aligned, as XLA wants for sharing
    x[:] = np.arange(count)
    with load_neuropod(path) as model:
        backend = model.executor.backend
        assert backend._to_jax(x).unsafe_buffer_pointer() == x.ctypes.data  # no copy in
        out = model.infer({"x": x})["out"]
    np.testing.assert_array_equal(out, -np.arange(count, dtype=np.float32))
    assert not out.flags.owndata and not out.flags.writeable  # a view of JAX's buffer: no copy out


def test_missing_input_is_an_input_validation_error(addition_package):
    with load_neuropod(addition_package) as model:
        with pytest.raises(InputValidationError, match="input 'y' was not given; this model cannot run without it"):
            model.infer({"x": X})


def test_bfloat16_params_and_tensors(tmp_path):
    spec_in = [{"name": "x", "dtype": "bfloat16", "shape": ["batch", 2]}]
    spec_out = [{"name": "out", "dtype": "bfloat16", "shape": ["batch", 2]}]
    weights = {"w": jnp.array([2, 4], dtype=jnp.bfloat16)}
    path = create_jax_neuropod(
        neuropod_path=tmp_path / "bf.zip",
        model_name="bf",
        function=lambda params, x: {"out": x * params["w"]},
        params=weights,
        input_spec=spec_in,
        output_spec=spec_out,
    )
    x = np.array([[1.5, -1]], dtype=jnp.bfloat16)
    with load_neuropod(path) as model:
        out = model.infer({"x": x})["out"]
    assert out.dtype.name == "bfloat16"
    assert out.astype(np.float32).tolist() == [[3.0, -4.0]]
