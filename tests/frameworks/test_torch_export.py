"""The torch.export backend and packager: dynamic dims from the spec, output forms, threads, GPU fallback, copies."""

from typing import Dict, Tuple

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require

torch = require("torch")

from neuropod import InferenceError, InputValidationError, PackageError, SpecError, load_neuropod  # noqa: E402
from neuropod.packagers import create_torch_export_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)


class AddDict(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"out": x + y}


class SumDiff(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x + y, x - y


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def addition_package(tmp_path_factory):
    return create_torch_export_neuropod(
        neuropod_path=tmp_path_factory.mktemp("te") / "add.zip",
        model_name="add",
        module=AddDict(),
        example_inputs={"x": X, "y": Y},
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )


def test_symbols_and_none_dims_accept_other_sizes(addition_package):
    with load_neuropod(addition_package) as model:
        assert model.platform == "torch_export"
        for shape in [(5, 7), (1, 1), (0, 3), (3, 0)]:
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            np.testing.assert_array_equal(model.infer({"x": x, "y": x})["out"], x + x)


def test_shared_symbol_is_one_dim_for_the_exporter(tmp_path):
    class Broadcast(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y[:, None]  # needs len(y) == x.shape[0]: both are "batch"

    spec_in = [
        {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
        {"name": "y", "dtype": "float32", "shape": ["batch"]},
    ]
    spec_out = [{"name": "out", "dtype": "float32", "shape": ["batch", 3]}]
    y = np.array([1, 2], np.float32)
    path = create_torch_export_neuropod(
        neuropod_path=tmp_path / "b.zip",
        model_name="b",
        module=Broadcast(),
        input_spec=spec_in,
        output_spec=spec_out,
        test_input_data={"x": X, "y": y},
        test_expected_out={"out": X + y[:, None]},
    )
    with load_neuropod(path) as model:
        x = np.ones((4, 3), np.float32)
        y4 = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(model.infer({"x": x, "y": y4})["out"], x + y4[:, None])


def test_tuple_outputs_take_the_spec_names_and_example_inputs_may_be_a_tuple(tmp_path):
    spec_out = [
        {"name": "total", "dtype": "float32", "shape": ["batch", None]},
        {"name": "diff", "dtype": "float32", "shape": ["batch", None]},
    ]
    path = create_torch_export_neuropod(
        neuropod_path=tmp_path / "sd",
        model_name="sd",
        module=SumDiff(),
        example_inputs=(X, Y),
        input_spec=ADDITION_INPUTS,
        output_spec=spec_out,
        package_as_zip=False,
    )
    assert (path / "0" / "data" / "model.pt2").is_file()
    with load_neuropod(path) as model:
        out = model.infer({"x": X, "y": Y})
        np.testing.assert_array_equal(out["total"], X + Y)
        np.testing.assert_array_equal(out["diff"], X - Y)


def test_an_exported_program_is_accepted_as_is(tmp_path):
    program = torch.export.export(Identity(), (torch.zeros(4),), dynamic_shapes=({0: torch.export.Dim("n", min=0)},))
    spec = [{"name": "x", "dtype": "float32", "shape": ["n"]}]
    path = create_torch_export_neuropod(
        neuropod_path=tmp_path / "p.zip",
        model_name="id",
        module=program,
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": ["n"]}],
    )
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": np.arange(9, dtype=np.float32)})["out"], np.arange(9))


def test_packaging_errors_are_clear(tmp_path):
    with pytest.raises(PackageError, match="example_inputs= is needed"):
        create_torch_export_neuropod(
            neuropod_path=tmp_path / "a",
            model_name="m",
            module=AddDict(),
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    one = np.ones((1, 3), np.float32)
    with pytest.raises(PackageError, match="size 1 in dynamic dimension 0"):
        create_torch_export_neuropod(
            neuropod_path=tmp_path / "b",
            model_name="m",
            module=AddDict(),
            example_inputs={"x": one, "y": one},
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
        )
    strings = [{"name": "s", "dtype": "string", "shape": [None]}]
    with pytest.raises(SpecError, match="no string tensors"):
        create_torch_export_neuropod(
            neuropod_path=tmp_path / "c",
            model_name="m",
            module=Identity(),
            input_spec=strings,
            output_spec=strings,
        )

    class Specialises(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(2, 3)  # pins the "n" dimension to 6

    spec = [{"name": "x", "dtype": "float32", "shape": ["n"]}]
    with pytest.raises(PackageError, match="torch.export could not export Specialises"):
        create_torch_export_neuropod(
            neuropod_path=tmp_path / "d",
            model_name="m",
            module=Specialises(),
            example_inputs={"x": np.ones(6, np.float32)},
            input_spec=spec,
            output_spec=[{"name": "out", "dtype": "float32", "shape": [2, 3]}],
        )
    assert not (tmp_path / "d").exists()


def test_shape_guard_failure_is_an_inference_error(addition_package):
    with load_neuropod(addition_package) as model:
        with pytest.raises(InferenceError, match="torch.export model 'add' failed"):
            model.infer({"x": np.ones((2, 3), np.float32), "y": np.ones((2, 4), np.float32)})


def test_threads_and_gpu_fallback(addition_package):
    with load_neuropod(addition_package, intra_op_threads=1) as model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.warns(RuntimeWarning, match="visible_gpu=0"):
        model = load_neuropod(addition_package, visible_gpu=0)
    with model:
        assert model.executor.backend.device.type == "cpu"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_identity_output_shares_the_input_memory(tmp_path):
    spec = [{"name": "x", "dtype": "float32", "shape": [None]}]
    path = create_torch_export_neuropod(
        neuropod_path=tmp_path / "id.zip",
        model_name="id",
        module=Identity(),
        example_inputs={"x": np.ones(4, np.float32)},
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": [None]}],
    )
    x = np.arange(1000, dtype=np.float32)
    with load_neuropod(path) as model:
        out = model.infer({"x": x})["out"]
    assert np.shares_memory(out, x)  # from_numpy in, .numpy() out: no copy either way


def test_missing_input_is_an_input_validation_error(addition_package):
    with load_neuropod(addition_package) as model:
        with pytest.raises(InputValidationError, match="input 'x' was not given; this model cannot run without it"):
            model.infer({"y": Y})
