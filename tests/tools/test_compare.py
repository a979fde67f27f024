"""``compare`` / ``neuropod compare`` across TorchScript, ONNX, JAX and a server; tolerance gating; exact outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from click.testing import CliRunner
from tools_fixtures import addition_fixture, server_url_fixture  # noqa: F401  (fixtures)

from neuropod.cli import main
from neuropod.errors import ProblemMismatchError
from neuropod.packagers import create_placeholder_neuropod, create_python_neuropod
from neuropod.tools import compare


def test_every_framework_and_a_remote_copy_agree(addition: Dict[str, Path], server_url: str) -> None:
    models = [addition["torchscript"], addition["onnx"], addition["jax"], server_url]
    result = compare(models, batch_size=5, batches=3, progress=False)
    assert result.ok and result.examples == 15
    assert [(a.output, a.model) for a in result.agreements] == [
        ("out", str(addition["onnx"])),
        ("out", str(addition["jax"])),
        ("out", server_url),
    ]
    for agreement in result.agreements:
        assert agreement.elements == 15 * 4 and agreement.fraction_within == 1.0 and agreement.max_abs_error == 0.0
    assert set(result.latencies_s) == {str(m) for m in models} and all(len(v) == 3 for v in result.latencies_s.values())
    # The remote copy lost its symbols: a warning, not a disagreement.
    assert any(w.startswith(server_url) and "does not promise" in w for w in result.warnings)


def test_a_different_model_fails_with_the_first_mismatches(addition: Dict[str, Path]) -> None:
    result = compare([addition["torchscript"], addition["placeholder"]], batch_size=2, batches=2, progress=False)
    assert not result.ok
    (agreement,) = result.agreements
    assert agreement.shape_mismatch is None and agreement.fraction_within < 0.5
    first = agreement.mismatches[0]
    assert len(agreement.mismatches) == 5 and len(first["index"]) == 2
    assert isinstance(first["reference"], float) and first["reference"] != first["value"]
    assert agreement.max_abs_error > 0.1 and agreement.max_rel_error > 0.01


def test_tolerances_gate(addition: Dict[str, Path], tmp_path: Path) -> None:
    # Outputs within atol pass; the same pair fails with a tighter tolerance. The data comes from a dataset here.
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((6, 4)).astype(np.float32), "y": rng.standard_normal((6, 4)).astype(np.float32)}
    loose = compare([addition["torchscript"], addition["placeholder"]], data, atol=100.0, progress=False)
    assert loose.ok and loose.examples == 6
    runner = CliRunner()
    strict = runner.invoke(main, ["compare", str(addition["torchscript"]), str(addition["placeholder"]), "--atol", "0"])
    assert strict.exit_code == 1 and "FAILED: outputs disagree past the tolerance" in strict.output
    ok = runner.invoke(main, ["compare", str(addition["onnx"]), str(addition["jax"]), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["agreements"][0]["fraction_within"] == 1.0


def test_models_of_another_problem_are_refused(addition: Dict[str, Path], tmp_path: Path) -> None:
    other = create_placeholder_neuropod(
        tmp_path / "other.zip",
        "other",
        [{"name": "x", "dtype": "float32", "shape": ["batch", None]}],
        [{"name": "out", "dtype": "int64", "shape": ["batch"]}],
    )
    with pytest.raises(ProblemMismatchError, match="input 'y': in the problem but not in the model"):
        compare([addition["jax"], other], progress=False)
    result = CliRunner().invoke(main, ["compare", str(addition["jax"]), str(other)])
    assert result.exit_code == 1 and "output 'out': the problem says dtype float32, the model int64" in result.output


LABELS_CODE = """
import numpy as np


def get_model(data_dir):
    def run(x):
        # Off by one at one position: the exact comparison of ints and strings must see it.
        ids = np.round(x).astype(np.int64)
        ids[-1, -1] += 1
        return {"ids": ids, "words": np.where(ids > 0, "pos", "neg")}

    return run
"""


def test_ints_and_strings_compare_exactly(tmp_path: Path) -> None:
    code = tmp_path / "code" / "labels_model"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(LABELS_CODE)
    specs = {
        "input_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
        "output_spec": [
            {"name": "ids", "dtype": "int64", "shape": ["batch", 3]},
            {"name": "words", "dtype": "string", "shape": ["batch", 3]},
        ],
    }
    python = create_python_neuropod(
        neuropod_path=tmp_path / "python.zip",
        model_name="labels",
        data_paths=[],
        code_path_spec=[{"python_root": str(tmp_path / "code"), "dirs_to_package": ["labels_model"]}],
        entrypoint_package="labels_model.main",
        entrypoint="get_model",
        **specs,
    )
    placeholder = create_placeholder_neuropod(tmp_path / "p.zip", "labels", **specs)
    result = compare([python, python], batch_size=2, batches=1, atol=1e9, progress=False)
    assert result.ok and all(a.exact for a in result.agreements)
    mismatch = compare([python, placeholder], batch_size=2, batches=1, atol=1e9, progress=False)
    ids, words = mismatch.agreements
    assert not ids.ok and ids.exact  # atol does not loosen an exact comparison
    assert not words.ok and words.max_abs_error is None and isinstance(words.mismatches[0]["value"], str)
