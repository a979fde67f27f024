import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS
from neuropod.cli import main
from neuropod.packagers import create_placeholder_neuropod

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def model_path(tmp_path):
    return create_placeholder_neuropod(
        tmp_path / "m.zip", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS, test_input_data={"x": X, "y": X}
    )


def test_placeholder_command_writes_a_loadable_package(runner, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "adder", "input_spec": ADDITION_INPUTS, "output_spec": ADDITION_OUTPUTS}))
    result = runner.invoke(main, ["placeholder", "--spec", str(spec), "--seed", "3", str(tmp_path / "out.zip")])
    assert result.exit_code == 0, result.output
    inspected = runner.invoke(main, ["inspect", "--json", str(tmp_path / "out.zip")])
    info = json.loads(inspected.output)
    assert info["name"] == "adder" and info["platform"] == "placeholder" and info["manifest"] == "verified"


def test_inspect_human_output(runner, model_path):
    result = runner.invoke(main, ["inspect", str(model_path)])
    assert result.exit_code == 0, result.output
    for fragment in (
        "name:      addition",
        "platform:  placeholder *",
        "x",
        "float32",
        "['batch', None]",
        "x=CPU",
        "test_data.npz",
        "verified",
    ):
        assert fragment in result.output


def test_infer_reads_npy_and_writes_outputs(runner, model_path, tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", X)
    args = ["infer", str(model_path), "-i", f"x={tmp_path / 'x.npy'}", "-i", f"y={tmp_path / 'y.npy'}"]
    result = runner.invoke(main, args + ["--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)["out"]
    assert out["shape"] == [2, 2] and out["dtype"] == "float32"
    result = runner.invoke(main, args + ["--output", str(tmp_path / "outs")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "outs" / "out.npy").shape == (2, 2)


def test_test_command_passes_and_fails(runner, model_path, tmp_path):
    assert runner.invoke(main, ["test", str(model_path)]).exit_code == 0
    # Same problem, stored expectations that the model cannot meet -> exit 1.
    bad = create_placeholder_neuropod(
        tmp_path / "bad",
        "addition",
        ADDITION_INPUTS,
        ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": X},
        package_as_zip=False,
    )
    from neuropod.package.manifest import write_manifest
    from neuropod.package.testdata import write_test_data

    write_test_data(bad, {"x": X, "y": X}, {"out": X + 100})
    write_manifest(bad)
    result = runner.invoke(main, ["test", str(bad)])
    assert result.exit_code == 1
    assert "output 'out': expected" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["inspect", "/no/such/package"], "no such package"),
        (["infer", "{model}", "-i", "x"], "expected NAME=FILE.npy"),
        (["infer", "{model}", "-i", "x=/no/file.npy"], "cannot read"),
        (["infer", "{model}", "-i", "q={xfile}"], "input 'q' is not in the spec"),
        (["placeholder", "--spec", "{badspec}", "{tmp}/o"], "tensor 'x': dtype"),
    ],
)
def test_user_errors_are_one_clean_line(runner, model_path, tmp_path, args, fragment):
    np.save(tmp_path / "x.npy", X)
    badspec = tmp_path / "bad.json"
    badspec.write_text(json.dumps({"input_spec": [{"name": "x", "dtype": "complex", "shape": [1]}], "output_spec": []}))
    args = [a.format(model=model_path, xfile=tmp_path / "x.npy", badspec=badspec, tmp=tmp_path) for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert fragment in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "--json", "{model}"], ["inspect", "/no/such"]])
def test_python_dash_m_neuropod_is_the_neuropod_command(model_path, args):
    import subprocess
    import sys
    from pathlib import Path

    args = [arg.format(model=model_path) for arg in args]
    script = Path(sys.executable).with_name("neuropod")
    by_module = subprocess.run([sys.executable, "-m", "neuropod", *args], capture_output=True, text=True)
    by_script = subprocess.run([str(script), *args], capture_output=True, text=True)
    assert by_module.returncode == by_script.returncode
    assert (by_module.stdout, by_module.stderr) == (by_script.stdout, by_script.stderr)
    assert by_module.stdout or by_module.stderr
