"""The same models, in-process and with ``use_ope=True``: identical outputs and identical errors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from ope_models import make_tool_model

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require
from neuropod import load_neuropod
from neuropod.packagers import create_placeholder_neuropod

Inputs = Dict[str, np.ndarray]

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 10, dtype=np.float32)

ALL_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ALL_DTYPES_OUT = [{"name": f"o_{d}", "dtype": d, "shape": ["batch", 2]} for d in ALL_DTYPES] + [
    {"name": "o_bool", "dtype": "bool", "shape": ["batch", 2]},
    {"name": "o_string", "dtype": "string", "shape": ["batch", 2]},
    {"name": "o_free", "dtype": "float32", "shape": [None, 3]},
]


def _placeholder(root: Path) -> Tuple[Path, List[Inputs]]:
    path = create_placeholder_neuropod(root / "placeholder", "placeholder", ADDITION_INPUTS, ALL_DTYPES_OUT, seed=3)
    row = np.ones((1, 4), np.float32)
    column = np.zeros((5, 1), np.float32)
    return path, [{"x": X, "y": Y}, {"x": column, "y": column + 1}, {"x": row, "y": row}]


def _python(root: Path) -> Tuple[Path, List[Inputs]]:
    path = make_tool_model(root)
    return path, [
        {"x": np.linspace(-1, 1, 9)},
        {"x": np.zeros(0), "words": np.array([["ünïcödé", ""], ["tab\t", "emoji 🙂"]])},
        {"words": np.array([["a"]], dtype="S")},  # bytes are decoded on the way in, as in-process
        {"x": np.arange(4.0)[::2]},  # a strided input
    ]


def _torchscript(root: Path) -> Tuple[Path, List[Inputs]]:
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class AddAndJoin(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor, a: List[str]) -> Dict[str, torch.Tensor]:
            return {"out": x + y, "n": torch.tensor([len(a)])}

    path = create_torchscript_neuropod(
        neuropod_path=root / "torchscript",
        model_name="torchscript",
        module=torch.jit.script(AddAndJoin()),
        input_spec=ADDITION_INPUTS + [{"name": "a", "dtype": "string", "shape": [None]}],
        output_spec=ADDITION_OUTPUTS + [{"name": "n", "dtype": "int64", "shape": [1]}],
    )
    return path, [{"x": X, "y": Y, "a": np.array(["p", "q", "r"])}, {"x": X[:1], "y": Y[:1], "a": np.array([], "U1")}]


MODELS: Dict[str, Callable[[Path], Tuple[Path, List[Inputs]]]] = {
    "placeholder": _placeholder,
    "python": _python,
    "torchscript": _torchscript,
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_outputs_are_identical_in_and_out_of_process(kind, tmp_path):
    path, cases = MODELS[kind](tmp_path)
    with load_neuropod(path) as local, load_neuropod(path, use_ope=True) as remote:
        assert remote.inputs == local.inputs and remote.outputs == local.outputs
        assert (remote.name, remote.platform) == (local.name, local.platform)
        for inputs in cases:
            expected, out = local.infer(inputs), remote.infer(inputs)
            expected.pop("pid", None)
            out.pop("pid", None)
            assert sorted(out) == sorted(expected)
            for name, array in expected.items():
                assert out[name].dtype == array.dtype, name
                assert out[name].shape == array.shape, name
                assert np.array_equal(out[name], array), name


def _bad_inputs(kind: str) -> List[object]:
    if kind == "python":
        return [
            {"x": np.ones(3, np.float32)},  # wrong dtype
            {"x": np.ones((2, 2))},  # wrong rank
            {"nope": np.ones(3)},  # unknown name
            {"cmd": np.array(["a", "b"])},  # wrong fixed size
            {"x": [1.0, 2.0]},  # not an array
            "not a dict",
        ]
    return [
        {"x": X.astype(np.float64), "y": Y},
        {"x": X, "y": Y[:1]},  # symbol 'batch' bound twice
        {"x": X.reshape(-1), "y": Y},
        {"z": X},
    ]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_validation_errors_are_identical(kind, tmp_path):
    path, _ = MODELS[kind](tmp_path)
    with load_neuropod(path) as local, load_neuropod(path, use_ope=True) as remote:
        for bad in _bad_inputs(kind):
            with pytest.raises(Exception) as local_info:
                local.infer(bad)  # type: ignore[arg-type]
            with pytest.raises(Exception) as remote_info:
                remote.infer(bad)  # type: ignore[arg-type]
            assert type(remote_info.value) is type(local_info.value)
            assert str(remote_info.value) == str(local_info.value)


def test_load_errors_are_identical(tmp_path):
    path = make_tool_model(tmp_path, package_as_zip=False)
    (path / "0" / "code" / "tool_pkg" / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    with pytest.raises(Exception) as local_info:
        load_neuropod(path, verify_manifest=False)
    with pytest.raises(Exception) as remote_info:
        load_neuropod(path, use_ope=True, verify_manifest=False)
    assert type(remote_info.value) is type(local_info.value)
    assert str(remote_info.value) == str(local_info.value)
    assert "broken on purpose" in str(remote_info.value)
    # The worker reports and exits at once: the report must win over the hang-up, every time.
    for _ in range(5):
        with pytest.raises(type(local_info.value), match="broken on purpose"):
            load_neuropod(path, use_ope=True, verify_manifest=False)
