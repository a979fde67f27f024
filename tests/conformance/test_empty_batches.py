"""An empty batch through a model that flattens with ``reshape(batch, -1)``, as real models do.

What each framework does is documented in docs/frameworks.md ("Empty batches"):
it passes, or the call raises a one-line InferenceError naming the empty input
and the framework's limit. The table here is that page's.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

from conftest import require
from neuropod import InferenceError, load_neuropod

INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 4, 3]}]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", 12]}]
X = np.ones((2, 4, 3), np.float32)
EMPTY = np.zeros((0, 4, 3), np.float32)

#: platform -> "pass", or the limit its error names (docs/frameworks.md, "Empty batches").
DOCUMENTED = {
    "torchscript": "torch cannot size a -1 dimension of a reshape/view of an empty tensor",
    "torch_export": "torch cannot size a -1 dimension of a reshape/view of an empty tensor",
    "onnx": "pass",
    "jax": "pass",
    "tensorflow": "pass",
}


def _torch_flatten():
    torch = require("torch")

    class Flatten(torch.nn.Module):
        def forward(self, x):
            return {"out": x.reshape(x.shape[0], -1)}

    return Flatten()


def _build_torchscript(path: Path, options: dict) -> Path:
    from neuropod.packagers import create_torchscript_neuropod

    return create_torchscript_neuropod(neuropod_path=path, module=_torch_flatten(), **options)


def _build_torch_export(path: Path, options: dict) -> Path:
    from neuropod.packagers import create_torch_export_neuropod

    return create_torch_export_neuropod(neuropod_path=path, module=_torch_flatten(), **options)


def _build_onnx(path: Path, options: dict) -> Path:
    require("onnxruntime")
    from neuropod.packagers import create_onnx_neuropod

    return create_onnx_neuropod(neuropod_path=path, model=_torch_flatten(), **options)


def _build_jax(path: Path, options: dict) -> Path:
    jnp = require("jax.numpy")
    from neuropod.packagers import create_jax_neuropod

    return create_jax_neuropod(
        neuropod_path=path, function=lambda x: {"out": jnp.reshape(x, (x.shape[0], -1))}, **options
    )


def _build_tensorflow(path: Path, options: dict) -> Path:
    tf = require("tensorflow")
    from neuropod.packagers import create_tensorflow_neuropod

    function = tf.function(lambda x: {"out": tf.reshape(x, (tf.shape(x)[0], -1))})
    return create_tensorflow_neuropod(neuropod_path=path, model=function, **options)


BUILDERS: Dict[str, Callable[[Path, dict], Path]] = {
    "torchscript": _build_torchscript,
    "torch_export": _build_torch_export,
    "onnx": _build_onnx,
    "jax": _build_jax,
    "tensorflow": _build_tensorflow,
}


@pytest.mark.parametrize("platform", sorted(BUILDERS))
def test_an_empty_batch_passes_or_names_the_frameworks_limit(platform: str, tmp_path: Path) -> None:
    options = dict(model_name="flatten", input_spec=INPUTS, output_spec=OUTPUTS, test_input_data={"x": X})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        path = BUILDERS[platform](tmp_path / platform, options)
    with load_neuropod(path) as model:
        if DOCUMENTED[platform] == "pass":
            assert model.infer({"x": EMPTY})["out"].shape == (0, 12)
            return
        with pytest.raises(InferenceError) as info:
            model.infer({"x": EMPTY})
    message = str(info.value)
    assert "\n" not in message
    assert f"(input 'x' is empty, shape (0, 4, 3): {DOCUMENTED[platform]}; skip empty batches" in message


def test_the_documented_table_is_this_one() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "frameworks.md").read_text()
    for platform, outcome in DOCUMENTED.items():
        row = f"| `{platform}` | " + ("passes" if outcome == "pass" else f"`InferenceError`: {outcome}") + " |"
        assert row in page, row
