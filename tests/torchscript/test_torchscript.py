from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require

torch = require("torch")

from neuropod import InferenceError, InputValidationError, PackageError, SpecError, TestMismatchError, load_neuropod  # noqa: E402
from neuropod.packagers import create_torchscript_neuropod  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)


class AddDict(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"out": x + y}


class AddTensor(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class SumDiffTuple(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x + y, x - y


class SumDiff(NamedTuple):
    total: torch.Tensor
    diff: torch.Tensor


class SumDiffNamed(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> SumDiff:
        return SumDiff(y - x, x - y)


class Strings(torch.nn.Module):
    def forward(self, a: List[str], b: List[str]) -> Dict[str, List[str]]:
        return {"out": [p + q for p, q in zip(a, b)]}


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"out": x}


class DictInput(torch.nn.Module):
    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {"out": inputs["x"] * 2}


TWO_OUTPUTS = [
    {"name": "total", "dtype": "float32", "shape": ["batch", None]},
    {"name": "diff", "dtype": "float32", "shape": ["batch", None]},
]


def _package(tmp_path, module, input_spec=ADDITION_INPUTS, output_spec=ADDITION_OUTPUTS, name="m", **kwargs):
    return create_torchscript_neuropod(
        neuropod_path=tmp_path / name,
        model_name=name,
        module=torch.jit.script(module),
        input_spec=input_spec,
        output_spec=output_spec,
        **kwargs,
    )


@pytest.mark.parametrize("as_zip", [True, False])
def test_addition_with_self_test(tmp_path, as_zip):
    path = _package(
        tmp_path, AddDict(), test_input_data={"x": X, "y": Y}, test_expected_out={"out": X + Y}, package_as_zip=as_zip
    )
    assert path.is_file() == as_zip
    with load_neuropod(path) as model:
        assert model.platform == "torchscript"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_self_test_mismatch_raises_value_error_naming_the_output(tmp_path):
    with pytest.raises(ValueError) as info:
        _package(tmp_path, AddDict(), test_input_data={"x": X, "y": Y}, test_expected_out={"out": X})
    assert isinstance(info.value, TestMismatchError)
    assert "output 'out': expected" in str(info.value) and "got" in str(info.value)


def test_module_path(tmp_path):
    saved = tmp_path / "saved.pt"
    torch.jit.save(torch.jit.script(AddDict()), str(saved))
    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "m",
        model_name="m",
        module_path=saved,
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y},
    )
    assert (Path(path).stat().st_size) > 0


@pytest.mark.parametrize(
    "module, outputs, expected",
    [
        (AddTensor(), ADDITION_OUTPUTS, {"out": X + Y}),
        (SumDiffTuple(), TWO_OUTPUTS, {"total": X + Y, "diff": X - Y}),
        (SumDiffNamed(), TWO_OUTPUTS, {"total": Y - X, "diff": X - Y}),
    ],
)
def test_output_forms(tmp_path, module, outputs, expected):
    _package(tmp_path, module, output_spec=outputs, test_input_data={"x": X, "y": Y}, test_expected_out=expected)


def test_strings_in_and_out(tmp_path):
    spec_in = [{"name": "a", "dtype": "string", "shape": ["n"]}, {"name": "b", "dtype": "string", "shape": ["n"]}]
    spec_out = [{"name": "out", "dtype": "string", "shape": ["n"]}]
    path = _package(tmp_path, Strings(), spec_in, spec_out)
    with load_neuropod(path) as model:
        out = model.infer({"a": np.array(["foo", "hé"]), "b": np.array([b"bar", b"llo"])})["out"]
    assert out.dtype.kind == "U" and out.tolist() == ["foobar", "héllo"]


def test_forward_taking_one_dict(tmp_path):
    spec_in = [{"name": "x", "dtype": "float32", "shape": [None]}]
    spec_out = [{"name": "out", "dtype": "float32", "shape": [None]}]
    _package(tmp_path, DictInput(), spec_in, spec_out, test_input_data={"x": X[0]}, test_expected_out={"out": X[0] * 2})


