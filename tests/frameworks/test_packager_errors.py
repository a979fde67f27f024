"""What a packager lets through is a NeuropodError that says what to do next, the framework's error chained."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from neuropod import NeuropodError, PackageError, load_neuropod

X = np.arange(6, dtype=np.float32).reshape(2, 3)
SPEC_IN = [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": ["batch", 3]}]

# A helper whose source Python cannot find (as for transformers' config classes): scripting needs it.
_NAMESPACE: dict = {"__name__": __name__}
exec("def scale(x):\n    return x * 2\n", _NAMESPACE)
scale = _NAMESPACE["scale"]


def _sourceless_module():
    torch = require("torch")

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return {"out": scale(x)}

    return Doubler()


def test_a_module_torchscript_cannot_script_says_to_trace_with_the_test_inputs(tmp_path):
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    module = _sourceless_module()
    options = dict(model_name="doubler", input_spec=SPEC_IN, output_spec=SPEC_OUT, test_input_data={"x": X})
    with pytest.raises(PackageError) as info:
        create_torchscript_neuropod(neuropod_path=tmp_path / "scripted", module=module, **options)
    message = str(info.value)
    assert message.startswith("create_torchscript_neuropod: torch.jit.script could not compile Doubler: OSError")
    assert "next step: trace it instead, with the test inputs" in message
    assert (
        "torch.jit.trace(module, example_kwarg_inputs={'x': torch.as_tensor(test_input_data['x'])}, strict=False)"
        in message
    )
    assert isinstance(info.value.__cause__, OSError)
    assert not (tmp_path / "scripted").exists()

    # The hint, followed as written, packages the module.
    test_input_data = options["test_input_data"]
    traced = torch.jit.trace(module, example_kwarg_inputs={"x": torch.as_tensor(test_input_data["x"])}, strict=False)
    path = create_torchscript_neuropod(neuropod_path=tmp_path / "traced", module=traced, **options)
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": X})["out"], X * 2)


def test_a_keras_model_given_to_the_tensorflow_packager_points_to_the_keras_packager(tmp_path):
    keras = require("keras")
    require("tensorflow")
    from neuropod.packagers import create_tensorflow_neuropod

    inputs = keras.Input(shape=(3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs))
    with pytest.raises(PackageError) as info:
        create_tensorflow_neuropod(
            neuropod_path=tmp_path / "tf", model_name="dense", model=model, input_spec=SPEC_IN, output_spec=SPEC_OUT
        )
    message = str(info.value)
    assert "TensorFlow could not trace and save" in message.splitlines()[0]
    assert "next step: this is a Keras model: package it with create_keras_neuropod(model=...)" in message
    assert "model.export(<dir>) and pass saved_model_dir=<dir>" in message
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, NeuropodError)


def test_any_other_framework_error_while_writing_becomes_a_package_error(tmp_path):
    from neuropod.packagers._pipeline import create_neuropod

    def write_model(root):
        raise MemoryError("the framework ran out of memory\nat line 3 of its own code")

    with pytest.raises(PackageError) as info:
        create_neuropod(
            neuropod_path=tmp_path / "pkg",
            model_name="m",
            platform="python",
            input_spec=SPEC_IN,
            output_spec=SPEC_OUT,
            write_model=write_model,
        )
    first, *rest = str(info.value).splitlines()
    assert first == "packaging 'm' (python): the framework failed to write the model: MemoryError: " + (
        "the framework ran out of memory"
    )
    assert rest[-1].startswith("next step: read the framework's error (chained below)")
    assert isinstance(info.value.__cause__, MemoryError)
    assert not (tmp_path / "pkg").exists()
