"""The CI slice of the compatibility matrix (scripts/matrix.py): each framework's oldest and newest row.

Each row packages the conformance problems pinned to its version and loads
them with ``load_neuropod``: version selection builds (or finds, in the
checkout's ``.cache/envs``) an environment with that version, and the model
runs in a worker there. The legacy rows run the original Neuropod's era:
``requirements="torch==1.4.0"`` on Python 3.8 and a TensorFlow 1.15 frozen
GraphDef on Python 3.7. Every case must pass, except the failures the matrix
lists as known (and those must still fail, so the list stays true).

The full matrix is ``bash scripts/dev.sh matrix``; its last results are docs/compatibility.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from envs_helpers import REPO, use_envs_dir

from conftest import missing, require

sys.path.insert(0, str(REPO / "scripts"))

import matrix  # noqa: E402

pytestmark = pytest.mark.slow

SLICE = matrix.slice_rows()

#: What each framework's packages are made with here (the packaging side needs the framework too).
PACKAGING_NEEDS = {"torch": None, "tensorflow": "tensorflow", "onnxruntime": "onnx", "jax": "jax", "keras": "keras"}


def _python_found(minor: str) -> bool:
    from neuropod.envs.interpreters import discover_interpreters, find_uv

    return any(i.minor == minor for i in discover_interpreters(find_uv()))


@pytest.mark.parametrize("row", SLICE, ids=[row.label.replace(" ", "-") for row in SLICE])
def test_matrix_slice_row(row: matrix.Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if PACKAGING_NEEDS[row.framework]:
        require(PACKAGING_NEEDS[row.framework])
    if row.framework == "tensorflow" and row.legacy and not _python_found("3.7"):
        missing(
            "TensorFlow 1.15 has wheels only for CPython <= 3.7, and no Python 3.7 is installed (pyenv install 3.7)"
        )
    use_envs_dir(monkeypatch)
    monkeypatch.setenv("KERAS_BACKEND", matrix.KERAS_BACKEND)
    if os.environ.get("PIP_FIND_LINKS"):  # torch 2.13.0+cpu comes from this machine's wheel folder
        monkeypatch.setenv("UV_FIND_LINKS", os.environ["PIP_FIND_LINKS"])
    log: List[str] = []
    packaged = matrix.package_row(row, tmp_path)
    build_error = matrix.build_environment(row, packaged, log.append)
    assert build_error is None, "\n".join(log)

    result = matrix.run_row(row, packaged, log.append)

    assert result.python, result
    if row.legacy:  # the original's era: the newest Python these versions have wheels for
        assert result.python.startswith({"torch": "3.8.", "tensorflow": "3.7."}[row.framework]), result.python
    unexpected: Dict[str, Any] = {}
    for case, outcome in result.cases.items():
        known = matrix.known_failure(row, case)
        if outcome.startswith("n/a"):
            assert case in matrix.INEXPRESSIBLE.get(row.framework, {}), (case, outcome)
        elif known and outcome == "pass":
            unexpected[case] = f"listed as a known failure ({known}) but passed: update matrix.KNOWN_FAILURES"
        elif not known and outcome != "pass":
            unexpected[case] = outcome
    assert not unexpected, "\n".join([*log, str(unexpected)])


ORIGINAL_ADDITION_MODEL = """
import torch
import torch.nn as nn


class AdditionModel(nn.Module):
    def forward(self, x, y):
        return {"out": torch.from_numpy(x) + torch.from_numpy(y)}


def get_model(_):
    return AdditionModel()
"""


def _package_original_addition(tmp_path: Path, expected_offset: float) -> Path:
    """The original's PyTorch packaging test, with ``requirements="torch==1.4.0"``; its self-test runs at packaging."""
    import numpy as np

    from neuropod.packagers import create_pytorch_neuropod

    code = tmp_path / "model_code"
    code.mkdir(parents=True)
    (code / "addition_model.py").write_text(ORIGINAL_ADDITION_MODEL)
    x = np.arange(5, dtype=np.float32)
    spec = [{"name": n, "dtype": "float32", "shape": ("batch_size",)} for n in ("x", "y")]
    return create_pytorch_neuropod(
        neuropod_path=tmp_path / "test_neuropod",
        model_name="addition_model",
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
        entrypoint_package="addition_model",
        entrypoint="get_model",
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch_size",)}],
        test_input_data={"x": x, "y": x},
        test_expected_out={"out": x + x + expected_offset},
        requirements="torch==1.4.0",
    )


def test_the_originals_pytorch_packaging_test_runs_on_torch_1_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from neuropod import load_neuropod

    use_envs_dir(monkeypatch)
    path = _package_original_addition(tmp_path / "ok", 0.0)  # the self-test passed in a torch 1.4.0 worker
    with load_neuropod(path) as model:
        worker_python = model.executor.options.python_executable
        assert model.infer({"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)})["out"].tolist() == [2.0, 2.0]
    assert matrix._python_version(worker_python).startswith("3.8."), worker_python
    with pytest.raises(ValueError):  # the original's failing variant: the output differs from the expected
        _package_original_addition(tmp_path / "fail", 1.0)