def test_legacy_dict_with_union_fixture(legacy_fixtures):
    with load_neuropod(legacy_fixtures / "torchscript_dict_with_union_value_type_model") as model:
        assert model.name == "mixed_str_num_inputs_model"
        assert model.inputs[0] == {"name": "a", "dtype": "string", "shape": [None]}
        out = model.infer({"a": np.array(["x", "y", "z"]), "b": np.array([[1.0], [2.0], [3.0]], np.float32)})["c"]
    assert out.shape == (3, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 1], [1.0, 2.0, 3.0])  # the numeric column is concatenated last


def test_zero_copy_in_and_out(tmp_path):
    spec = [{"name": "x", "dtype": "float32", "shape": [None]}]
    out_spec = [{"name": "out", "dtype": "float32", "shape": [None]}]
    path = _package(tmp_path, Identity(), spec, out_spec)
    x = np.ones(64 * 1024 * 1024 // 4, np.float32)  # 64 MB
    with load_neuropod(path) as model:
        out = model.infer({"x": x})["out"]
        # numpy -> torch -> numpy shared one buffer: no copy either way.
        assert np.shares_memory(out, x)
        readonly = x[:1000].copy()
        readonly.flags.writeable = False
        assert np.shares_memory(model.infer({"x": readonly})["out"], readonly)


def test_model_failure_becomes_inference_error(tmp_path):
    path = _package(tmp_path, AddDict())
    with load_neuropod(path) as model, pytest.raises(InferenceError, match="TorchScript model 'm' failed"):
        model.infer({"x": X, "y": np.ones((2, 4), np.float32)})  # None dims agree with the spec, not with +


def test_bad_inputs_name_the_tensor(tmp_path):
    path = _package(tmp_path, AddDict())
    with load_neuropod(path) as model:
        with pytest.raises(InputValidationError, match="input 'y': expected dtype float32, got int64"):
            model.infer({"x": X, "y": np.ones((2, 3), np.int64)})
        with pytest.raises(InputValidationError, match="input 'z' is not in the spec"):
            model.infer({"z": X})


def test_visible_gpu_without_gpu_warns_and_runs_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    path = _package(tmp_path, AddDict())
    with pytest.warns(RuntimeWarning, match="visible_gpu=0"):
        model = load_neuropod(path, visible_gpu=0)
    with model:
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)


def test_device_settings_are_checked(tmp_path):
    with pytest.raises(SpecError, match="input_tensor_device: 'q' is not an input"):
        _package(tmp_path, AddDict(), input_tensor_device={"q": "CPU"})
    with pytest.raises(SpecError, match="expected 'CPU' or 'GPU'"):
        _package(tmp_path, AddDict(), default_input_tensor_device="TPU")
    path = _package(tmp_path, AddDict(), input_tensor_device={"x": "CPU"})
    with load_neuropod(path) as model:
        assert model.package.config.input_tensor_device == {"x": "CPU", "y": "GPU"}


def test_exactly_one_module_source(tmp_path):
    with pytest.raises(PackageError, match="exactly one of module= or module_path="):
        create_torchscript_neuropod(neuropod_path=tmp_path / "m", model_name="m", input_spec=[], output_spec=[])


def test_missing_custom_op_file_is_refused(tmp_path):
    with pytest.raises(PackageError, match="custom op '/no/such/op.so': no such file"):
        _package(tmp_path, AddDict(), custom_ops=["/no/such/op.so"])


def test_thread_options_are_applied(tmp_path):
    path = _package(tmp_path, AddDict())
    before = torch.get_num_threads()
    try:
        with load_neuropod(path, intra_op_threads=1) as model:
            assert torch.get_num_threads() == 1
            model.infer({"x": X, "y": Y})
    finally:
        torch.set_num_threads(before)
