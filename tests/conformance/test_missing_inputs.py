"""One rule for a missing input, in every backend and executor.

An input is optional where the model can run without it (a TorchScript
``forward`` argument or a Python keyword parameter with a default); leaving
out one the model needs raises ``InputValidationError`` naming it before the
framework is called. The conformance suite's ``missing_input`` bad input
checks the models that need every input; these tests check the optional side.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from conftest import require
from neuropod import InputValidationError, load_neuropod
from neuropod.packagers import create_placeholder_neuropod, create_python_neuropod

SPEC_IN = [{"name": "x", "dtype": "float32", "shape": ["n"]}, {"name": "y", "dtype": "float32", "shape": ["n"]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": ["n"]}]
X = np.arange(3, dtype=np.float32)
NEEDS_X = "input 'x' was not given; this model cannot run without it (it needs 'x')"

LOADS = [{}, {"use_ope": True}]


def _ids(options: Dict[str, Any]) -> str:
    return "ope" if options else "inprocess"


@pytest.fixture(scope="module")
def python_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("optional")
    code = root / "src" / "optional_y"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def get_model(data_dir):
                def run(x, y=None):
                    return {"out": x if y is None else x + y}
                return run
            """
        )
    )
    return create_python_neuropod(
        neuropod_path=root / "model",
        model_name="optional_y",
        data_paths=[],
        code_path_spec=[{"python_root": str(root / "src"), "dirs_to_package": ["optional_y"]}],
        entrypoint_package="optional_y.main",
        entrypoint="get_model",
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
    )


@pytest.mark.parametrize("options", LOADS, ids=_ids)
def test_python_keyword_with_a_default_is_optional(python_model: Path, options: Dict[str, Any]) -> None:
    with load_neuropod(python_model, **options) as model:
        np.testing.assert_array_equal(model.infer({"x": X})["out"], X)
        np.testing.assert_array_equal(model.infer({"x": X, "y": X})["out"], 2 * X)
        with pytest.raises(InputValidationError, match=NEEDS_X.replace("(", r"\(").replace(")", r"\)")):
            model.infer({"y": X})


def test_torchscript_argument_with_a_default_is_optional(tmp_path: Path) -> None:
    require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "ts",
        model_name="optional_y",
        module_path=str(_scripted_optional_y(tmp_path)),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        default_input_tensor_device="CPU",
    )
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": X})["out"], X)
        with pytest.raises(InputValidationError, match="input 'x' was not given"):
            model.infer({"y": X})  # refused here: torch's own "missing argument" never comes up


def _scripted_optional_y(tmp_path: Path) -> Path:
    """A TorchScript ``forward(x, y=None)`` (scripted from a file: TorchScript needs the source)."""
    source = tmp_path / "optional_y_module.py"
    source.write_text(
        textwrap.dedent(
            """
            from typing import Dict, Optional

            import torch


            class OptionalY(torch.nn.Module):
                def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
                    if y is None:
                        return {"out": x}
                    return {"out": x + y}
            """
        )
    )
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("optional_y_module", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = tmp_path / "optional_y.pt"
    torch.jit.script(module.OptionalY()).save(str(target))
    return target


@pytest.mark.parametrize("options", LOADS, ids=_ids)
def test_the_placeholder_needs_every_input(tmp_path: Path, options: Dict[str, Any]) -> None:
    # A stand-in for a model not written yet: it asks for every input the spec declares.
    path = create_placeholder_neuropod(tmp_path / "p", "placeholder", SPEC_IN, SPEC_OUT)
    with load_neuropod(path, **options) as model:
        with pytest.raises(InputValidationError, match="input 'y' was not given; this model cannot run without it"):
            model.infer({"x": X})
