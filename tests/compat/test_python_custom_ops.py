"""A Python package's custom ops are modules its code imports by name, as in the original.

The original's Python executor put ``0/ops`` on ``sys.path`` (its own test
packages a compiled ``addition_op`` extension that the model imports), skipped
an op whose bytes it had already added, and refused one whose name Python
already resolved to something else. The ops here are Python source modules:
the import mechanism is the same for an extension module, without needing a
compiler.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from neuropod import PackageError, load_neuropod
from neuropod.packagers import create_python_neuropod

SPEC = dict(
    input_spec=[{"name": "x", "dtype": "float32", "shape": ("batch",)}],
    output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch",)}],
)


def _package(tmp_path: Path, name: str, op_name: str, op: Path) -> Path:
    code = tmp_path / f"{name}_code"
    code.mkdir()
    (code / "model.py").write_text(
        f"import {op_name}\n\ndef get_model(_):\n    return lambda x: {{'out': {op_name}.forward(x)}}\n"
    )
    x = np.arange(3, dtype=np.float32)
    return create_python_neuropod(
        neuropod_path=tmp_path / f"{name}.zip",
        model_name=name,
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
        entrypoint_package="model",
        entrypoint="get_model",
        custom_ops=[str(op)],
        test_input_data={"x": x},
        test_expected_out={"out": x * 2},
        **SPEC,
    )


def _op(directory: Path, module_name: str, factor: int) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{module_name}.py"
    path.write_text(f"def forward(x):\n    return x * {factor}\n")
    return path


def test_the_models_code_imports_its_custom_op_and_the_same_op_loads_again(tmp_path):
    op_name = f"doubling_op_{uuid.uuid4().hex}"  # ops stay importable for the rest of the process
    first = _package(tmp_path, "first", op_name, _op(tmp_path / "a", op_name, 2))
    second = _package(tmp_path, "second", op_name, _op(tmp_path / "b", op_name, 2))  # same bytes elsewhere
    x = np.arange(4, dtype=np.float32)
    with load_neuropod(first) as one, load_neuropod(second) as two:
        np.testing.assert_array_equal(one.infer({"x": x})["out"], x * 2)
        np.testing.assert_array_equal(two.infer({"x": x})["out"], x * 2)


def test_an_op_that_another_module_answers_for_is_refused(tmp_path):
    op_name = f"doubling_op_{uuid.uuid4().hex}"
    _package(tmp_path, "first", op_name, _op(tmp_path / "a", op_name, 2))
    # Another op of that name, with other bytes: this process would give the model the first one.
    with pytest.raises(PackageError, match=f"custom op '{op_name}.py': Python already imports {op_name!r}.*use_ope"):
        _package(tmp_path, "other", op_name, _op(tmp_path / "b", op_name, 3))
    # An op named like a module Python already has.
    with pytest.raises(PackageError, match="Python already imports 'json'"):
        _package(tmp_path, "json_op", "json", _op(tmp_path / "c", "json", 2))
