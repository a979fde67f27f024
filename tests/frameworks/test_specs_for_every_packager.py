"""Every packager takes ``problem=`` instead of the two specs, or reads the specs off its test data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest

from conftest import require
from neuropod import load_neuropod

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 0.5, dtype=np.float32)
PROBLEM = {
    "input_spec": [{"name": n, "dtype": "float32", "shape": ["batch", 3]} for n in ("x", "y")],
    "output_spec": [{"name": "out", "dtype": "float32", "shape": ["batch", 3]}],
}


def _onnx(path: Path, **specs: Any) -> Path:
    require("onnx")
    from onnx import TensorProto, helper

    from neuropod.packagers import create_onnx_neuropod

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3])  # noqa: E731
    add = helper.make_node("Add", ["x", "y"], ["out"])
    graph = helper.make_graph([add], "add", [value("x"), value("y")], [value("out")])
    return create_onnx_neuropod(neuropod_path=path, model_name="addition", model=helper.make_model(graph), **specs)


def _jax(path: Path, **specs: Any) -> Path:
    require("jax")
    from neuropod.packagers import create_jax_neuropod

    return create_jax_neuropod(neuropod_path=path, model_name="addition", function=lambda x, y: {"out": x + y}, **specs)


def _torch_export(path: Path, **specs: Any) -> Path:
    torch = require("torch")
    from neuropod.packagers import create_torch_export_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x, y):  # type: ignore[no-untyped-def]
            return {"out": x + y}

    examples = {"x": torch.from_numpy(X), "y": torch.from_numpy(Y)}
    return create_torch_export_neuropod(
        neuropod_path=path, model_name="addition", module=Addition(), example_inputs=examples, **specs
    )


def _tensorflow(path: Path, **specs: Any) -> Path:
    tf = require("tensorflow")
    from neuropod.packagers import create_tensorflow_neuropod

    class Addition(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name=n) for n in ("x", "y")])
        def __call__(self, x, y):  # type: ignore[no-untyped-def]
            return {"out": x + y}

    return create_tensorflow_neuropod(neuropod_path=path, model_name="addition", model=Addition(), **specs)


def _torchscript(path: Path, **specs: Any) -> Path:
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x, y):  # type: ignore[no-untyped-def]
            return {"out": x + y}

    return create_torchscript_neuropod(neuropod_path=path, model_name="addition", module=Addition(), **specs)


PACKAGERS: Dict[str, Callable[..., Path]] = {
    "onnx": _onnx,
    "jax": _jax,
    "torch_export": _torch_export,
    "tensorflow": _tensorflow,
    "torchscript": _torchscript,
}
TEST = {"test_input_data": {"x": X, "y": Y}, "test_expected_out": {"out": X + Y}}


def _specs_of(path: Path) -> Dict[str, Any]:
    with load_neuropod(path) as model:
        assert np.array_equal(model.infer({"x": X, "y": Y})["out"], X + Y)
        return {"input_spec": model.inputs, "output_spec": model.outputs}


@pytest.mark.parametrize("framework", sorted(PACKAGERS))
def test_a_problem_file_instead_of_the_specs(tmp_path: Path, framework: str) -> None:
    problem = tmp_path / "problem.json"
    problem.write_text(json.dumps(PROBLEM))
    path = PACKAGERS[framework](tmp_path / "pkg.zip", problem=problem, **TEST)
    assert _specs_of(path) == PROBLEM


@pytest.mark.parametrize("framework", sorted(PACKAGERS))
def test_specs_left_out_are_read_off_the_test_data(tmp_path: Path, framework: str) -> None:
    path = PACKAGERS[framework](tmp_path / "pkg.zip", **TEST)
    assert _specs_of(path) == PROBLEM  # axis 0 named "batch", the rest fixed
