"""Problem files; ``check_problem`` and ``neuropod check`` on real packages and a server; ``problem=`` in packagers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from click.testing import CliRunner
from tools_fixtures import addition_fixture, server_url_fixture  # noqa: F401  (fixtures)

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require
from neuropod import ProblemDefinition, SpecError, load_neuropod
from neuropod.cli import main
from neuropod.tools import check_problem, load_problem

PROBLEM = {"name": "addition", "input_spec": ADDITION_INPUTS, "output_spec": ADDITION_OUTPUTS}


def write_problem(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "problem.json"
    path.write_text(json.dumps({**PROBLEM, **changes}))
    return path


def test_problem_json_with_metrics_tolerances_labels(tmp_path: Path) -> None:
    path = write_problem(
        tmp_path,
        metrics=["mae", {"name": "rmse", "output": "out"}],
        tolerances={"rtol": 1e-3, "atol": 0, "outputs": {"out": {"atol": 0.5}}},
        labels={"out": "target"},
    )
    problem = load_problem(path)
    assert problem.name == "addition"
    assert [s.name for s in problem.inputs] == ["x", "y"]
    assert problem.metrics == ("mae", {"name": "rmse", "output": "out"})
    assert problem.tolerance("out") == (1e-3, 0.5)
    assert problem.labels == {"out": "target"}
    assert problem.batch_dim() == "batch"
    assert ProblemDefinition.from_file(path) == problem.definition


def test_problem_module(tmp_path: Path) -> None:
    path = tmp_path / "problem.py"
    path.write_text(
        textwrap.dedent(
            """
            from neuropod import ProblemDefinition, TensorSpec

            PROBLEM = ProblemDefinition([TensorSpec("x", "float32", ("n", 2))], [TensorSpec("y", "int64", ("n",))])

            def within_one(prediction, label):
                return abs(prediction - label) <= 1

            METRICS = ["accuracy", within_one]
            TOLERANCES = {"atol": 0.1}
            """
        )
    )
    problem = load_problem(path)
    assert problem.definition.inputs[0].shape == ("n", 2)
    assert problem.metrics[0] == "accuracy" and callable(problem.metrics[1])
    assert problem.tolerance("y") == (1e-5, 0.1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"input_spec": None}, "missing input_spec"),
        ({"tolerances": {"rtol": -1}}, "tolerances.rtol must be a number >= 0; got -1"),
        ({"tolerances": {"outputs": {"nope": {"atol": 1}}}}, "'nope', which is not an output"),
        ({"batch_symbol": "rows"}, "batch_symbol 'rows' is not a symbol of the inputs"),
        ({"output_spec": [{"name": "out", "dtype": "complex", "shape": [1]}]}, "tensor 'out': dtype"),
    ],
)
def test_bad_problem_files_name_the_file_and_field(tmp_path: Path, changes: Dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match="problem.json") as info:
        load_problem(write_problem(tmp_path, **changes))
    assert message in str(info.value)


def test_missing_problem_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_problem(tmp_path / "none.json")


def test_every_framework_implements_the_problem(addition: Dict[str, Path], tmp_path: Path) -> None:
    path = write_problem(tmp_path)
    for name in ("torchscript", "onnx", "jax", "placeholder"):
        result = check_problem(addition[name], path)
        assert result.ok and not result.warnings, (name, result)
    with load_neuropod(addition["onnx"]) as model:  # a loaded model works the same
        assert check_problem(model, path).ok


def test_check_says_exactly_where_a_package_differs(addition: Dict[str, Path], tmp_path: Path) -> None:
    wanted = write_problem(
        tmp_path,
        input_spec=[
            {"name": "x", "dtype": "float64", "shape": ["batch", None]},
            {"name": "y", "dtype": "float32", "shape": ["batch", 3, 1]},
            {"name": "z", "dtype": "float32", "shape": ["batch"]},
        ],
        output_spec=[
            {"name": "out", "dtype": "float32", "shape": ["batch", None]},
            {"name": "extra", "dtype": "bool", "shape": [1]},
        ],
    )
    errors = check_problem(addition["torchscript"], wanted).errors
    assert "input 'x': the problem says dtype float64, the model float32" in errors
    assert any(e.startswith("input 'y': the problem says rank 3") for e in errors)
    assert "input 'z': in the problem but not in the model" in errors
    assert "output 'extra': in the problem but not in the model" in errors
    assert len(errors) == 4


def test_check_finds_misaligned_symbols_and_fixed_sizes(tmp_path: Path) -> None:
    problem = ProblemDefinition(ADDITION_INPUTS, ADDITION_OUTPUTS)
    # x and y no longer share their batch: the problem ties them, the model must accept any pair of sizes.
    untied = ProblemDefinition(
        [
            {"name": "x", "dtype": "float32", "shape": ["n", None]},
            {"name": "y", "dtype": "float32", "shape": ["m", None]},
        ],
        [{"name": "out", "dtype": "float32", "shape": ["n", None]}],
    )
    assert check_problem(untied, problem).ok  # looser inputs are fine
    errors = check_problem(problem, untied).errors  # the model ties what the problem leaves free
    assert errors and "symbols not aligned" in errors[0] and "'batch'" in errors[0]
    # An output the problem leaves free may follow an input's size.
    specific = ProblemDefinition(
        [
            {"name": "x", "dtype": "float32", "shape": ["batch", "n"]},
            {"name": "y", "dtype": "float32", "shape": ["batch", None]},
        ],
        [{"name": "out", "dtype": "float32", "shape": ["batch", "n"]}],
    )
    assert check_problem(specific, problem).ok
    fixed = ProblemDefinition(
        [{"name": "x", "dtype": "float32", "shape": [8, None]}, {"name": "y", "dtype": "float32", "shape": [8, None]}],
        [{"name": "out", "dtype": "float32", "shape": [8, None]}],
    )
    errors = check_problem(fixed, problem).errors
    assert "input 'x' dimension 0: the problem says 'batch', the model says 8 (the model accepts only size 8)" in errors
    assert "output 'out' dimension 0: the problem says 'batch', the model says 8" in errors


def test_check_a_remote_model(server_url: str, tmp_path: Path) -> None:
    result = check_problem(server_url, write_problem(tmp_path))
    # Symbols do not survive the protocol: the server's output sizes are not promised, which is not an error.
    assert result.ok
    assert "output 'out' dimension 0: the problem says 'batch', the model says None" in result.warnings[0]


def test_check_command(addition: Dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["check", str(addition["jax"]), "--problem", str(write_problem(tmp_path))])
    assert good.exit_code == 0 and "OK:" in good.output
    other = tmp_path / "other"
    other.mkdir()
    bad_problem = write_problem(other, output_spec=[{"name": "out", "dtype": "int64", "shape": ["batch", None]}])
    bad = runner.invoke(main, ["check", str(addition["jax"]), "--problem", str(bad_problem), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["errors"] == ["output 'out': the problem says dtype int64, the model float32"]
    missing = runner.invoke(main, ["check", str(addition["jax"]), "--problem", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output and "Traceback" not in missing.output


def test_packagers_take_a_problem_file(tmp_path: Path) -> None:
    torch = require("torch")
    from builders_torch import Addition

    from neuropod.packagers import create_placeholder_neuropod, create_torchscript_neuropod

    problem = write_problem(tmp_path)
    x = np.ones((2, 3), np.float32)
    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "ts.zip",
        model_name="addition",
        module=torch.jit.script(Addition()),
        problem=problem,
        test_input_data={"x": x, "y": x},
        test_expected_out={"out": 2 * x},
    )
    assert check_problem(path, problem).ok
    with pytest.raises(SpecError, match="not both"):
        create_placeholder_neuropod(tmp_path / "p.zip", "p", ADDITION_INPUTS, ADDITION_OUTPUTS, problem=problem)
